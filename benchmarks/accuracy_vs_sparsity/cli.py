"""The command line of the accuracy-vs-sparsity benchmark (`python -m benchmarks.accuracy_vs_sparsity`).

See `benchmarks.accuracy_vs_sparsity` for what it measures and the commands; `--help` lists the
options.
"""

from __future__ import annotations

import argparse
import os

import jax

from benchmarks.accuracy_vs_sparsity.methods import parse_method
from benchmarks.accuracy_vs_sparsity.report import (
    SECTION,
    accuracy_table,
    budget_table,
    protocol_header,
    write_report,
)
from benchmarks.accuracy_vs_sparsity.runs import (
    GRID_EPOCHS,
    GRID_METHODS,
    QUICK_SPARSITIES,
    SPARSITIES,
    budget_specs,
    grid_specs,
    import_csv,
    protocol_tag,
    read_all_records,
    run_all,
    shared_config,
    shared_window,
)
from benchmarks.report import BENCHMARKS_MD, RESULTS_DIR, ROOT, code_version

DESCRIPTION = "Top-1 against sparsity for OptG and its baselines, every method under one protocol."


def main(argv: list[str] | None = None) -> int:
    """Runs the grid (and the budget study), rewriting the report after every run.

    Args:
      argv: the command-line arguments (default: `sys.argv[1:]`).

    Returns:
      The exit status, 0.
    """
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="98%% and 99%%, seed 0 only")
    parser.add_argument("--methods", nargs="+", default=list(GRID_METHODS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=None,
        help="grid run lengths (default: 4 and 8 on Fashion-MNIST, else the config's)",
    )
    parser.add_argument("--budget", action="store_true", help="also run the budget study")
    parser.add_argument("--budget-epochs", nargs="+", type=int, default=[2, 4, 8, 16])
    parser.add_argument(
        "--budget-seeds", nargs="+", type=int, default=None, help="default: the grid's seeds"
    )
    parser.add_argument("--no-grid", action="store_true", help="skip the grid (e.g. budget only)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from finished runs; train nothing",
    )
    parser.add_argument(
        "--import-csv",
        default="",
        metavar="CSV",
        help="first write a record for each row of this results CSV that has none (the records "
        "are not committed; the CSV is)",
    )
    parser.add_argument(
        "--import-rename",
        nargs="+",
        default=[],
        metavar="OLD=NEW",
        help="with --import-csv: record OLD's rows as method NEW (e.g. optg=optg-bonus0 for runs "
        "trained before a default changed)",
    )
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "fashion_mnist.py"))
    parser.add_argument("--dataset", default="")
    parser.add_argument("--model", default="")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--mask-update-every", type=int, default=None)
    parser.add_argument(
        "--validation",
        type=int,
        default=None,
        metavar="N",
        help="train on all but the last N training examples and evaluate on "
        "them (tuning OptG-specific settings; the test split is not read)",
    )
    parser.add_argument("--workdir-root", default=os.path.join(ROOT, "runs", "bench", SECTION))
    parser.add_argument("--results-dir", default=RESULTS_DIR)
    parser.add_argument("--benchmarks-md", default=BENCHMARKS_MD)
    args = parser.parse_args(argv)
    rename = {}
    try:
        for m in args.methods:
            parse_method(m)
        for pair in args.import_rename:
            old, sep, new = pair.partition("=")
            if not sep or not old or not new:
                parser.error(f"--import-rename {pair!r}: expected OLD=NEW")
            parse_method(new)
            rename[old] = new
    except ValueError as e:
        parser.error(str(e))

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    code_version()  # The library as imported now, before a long grid.
    shared = shared_config(
        args.config,
        dataset=args.dataset,
        model=args.model,
        data_dir=args.data_dir,
        image_size=args.image_size,
        batch_size=args.batch_size,
        mask_update_every=args.mask_update_every,
        learning_rate=args.learning_rate,
        validation_examples=args.validation,
    )
    if args.epochs:
        grid_epochs = list(args.epochs)
    elif shared.dataset == "fashion_mnist" and not args.quick:
        grid_epochs = list(GRID_EPOCHS)
    else:
        grid_epochs = [int(shared.num_epochs)]
    root = os.path.join(args.workdir_root, protocol_tag(shared))
    os.makedirs(root, exist_ok=True)
    if args.import_csv:
        imported = import_csv(args.import_csv, root, rename)
        print(f"imported {len(imported)} records from {args.import_csv} into {root}")

    # Runs of one protocol compile the same steps: reuse them across runs and invocations.
    jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir_root, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    sparsities = args.sparsities or list(QUICK_SPARSITIES if args.quick else SPARSITIES)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    specs = []
    if not args.no_grid:
        for e in grid_epochs:
            specs += grid_specs(args.methods, sparsities, seeds, e)
    if args.budget:
        budget_seeds = args.budget_seeds if args.budget_seeds is not None else seeds
        specs += [s for s in budget_specs(args.budget_epochs, seeds=budget_seeds) if s not in specs]
    # Seed 0 of every length first: a partial grid covers every cell.
    specs.sort(key=lambda spec: (spec.seed, spec.epochs))
    windows = {e: shared_window(shared, e) for e in grid_epochs}
    header = protocol_header(shared, grid_epochs, root, windows)

    validation = bool(shared.validation_examples)

    def report():
        write_report(
            read_all_records(root),
            grid_epochs,
            header,
            args.results_dir,
            args.benchmarks_md,
            validation,
        )

    if not args.report_only:
        run_all(specs, shared, root, on_row=report)
    report()
    rows = read_all_records(root)
    for e in grid_epochs:
        print("\n".join(accuracy_table(rows, e, "validation" if validation else "test")))
    budget = budget_table(rows)
    if budget:
        print("\n" + "\n".join(budget))
    return 0

"""Top-1 against sparsity for OptG and its baselines, every method under the same protocol.

Trains, with `optg_jax.training.train_and_evaluate`, the same network with the same epochs,
learning rate, sparsity schedule and mask-refresh interval for every method: dense, `magnitude`
(gradual magnitude pruning), `taylor`, `supermask` (OptG without the supermask optimizer) and
`optg`, at each sparsity and seed. Every sparse method ends its ramp at the same step
(`pruning_end_fraction`, two-thirds of training), so the table compares criteria, not how each
survives a last-minute cut. `--budget` adds a budget study (OptG, GMP and Taylor at 99%, one seed,
several run lengths).

  .venv/bin/python benchmarks/accuracy_vs_sparsity.py --quick     # 98% and 99%, one seed
  .venv/bin/python benchmarks/accuracy_vs_sparsity.py             # 90/95/98/99%, 3 seeds
  .venv/bin/python benchmarks/accuracy_vs_sparsity.py --budget --budget-epochs 2 4 8 16
  .venv/bin/python benchmarks/accuracy_vs_sparsity.py --report-only   # tables from finished runs
  # CIFAR-10 through TFDS (not run here):
  .venv/bin/python benchmarks/accuracy_vs_sparsity.py --config configs/resnet32_cifar10.py \
      --data-dir ~/tensorflow_datasets --epochs 160 --image-size 0 --batch-size 256

Each run has its own workdir under `--workdir-root`; a finished run (its record and results.json
exist) is skipped, so an interrupted grid resumes where it stopped, and an interrupted run resumes
from its last checkpoint. After every run, and at the end, the report is rewritten from all finished
runs under the root: `benchmarks/results/accuracy_vs_sparsity.csv` (one row per run),
`accuracy_vs_sparsity.md` (the tables), `accuracy_vs_sparsity.png` (top-1 against sparsity),
`accuracy_vs_sparsity_budget.png`, and the section of `BENCHMARKS.md` between the markers below
(the rest of that file is left alone). Hand-written findings go in
`benchmarks/results/accuracy_vs_sparsity_notes.md` and are copied into that section.

Method names: `dense`, `magnitude`, `taylor`, `supermask`, `optg`, each optionally with suffixes
that override config fields for that method alone: `-floor<F>` (optg: `score_lr_floor`, the score
learning-rate factor becomes `F + (1 - F) * p(t)/P`), `-mom<M>` (optg/supermask:
`score_momentum`), `-every<N>` (`mask_update_every`), `-beta<B>` (`beta`) and `-frozen`
(`update_masks_after_pruning=False`: no mask refresh after the ramp), e.g. `optg-every50-frozen`.
The verdict is given for `optg` (the paper's settings) and for `TUNED_OPTG`, the variant whose
OptG-specific settings were chosen with `--validation` (a held-out part of the training split).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Callable, Iterable, NamedTuple

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import report  # noqa: E402  (benchmarks/report.py)

RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
BENCHMARKS_MD = report.BENCHMARKS_MD
SECTION = "accuracy_vs_sparsity"
BEGIN, END = report.markers(SECTION)

METHODS = ("dense", "magnitude", "taylor", "supermask", "optg")
LABELS = {
    "dense": "dense",
    "magnitude": "GMP (magnitude)",
    "taylor": "Taylor",
    "supermask": "supermask (no supermask optimizer)",
    "optg": "OptG",
}
SPARSITIES = (0.90, 0.95, 0.98, 0.99)
QUICK_SPARSITIES = (0.98, 0.99)
# OptG with its OptG-specific settings (refresh policy, β, score momentum) chosen on a validation
# split carved from the training set (`--validation`; section accuracy_vs_sparsity_validation of
# BENCHMARKS.md): every other setting is the shared protocol's.
TUNED_OPTG = "optg-every50-mom0.99-frozen"
GRID_METHODS = (*METHODS, TUNED_OPTG)
BUDGET_METHODS = ("optg", TUNED_OPTG, "magnitude", "taylor")
BUDGET_BASELINES = ("magnitude", "taylor")
BUDGET_SPARSITY = 0.99

# The shared protocol for the Fashion-MNIST net, chosen before any comparison was run (see
# BENCHMARKS.md for why): 14x14 inputs (area-averaged) cut the conv cost 4x so that a run takes
# ~3 minutes on a busy 2-core CPU; batch 256 (peak lr 0.2); a mask refresh every 25 steps, so the
# ramp has ~25 refreshes even in a 4-epoch run (one refresh per epoch would give three).
FASHION_PROTOCOL = dict(image_size=14, batch_size=256, num_epochs=4, mask_update_every=25)

CSV_FIELDS = (
    "method",
    "sparsity",
    "seed",
    "epochs",
    "top1",
    "top5",
    "final_sparsity",
    "macs",
    "dense_macs",
    "wall_time_s",
    "train_time_s",
    "steps",
    "model",
    "dataset",
    "image_size",
    "batch_size",
    "code",
)


class Spec(NamedTuple):
    """One run of the benchmark."""

    method: str  # A method name: one of METHODS, optionally with suffixes (parse_method).
    sparsity: float  # Target sparsity (0 for dense).
    seed: int
    epochs: int

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.sparsity * 100:g}-seed{self.seed}-e{self.epochs}"


# Method-name suffixes -> (config field, type, label). Each variant is a config override of
# the shared protocol for that method alone (ablations and the validation-tuned OptG).
SUFFIXES = {
    "floor": ("score_lr_floor", float, "score-lr floor {:g}"),
    "every": ("mask_update_every", int, "refresh every {} steps"),
    "mom": ("score_momentum", float, "score momentum {:g}"),
    "beta": ("beta", float, "β = {:g}"),
}
SCORED = ("optg", "supermask")  # Criteria whose scores have a learning rate and momentum.


def parse_method(method: str) -> tuple[str, dict]:
    """A method name -> (criterion, config overrides). Raises ValueError naming the bad part.

    'optg' -> ('optg', {}); 'optg-floor0.5' -> ('optg', {'score_lr_floor': 0.5});
    'optg-every50-frozen' -> ('optg', {'mask_update_every': 50,
    'update_masks_after_pruning': False}). Suffixes: floor<F> (optg), mom<M> (optg, supermask),
    every<N>, beta<B>, frozen (sparse methods).
    """
    criterion, *suffixes = method.split("-")
    if criterion not in METHODS or (suffixes and criterion == "dense"):
        raise ValueError(
            f"unknown method {method!r}: one of {', '.join(METHODS)}, optionally "
            "with -floor<F>, -mom<M>, -every<N>, -beta<B> and/or -frozen"
        )
    options = {}
    for suffix in suffixes:
        if suffix == "frozen":
            options["update_masks_after_pruning"] = False
            continue
        prefix = next((p for p in SUFFIXES if suffix.startswith(p)), None)
        allowed = prefix is not None and (
            (prefix == "floor" and criterion == "optg")
            or (prefix == "mom" and criterion in SCORED)
            or prefix in ("every", "beta")
        )
        if not allowed:
            raise ValueError(f"unknown suffix {suffix!r} in method {method!r}")
        field, kind, _ = SUFFIXES[prefix]
        try:
            value = kind(suffix[len(prefix) :])
        except ValueError:
            raise ValueError(f"bad value in suffix {suffix!r} of method {method!r}") from None
        bounds = {"floor": (0.0, 1.0), "mom": (0.0, 0.999999)}.get(prefix)
        if (bounds and not bounds[0] <= value <= bounds[1]) or (not bounds and value <= 0):
            raise ValueError(f"{field}={value!r} of method {method!r} is outside its range")
        options[field] = value
    return criterion, options


def label(method: str) -> str:
    criterion, options = parse_method(method)
    parts = [LABELS[criterion]]
    for field, _, text in SUFFIXES.values():
        if field in options:
            parts.append(text.format(options[field]))
    if options.get("update_masks_after_pruning") is False:
        parts.append("masks frozen after the ramp")
    if method == TUNED_OPTG:
        return f"OptG tuned on validation ({', '.join(parts[1:])})"
    return f"ablation: {', '.join(parts)}" if options else parts[0]


def method_order(method: str) -> tuple:
    criterion, options = parse_method(method)
    return (METHODS.index(criterion), sorted(options.items()))


def grid_specs(
    methods: Iterable[str], sparsities: Iterable[float], seeds: Iterable[int], epochs: int
) -> list[Spec]:
    """Seed-major order (all cells of seed 0 first), so a partial grid covers every cell."""
    methods = list(methods)
    specs = []
    for seed in seeds:
        for method in methods:
            if method == "dense":
                specs.append(Spec("dense", 0.0, seed, epochs))
                continue
            specs.extend(Spec(method, s, seed, epochs) for s in sparsities)
    return specs


def budget_specs(
    budget_epochs: Iterable[int], methods=BUDGET_METHODS, sparsity=BUDGET_SPARSITY, seed: int = 0
) -> list[Spec]:
    return [Spec(m, sparsity, seed, e) for e in budget_epochs for m in methods]


# --------------------------------------------------------------------------- configs and runs


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def shared_config(args):
    """The config every run starts from: the config file plus the shared protocol overrides."""
    config = load_config(args.config)
    if args.dataset:
        config.dataset = args.dataset
    if args.model:
        config.model = args.model
    if args.data_dir:
        config.data_dir = args.data_dir
    protocol = dict(FASHION_PROTOCOL) if config.dataset == "fashion_mnist" else {}
    for field, value in (
        ("image_size", args.image_size),
        ("batch_size", args.batch_size),
        ("mask_update_every", args.mask_update_every),
        ("learning_rate", args.learning_rate),
        ("validation_examples", args.validation),
    ):
        if value is not None:
            protocol[field] = value
    for field, value in protocol.items():
        config[field] = value
    config.checkpoint_every_steps = 10**6  # Only the initial and the final state.
    config.keep_checkpoints = 1
    config.log_every_steps = 10**6
    return config


# Identity fields that each run sets itself, or that the tag spells out (validation_examples).
PER_RUN_FIELDS = (
    "sparsity",
    "criterion",
    "seed",
    "num_epochs",
    "score_lr_floor",
    "update_masks_after_pruning",
    "validation_examples",
)


def protocol_tag(config) -> str:
    """A directory name for the shared protocol: runs under other settings never mix."""
    from optg_jax import config as config_lib  # pylint: disable=import-outside-toplevel

    shared = {k: v for k, v in config_lib.identity(config).items() if k not in PER_RUN_FIELDS}
    digest = hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    size = config.image_size or "native"
    held_out = f"-val{config.validation_examples}" if config.validation_examples else ""
    return f"{config.dataset}-{config.model}-{size}px-b{config.batch_size}-{digest}{held_out}"


def run_config(shared, spec: Spec):
    config = shared.copy_and_resolve_references()
    criterion, options = parse_method(spec.method)
    config.criterion = criterion
    config.sparsity = float(spec.sparsity) if criterion != "dense" else 0.0
    config.seed = int(spec.seed)
    config.num_epochs = int(spec.epochs)
    for field, value in options.items():
        if field not in config:
            raise ValueError(f"method {spec.method!r} sets {field!r}, which the config lacks")
        config[field] = value
    return config


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """`<git HEAD>[+dirty]:<hash of optg_jax/*.py>` of the library this process runs.

    Other developers commit to the same tree while a grid runs; the record says which code
    trained each run (each invocation imports the library once).
    """
    import subprocess  # pylint: disable=import-outside-toplevel

    package = os.path.join(ROOT, "optg_jax")
    digest = hashlib.sha1()
    for directory, _, files in sorted(os.walk(package)):
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(directory, name), "rb") as f:
                digest.update(f.read())
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", ROOT, "diff", "--quiet", "HEAD", "--", package], check=False
            ).returncode
            != 0
        )
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "nogit", False
    return f"{head}{'+dirty' if dirty else ''}:{digest.hexdigest()[:8]}"


def row_from_results(spec: Spec, results: dict, config) -> dict:
    return {
        "method": spec.method,
        "sparsity": spec.sparsity,
        "seed": spec.seed,
        "epochs": spec.epochs,
        "top1": results["top1"],
        "top5": results["top5"],
        "final_sparsity": results["sparsity"],
        "macs": results["macs"],
        "dense_macs": results["dense_macs"],
        "wall_time_s": results["wall_time_s"],
        "train_time_s": results["train_time_s"],
        "steps": results["steps"],
        "model": config.model,
        "dataset": config.dataset,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "code": code_version(),
    }


def train_real(config, workdir: str, log_path: str) -> dict:
    """`train_and_evaluate` with its progress bar and tables sent to `log_path`."""
    from optg_jax import training  # pylint: disable=import-outside-toplevel

    with (
        open(log_path, "a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        return training.train_and_evaluate(config, workdir)


def record_path(root: str, spec: Spec) -> str:
    return os.path.join(root, "records", spec.name + ".json")


# Record keys before multiply-accumulates were called MACs everywhere; read as the new keys.
RENAMED_KEYS = {"flops": "macs", "dense_flops": "dense_macs"}


def _load_record(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return {RENAMED_KEYS.get(k, k): v for k, v in json.load(f).items()}


def read_record(root: str, spec: Spec) -> dict | None:
    try:
        return _load_record(record_path(root, spec))
    except (OSError, ValueError):
        return None


def read_all_records(root: str) -> list[dict]:
    directory = os.path.join(root, "records")
    rows = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
        if name.endswith(".json"):
            rows.append(_load_record(os.path.join(directory, name)))
    return rows


def write_record(root: str, spec: Spec, row: dict) -> None:
    path = record_path(root, spec)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(row, f, indent=1)
    os.replace(path + ".tmp", path)


def run_all(
    specs: list[Spec],
    shared,
    root: str,
    train_fn: Callable[[object, str, str], dict] = train_real,
    on_row: Callable[[], None] | None = None,
    say=print,
) -> list[dict]:
    """Runs every spec not yet recorded under `root`; returns the rows of all specs.

    Prints `run i/N name: top-1 ... (wall s) ETA` per run; the ETA assumes the seconds per epoch of
    the runs trained so far in this call. `on_row` is called after each new row (e.g. rewrite the
    report).
    """
    todo = [s for s in specs if read_record(root, s) is None]
    say(
        f"{len(specs)} runs, {len(specs) - len(todo)} already done, {len(todo)} to train "
        f"(workdirs under {root})"
    )
    spent, epochs_done = 0.0, 0
    for i, spec in enumerate(todo, start=1):
        config = run_config(shared, spec)
        workdir = os.path.join(root, spec.name)
        os.makedirs(os.path.join(root, "logs"), exist_ok=True)
        log_path = os.path.join(root, "logs", spec.name + ".log")
        t0 = time.time()
        results = train_fn(config, workdir, log_path)
        seconds = time.time() - t0
        row = row_from_results(spec, results, config)
        write_record(root, spec, row)
        spent, epochs_done = spent + seconds, epochs_done + spec.epochs
        left = sum(s.epochs for s in todo[i:]) * spent / epochs_done
        say(
            f"run {i}/{len(todo)} {spec.name}: top-1 {100 * row['top1']:.2f}% sparsity "
            f"{100 * row['final_sparsity']:.2f}% ({seconds:.0f} s) ETA {left / 60:.0f} min"
        )
        if on_row is not None:
            on_row()
    return [read_record(root, s) for s in specs]


# --------------------------------------------------------------------------- the report


def cell_stats(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std (0 for one value), n)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std, len(values)


def summarize(rows: list[dict], epochs: int) -> dict:
    """{(method, sparsity): (mean top-1, std, n)} over seeds for runs of `epochs` epochs."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if int(r["epochs"]) == epochs:
            groups.setdefault((r["method"], float(r["sparsity"])), []).append(float(r["top1"]))
    return {k: cell_stats(v) for k, v in groups.items()}


def fmt_cell(stats, bold=False) -> str:
    if stats is None:
        return "—"
    mean, std, n = stats
    text = f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")
    text = f"**{text}**" if bold else text
    return f"{text} ({n})"


def verdicts(cells: dict, sparsities: list[float]) -> list[str]:
    """The goals, checked per sparsity for OptG (paper defaults) and the tuned OptG: Markdown."""
    lines = []
    for method in ("optg", TUNED_OPTG):
        lines += [f"{label(method)}:", ""] if any((method, s) in cells for s in sparsities) else []
        lines += [f"  {line}" for line in _verdicts_of(method, cells, sparsities)]
        lines += [""] if lines and lines[-1] else []
    return lines[:-1] if lines and not lines[-1] else lines


def _verdicts_of(method: str, cells: dict, sparsities: list[float]) -> list[str]:
    lines = []
    for s in sparsities:
        optg = cells.get((method, s))
        others = {
            m: v
            for (m, sp), v in cells.items()
            if sp == s and m in ("magnitude", "taylor", "supermask")
        }
        if optg is None or not others:
            continue
        best_m, best = max(others.items(), key=lambda kv: kv[1][0])
        gap = 100 * (optg[0] - best[0])
        if s >= 0.98:
            ok = optg[0] > best[0]
            goal = "OptG has the best mean top-1 of the sparse methods"
        else:
            tolerance = max(optg[1], best[1])
            ok = optg[0] >= best[0] - tolerance
            goal = (
                f"OptG within one std ({100 * tolerance:.2f}, the larger of the two) of the "
                "best baseline"
            )
        seeds = min(optg[2], best[2])
        note = " (one seed: not a statistical statement)" if seeds < 2 else ""
        lines.append(
            f"- {100 * s:g}%: {goal}: **{'yes' if ok else 'no'}** — OptG "
            f"{100 * optg[0]:.2f} vs best baseline {label(best_m)} {100 * best[0]:.2f} "
            f"(OptG {gap:+.2f} points){note}."
        )
    return lines


def best_tuned(cells: dict, sparsities: list[float]) -> list[str]:
    """Validation report: the OptG variant (criterion optg) with the best mean over sparsities.

    Candidates are the variants run at every sparsity with the most seeds (a variant dropped
    after one seed cannot win on one lucky run).
    """
    means, seeds = {}, {}
    for (m, s), (mean, _, n) in cells.items():
        if m != "dense" and parse_method(m)[0] == "optg" and s in sparsities:
            means.setdefault(m, {})[s] = mean
            seeds[m] = min(seeds.get(m, n), n)
    complete = {m: v for m, v in means.items() if len(v) == len(sparsities)}
    if not complete:
        return []
    most = max(seeds[m] for m in complete)
    complete = {m: v for m, v in complete.items() if seeds[m] == most}
    best = max(complete, key=lambda m: statistics.fmean(complete[m].values()))
    mean = statistics.fmean(complete[best].values())
    return [
        f"Best OptG variant on the validation split (mean top-1 over "
        f"{', '.join(f'{100 * s:g}%' for s in sparsities)}, among the variants with "
        f"{most} seed{'s' if most > 1 else ''}): `{best}` ({100 * mean:.2f}); the grid's "
        f"tuned OptG is `{TUNED_OPTG}`."
    ]


def accuracy_table(rows: list[dict], epochs: int, split: str = "test") -> list[str]:
    cells = summarize(rows, epochs)
    if not cells:
        return []
    sparsities = sorted({s for (m, s) in cells if m != "dense"})
    methods = sorted({m for (m, s) in cells if m != "dense"}, key=method_order)
    lines = [
        f"Top-1 (%) on the {split} split after {epochs} epochs: mean ± std over seeds "
        "(number of seeds); the best sparse mean per column (ablations included) in bold.",
        "",
    ]
    if ("dense", 0.0) in cells:
        lines += [f"Dense: {fmt_cell(cells[('dense', 0.0)])}.", ""]
    lines += [
        "| method | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |",
        "|---|" + "---:|" * len(sparsities),
    ]
    best = {
        s: max((cells[(m, s)][0] for m in methods if (m, s) in cells), default=None)
        for s in sparsities
    }
    for m in methods:
        lines.append(
            f"| {label(m)} | "
            + " | ".join(
                fmt_cell(cells.get((m, s)), bold=(m, s) in cells and cells[(m, s)][0] == best[s])
                for s in sparsities
            )
            + " |"
        )
    macs = {}
    for r in rows:
        if int(r["epochs"]) == epochs and r["method"] != "dense":
            macs.setdefault(float(r["sparsity"]), []).append(float(r["macs"]))
    dense_macs = next((float(r["dense_macs"]) for r in rows), None)
    if macs and dense_macs:
        lines += [
            "",
            f"Sparse MACs per example (mean over methods and seeds; dense "
            f"{dense_macs / 1e6:.2f}M): "
            + ", ".join(
                f"{100 * s:g}%: {statistics.fmean(v) / 1e6:.3f}M" for s, v in sorted(macs.items())
            )
            + ".",
        ]
    if split != "test":
        pick = best_tuned(cells, sparsities)
        return lines + (["", *pick] if pick else [])
    check = verdicts(cells, sparsities)
    if check:
        lines += ["", "Against the goal:", ""] + check
    return lines


def budget_table(rows: list[dict], sparsity=BUDGET_SPARSITY, seed: int = 0) -> list[str]:
    picked = [
        r
        for r in rows
        if float(r["sparsity"]) == sparsity
        and int(r["seed"]) == seed
        and r["method"] in BUDGET_METHODS
    ]
    epochs = sorted({int(r["epochs"]) for r in picked})
    if len(epochs) < 2:
        return []
    methods = [m for m in BUDGET_METHODS if any(r["method"] == m for r in picked)]
    top1 = {(r["method"], int(r["epochs"])): float(r["top1"]) for r in picked}
    optgs = [m for m in methods if m not in BUDGET_BASELINES]
    lines = [
        f"Budget study: top-1 (%) at {100 * sparsity:g}%, seed {seed}, by run length (the "
        "ramp always ends at two-thirds of the run); the last columns are each OptG's "
        "lead over the better of GMP and Taylor.",
        "",
        "| epochs | "
        + " | ".join(label(m) for m in methods)
        + " | "
        + " | ".join(f"{'OptG' if m == 'optg' else 'tuned OptG'} − best baseline" for m in optgs)
        + " |",
        "|---:|" + "---:|" * (len(methods) + len(optgs)),
    ]
    for e in epochs:
        vals = [top1.get((m, e)) for m in methods]
        others = [top1[(m, e)] for m in BUDGET_BASELINES if (m, e) in top1]
        gaps = [
            f"{100 * (top1[(m, e)] - max(others)):+.2f}" if (m, e) in top1 and others else "—"
            for m in optgs
        ]
        lines.append(
            f"| {e} | "
            + " | ".join("—" if v is None else f"{100 * v:.2f}" for v in vals)
            + " | "
            + " | ".join(gaps)
            + " |"
        )
    return lines


def write_csv(rows: list[dict], path: str) -> None:
    rows = sorted(
        rows,
        key=lambda r: (
            int(r["epochs"]),
            method_order(r["method"]),
            float(r["sparsity"]),
            int(r["seed"]),
        ),
    )
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, ""))
                    for k in CSV_FIELDS
                }
            )


def plot(
    rows: list[dict], epochs: int, path: str, budget_path: str | None = None, split: str = "test"
) -> list[str]:
    """Writes the PNG(s); returns the paths written."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    written = []
    cells = summarize(rows, epochs)
    sparsities = sorted({s for (m, s) in cells if m != "dense"})
    if sparsities:
        methods = sorted({m for (m, s) in cells if m != "dense"}, key=method_order)
        # The legend goes under the axes (long variant labels must not hide the 99% points).
        fig, ax = plt.subplots(figsize=(7.0, 4.2 + 0.2 * (len(methods) + 1)))
        x = {s: i for i, s in enumerate(sparsities)}
        for k, m in enumerate(methods):
            pts = [(x[s], *cells[(m, s)][:2]) for s in sparsities if (m, s) in cells]
            shift = (k - (len(methods) - 1) / 2) * 0.04
            ax.errorbar(
                [p[0] + shift for p in pts],
                [100 * p[1] for p in pts],
                yerr=[100 * p[2] for p in pts],
                marker="o",
                capsize=3,
                label=label(m),
            )
        if ("dense", 0.0) in cells:
            dense = 100 * cells[("dense", 0.0)][0]
            ax.axhline(dense, color="k", ls="--", lw=1, label="dense")
            ax.set_ylim(top=max(ax.get_ylim()[1], dense + 0.4))
        ax.set_xticks(range(len(sparsities)), [f"{100 * s:g}%" for s in sparsities])
        ax.set_xlabel("sparsity")
        ax.set_ylabel(f"top-1 (%), {split} split")
        ax.set_title(f"{rows[0]['model']} on {rows[0]['dataset']}, {epochs} epochs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    picked = [
        r
        for r in rows
        if float(r["sparsity"]) == BUDGET_SPARSITY
        and int(r["seed"]) == 0
        and r["method"] in BUDGET_METHODS
    ]
    if budget_path and len({int(r["epochs"]) for r in picked}) >= 2:
        fig, ax = plt.subplots(figsize=(5.6, 5.0))
        for m in BUDGET_METHODS:
            pts = sorted(
                (int(r["epochs"]), 100 * float(r["top1"])) for r in picked if r["method"] == m
            )
            if pts:
                # The tuned variant's settings are spelled out in the tables; short here.
                ax.plot(*zip(*pts), marker="o", label=label(m).split(" (")[0])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epochs")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{100 * BUDGET_SPARSITY:g}% sparsity, seed 0")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
        fig.tight_layout()
        fig.savefig(budget_path, dpi=110)
        plt.close(fig)
        written.append(budget_path)
    return written


def report_markdown(
    rows: list[dict],
    epochs: int,
    header: str,
    notes: str,
    section: str = SECTION,
    split: str = "test",
) -> str:
    title = (
        "Accuracy against sparsity"
        if split == "test"
        else "Tuning OptG on a validation split (never the test split)"
    )
    lines = [f"## {title} (benchmarks/accuracy_vs_sparsity.py)", "", header, ""]
    table = accuracy_table(rows, epochs, split)
    lines += table or ["No grid run has finished yet."]
    budget = budget_table(rows)
    if budget:
        lines += ["", "### Budget study", ""] + budget
    if rows:
        total = sum(float(r["wall_time_s"]) for r in rows)
        lines += [
            "",
            f"{len(rows)} runs, {total / 60:.0f} min of wall time in all (per run: "
            f"{min(float(r['wall_time_s']) for r in rows):.0f}–"
            f"{max(float(r['wall_time_s']) for r in rows):.0f} s). Every run is a row of "
            f"[benchmarks/results/{section}.csv](benchmarks/results/{section}.csv).",
        ]
        lines += ["", f"![top-1 against sparsity](benchmarks/results/{section}.png)"]
        if budget:
            lines += ["", f"![budget study](benchmarks/results/{section}_budget.png)"]
    if notes.strip():
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def update_section(path: str, body: str, section: str = SECTION) -> None:
    """Replaces this benchmark's section of `path` (see benchmarks/report.py)."""
    report.update_section(path, section, body)


def write_report(
    rows: list[dict],
    epochs: int,
    header: str,
    results_dir: str = RESULTS_DIR,
    benchmarks_md: str = BENCHMARKS_MD,
    validation: bool = False,
) -> str:
    """CSV, Markdown, PNGs and the BENCHMARKS.md section; returns the Markdown.

    Runs evaluated on a validation split (`validation`) go to files and a section of their own
    (`accuracy_vs_sparsity_validation*`), never mixed with the test results.
    """
    section, split = (f"{SECTION}_validation", "validation") if validation else (SECTION, "test")
    os.makedirs(results_dir, exist_ok=True)
    notes_path = os.path.join(results_dir, f"{section}_notes.md")
    notes = ""
    if os.path.exists(notes_path):
        with open(notes_path, encoding="utf-8") as f:
            notes = f.read()
    write_csv(rows, os.path.join(results_dir, f"{section}.csv"))
    if rows:
        plot(
            rows,
            epochs,
            os.path.join(results_dir, f"{section}.png"),
            os.path.join(results_dir, f"{section}_budget.png"),
            split,
        )
    text = report_markdown(rows, epochs, header, notes, section, split)
    with open(os.path.join(results_dir, f"{section}.md"), "w", encoding="utf-8") as f:
        f.write(text)
    update_section(benchmarks_md, text, section)
    return text


def protocol_header(shared, epochs: int, root: str) -> str:
    from optg_jax import config as config_lib  # pylint: disable=import-outside-toplevel

    c = shared
    size = f" at {c.image_size}x{c.image_size}" if c.image_size else ""
    return "\n".join(
        [
            "Every method (dense, GMP = `magnitude`, `taylor`, `supermask` = OptG without the "
            "supermask optimizer, `optg`) is trained with the same protocol, fixed before any "
            "comparison was run:",
            "",
            f"- `{c.model}` on `{c.dataset}`{size}, {epochs} epochs (grid), batch {c.batch_size}, "
            f"SGD momentum {c.momentum}, peak lr {config_lib.effective_learning_rate(c):g} "
            f"(warm-up {c.warmup_epochs:g} epochs, then cosine), weight decay {c.weight_decay:g}, "
            f"label smoothing {c.label_smoothing:g};",
            f"- `{c.schedule}` sparsity ramp (β = {c.beta:g} per epoch) from step 0 to "
            f"{c.pruning_end_fraction:.3g} of training for every sparse method, global allocation, "
            f"a mask refresh every {c.mask_update_every} steps (during and after the ramp); "
            f"OptG/supermask score momentum {c.score_momentum:g};",
            "- top-1 on the test split. The shared hyper-parameters were not tuned. OptG and "
            "supermask use the paper's OptG-specific settings (β = 1, score momentum 0.9, masks "
            "re-selected after the ramp as in the paper's code); the row *OptG tuned on "
            "validation* changes only OptG-specific settings, picked on a validation split carved "
            "from the training set (section *Tuning OptG on a validation split* below), never on "
            "test."
            if not c.validation_examples
            else f"- top-1 on a validation split: the last {c.validation_examples} training examples, "
            "held out of training; the test split is not read.",
            "",
            f"Workdirs: `{os.path.relpath(root, ROOT)}`. Commands:",
            "",
            "```",
            ".venv/bin/python benchmarks/accuracy_vs_sparsity.py --quick   # 98%, 99%, seed 0",
            ".venv/bin/python benchmarks/accuracy_vs_sparsity.py           # 90-99%, seeds 0-2",
            ".venv/bin/python benchmarks/accuracy_vs_sparsity.py --no-grid --budget \\",
            "    --budget-epochs 2 4 8 16                                  # the budget study",
            "# the OptG-specific settings, on the last 10,000 training examples:",
            ".venv/bin/python benchmarks/accuracy_vs_sparsity.py --validation 10000 \\",
            "    --sparsities 0.98 0.99 --seeds 0 --methods magnitude optg optg-frozen ...",
            "# CIFAR-10 from TFDS (not run here):",
            ".venv/bin/python benchmarks/accuracy_vs_sparsity.py --config configs/resnet32_cifar10.py"
            " \\",
            "    --data-dir ~/tensorflow_datasets --epochs 160 --budget-epochs 40 80 160",
            "```",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="98%% and 99%%, seed 0 only")
    parser.add_argument("--methods", nargs="+", default=list(GRID_METHODS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="grid run length (default: the protocol's, 4 for Fashion-MNIST)",
    )
    parser.add_argument("--budget", action="store_true", help="also run the budget study")
    parser.add_argument("--budget-epochs", nargs="+", type=int, default=[2, 4, 8, 16])
    parser.add_argument("--no-grid", action="store_true", help="skip the grid (e.g. budget only)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from finished runs; train nothing",
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
    for m in args.methods:
        parse_method(m)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    code_version()  # The library as imported now, before a long grid.
    shared = shared_config(args)
    epochs = args.epochs or int(shared.num_epochs)
    shared.num_epochs = epochs
    root = os.path.join(args.workdir_root, protocol_tag(shared))
    os.makedirs(root, exist_ok=True)

    import jax  # pylint: disable=import-outside-toplevel

    # Runs of one protocol compile the same steps: reuse them across runs and invocations.
    jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir_root, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    sparsities = args.sparsities or list(QUICK_SPARSITIES if args.quick else SPARSITIES)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    specs = [] if args.no_grid else grid_specs(args.methods, sparsities, seeds, epochs)
    if args.budget:
        specs += [s for s in budget_specs(args.budget_epochs) if s not in specs]
    header = protocol_header(shared, epochs, root)

    validation = bool(shared.validation_examples)

    def report():
        write_report(
            read_all_records(root), epochs, header, args.results_dir, args.benchmarks_md, validation
        )

    if not args.report_only:
        run_all(specs, shared, root, on_row=report)
    report()
    rows = read_all_records(root)
    print("\n".join(accuracy_table(rows, epochs, "validation" if validation else "test")))
    budget = budget_table(rows)
    if budget:
        print("\n" + "\n".join(budget))
    return 0


if __name__ == "__main__":
    sys.exit(main())

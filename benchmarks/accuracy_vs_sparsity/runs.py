"""Runs of the accuracy-vs-sparsity benchmark: the grid, one config per run, training, records.

A run is a `Spec` (method, sparsity, seed, epochs); its config is the shared protocol's
(`shared_config`) with the method's overrides (`run_config`). Each finished run leaves a record,
`<root>/records/<spec name>.json` (one row of the CSV), so `run_all` skips it next time.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import json
import os
import time
from typing import Callable, Iterable, NamedTuple

from benchmarks.accuracy_vs_sparsity.methods import METHODS, PAPER_OPTG, parse_method
from benchmarks.report import provenance
from optg_jax.train import config as config_lib
from optg_jax.train import files

SPARSITIES = (0.90, 0.95, 0.98, 0.99)
QUICK_SPARSITIES = (0.98, 0.99)
GRID_METHODS = (*METHODS[:-1], PAPER_OPTG, "optg")
GRID_EPOCHS = (4, 8)
BUDGET_METHODS = ("optg", PAPER_OPTG, "magnitude", "taylor")
BUDGET_BASELINES = ("magnitude", "taylor")
BUDGET_SPARSITY = 0.99

# The shared protocol for the Fashion-MNIST net, chosen before any comparison was run (see
# BENCHMARKS.md for why): 14x14 inputs (area-averaged) cut the conv cost 4x so that a run takes
# about a minute on an idle 2-core CPU; batch 256 (peak lr 0.2). The pruning window and the refresh
# interval are the library's default recipe's, the same for every method.
FASHION_PROTOCOL = dict(image_size=14, batch_size=256, num_epochs=4)


class Spec(NamedTuple):
    """One run of the benchmark."""

    method: str  # A method name: one of METHODS, optionally with suffixes (parse_method).
    sparsity: float  # Target sparsity (0 for dense).
    seed: int
    epochs: int

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.sparsity * 100:g}-seed{self.seed}-e{self.epochs}"


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
    budget_epochs: Iterable[int],
    methods=BUDGET_METHODS,
    sparsity=BUDGET_SPARSITY,
    seeds: Iterable[int] = (0,),
) -> list[Spec]:
    return [Spec(m, sparsity, seed, e) for seed in seeds for e in budget_epochs for m in methods]


# --------------------------------------------------------------------------- configs and runs


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def shared_config(
    config_path: str, *, dataset: str = "", model: str = "", data_dir: str = "", **overrides
):
    """The config every run starts from: the config file plus the shared protocol overrides.

    `dataset`, `model` and `data_dir` replace the file's values when not empty; on Fashion-MNIST
    the `FASHION_PROTOCOL` applies; then each of `overrides` (config field -> value, e.g.
    `image_size=0`) that is not None.
    """
    config = load_config(config_path)
    if dataset:
        config.dataset = dataset
    if model:
        config.model = model
    if data_dir:
        config.data_dir = data_dir
    protocol = dict(FASHION_PROTOCOL) if config.dataset == "fashion_mnist" else {}
    protocol.update({field: value for field, value in overrides.items() if value is not None})
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
    "score_start",
    "score_half_life",
    "score_half_distance",
    "uncertainty_bonus_at_start",
    "update_masks_after_pruning",
    "validation_examples",
)


# Identity fields added after grids had run: left out of the digest while at their defaults, so
# that the workdirs of those grids keep their names.
LATER_FIELDS = (
    "data_in_memory",
    "augment",
    "reference_schedules",
    "init_from",
    "reinit",
    "pattern",
    "nm_ramp",
)


def protocol_tag(config) -> str:
    """A directory name for the shared protocol: runs under other settings never mix."""
    defaults = config_lib.identity(config_lib.base_config())
    shared = {
        k: v
        for k, v in config_lib.identity(config).items()
        if k not in PER_RUN_FIELDS and not (k in LATER_FIELDS and v == defaults[k])
    }
    digest = hashlib.sha1(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:8]
    size = config.image_size or "native"
    held_out = f"-val{config.validation_examples}" if config.validation_examples else ""
    return f"{config.dataset}-{config.model}-{size}px-b{config.batch_size}-{digest}{held_out}"


def run_config(shared, spec: Spec):
    """The config of one run: the shared protocol with the method's overrides.

    A method that switches to another recipe (`-paper`) keeps the shared pruning window: the ramp
    end and the refresh interval that the shared config's recipe gives this run are written out
    for it, so every method prunes over the same steps and refreshes as often.
    """
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
    if config.recipe != shared.recipe:
        window = shared_window(shared, spec.epochs)
        if config.pruning_end_fraction is None:
            config.pruning_end_fraction = window["pruning_end_fraction"]
        if config.mask_update_every is None:
            config.mask_update_every = window["mask_update_every"]
    return config


def shared_window(shared, epochs: int) -> dict:
    """The pruning window of the shared config's recipe for a run of `epochs` epochs.

    Returns:
      `{'pruning_end_fraction': ..., 'mask_update_every': ...}` as config values.
    """
    from optg_jax.train import steps, training  # pylint: disable=import-outside-toplevel

    config = shared.copy_and_resolve_references()
    config.num_epochs = epochs
    per_epoch, total = training.run_length(config, training.dataset_info(config))
    settings = steps.optg_settings(config, total, per_epoch).resolved()
    return {
        "pruning_end_fraction": settings.pruning_end_step / total,
        "mask_update_every": int(settings.mask_update_every),
    }


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
        **provenance(),  # code and host: what a bit-for-bit rerun needs
    }


def train_real(config, workdir: str, log_path: str) -> dict:
    """`train_and_evaluate` with its progress bar and tables sent to `log_path`."""
    # Imported here: it imports TensorFlow, which the report and the tests do not need.
    from optg_jax.train import training  # pylint: disable=import-outside-toplevel

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
    files.write_text_atomic(record_path(root, spec), json.dumps(row, indent=1))


# The CSV's columns that hold numbers (`report.write_csv` writes floats with 6 significant digits).
INT_COLUMNS = ("seed", "epochs", "macs", "dense_macs", "steps", "image_size", "batch_size")
FLOAT_COLUMNS = ("sparsity", "top1", "top5", "final_sparsity", "wall_time_s", "train_time_s")


def import_csv(path: str, root: str, rename: dict[str, str] | None = None) -> list[Spec]:
    """Writes a record under `root` for each row of a results CSV that has none there.

    Records live beside the workdirs, which are not committed; the CSV in benchmarks/results is.
    Importing it lets a later invocation rerun some methods and rebuild the whole report.

    Args:
      path: a CSV written by `report.write_csv`.
      root: the protocol's workdir root (`<workdir root>/<protocol tag>`).
      rename: `{old method: new method}`, applied before the record is written, e.g.
        `{"optg": "optg-bonus0"}` for runs trained before a default changed (the new name must
        say what those runs were, so that a rerun under the old name trains the new default).

    Returns:
      The specs whose records were written (rows already recorded are left as they are).

    Raises:
      ValueError: a row's method (after renaming) is not a method name; the message names it.
    """
    rename = rename or {}
    written = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row = dict(raw)
            row["method"] = rename.get(row["method"], row["method"])
            parse_method(row["method"])
            for key in INT_COLUMNS:
                row[key] = int(float(row[key]))
            for key in FLOAT_COLUMNS:
                row[key] = float(row[key])
            spec = Spec(row["method"], row["sparsity"], row["seed"], row["epochs"])
            if read_record(root, spec) is None:
                write_record(root, spec, row)
                written.append(spec)
    return written


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

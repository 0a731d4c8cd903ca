"""N:M sparsity (2:4, 1:4, 2:8) from scratch in a user's optax loop: OptG's learned scores against
magnitude N:M and SR-STE, the same budget for every method.

Models (`MODELS`, Fashion-MNIST): `lenet` (LeNet-300-100), `fmnist_cnn` (two conv layers with
BatchNorm, 14x14 inputs as in the from-scratch grid), `vit_tiny` (the zoo's ViT, 4x4 patches) and
`vit_tiny_p7` (the same ViT with 7x7 patches: 16 tokens, a step about 4x cheaper on a CPU, as in
`benchmarks/finetune.py`), each trained with SGD (momentum 0.9, cosine lr, weight decay) from a
seeded init, `optg_optax(1 - N/M, T, lr, pattern="N:M", ...)` first in the chain. A leaf whose
group axis does not divide by M (the 1-channel stems; LeNet's 300- and 100-input layers under
2:8) stays dense, the same for every method; the table's sparsity column says what that leaves.

Methods (`METHODS`): `optg` (the library's defaults with the pattern), `magnitude` (magnitude
N:M on the same ramp: the field's gradual N:M), `sr_ste` (SR-STE as published: the pattern from
the first step, masks of the dense |W| every step, the sparse-refined decay 2e-4), and variants
`criterion:key=value,...` as in `benchmarks/user_loop.py` (e.g. `optg:nm_ramp="n"`).

  python -m benchmarks.nm_sparsity --models lenet fmnist_cnn vit_tiny_p7 --seeds 0 1 2
  python -m benchmarks.nm_sparsity --models lenet --validation 10000 --methods optg "optg:nm_ramp=\"n\""

Every run appends a JSON line to `benchmarks/results/nm_sparsity.jsonl` (recorded runs skipped)
and prints about ten progress lines while it trains; the table goes to `benchmarks/results/nm_sparsity[_validation].md`, a plot of the test table to
`nm_sparsity.png`, and the section to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import optax

import optg_jax
from benchmarks import finetune, user_loop
from benchmarks.report import (
    add_run_grid_args,
    cell_stats,
    epoch_progress,
    group_series,
    image_line,
    mean_std_cell,
    plot_panels,
    provenance,
    publish_section,
    read_rows,
)
from optg_jax import nm
from optg_jax.train import models

SECTION = "nm_sparsity"
PATTERNS = ("2:4", "1:4", "2:8")
METHODS: dict[str, dict[str, Any]] = {
    "optg": {"criterion": "optg"},
    "magnitude": {"criterion": "magnitude"},
    "sr_ste": {"criterion": "sr_ste", "schedule": "constant", "every": 1},
}
LABELS = {
    "optg": "OptG N:M (library defaults)",
    "magnitude": "magnitude N:M (same ramp)",
    "sr_ste": "SR-STE (pattern from the start, masks every step)",
    "optg:uncertainty_bonus_at_start=0": (
        "OptG N:M, `uncertainty_bonus_at_start=0` (the previous defaults)"
    ),
    "optg:score_half_distance=0": "OptG N:M, `score_half_distance=0` (the defaults before that)",
}


class Setting(NamedTuple):
    """A model and its from-scratch SGD loop.

    Attributes:
      build: `() -> nn.Module` with 10 outputs.
      epochs: the run's length.
      lr: peak learning rate (cosine; `warmup_epochs` of linear warm-up first).
      warmup_epochs: fraction of an epoch, or epochs, of warm-up.
      weight_decay: coupled weight decay (`optax.add_decayed_weights`).
      batch: the batch size.
      image_size: 28, or 14 (2x2 means).
    """

    build: Callable[[], nn.Module]
    epochs: int
    lr: float
    warmup_epochs: float
    weight_decay: float
    batch: int
    image_size: int = 28


MODELS = {
    "lenet": Setting(user_loop.LeNet300100, 10, 0.1, 0.0, 5e-4, 128),
    "fmnist_cnn": Setting(lambda: models.create("fmnist_cnn", 10), 4, 0.1, 0.0, 5e-4, 128, 14),
    "vit_tiny": Setting(lambda: models.create("vit_tiny", 10), 2, 0.05, 0.5, 1e-4, 128),
    "vit_tiny_p7": Setting(lambda: models.create("vit_tiny", 10, patch=7), 2, 0.05, 0.5, 1e-4, 128),
}


def method_kwargs(method: str, pattern: str, steps_per_epoch: int) -> dict[str, Any]:
    """The `optg_optax` keyword arguments of a method with a pattern.

    Args:
      method: a key of `METHODS`, or `criterion:key=value,...`.
      pattern: `"N:M"`.
      steps_per_epoch: the loop's steps per epoch (`every=epoch`).

    Returns:
      The keyword arguments after `target_sparsity`, `total_steps` and `learning_rate`.

    Raises:
      ValueError: an unknown method or a bad pattern.
    """
    nm.parse_pattern(pattern)
    if method in METHODS:
        kwargs = dict(METHODS[method])
        every = kwargs.pop("every", None)
        if every is not None:
            kwargs["mask_update_every"] = every
    else:
        kwargs = user_loop.method_kwargs(method, steps_per_epoch)
        if kwargs is None:
            raise ValueError(f"method {method!r} is dense; N:M needs a criterion")
    return {**kwargs, "pattern": pattern}


def train(
    model_name: str,
    kwargs: dict,
    pattern: str,
    seed: int,
    arrays,
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """One from-scratch run with an N:M pattern.

    Args:
      model_name: a key of `MODELS`.
      kwargs: `method_kwargs`'s result.
      pattern: `"N:M"`.
      seed: seeds the init and the data order.
      arrays: `user_loop.load_fashion_mnist`'s arrays.
      progress: called after each epoch (`finetune.Loop.train`); None: silent.

    Returns:
      `{'top1', 'sparsity', 'valid', 'layers'}`: top-1 (%), the removed fraction of the masked
      weights, the fraction of patterned leaves whose every group keeps exactly N, and each
      leaf's removed fraction.
    """
    setting = MODELS[model_name]
    n, m = nm.parse_pattern(pattern)
    x, y, xe, ye = finetune.task_split(arrays, tuple(range(10)), setting.image_size)
    per_epoch = len(y) // setting.batch
    total = setting.epochs * per_epoch
    warmup = int(setting.warmup_epochs * per_epoch)
    lr = finetune.cosine_lr(setting.lr, total, warmup)
    tx = optax.chain(
        optg_jax.optg_optax(1 - n / m, total, lr, **kwargs),
        optax.add_decayed_weights(setting.weight_decay),
        optax.sgd(lr, 0.9),
    )
    model = setting.build()
    params, batch_stats = finetune.init_variables(model, seed, setting.image_size)
    loop = finetune.Loop(model, tx, True, setting.batch)
    state = tx.init(params)
    params, batch_stats, state = loop.train(
        params, batch_stats, state, x, y, setting.epochs, seed, progress
    )
    final = optg_jax.apply_masks(params, state)
    summary = optg_jax.sparsity_summary(state)
    masks = optg_jax.get_masks(state)
    flags = [
        bool(nm.nm_valid(mask, n, m, nm.group_axis(path, mask)))
        for path, mask in jax.tree_util.tree_leaves_with_path(masks)
        if nm.nm_applicable(path, mask, m)
    ]
    return {
        "top1": loop.top1(final, batch_stats, xe, ye),
        "sparsity": summary["global"],
        "valid": sum(flags) / max(len(flags), 1),
        "layers": {k.rsplit("/", 1)[0]: round(v, 4) for k, v in summary["layers"].items()},
    }


def table(rows: list[dict], split: str) -> list[str]:
    """Markdown: one table per model, methods x patterns, mean ± std over seeds.

    Args:
      rows: recorded runs.
      split: the eval split ("test" or the validation split's name).

    Returns:
      The lines; the best mean of each column in bold.
    """
    lines = []
    rows = [r for r in rows if r["split"] == split]
    for model_name in [m for m in MODELS if any(r["model"] == m for r in rows)]:
        cells: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["model"] == model_name:
                cells.setdefault((r["method"], r["pattern"]), []).append(r)
        patterns = [p for p in PATTERNS if any(pt == p for (_, pt) in cells)]
        patterns += sorted({pt for (_, pt) in cells} - set(patterns))
        methods = list(dict.fromkeys(m for (m, _) in sorted(cells, key=_order)))
        best = {
            p: max(
                statistics.fmean(r["top1"] for r in v) for (m, pt), v in cells.items() if pt == p
            )
            for p in patterns
        }
        lines += [f"**{model_name}**, top-1 (%) on the {split} split, mean ± std (seeds):", ""]
        lines += ["| method | " + " | ".join(patterns) + " |", "|---|" + "---:|" * len(patterns)]
        for method in methods:
            row = []
            for p in patterns:
                runs = cells.get((method, p))
                if not runs:
                    row.append("—")
                    continue
                mean, std, n = cell_stats([r["top1"] for r in runs])
                row.append(mean_std_cell(mean, std, n, mean == best[p]))
            lines.append(f"| {LABELS.get(method, '`' + method + '`')} | " + " | ".join(row) + " |")
        sparsity = {
            p: statistics.fmean(r["sparsity"] for (m, pt), v in cells.items() if pt == p for r in v)
            for p in patterns
        }
        lines += [
            "",
            "Removed fraction of the masked weights (leaves that cannot hold the pattern stay "
            "dense): " + ", ".join(f"{p} {100 * s:.1f}%" for p, s in sparsity.items()) + ".",
            "",
        ]
    return lines


def _order(key: tuple) -> tuple:
    names = list(METHODS)
    method = key[0]
    return (names.index(method) if method in names else len(names), method)


def plot(rows: list[dict], path: str) -> None:
    """Top-1 against pattern per model and method (test split), error bars one std."""
    rows = [r for r in rows if r["split"] == "test"]
    panels = []
    for model_name in (m for m in MODELS if any(r["model"] == m for r in rows)):
        mine = sorted(
            (r for r in rows if r["model"] == model_name), key=lambda r: _order((r["method"],))
        )
        series = group_series(
            mine,
            label=lambda r: LABELS.get(r["method"], r["method"]),
            tick=lambda r: PATTERNS.index(r["pattern"]) if r["pattern"] in PATTERNS else None,
        )
        panels.append((model_name, list(PATTERNS), series))
    if panels:
        plot_panels(path, panels)


def main(argv: list[str] | None = None) -> int:
    """Runs the requested grid (skipping recorded runs), then writes the tables and the plot.

    Args:
      argv: the command-line arguments (default: `sys.argv[1:]`).

    Returns:
      The exit status, 0.
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    add_run_grid_args(ap, source="idx")
    args = ap.parse_args(argv)
    for method in args.methods:
        for pattern in args.patterns:
            method_kwargs(method, pattern, 1)
    section = SECTION + ("_validation" if args.validation else "")
    out = args.out or os.path.join(args.results_dir, f"{SECTION}.jsonl")
    arrays = user_loop.load_fashion_mnist(args.validation, args.source)
    split = f"train[-{args.validation}:]" if args.validation else "test"
    done = {(r["model"], r["method"], r["pattern"], r["seed"], r["split"]) for r in read_rows(out)}
    todo = [
        (model_name, method, pattern, seed)
        for model_name in args.models
        for seed in args.seeds
        for pattern in args.patterns
        for method in args.methods
        if (model_name, method, pattern, seed, split) not in done
    ]
    where = provenance()  # the library as imported now, and the host
    print(f"{len(todo)} runs to train; results in {out}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    for i, (model_name, method, pattern, seed) in enumerate(todo, start=1):
        t0 = time.time()
        per_epoch = 50_000 // MODELS[model_name].batch
        kwargs = method_kwargs(method, pattern, per_epoch)
        label = f"run {i}/{len(todo)} {model_name} {method} {pattern} seed {seed}"
        progress = epoch_progress(label, MODELS[model_name].epochs)
        result = train(model_name, kwargs, pattern, seed, arrays, progress)
        row = dict(
            model=model_name,
            method=method,
            pattern=pattern,
            seed=seed,
            split=split,
            epochs=MODELS[model_name].epochs,
            time_s=round(time.time() - t0, 1),
            **where,
            **result,
        )
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"run {i}/{len(todo)} {model_name} {method} {pattern} seed {seed}: "
            f"top-1 {result['top1']:.2f}, valid {result['valid']:.2f} ({row['time_s']:.0f} s)",
            flush=True,
        )
    rows = read_rows(out)
    lines = table(rows, split)
    print("\n".join(lines))
    if not args.validation:
        plot(rows, os.path.join(args.results_dir, f"{SECTION}.png"))
    heading = "## N:M sparsity from scratch (benchmarks/nm_sparsity.py)"
    heading += f", validation split ({split})" if args.validation else ""
    image = [image_line(args.results_dir, args.benchmarks_md, f"{SECTION}.png", "N:M"), ""]
    blocks = [heading, ""] + lines + ([] if args.validation else image)
    publish_section(args.results_dir, args.benchmarks_md, section, blocks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

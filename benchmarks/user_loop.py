"""Fashion-MNIST in a plain optax loop: what a library user gets from optg_optax.

Not the training program: the user's own jitted loop (an epoch is one `lax.scan`; the last partial
batch dropped) with `optg_optax` first in the chain, called as a user would, on one of these
networks (`MODELS`):

- `lenet`: LeNet-300-100 (a 784-300-100-10 MLP), batch 128, SGD momentum 0.9, cosine lr from 0.1,
  weight decay 5e-4;
- `lenet_adamw`: the same MLP with AdamW (lr 1e-3 after a half-epoch warm-up then cosine,
  decoupled weight decay 0.05), batch 128;
- `vit_tiny`: the zoo's Vision Transformer (patch 4, width 128, 4 blocks), batch 128, SGD momentum
  0.9, lr 0.05 after a half-epoch warm-up then cosine, weight decay 1e-4 (as
  `configs/vit_fashion_mnist.py`);
- `vit_tiny_p7_adamw`: the same Vision Transformer with 7x7 patches (16 tokens, about 4x cheaper
  a step on a CPU) in the loop most transformer users write: AdamW (lr 1e-3 after a half-epoch
  warm-up then cosine, decoupled weight decay 0.05), batch 128.

A method is a preset of `optg_optax` keyword arguments (`METHODS`), or `criterion:key=value,...`
for any other call, e.g. `optg:score_momentum=0.9,update_masks_after_pruning=true`; `every=epoch`
stands for one epoch's steps.

  python -m benchmarks.user_loop                     # LeNet: 10 and 30 epochs, 98/99%, 3 seeds
  python -m benchmarks.user_loop --quick             # LeNet: 10 epochs, 99%, one seed
  python -m benchmarks.user_loop --validation 10000 --methods optg "optg:every=50"
  python -m benchmarks.user_loop --model vit_tiny --epochs 10 --sparsities 0.9 0.95 0.98 \
      --methods dense magnitude taylor optg --source idx   # no TensorFlow needed
  python -m benchmarks.user_loop --model vit_tiny_p7_adamw --epochs 3 --sparsities 0.9 0.95 \
      --methods dense magnitude taylor supermask optg     # the ViT in an AdamW loop

Data: `--source tfds` (default; the TFDS data set the training program reads) or `--source idx`
(Debian's raw IDX files, read with NumPy: no TensorFlow, e.g. on an accelerator host without it).
Every run appends one JSON line to `--out` (default `benchmarks/results/user_loop_<model>.jsonl`;
runs already there are skipped, so an interrupted command resumes); while a run trains it
prints about ten progress lines (`report.epoch_progress`: epoch, mean training loss, the fraction
removed, the time left). The tables of means are
printed and written to `benchmarks/results/user_loop_<model>.md` and to the `user_loop_<model>`
section of BENCHMARKS.md (`..._validation` for `--validation`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optg_jax
from benchmarks.report import (
    add_run_grid_args,
    cell_stats,
    epoch_progress,
    mean_std_cell,
    provenance,
    publish_section,
    read_rows,
)
from optg_jax import masking
from optg_jax.train import models
from optg_jax.train.data import fashion_mnist

SECTION = "user_loop"
IDX_DIR = fashion_mnist.DEBIAN_DIR  # Debian's dataset-fashion-mnist
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel mean and std on the [0, 1] scale.

# Presets: the calls a user makes. "optg" passes only the required arguments; "-epoch" adds
# `mask_update_every=steps_per_epoch` (a user with an epoch at hand); "optg-paper" is the paper's
# form as a user with an epoch would call it.
METHODS: dict[str, dict[str, Any]] = {
    "dense": {},
    "magnitude": {"criterion": "magnitude"},
    "magnitude-epoch": {"criterion": "magnitude", "every": "epoch"},
    "taylor": {"criterion": "taylor"},
    "supermask": {"criterion": "supermask"},
    "optg": {"criterion": "optg"},
    "optg-epoch": {"criterion": "optg", "every": "epoch"},
    "optg-paper": {"criterion": "optg", "recipe": "paper", "every": "epoch"},
}
DEFAULT_METHODS = tuple(METHODS)
LABELS = {
    "dense": "dense",
    "magnitude": "GMP (`criterion='magnitude'`, library defaults: cubic ramp)",
    "magnitude-epoch": "GMP, `mask_update_every=steps_per_epoch`",
    "taylor": "Taylor (library defaults)",
    "supermask": "supermask (library defaults)",
    "optg": "OptG, library defaults (required arguments only)",
    "optg-epoch": "OptG, library defaults + `mask_update_every=steps_per_epoch`",
    "optg-paper": "OptG, `recipe='paper'` + `mask_update_every=steps_per_epoch`",
    "optg:recipe=paper": "OptG, `recipe='paper'` (its refresh interval: 1% of the run)",
    # The default before `uncertainty_bonus_at_start=4` (the bonus kappa throughout), and a
    # variant of it.
    "optg:uncertainty_bonus_at_start=0": (
        "OptG, `uncertainty_bonus_at_start=0` (the previous default)"
    ),
    "optg:uncertainty_bonus=16,uncertainty_bonus_at_start=0": (
        "OptG, `uncertainty_bonus_at_start=0`, `uncertainty_bonus=16` (a larger bonus throughout)"
    ),
    # The default before `score_half_distance=0.25` (the scores never forget), and variants of it.
    "optg:score_half_distance=0": "OptG, `score_half_distance=0` (the default before that)",
    "optg:every=epoch,score_half_distance=0": (
        "OptG, `score_half_distance=0` + `mask_update_every=steps_per_epoch`"
    ),
    "optg:score_start=3,score_half_distance=0": (
        "OptG, `score_half_distance=0`, `score_start=3` (scores start at 3·W₀²/2)"
    ),
    "optg:uncertainty_bonus=8,score_half_distance=0": (
        "OptG, `score_half_distance=0`, `uncertainty_bonus=8` (a larger bonus)"
    ),
    "optg:score_half_life=0.5,score_half_distance=0": (
        "OptG, `score_half_distance=0`, `score_half_life=0.5` (scores forget with time)"
    ),
}


class LeNet300100(nn.Module):
    """784-300-100-10 MLP with ReLU; float32 logits `[B, 10]` for `[B, 28, 28, 1]` input."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(300)(x))
        x = nn.relu(nn.Dense(100)(x))
        return nn.Dense(10)(x)


class Recipe(NamedTuple):
    """A model and the user's loop settings for it.

    Attributes:
      build: `() -> nn.Module` with 10 outputs.
      batch: the batch size.
      learning_rate: the peak learning rate (cosine decay to 0, after the warm-up).
      warmup_epochs: linear warm-up of the learning rate, in epochs.
      momentum: SGD's momentum (`optimizer="sgd"`).
      weight_decay: `optax.add_decayed_weights` before SGD, or AdamW's decoupled decay.
      optimizer: `"sgd"` (with momentum) or `"adamw"`.
      title: the network as the section's heading names it (the model's key if empty).
    """

    build: Callable[[], nn.Module]
    batch: int
    learning_rate: float
    warmup_epochs: float
    momentum: float
    weight_decay: float
    optimizer: str = "sgd"
    title: str = ""


MODELS = {
    "lenet": Recipe(LeNet300100, 128, 0.1, 0.0, 0.9, 5e-4, title="LeNet-300-100"),
    "lenet_adamw": Recipe(
        LeNet300100, 128, 1e-3, 0.5, 0.9, 0.05, "adamw", "LeNet-300-100 trained with AdamW"
    ),
    "vit_tiny": Recipe(
        lambda: models.create("vit_tiny", 10),
        128,
        0.05,
        0.5,
        0.9,
        1e-4,
        title="A Vision Transformer (vit_tiny)",
    ),
    "vit_tiny_p7_adamw": Recipe(
        lambda: models.create("vit_tiny", 10, patch=7),
        128,
        1e-3,
        0.5,
        0.9,
        0.05,
        "adamw",
        "A Vision Transformer (vit_tiny, 7x7 patches) trained with AdamW",
    ),
}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of its dimensions.

    Args:
      path: e.g. `train-images-idx3-ubyte.gz`.

    Returns:
      The array, e.g. uint8 `[60000, 28, 28]`.

    Raises:
      ValueError: the file is not an unsigned-byte IDX file.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(
    validation: int = 0, source: str = "tfds", idx_dir: str = IDX_DIR
) -> tuple[np.ndarray, ...]:
    """Fashion-MNIST as (train images, train labels, eval images, eval labels).

    Args:
      validation: n > 0 evaluates on the last n training examples (and trains on the others);
        0 evaluates on the test split.
      source: "tfds" (the TFDS data set, built offline from Debian's files if missing; its order)
        or "idx" (Debian's IDX files read with NumPy, in the files' order; no TensorFlow).
      idx_dir: where the IDX files are (`source="idx"`).

    Returns:
      float32 images `[N, 28, 28, 1]` normalised with the data set's mean and std, int32 labels.

    Raises:
      ValueError: an unknown `source`.
    """
    splits = {}
    if source == "idx":
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(os.path.join(idx_dir, f"{prefix}-images-idx3-ubyte.gz"))
            labels = read_idx(os.path.join(idx_dir, f"{prefix}-labels-idx1-ubyte.gz"))
            splits[split] = (images[..., None], labels)
    elif source == "tfds":
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        from optg_jax.train import data  # pylint: disable=import-outside-toplevel

        data.ensure_dataset("fashion_mnist")
        for split in ("train", "test"):
            arrays = tfds.as_numpy(
                tfds.load(
                    "fashion_mnist",
                    split=split,
                    batch_size=-1,
                    data_dir=data.resolve_data_dir(None),
                )
            )
            splits[split] = (arrays["image"], arrays["label"])
    else:
        raise ValueError(f"source must be 'tfds' or 'idx', got {source!r}")
    splits = {
        k: ((x.astype(np.float32) / 255.0 - MEAN) / STD, y.astype(np.int32))
        for k, (x, y) in splits.items()
    }
    (x, y), (xt, yt) = splits["train"], splits["test"]
    if validation:
        return x[:-validation], y[:-validation], x[-validation:], y[-validation:]
    return x, y, xt, yt


def method_kwargs(method: str, steps_per_epoch: int) -> dict[str, Any] | None:
    """The `optg_optax` keyword arguments of a method name (None: dense, no OptG link).

    Args:
      method: a name in `METHODS` or `criterion:key=value,...` (values parsed as JSON where
        they can be; `every` is `mask_update_every`, `epoch` one epoch's steps; `keep_dense`
        names modules left unpruned, joined by `+`: `masking.keep_dense`).
      steps_per_epoch: the loop's steps per epoch.

    Returns:
      The keyword arguments after `target_sparsity`, `total_steps` and `learning_rate`.

    Raises:
      ValueError: an unknown method name.
    """
    if method in METHODS:
        kwargs = dict(METHODS[method])
    else:
        name, _, rest = method.partition(":")
        if name not in optg_jax.CRITERIA and name != "dense":
            raise ValueError(
                f"unknown method {method!r}: one of {', '.join(METHODS)} or "
                f"criterion:key=value,... with a criterion of {optg_jax.CRITERIA}"
            )
        kwargs = {} if name == "dense" else {"criterion": name}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            try:
                kwargs[key] = json.loads(value)
            except json.JSONDecodeError:
                kwargs[key] = value
    if "criterion" not in kwargs:
        return None
    every = kwargs.pop("every", None)
    if every is not None:
        kwargs["mask_update_every"] = steps_per_epoch if every == "epoch" else int(every)
    keep = kwargs.pop("keep_dense", None)
    if keep is not None:
        kwargs["is_masked"] = masking.keep_dense(*str(keep).split("+"))
    return kwargs


def user_optimizer(recipe: Recipe, lr: optax.Schedule) -> optax.GradientTransformation:
    """The loop's optimizer after the OptG link: weight decay then SGD with momentum, or AdamW."""
    if recipe.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=recipe.weight_decay)
    return optax.chain(
        optax.add_decayed_weights(recipe.weight_decay), optax.sgd(lr, recipe.momentum)
    )


def train(
    method: str,
    sparsity: float,
    epochs: int,
    seed: int,
    arrays,
    model_name: str = "lenet",
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """One run of the user loop.

    Args:
      method: a method name (`method_kwargs`).
      sparsity: the target sparsity (ignored by dense).
      epochs: the run's length.
      seed: seeds the init and the data order.
      arrays: `load_fashion_mnist`'s result.
      model_name: a key of `MODELS`.
      progress: called after each epoch as `progress(epoch, mean training loss, optimizer
        state or None for dense)` (`report.epoch_progress`); None: silent.

    Returns:
      `{'top1': percent, 'sparsity': removed fraction, 'layers': {layer: removed fraction}}`,
      a layer named by its kernel's path without the leaf name (`"Dense_0"`,
      `"block0/attn/query"`).
    """
    x, y, xe, ye = arrays
    recipe = MODELS[model_name]
    batch = recipe.batch
    steps_per_epoch = len(y) // batch
    total = epochs * steps_per_epoch
    model = recipe.build()
    params = model.init(jax.random.key(seed), jnp.zeros((1, 28, 28, 1)))["params"]
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    if warmup:
        lr = optax.warmup_cosine_decay_schedule(0.0, recipe.learning_rate, warmup, total)
    else:
        lr = optax.cosine_decay_schedule(recipe.learning_rate, total)
    kwargs = method_kwargs(method, steps_per_epoch)
    sparse = kwargs is not None
    links = [optg_jax.optg_optax(sparsity, total, lr, **kwargs)] if sparse else []
    tx = optax.chain(*links, user_optimizer(recipe, lr))
    opt_state = tx.init(params)
    xd, yd = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(p, s, order, images, labels):
        """One epoch: a scan over the batches `order` picks (the data are arguments, not
        constants baked into the compiled program); also returns the epoch's mean loss."""

        def step(carry, idx):
            p, s = carry
            masked = optg_jax.apply_masks(p, s) if sparse else p
            loss, grads = jax.value_and_grad(loss_fn)(masked, images[idx], labels[idx])
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (p, s), losses = jax.lax.scan(step, (p, s), order.reshape(steps_per_epoch, batch))
        return p, s, jnp.mean(losses)

    rng = np.random.default_rng(seed)
    for e in range(epochs):
        order = rng.permutation(len(y))[: steps_per_epoch * batch]
        params, opt_state, loss = epoch(params, opt_state, jnp.asarray(order), xd, yd)
        if progress is not None:
            progress(e + 1, loss, opt_state if sparse else None)
    final = optg_jax.apply_masks(params, opt_state) if sparse else params
    predict = jax.jit(lambda p, xb: jnp.argmax(model.apply({"params": p}, xb), -1))
    correct = sum(
        int(jnp.sum(predict(final, jnp.asarray(xe[i : i + 1000])) == jnp.asarray(ye[i : i + 1000])))
        for i in range(0, len(ye), 1000)
    )
    top1 = correct / len(ye)
    summary = optg_jax.sparsity_summary(opt_state) if sparse else {"global": 0.0, "layers": {}}
    layers = {k.rsplit("/", 1)[0]: round(v, 4) for k, v in summary["layers"].items()}
    return {"top1": 100 * top1, "sparsity": summary["global"], "layers": layers}


def table(rows: list[dict], split: str) -> list[str]:
    """Markdown: mean ± std (seeds) per method, per run length and sparsity.

    Args:
      rows: recorded runs.
      split: the eval split the rows were measured on ("test" or a validation split).

    Returns:
      The lines of one table per run length, the best sparse mean of each column in bold.
    """
    rows = [r for r in rows if r["split"] == split]
    lines = []
    for epochs in sorted({r["epochs"] for r in rows}):
        cells: dict[tuple, list[float]] = {}
        for r in rows:
            if r["epochs"] == epochs:
                cells.setdefault((r["method"], r["sparsity_target"]), []).append(r["top1"])
        sparsities = sorted({s for (m, s) in cells if m != "dense"})
        methods = sorted({m for (m, _) in cells if m != "dense"}, key=method_order)
        best = {
            s: max(statistics.fmean(v) for (m, sp), v in cells.items() if sp == s and m != "dense")
            for s in sparsities
        }
        lines += [f"{epochs} epochs, top-1 (%) on the {split} split, mean ± std (seeds):", ""]
        if ("dense", 0.0) in cells:
            lines += [f"Dense: {_fmt(cells[('dense', 0.0)])}.", ""]
        lines += ["| method | " + " | ".join(f"{100 * s:g}%" for s in sparsities) + " |"]
        lines += ["|---|" + "---:|" * len(sparsities)]
        for m in methods:
            row = [
                _fmt(cells[(m, s)], bold=statistics.fmean(cells[(m, s)]) == best[s])
                if (m, s) in cells
                else "—"
                for s in sparsities
            ]
            lines.append(f"| {LABELS.get(m, '`' + m + '`')} | " + " | ".join(row) + " |")
        lines.append("")
    return lines


def method_order(method: str) -> tuple:
    names = list(METHODS)
    return (names.index(method) if method in names else len(names), method)


def _fmt(values: list[float], bold: bool = False) -> str:
    return mean_std_cell(*cell_stats(values), bold)


def main(argv: list[str] | None = None) -> int:
    """Runs the requested grid (skipping recorded runs), then writes the tables.

    Args:
      argv: the command-line arguments (default: `sys.argv[1:]`).

    Returns:
      The exit status, 0.
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=tuple(MODELS), default="lenet")
    ap.add_argument("--idx-dir", default=IDX_DIR, help="the IDX files (--source idx)")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.98, 0.99])
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--quick", action="store_true", help="10 epochs, 99%%, seed 0")
    add_run_grid_args(ap, source="tfds")
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.sparsities, args.seeds = [10], [0.99], [0]
    for m in args.methods:
        method_kwargs(m, 1)
    section = f"{SECTION}_{args.model}" + ("_validation" if args.validation else "")
    args.out = args.out or os.path.join(args.results_dir, f"{SECTION}_{args.model}.jsonl")
    arrays = load_fashion_mnist(args.validation, args.source, args.idx_dir)
    split = f"train[-{args.validation}:]" if args.validation else "test"
    done = {
        (r["method"], r["sparsity_target"], r["epochs"], r["seed"], r["split"])
        for r in read_rows(args.out)
    }
    todo = [
        (method, 0.0 if method == "dense" else sparsity, epochs, seed)
        for epochs in args.epochs
        for seed in args.seeds
        for sparsity in args.sparsities
        for method in args.methods
    ]
    todo = list(dict.fromkeys(t for t in todo if (*t, split) not in done))
    where = provenance()  # the library as imported now, and the host
    print(f"{len(todo)} runs to train; results in {args.out}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for i, (method, sparsity, epochs, seed) in enumerate(todo, start=1):
        t0 = time.time()
        label = f"run {i}/{len(todo)} {method} {100 * sparsity:g}% {epochs} ep seed {seed}"
        progress = epoch_progress(label, epochs)
        result = train(method, sparsity, epochs, seed, arrays, args.model, progress)
        row = dict(
            method=method,
            sparsity_target=sparsity,
            epochs=epochs,
            seed=seed,
            split=split,
            time_s=round(time.time() - t0, 1),
            **where,
            **result,
        )
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"run {i}/{len(todo)} {method} {100 * sparsity:g}% {epochs} ep seed {seed}: "
            f"top-1 {result['top1']:.2f} ({row['time_s']:.0f} s)",
            flush=True,
        )
    lines = table(read_rows(args.out), split)
    print("\n".join(lines))
    title = MODELS[args.model].title or args.model
    heading_split = f", validation split ({split})" if args.validation else ""
    heading = f"## {title} in a user's optax loop (benchmarks/user_loop.py){heading_split}"
    publish_section(args.results_dir, args.benchmarks_md, section, [heading, ""] + lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

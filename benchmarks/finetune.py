"""Pruning a pretrained network while fine-tuning it on a new task, in a user's optax loop.

The transfer task, on data that installs offline (Debian's Fashion-MNIST): a network is
pretrained dense on the source task, the classes 0-4 (T-shirt, trouser, pullover, dress, coat),
then given a new classifier and fine-tuned on the target task, the classes 5-9 (sandal, shirt,
sneaker, bag, ankle boot), with `optg_optax` first in an AdamW chain: pruning starts from the
pretrained weights and ends at the target sparsity within the fine-tuning budget, the same for
every method.

Models (`MODELS`): `fmnist_cnn` (two conv layers with BatchNorm, two dense layers),
`plain_cnn` (the same layers without normalisation, biased convs and Flax's default init:
nothing makes its scores zero-sum per channel), `vit_tiny_p7` (the zoo's pre-LN `vit_tiny`, width 128, 4 blocks of 4 heads, with 7x7 patches:
16 tokens, a step 4.1x cheaper on a CPU than its 4x4 patches' 49 tokens, 0.205 against 0.84 s at
batch 128 measured side by side on 2 cores, so that 3 seeds of every method fit) and `mlp`
(LeNet-300-100, no normalisation). Pretraining
is SGD with momentum and a cosine lr; one pretrained network per seed, cached under
`runs/finetune_pretrained/` (not committed; each record names its network by `source_digest`,
see `tree_digest`). Fine-tuning is AdamW with a cosine lr after a short
warm-up, the same for every method; the classifier is re-initialised from the seed.

  python -m benchmarks.finetune --model fmnist_cnn --sparsities 0.9 0.95 0.98 --seeds 0 1 2
  python -m benchmarks.finetune --model vit_tiny_p7 --validation 10000 --methods optg taylor
  python -m benchmarks.finetune --model plain_cnn --seeds 0 1 2 3 4   # no normalisation
  python -m benchmarks.finetune --model mlp --finetune-lr 1e-4 --validation 10000  # lr 10x lower

`--finetune-lr` and `--finetune-epochs` fine-tune the same pretrained networks on another schedule,
into records and a section of their own (`finetune_<model>_lr<lr>_<epochs>ep`).

`--validation N` evaluates on the target classes among the last N training examples (and trains,
pretraining included, on the others); without it the target classes of the test split are read.
Every run appends a JSON line to `benchmarks/results/finetune_<model>.jsonl` (recorded runs are
skipped) and prints progress lines while it trains (`report.epoch_progress`), pretraining
included; the table goes to `benchmarks/results/finetune_<model>[_validation].md` and its
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import textwrap
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optg_jax
from benchmarks import user_loop
from benchmarks.report import (
    ROOT,
    add_run_grid_args,
    epoch_progress,
    group_series,
    image_line,
    plot_panels,
    provenance,
    publish_section,
    read_rows,
)
from optg_jax.train import models

SECTION = "finetune"
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
CACHE_DIR = os.path.join(ROOT, "runs", "finetune_pretrained")
FAR_BEHIND = 10.0  # Top-1 points under a column's best: the series is left out of the plot.


class Setting(NamedTuple):
    """A model and its pretraining and fine-tuning settings.

    Attributes:
      build: `() -> nn.Module` with 10 outputs.
      head: the name of the classifier module (re-initialised for the target task).
      pretrain_epochs: epochs of dense SGD (momentum 0.9, cosine lr) on the source task.
      pretrain_lr: its peak learning rate.
      finetune_epochs: epochs of AdamW on the target task, pruning included.
      finetune_lr: AdamW's peak learning rate (a tenth of the run's warm-up, then cosine).
      weight_decay: AdamW's decoupled weight decay.
      batch: the batch size of both phases.
      image_size: 28 (Fashion-MNIST's own) or 14 (2x2 means: the CNN's convolutions are slow
        on a CPU at 28x28, as in the from-scratch grid).
      pretrain_warmup_epochs: linear warm-up of the pretraining lr (half an epoch for the ViT).
    """

    build: Callable[[], nn.Module]
    head: str
    pretrain_epochs: int
    pretrain_lr: float
    finetune_epochs: int
    finetune_lr: float
    weight_decay: float
    batch: int
    image_size: int = 28
    pretrain_warmup_epochs: float = 0.0


class PlainCNN(nn.Module):
    """`fmnist_cnn`'s layers without BatchNorm: two blocks of 3x3 conv (biased), ReLU and 2x2
    max pooling (32, 64 channels), then dense 256 and the classifier `fc2`, with Flax's default
    initialisers (LeCun-normal kernels, zero biases; `fmnist_cnn`'s convs are Kaiming fan-out,
    unbiased). Float32 logits `[B, num_classes]` for NHWC input."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # nothing behaves differently in training
        for k, features in enumerate((32, 64), start=1):
            x = nn.relu(nn.Conv(features, (3, 3), name=f"conv{k}")(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(256, name="fc1")(x))
        return nn.Dense(self.num_classes, name="fc2")(x)


MODELS = {
    "fmnist_cnn": Setting(
        lambda: models.create("fmnist_cnn", 10), "fc2", 4, 0.05, 2, 1e-3, 1e-4, 128, 14
    ),
    "plain_cnn": Setting(PlainCNN, "fc2", 4, 0.05, 2, 1e-3, 1e-4, 128, 14),
    "vit_tiny_p7": Setting(
        lambda: models.create("vit_tiny", 10, patch=7),
        "head",
        4,
        0.05,
        2,
        5e-4,
        1e-4,
        128,
        pretrain_warmup_epochs=0.5,
    ),
    "mlp": Setting(user_loop.LeNet300100, "Dense_2", 8, 0.1, 2, 1e-3, 1e-4, 128),
}


def task_split(arrays, classes: tuple[int, ...], image_size: int = 28):
    """The examples of `classes` in `user_loop.load_fashion_mnist`'s (train, eval) arrays.

    Args:
      arrays: `(x, y, x_eval, y_eval)`, images `[N, 28, 28, 1]`.
      classes: the labels to keep (labels are not renumbered).
      image_size: 28, or 14 for 2x2 means.

    Returns:
      `(x, y, x_eval, y_eval)` of those classes.
    """
    x, y, xe, ye = arrays
    keep, keep_eval = np.isin(y, classes), np.isin(ye, classes)
    x, xe = x[keep], xe[keep_eval]
    if image_size == 14:
        x, xe = (a.reshape(-1, 14, 2, 14, 2, 1).mean(axis=(2, 4)) for a in (x, xe))
    return x, y[keep], xe, ye[keep_eval]


class Loop:
    """The jitted pieces of one model's loop: a training step and the evaluation.

    The epoch is a Python loop over the jitted step: on XLA's CPU backend a `lax.scan` over the
    same step ran the convnet 4.7x slower (0.78 against 0.17 s a step, fmnist_cnn at batch 128).

    Args:
      model: the Flax module (`train=` argument; BatchNorm statistics in `batch_stats`).
      tx: the optax chain (with an OptG link first when `sparse`).
      sparse: whether the chain holds an `optg_optax` state (the forward pass uses `W * M`).
      batch: the batch size.
    """

    def __init__(self, model: nn.Module, tx: optax.GradientTransformation, sparse: bool, batch):
        self.model, self.tx, self.sparse, self.batch = model, tx, sparse, batch
        self.step = jax.jit(self._step)
        self.predict = jax.jit(self._predict)

    def _loss(self, params, batch_stats, images, labels):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        if batch_stats:
            logits, new = self.model.apply(variables, images, train=True, mutable=["batch_stats"])
            batch_stats = new["batch_stats"]
        else:
            logits = self.model.apply(variables, images, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, batch_stats

    def _step(self, params, batch_stats, opt_state, idx, images, labels):
        """One update on the examples `idx` (`[batch]` int) of the device arrays; also returns
        the batch's loss."""
        masked = optg_jax.apply_masks(params, opt_state) if self.sparse else params
        (loss, batch_stats), grads = jax.value_and_grad(self._loss, has_aux=True)(
            masked, batch_stats, images[idx], labels[idx]
        )
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    def _predict(self, params, batch_stats, images):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        return jnp.argmax(self.model.apply(variables, images, train=False), -1)

    def train(
        self,
        params,
        batch_stats,
        opt_state,
        x,
        y,
        epochs: int,
        seed: int,
        progress: Callable[..., None] | None = None,
    ):
        """`epochs` passes over (x, y) in a seeded order; returns the three states.

        `progress`, if given, is called after each epoch as `progress(epoch, mean training
        loss, opt_state if the loop is sparse else None)` (`report.epoch_progress`).
        """
        rng = np.random.default_rng(seed)
        xd, yd = jnp.asarray(x), jnp.asarray(y)
        steps = len(y) // self.batch
        for e in range(epochs):
            order = rng.permutation(len(y))[: steps * self.batch].reshape(steps, self.batch)
            losses = []
            for idx in order:
                params, batch_stats, opt_state, loss = self.step(
                    params, batch_stats, opt_state, jnp.asarray(idx), xd, yd
                )
                losses.append(loss)
            if progress is not None:
                mean_loss = jnp.mean(jnp.stack(losses))
                progress(e + 1, mean_loss, opt_state if self.sparse else None)
        return params, batch_stats, opt_state

    def top1(self, params, batch_stats, x, y) -> float:
        """Top-1 accuracy (%) on (x, y)."""
        correct = 0
        for i in range(0, len(y), 1000):
            pred = self.predict(params, batch_stats, jnp.asarray(x[i : i + 1000]))
            correct += int(jnp.sum(pred == jnp.asarray(y[i : i + 1000])))
        return 100.0 * correct / len(y)


def init_variables(model: nn.Module, seed: int, image_size: int) -> tuple[Any, Any]:
    """`(params, batch_stats)` of a fresh init from `seed` (`{}` without BatchNorm)."""
    variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 1)))
    return variables["params"], variables.get("batch_stats", {})


def cosine_lr(peak: float, total: int, warmup: int) -> optax.Schedule:
    """A cosine decay to 0 over `total` steps from `peak`, after `warmup` linear steps."""
    if warmup:
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total)
    return optax.cosine_decay_schedule(peak, total)


def pretrained(model_name: str, seed: int, arrays, validation: int) -> tuple[Any, Any, float]:
    """The dense network pretrained on the source classes (cached per model, seed and split).

    Args:
      model_name: a key of `MODELS`.
      seed: seeds the init and the data order.
      arrays: `user_loop.load_fashion_mnist`'s arrays (with the same `validation`).
      validation: the held-out count the arrays were loaded with (part of the cache key).

    Returns:
      `(params, batch_stats, source top-1 %)`, the accuracy on the source classes of the eval
      split.
    """
    setting = MODELS[model_name]
    path = os.path.join(CACHE_DIR, f"{model_name}_seed{seed}_val{validation}.npz")
    model = setting.build()
    params, batch_stats = init_variables(model, seed, setting.image_size)
    fresh = jax.tree.leaves((params, batch_stats))
    if os.path.exists(path):
        with np.load(path) as f:
            leaves = [jnp.asarray(f[f"leaf{i}"]) for i in range(len(f.files) - 1)]
            top1 = float(f["top1"])
        # A cache of another architecture under the same name (e.g. an edited Setting) is
        # retrained, never loaded into the wrong shapes.
        if [a.shape for a in leaves] == [a.shape for a in fresh]:
            treedef = jax.tree.structure((params, batch_stats))
            params, batch_stats = jax.tree.unflatten(treedef, leaves)
            return params, batch_stats, top1
    x, y, xe, ye = task_split(arrays, SOURCE_CLASSES, setting.image_size)
    steps = setting.pretrain_epochs * (len(y) // setting.batch)
    warmup = int(setting.pretrain_warmup_epochs * (len(y) // setting.batch))
    lr = cosine_lr(setting.pretrain_lr, steps, warmup)
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(lr, 0.9))
    loop = Loop(model, tx, False, setting.batch)
    epochs = setting.pretrain_epochs
    progress = epoch_progress(f"pretraining {model_name} (seed {seed}) dense", epochs)
    params, batch_stats, _ = loop.train(
        params, batch_stats, tx.init(params), x, y, epochs, seed, progress
    )
    top1 = loop.top1(params, batch_stats, xe, ye)
    os.makedirs(CACHE_DIR, exist_ok=True)
    leaves = {
        f"leaf{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves((params, batch_stats)))
    }
    np.savez(path, top1=top1, **leaves)
    return params, batch_stats, top1


def tree_digest(tree: Any) -> str:
    """The first 8 hex digits of the SHA-1 of a pytree's leaves (dtype, shape and bytes, in leaf
    order): which pretrained network a fine-tuning record started from. The cache is not
    committed, and a network pretrained again on another host differs (`BENCHMARKS.md`,
    *Reruns*), so two records are comparable bit for bit only with the same digest."""
    digest = hashlib.sha1()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()[:8]


class Task(NamedTuple):
    """One seed's fine-tuning task: the pretrained network with its new head, data and schedule.

    Attributes:
      setting: the model's `Setting` with the run's `overrides`.
      model: the Flax module.
      params: the pretrained params, the `setting.head` re-initialised from the seed.
      batch_stats: the pretrained BatchNorm statistics (empty without BatchNorm).
      data: `(x, y, eval x, eval y)` of the target classes (`task_split`).
      total_steps: fine-tuning updates, `finetune_epochs * (len(y) // batch)`.
      lr: AdamW's schedule (`cosine_lr`: a tenth of the run's warm-up).
      source_top1: the pretrained network's top-1 (%) on the source classes.
      source_digest: `tree_digest` of the pretrained network.
    """

    setting: Setting
    model: nn.Module
    params: Any
    batch_stats: Any
    data: tuple
    total_steps: int
    lr: optax.Schedule
    source_top1: float
    source_digest: str


def finetune_task(
    model_name: str, seed: int, arrays, validation: int, overrides: dict | None = None
) -> Task:
    """The fine-tuning task of a model and seed (its pretrained network cached, `pretrained`).

    Args:
      model_name: a key of `MODELS`.
      seed: seeds the pretrained network, the new head and the data order.
      arrays: `user_loop.load_fashion_mnist(validation)`'s arrays.
      validation: the held-out count of `arrays`.
      overrides: fine-tuning fields of the model's `Setting` to replace (`FINE_TUNING_FIELDS`).

    Returns:
      The `Task`.
    """
    setting = MODELS[model_name]._replace(**(overrides or {}))
    params, batch_stats, source_top1 = pretrained(model_name, seed, arrays, validation)
    source_digest = tree_digest((params, batch_stats))
    model = setting.build()
    fresh, _ = init_variables(model, seed + 1000, setting.image_size)
    params = {**params, setting.head: fresh[setting.head]}
    data = task_split(arrays, TARGET_CLASSES, setting.image_size)
    total = setting.finetune_epochs * (len(data[1]) // setting.batch)
    lr = cosine_lr(setting.finetune_lr, total, total // 10)
    return Task(setting, model, params, batch_stats, data, total, lr, source_top1, source_digest)


def train_task(
    task: Task,
    link: optax.GradientTransformation | None,
    seed: int,
    progress: Callable[..., None] | None = None,
) -> tuple[Loop, Any, Any, Any]:
    """Fine-tunes a task: AdamW on its schedule, after `link` (an OptG transformation) if given.

    Args:
      task: the `Task` (`finetune_task`).
      link: the transformation first in the chain (the forward pass then uses `W * M`), or None
        for dense fine-tuning.
      seed: seeds the data order.
      progress: called after each epoch (`Loop.train`); None: silent.

    Returns:
      `(loop, params, batch_stats, optimizer state)` after `finetune_epochs` epochs.
    """
    links = [] if link is None else [link]
    tx = optax.chain(*links, optax.adamw(task.lr, weight_decay=task.setting.weight_decay))
    loop = Loop(task.model, tx, link is not None, task.setting.batch)
    x, y = task.data[:2]
    params, batch_stats, opt_state = loop.train(
        task.params,
        task.batch_stats,
        tx.init(task.params),
        x,
        y,
        task.setting.finetune_epochs,
        seed,
        progress,
    )
    return loop, params, batch_stats, opt_state


def finetune(
    model_name: str,
    kwargs: dict | None,
    sparsity: float,
    seed: int,
    arrays,
    validation: int,
    progress: Callable[..., None] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One pruning fine-tune run from the seed's pretrained network.

    Args:
      model_name: a key of `MODELS`.
      kwargs: `optg_optax` keyword arguments after `target_sparsity`, `total_steps` and
        `learning_rate` (`user_loop.method_kwargs`), or None for dense fine-tuning.
      sparsity: the target sparsity.
      seed: seeds the pretrained network, the new head and the data order.
      arrays: `user_loop.load_fashion_mnist(validation)`'s arrays.
      validation: the held-out count of `arrays`.
      progress: called after each fine-tuning epoch (`Loop.train`); None: silent.
      overrides: fine-tuning fields of the model's `Setting` to replace (`finetune_lr`,
        `finetune_epochs`); the pretrained network is the same either way.

    Returns:
      `{'top1', 'source_top1', 'source_digest', 'sparsity', 'layers'}` (percent; removed
      fractions; `tree_digest` of the pretrained network).
    """
    task = finetune_task(model_name, seed, arrays, validation, overrides)
    sparse = kwargs is not None
    link = optg_jax.optg_optax(sparsity, task.total_steps, task.lr, **kwargs) if sparse else None
    loop, params, batch_stats, opt_state = train_task(task, link, seed, progress)
    xe, ye = task.data[2:]
    final = optg_jax.apply_masks(params, opt_state) if sparse else params
    summary = optg_jax.sparsity_summary(opt_state) if sparse else {"global": 0.0, "layers": {}}
    return {
        "top1": loop.top1(final, batch_stats, xe, ye),
        "source_top1": task.source_top1,
        "source_digest": task.source_digest,
        "sparsity": summary["global"],
        "layers": {k.rsplit("/", 1)[0]: round(v, 4) for k, v in summary["layers"].items()},
    }


FINE_TUNING_FIELDS = ("finetune_lr", "finetune_epochs")


def variant_suffix(setting: Setting, base: Setting) -> str:
    """The records' and section's name suffix of a fine-tuning schedule other than the model's:
    `""` for its own, else `_lr<lr>` and/or `_<epochs>ep` for the fields that differ."""
    suffix = f"_lr{setting.finetune_lr:g}" if setting.finetune_lr != base.finetune_lr else ""
    if setting.finetune_epochs != base.finetune_epochs:
        suffix += f"_{setting.finetune_epochs}ep"
    return suffix


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` above 0, else a usage error naming the value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__} above 0")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    """Runs the requested grid (skipping recorded runs), then writes the tables.

    Args:
      argv: the command-line arguments (default: `sys.argv[1:]`).

    Returns:
      The exit status, 0.
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=tuple(MODELS), default="fmnist_cnn")
    ap.add_argument("--methods", nargs="+", default=["dense", "magnitude", "taylor", "optg"])
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    ap.add_argument(
        "--finetune-lr",
        type=_positive(float),
        help="AdamW's peak learning rate (default: the model's); another goes to its own records",
    )
    ap.add_argument(
        "--finetune-epochs",
        type=_positive(int),
        help="fine-tuning epochs (default: the model's); others go to their own records",
    )
    add_run_grid_args(ap, source="idx")
    args = ap.parse_args(argv)
    for m in args.methods:
        user_loop.method_kwargs(m, 1)
    overrides = {k: v for k in FINE_TUNING_FIELDS if (v := getattr(args, k)) is not None}
    setting = MODELS[args.model]._replace(**overrides)
    name = f"{SECTION}_{args.model}{variant_suffix(setting, MODELS[args.model])}"
    section = name + ("_validation" if args.validation else "")
    out = args.out or os.path.join(args.results_dir, f"{name}.jsonl")
    arrays = user_loop.load_fashion_mnist(args.validation, args.source)
    split = f"train[-{args.validation}:]" if args.validation else "test"
    epochs = setting.finetune_epochs
    base_lr = MODELS[args.model].finetune_lr  # records made before the field was written
    done = {
        (r["method"], r["sparsity_target"], r["seed"], r["split"])
        for r in read_rows(out)
        if (r["epochs"], r.get("finetune_lr", base_lr)) == (epochs, setting.finetune_lr)
    }
    todo = [
        (method, 0.0 if method == "dense" else sparsity, seed)
        for seed in args.seeds
        for sparsity in args.sparsities
        for method in args.methods
    ]
    todo = list(dict.fromkeys(t for t in todo if (*t, split) not in done))
    where = provenance()  # the library as imported now, and the host
    print(f"{len(todo)} runs to train; results in {out}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    per_epoch = len(task_split(arrays, TARGET_CLASSES)[1]) // setting.batch  # `every=epoch`
    for i, (method, sparsity, seed) in enumerate(todo, start=1):
        t0 = time.time()
        kwargs = user_loop.method_kwargs(method, per_epoch)
        label = f"run {i}/{len(todo)} {method} {100 * sparsity:g}% seed {seed}"
        progress = epoch_progress(label, epochs)
        result = finetune(
            args.model, kwargs, sparsity, seed, arrays, args.validation, progress, overrides
        )
        row = dict(
            method=method,
            sparsity_target=sparsity,
            epochs=epochs,
            finetune_lr=setting.finetune_lr,
            seed=seed,
            split=split,
            time_s=round(time.time() - t0, 1),
            **where,
            **result,
        )
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"run {i}/{len(todo)} {method} {100 * sparsity:g}% seed {seed}: "
            f"top-1 {result['top1']:.2f} (source {result['source_top1']:.2f}; "
            f"{row['time_s']:.0f} s)",
            flush=True,
        )
    rows = read_rows(out)
    lines = user_loop.table(rows, split)
    print("\n".join(lines))
    schedule = f" for {epochs} epochs at AdamW lr {setting.finetune_lr:g}" if overrides else ""
    title = (
        f"Pruning a pretrained {args.model} while fine-tuning it{schedule} (benchmarks/finetune.py)"
    )
    heading = f"## {title}" + (f", validation split ({split})" if args.validation else "")
    blocks = [heading, ""] + lines
    if not args.validation and plot(rows, args.model, os.path.join(args.results_dir, section)):
        blocks += [image_line(args.results_dir, args.benchmarks_md, f"{section}.png", title), ""]
    publish_section(args.results_dir, args.benchmarks_md, section, blocks)
    return 0


def plot(rows: list[dict], model_name: str, stem: str) -> bool:
    """Top-1 against sparsity per method (test split, error bars one std) to `<stem>.png`.

    Returns:
      Whether there was anything to plot (sparse test rows).
    """
    rows = [r for r in rows if r["split"] == "test" and r["method"] != "dense"]
    sparsities = sorted({r["sparsity_target"] for r in rows})
    series = group_series(
        sorted(rows, key=lambda r: user_loop.method_order(r["method"])),
        label=lambda r: user_loop.LABELS.get(r["method"], r["method"]).split(" (")[0],
        tick=lambda r: sparsities.index(r["sparsity_target"]),
    )
    if not series:
        return False
    # A series more than `FAR_BEHIND` points under the best mean of a column would squash the
    # others into a line: it is left out of the plot (the table keeps it).
    means = {k: {x: statistics.fmean(v) for x, v in pts.items()} for k, pts in series.items()}
    best = {x: max(m[x] for m in means.values() if x in m) for x in range(len(sparsities))}
    shown = {
        k: pts for k, pts in series.items() if all(means[k][x] >= best[x] - FAR_BEHIND for x in pts)
    }
    title = f"{model_name}, pretrained then pruned"
    if len(shown) < len(series):
        left_out = ", ".join(k.replace("`", "") for k in series if k not in shown)
        title += "\n" + textwrap.fill(
            f"not shown, over {FAR_BEHIND:g} points behind: {left_out}", 60
        )
    ticks = [f"{100 * s:g}%" for s in sparsities]
    plot_panels(stem + ".png", [(title, ticks, shown)])
    return True


if __name__ == "__main__":
    raise SystemExit(main())

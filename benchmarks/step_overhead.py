"""What OptG costs per train step, and how fast the exact global threshold is.

Builds, in one process, the dense train step and the sparse train steps (optg, magnitude, taylor)
of the training program (`optg_jax.train.steps.train_step`) for the same model and batch, warms them
up, then times them interleaved (round-robin, one step of each per round) so that machine noise
hits every variant alike, and prints median step-time ratios sparse/dense for ordinary steps and for
mask-refresh steps, also under a 2:4 pattern. Also: compile count after refresh steps (must stay 1), bytes of OptG state per
masked weight, the compiled step's memory analysis (donated buffers, temporaries against the size of
the params), and the exact global threshold over ResNet-50's 25.6M kernel weights.

  .venv/bin/python -m benchmarks.step_overhead            # CPU: ResNet-20 and the Fashion-MNIST net
  .venv/bin/python -m benchmarks.step_overhead --resnet50 # adds ResNet-50 at 224 (accelerators)

Prints the tables and writes them to benchmarks/results/step_overhead.md and to the
`step_overhead` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import optg_jax
from benchmarks.report import BENCHMARKS_MD, RESULTS_DIR, update_section
from optg_jax import topk
from optg_jax.train import config as config_lib
from optg_jax.train import models, steps

OUT = os.path.join(RESULTS_DIR, "step_overhead.md")


def build_step(
    model_name,
    image_shape,
    num_classes,
    batch,
    criterion,
    dtype="float32",
    mask_update_every=10**6,
    total_steps=10**7,
    pattern=None,
):
    """The training program's train step for one benchmark variant (`pattern`: an N:M pattern,
    the sparsity then 1 - N/M as train.py takes it).

    Returns:
      (`steps.jit_train_step`, donating its state argument; the initial `TrainState`).
    """
    config = config_lib.base_config()
    config.model, config.criterion, config.dtype = model_name, criterion, dtype
    config.sparsity = 0.0 if criterion == "dense" else 0.9
    config.schedule = "constant"  # sparse from the first step: the masks really cut weights
    config.mask_update_every = mask_update_every
    config.pattern = pattern
    config_lib.pattern_sparsity(config, sparsity_given=False)
    config.label_smoothing = 0.0
    model = models.create(model_name, num_classes, dtype=jnp.dtype(dtype))
    sparse = not config_lib.is_dense(config)
    lr = steps.learning_rate_schedule(config, total_steps, 1000)
    tx = steps.make_optimizer(config, total_steps, 1000, lr, sparse=sparse)
    state = steps.create_train_state(jax.random.key(0), model, tx, image_shape)
    return steps.jit_train_step(model, tx, num_classes, sparse=sparse), state


def time_interleaved(steps: dict, states: dict, batch, rounds: int, warmup: int = 3):
    """Median seconds per step of each variant, timed round-robin."""
    for name, fn in steps.items():
        for _ in range(warmup):
            states[name], m = fn(states[name], batch)
        jax.block_until_ready(m)
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            states[name], m = fn(states[name], batch)
            jax.block_until_ready((states[name], m))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, states


def optg_state_bytes(state) -> tuple[int, int]:
    """(bytes of the per-weight OptG state: every array field of `OptGState` (scores, momentum,
    the uncertainty bonus's score noise when kept, masks), not its scalars; number of masked
    weights)."""
    s = optg_jax.get_optg_state(state.opt_state)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(s) if x.ndim > 0)
    return nbytes, sum(m.size for m in jax.tree.leaves(s.masks))


def memory_row(fn, state, batch) -> dict:
    compiled = fn.lower(state, batch).compile()
    mem = compiled.memory_analysis()
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(state.params))
    return {
        "param_MB": param_bytes / 2**20,
        "argument_MB": mem.argument_size_in_bytes / 2**20,
        "alias_MB": mem.alias_size_in_bytes / 2**20,
        "temp_MB": mem.temp_size_in_bytes / 2**20,
        "output_MB": mem.output_size_in_bytes / 2**20,
    }


def bench_model(model_name, image_shape, num_classes, batch_size, rounds, lines):
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(batch_size, *image_shape)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32),
    }
    variants = {
        "dense": dict(criterion="dense"),
        "optg": dict(criterion="optg"),
        "magnitude": dict(criterion="magnitude"),
        "taylor": dict(criterion="taylor"),
        "optg refresh": dict(criterion="optg", mask_update_every=1),
        "optg 2:4": dict(criterion="optg", pattern="2:4"),
        "optg 2:4 refresh": dict(criterion="optg", pattern="2:4", mask_update_every=1),
        "dense bf16": dict(criterion="dense", dtype="bfloat16"),
        "optg bf16": dict(criterion="optg", dtype="bfloat16"),
    }
    steps, states = {}, {}
    for name, kw in variants.items():
        steps[name], states[name] = build_step(
            model_name, image_shape, num_classes, batch_size, **kw
        )
    mem = memory_row(steps["optg"], states["optg"], batch)
    med, states = time_interleaved(steps, states, batch, rounds)
    nbytes, n_masked = optg_state_bytes(states["optg"])
    refresh_compiles = steps["optg refresh"]._cache_size()
    lines.append(
        f"\n### {model_name}, batch {batch_size}, input {image_shape}, "
        f"{jax.devices()[0].device_kind}, {rounds} interleaved rounds\n"
    )
    lines.append("| variant | median step (ms) | ratio to dense (same dtype) |")
    lines.append("|---|---:|---:|")
    for name, t in med.items():
        base = med["dense bf16"] if "bf16" in name else med["dense"]
        lines.append(f"| {name} | {t * 1e3:.2f} | {t / base:.3f} |")
    lines.append("")
    lines.append(
        f"- compiled versions of the refresh-every-step function after "
        f"{rounds + 3} steps: {refresh_compiles} (no recompilation)"
    )
    lines.append(
        f"- OptG state: {nbytes / n_masked:.2f} bytes per masked weight "
        f"({n_masked:,} masked weights)"
    )
    lines.append(
        f"- compiled optg step: params {mem['param_MB']:.2f} MB, arguments "
        f"{mem['argument_MB']:.2f} MB of which donated/aliased {mem['alias_MB']:.2f} MB, "
        f"temporaries {mem['temp_MB']:.2f} MB"
    )
    return med


def threshold_timings(shapes, k: int, repeats: int = 5, seed: int = 1) -> dict:
    """Times the exact global top-k over random normal float32 scores of the given shapes.

    The scores live on the default device; each timing is the median of `repeats` calls after
    one untimed call (which compiles), blocking on the result.

    Args:
      shapes: the score arrays' shapes (one per masked leaf), ranked together.
      k: how many scores to keep in all.
      repeats: timed calls per operation.
      seed: the scores' PRNG seed.

    Returns:
      `{'threshold_s', 'masks_s'}`: median seconds of `topk.kth_largest_key` and of
      `topk.topk_masks` (threshold plus deterministic ties); `'num_scores'`, `'kept'` (entries the
      masks keep) and `'exact'` (kept == k and the smallest kept score is NumPy's k-th largest).
    """

    def normal_scores(key):
        keys = jax.random.split(key, len(shapes))
        return [jax.random.normal(k, shape, jnp.float32) for k, shape in zip(keys, shapes)]

    # The "rbg" generator compiles in a second where threefry takes several on a CPU.
    scores = jax.jit(normal_scores)(jax.random.key(seed, impl="rbg"))
    threshold_fn = jax.jit(lambda s: topk.kth_largest_key(s, k))
    masks_fn = jax.jit(lambda s: topk.topk_masks(s, k))
    results = {}
    for name, fn in (("threshold_s", threshold_fn), ("masks_s", masks_fn)):
        jax.block_until_ready(fn(scores))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(scores))
            times.append(time.perf_counter() - t0)
        results[name] = statistics.median(times)
    host_scores = [np.asarray(s) for s in scores]
    host_masks = [np.asarray(m) for m in masks_fn(scores)]
    flat = np.concatenate([s.ravel() for s in host_scores])
    want = np.partition(flat, flat.size - k)[flat.size - k]
    kept = sum(int(m.sum()) for m in host_masks)
    min_kept = min(float(s[m == 1].min()) for s, m in zip(host_scores, host_masks) if m.any())
    results.update(num_scores=int(flat.size), kept=kept, exact=kept == k and min_kept == want)
    return results


def bench_threshold(lines, repeats=5):
    """Exact global top-k mask over ResNet-50's kernels at 90% sparsity."""
    model = models.create("resnet50", 1000)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
    )["params"]
    leaves = [s.shape for s in jax.tree.leaves(shapes) if len(s.shape) >= 2]
    n = sum(math.prod(s) for s in leaves)
    k = int(n * 0.1)
    results = threshold_timings(leaves, k, repeats)
    lines.append(
        f"\n### Exact global threshold, ResNet-50 kernels ({n:,} scores, "
        f"{len(leaves)} leaves), keep {k:,}\n"
    )
    lines.append("| operation | median (s) |")
    lines.append("|---|---:|")
    lines.append(f"| threshold (k-th largest) | {results['threshold_s']:.3f} |")
    lines.append(f"| masks (threshold + ties) | {results['masks_s']:.3f} |")
    lines.append("")
    lines.append(
        f"- kept {results['kept']:,}; exactly k, and the smallest kept score equals "
        f"NumPy's k-th largest: {results['exact']}"
    )
    return results


def previous_threshold_section() -> str:
    """The threshold table of the last full run (`OUT`), kept when `--skip-threshold`."""
    marker = "\n### Exact global threshold"
    text = open(OUT).read() if os.path.exists(OUT) else ""
    if marker not in text:
        return ""
    return text[text.index(marker) :].rstrip("\n") + " (from an earlier run)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--resnet50", action="store_true", help="add ResNet-50 at 224x224")
    parser.add_argument("--skip-threshold", action="store_true")
    args = parser.parse_args()
    lines = [
        "## Step overhead of OptG (benchmarks/step_overhead.py)",
        "",
        f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPU cores",
    ]
    bench_model("resnet20", (32, 32, 3), 10, 128, args.rounds, lines)
    bench_model("fmnist_cnn", (28, 28, 1), 10, 128, args.rounds, lines)
    if args.resnet50:
        bench_model("resnet50", (224, 224, 3), 1000, 128, args.rounds, lines)
    if not args.skip_threshold:
        bench_threshold(lines)
    else:
        lines.append(previous_threshold_section())
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)
    update_section(BENCHMARKS_MD, "step_overhead", text)
    print(f"written to {OUT} and {BENCHMARKS_MD}")


if __name__ == "__main__":
    main()

"""How long the step loop waits for a checkpoint: synchronous against asynchronous orbax saves.

Builds the train state of a sparse ResNet-50 run (`configs/resnet50_imagenet.py`: params, batch
statistics, SGD momentum, OptG scores, masks and score momentum; about 0.5 GB) filled with random
values, then runs a loop of steps that rewrite every leaf (a donated jitted update, standing in
for the train step) and saves every `--every` steps through `optg_jax.train.checkpoints`, once
with synchronous saves and once with asynchronous ones, on a fresh directory each. It times what
the loop spends inside `checkpoints.save` (the stall every accelerator waits out), the loop's
wall time against the same loop without saves, and the wait for the last save at the end (which
a preemption and the end of a run pay).

  .venv/bin/python -m benchmarks.checkpoint_save            # ResNet-50, a few minutes on a CPU
  .venv/bin/python -m benchmarks.checkpoint_save --tiny     # a small state, seconds (the tests)

Prints the table and writes it to benchmarks/results/checkpoint_save.md and to the
`checkpoint_save` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import BENCHMARKS_MD, RESULTS_DIR, cpu_name, update_section
from optg_jax.train import checkpoints, models, steps
from optg_jax.train import config as config_lib

OUT = os.path.join(RESULTS_DIR, "checkpoint_save.md")


def resnet50_state(model_name: str = "resnet50", image_size: int = 224):
    """A sparse run's train state of `model_name` (ImageNet config), random floats.

    Returns:
      `(state, bytes)`: the `steps.TrainState` on the default device and its size in bytes.
    """
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "resnet50_imagenet.py")
    spec = importlib.util.spec_from_file_location("r50", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model = model_name
    num_steps, steps_per_epoch = 1000, 100
    schedule = steps.learning_rate_schedule(config, num_steps, steps_per_epoch)
    sparse = not config_lib.is_dense(config)
    tx = steps.make_optimizer(config, num_steps, steps_per_epoch, schedule, sparse=sparse)
    model = models.create(model_name, num_classes=1000)
    shape = (image_size, image_size, 3)
    abstract = jax.eval_shape(
        lambda k: steps.create_train_state(k, model, tx, shape), jax.random.key(0)
    )

    # Drawn on the host, leaf by leaf: one jitted draw of every leaf takes minutes to compile.
    rng = np.random.default_rng(0)

    def fill(s):
        if jnp.issubdtype(s.dtype, jnp.floating):
            return jnp.asarray(rng.standard_normal(s.shape, np.float32).astype(s.dtype))
        return jnp.zeros(s.shape, s.dtype)

    state = jax.tree.map(fill, abstract)
    size = sum(x.nbytes for x in jax.tree.leaves(state))
    return state, size


def tiny_state():
    """A few small arrays in the train state's form, for the tests: `(state, bytes)`."""
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 16)), jnp.float32)}}
    state = steps.TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        batch_stats={"bn": {"mean": jnp.zeros(16)}},
        opt_state={"momentum": jax.tree.map(jnp.zeros_like, params)},
    )
    return state, sum(x.nbytes for x in jax.tree.leaves(state))


@jax.jit
def _touch(state):
    """Every float leaf moved a little, every integer leaf incremented: a step's writes."""

    def move(x):
        if jnp.issubdtype(x.dtype, jnp.floating):
            return x * 0.999 + 0.001
        return x + 1 if jnp.issubdtype(x.dtype, jnp.integer) else x

    return jax.tree.map(move, state)


def run_loop(state, workdir: str | None, num_steps: int, every: int, asynchronous: bool) -> dict:
    """`num_steps` steps, saving every `every` steps into `workdir` (None: no saves).

    Returns:
      {'state', 'loop_s' (the loop's wall time, saves included), 'save_s' (each save's time
      inside `checkpoints.save`), 'overlapped' (per save: whether it found the previous one still
      being written, and so waited for it), 'final_wait_s' (the wait for the last save after the
      loop)}.
    """
    step_fn = jax.jit(_touch, donate_argnums=0)
    state = step_fn(state)  # Compiled outside the timing.
    jax.block_until_ready(state)
    mngr = checkpoints.manager(workdir, keep=2, asynchronous=asynchronous) if workdir else None
    saves, overlapped = [], []
    start = time.perf_counter()
    for step in range(1, num_steps + 1):
        state = step_fn(state)
        if mngr is not None and step % every == 0:
            # orbax waits for a save still being written before it starts the next one.
            overlapped.append(bool(mngr.is_saving_in_progress()))
            t = time.perf_counter()
            checkpoints.save(mngr, step, state)
            saves.append(time.perf_counter() - t)
    jax.block_until_ready(state)
    loop = time.perf_counter() - start
    t = time.perf_counter()
    if mngr is not None:
        mngr.wait_until_finished()
        mngr.close()
    return {
        "state": state,
        "loop_s": loop,
        "save_s": saves,
        "overlapped": overlapped,
        "final_wait_s": time.perf_counter() - t,
    }


def measure(state, num_steps: int, every: int) -> dict:
    """The loop without saves, with synchronous saves and with asynchronous ones.

    Returns:
      {'none' | 'sync' | 'async': `run_loop`'s figures without the state}; the saved checkpoints
      are checked to hold the state of their step.
    """
    out = {}
    for mode in ("none", "sync", "async"):
        with tempfile.TemporaryDirectory(prefix="checkpoint_save_") as tmp:
            workdir = None if mode == "none" else os.path.join(tmp, "w")
            result = run_loop(state, workdir, num_steps, every, mode == "async")
            state = result.pop("state")
            if workdir is not None:
                saved = checkpoints.checkpoint_steps_on_disk(workdir)
                expected = [s for s in range(every, num_steps + 1, every)][-2:]
                if saved != expected:
                    raise RuntimeError(f"{mode}: checkpoints {saved}, expected {expected}")
            out[mode] = result
    return out


def render(results: dict, settings: dict) -> str:
    """The Markdown section: the table and what it means."""
    base = results["none"]["loop_s"]
    lines = [
        "## Checkpoint saves (benchmarks/checkpoint_save.py)",
        "",
        f"The train state of a sparse {settings['model']} run ({settings['bytes'] / 1e6:,.0f} MB: "
        "params, batch statistics, SGD momentum, OptG scores, masks, score momentum), "
        f"{settings['num_steps']} steps that rewrite every leaf, a save every {settings['every']} "
        f"steps to local disk through `optg_jax.train.checkpoints`, on {settings['device']} "
        f"({settings['cpu']}; load average {settings['load']:.1f} when it started).",
        "",
        "| saves | in `save`, none in flight | in `save`, all (median) | step loop, saves "
        "included | over the loop without saves | wait for the last save at the end |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, name in (("sync", "synchronous"), ("async", "asynchronous (default)")):
        r = results[mode]
        alone = [t for t, o in zip(r["save_s"], r["overlapped"]) if not o]
        lines.append(
            f"| {name} | {statistics.median(alone):.2f} s | "
            f"{statistics.median(r['save_s']):.2f} s | {r['loop_s']:.2f} s | "
            f"{r['loop_s'] - base:+.2f} s | {r['final_wait_s']:.2f} s |"
        )
    sync = statistics.median(results["sync"]["save_s"])
    r = results["async"]
    asynchronous = statistics.median([t for t, o in zip(r["save_s"], r["overlapped"]) if not o])
    lines += [
        "",
        f"The loop without saves took {base:.2f} s. An asynchronous save holds the loop for "
        f"{asynchronous:.2f} s (orbax's blocking phase: the copy of the state off the devices, the checkpoint's directory and metadata) where a synchronous one "
        f"holds it {sync:.2f} s ({sync / max(asynchronous, 1e-9):.1f}x; "
        f"{sum(r['overlapped'])} of {len(r['save_s'])} asynchronous saves found the previous one "
        "still being written and waited for it: saves closer together than a write takes stall "
        "as long as synchronous ones). The files are written "
        "by a background thread while the steps go on, and a preemption or the end of the run "
        "waits for the last one. On a CPU the background writes share the cores with the steps, "
        "so the loop's total gains less than the time in `save`; on an accelerator the steps "
        "run on the device.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a small state (seconds)")
    # Saves far enough apart for a write to finish between them (as every 5,000 steps do).
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--out", default=OUT, help="results file (Markdown)")
    parser.add_argument("--benchmarks-md", default=BENCHMARKS_MD)
    args = parser.parse_args(argv)
    state, size = tiny_state() if args.tiny else resnet50_state()
    results = measure(state, args.steps, args.every)
    settings = dict(
        model="tiny" if args.tiny else "ResNet-50",
        bytes=size,
        num_steps=args.steps,
        every=args.every,
        device=str(jax.devices()[0].device_kind),
        cpu=cpu_name(),
        load=os.getloadavg()[0],
    )
    text = render(results, settings)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    update_section(args.benchmarks_md, "checkpoint_save", text)


if __name__ == "__main__":
    main()

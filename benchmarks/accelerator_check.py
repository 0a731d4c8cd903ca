"""One command for whoever first has an accelerator: ResNet-50's speed, OptG's cost, a real run.

On whatever devices JAX sees (one process), it builds the training program's own train step
(`optg_jax.train.steps.train_step`, jitted with the batch sharded over a 1-D mesh of all devices and the
state replicated, as `optg_jax.train.training` does) for ResNet-50 at 224x224 with the optimizer and loss
of `configs/resnet50_imagenet.py`, in bfloat16 compute with float32 params, dense and OptG at 90%
(the library's default criterion, sparse from the first step). It takes 256 images per device, or
128 when 256 runs out of memory, on one synthetic batch, and measures:

- the compile time of each step (trace, lower and XLA compile);
- images/s of each, and OptG / dense: windows of steps of the two run interleaved after a
  warm-up, median over windows, blocking on the results;
- an OptG step that re-selects the masks against an ordinary one: the same compiled step, since a
  refresh runs where the OptG step count is a multiple of `mask_update_every`, so the check sets
  that count before a step (and checks that the refresh happened);
- the exact global threshold and mask over as many scores as the model has masked weights (25.5M
  for ResNet-50) on the device (`optg_jax.topk`);
- peak device memory (`memory_stats()['peak_bytes_in_use']` where the backend reports it) and the
  compiled OptG step's own memory analysis;
- then a short real Fashion-MNIST run of the training program (`configs/fashion_mnist.py`, one
  epoch, in a temporary workdir): its top-1, time and steps/s.

Every phase prints its figures as soon as it has them and rewrites the table in `--out`, so a run
that is killed still leaves what it measured. A phase that fails is reported in the table and the
others still run (the exit status is then 1); one that cannot run here (no TensorFlow, data set
not prepared, time budget spent) says so. `--budget-s` bounds the timed loops and skips the
Fashion-MNIST run when too little time is left for it.

  python -m benchmarks.accelerator_check                  # accelerators: 3-5 min on an H100/H200
  python -m benchmarks.accelerator_check --benchmarks-md  # also into BENCHMARKS.md
  python -m benchmarks.accelerator_check --tiny           # the same code on a CPU in < 1 min

Writes `benchmarks/results/accelerator_check.md` (or `--out`). `--tiny` runs `tiny_resnet` at
32x32, 8 images per device, two steps per figure and a few Fashion-MNIST steps, and writes
`benchmarks/results/accelerator_check_tiny.md` unless `--out` says otherwise; the default tests
run it so that the check cannot rot.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import importlib.metadata
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optg_jax
from benchmarks.accuracy_vs_sparsity.runs import load_config
from benchmarks.report import BENCHMARKS_MD, RESULTS_DIR, ROOT, update_section
from benchmarks.step_overhead import threshold_timings
from optg_jax.train import config as config_lib
from optg_jax.train import models, steps

SECTION = "accelerator_check"
OUT = os.path.join(RESULTS_DIR, "accelerator_check.md")
TINY_OUT = os.path.join(RESULTS_DIR, "accelerator_check_tiny.md")
RESNET_CONFIG = os.path.join(ROOT, "configs", "resnet50_imagenet.py")
FASHION_MNIST_CONFIG = os.path.join(ROOT, "configs", "fashion_mnist.py")
SPARSITY = 0.9
CRITERION = "optg"  # `optg_optax`'s default criterion.
# The OptG step count at which the timed step re-selects the masks. No other step reaches it, so
# the throughput windows time ordinary steps only.
REFRESH_AT = 10**6
TOTAL_STEPS = 10**7  # The length of the run the lr and sparsity schedules are built for.
STEPS_PER_EPOCH = 5000  # About ImageNet's at batch 256; only the warm-up length depends on it.
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one check runs, and how many steps it times for each figure.

    Attributes:
      model: the model name (`optg_jax.train.models.names()`).
      num_classes: its number of outputs.
      image_size: the input's height and width (3 channels).
      batches_per_device: images per device to try, in order, until one fits in memory.
      warmup_steps: untimed steps of each variant before the throughput windows.
      window_steps: steps per timed window.
      min_rounds: interleaved rounds (one window of each variant) that always run.
      max_rounds: rounds at most; those beyond `min_rounds` run while the budget allows.
      refresh_repeats: timed refresh steps, and as many ordinary ones.
      threshold_repeats: timed calls of each threshold operation.
      fashion_mnist_steps: training steps of the Fashion-MNIST run; 0 for one epoch.
      fashion_mnist_eval_batches: eval batches of that run; -1 for the whole test split.
      fashion_mnist_reserve_s: the run is skipped when less of the budget than this is left.
      budget_s: the time the whole check should take.
    """

    model: str
    num_classes: int
    image_size: int
    batches_per_device: tuple[int, ...]
    warmup_steps: int
    window_steps: int
    min_rounds: int
    max_rounds: int
    refresh_repeats: int
    threshold_repeats: int
    fashion_mnist_steps: int
    fashion_mnist_eval_batches: int
    fashion_mnist_reserve_s: float
    budget_s: float


FULL = Settings(
    model="resnet50",
    num_classes=1000,
    image_size=224,
    batches_per_device=(256, 128),
    warmup_steps=5,
    window_steps=10,
    min_rounds=3,
    max_rounds=7,
    refresh_repeats=7,
    threshold_repeats=5,
    fashion_mnist_steps=0,
    fashion_mnist_eval_batches=-1,
    fashion_mnist_reserve_s=60.0,
    budget_s=300.0,
)
TINY = Settings(
    model="tiny_resnet",
    num_classes=10,
    image_size=32,
    batches_per_device=(8,),
    warmup_steps=1,
    window_steps=1,
    min_rounds=2,
    max_rounds=2,
    refresh_repeats=2,
    threshold_repeats=2,
    fashion_mnist_steps=4,
    fashion_mnist_eval_batches=2,
    fashion_mnist_reserve_s=0.0,
    budget_s=120.0,
)


class Unavailable(RuntimeError):
    """A phase cannot run on this machine (a missing package or data set, no time left)."""


# --------------------------------------------------------------------------- the table


class Table:
    """The check's figures in the order they were measured, rendered as a Markdown section.

    Each row is (figure, value, how it was measured); values are text, numbers formatted by the
    phase that measured them. Rows are printed as they are added.
    """

    def __init__(self, clock: Callable[[], float]):
        self.rows: list[tuple[str, str, str]] = []
        self.notes: list[str] = []
        self._clock = clock

    def add(self, figure: str, value: str, how: str = "") -> None:
        self.rows.append((figure, value, how))
        say(self._clock(), f"{figure}: {value}")

    def render(self, title: str, context: str, status: str) -> str:
        lines = [
            f"## {title}",
            "",
            context,
            "",
            "| figure | value | how it was measured |",
            "|---|---:|---|",
        ]
        lines += [f"| {figure} | {value} | {how} |" for figure, value, how in self.rows]
        lines += ["", status]
        lines += [f"\n{note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def say(elapsed: float, line: str) -> None:
    """A progress line, flushed at once so that a killed run's log shows how far it got."""
    print(f"[accelerator_check {elapsed:6.1f} s] {line}", flush=True)


def significant(x: float) -> str:
    """`x` with at least three significant digits and no exponent: 3012, 86.1, 0.210, 0.0912."""
    if not math.isfinite(x) or x == 0:
        return f"{x}"
    decimals = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def parse_table(text: str) -> dict[str, str]:
    """The `figure -> value` pairs of a table written by `Table.render`.

    Args:
      text: the Markdown section.

    Returns:
      `{figure: value}` for every row after the header.
    """
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] != "figure":
            rows[cells[0]] = cells[1]
    return rows


# --------------------------------------------------------------------------- devices and memory


def describe_devices(devices: Sequence[Any]) -> dict[str, Any]:
    """What the check runs on.

    Args:
      devices: `jax.devices()`.

    Returns:
      `{'kind', 'count', 'platform', 'platform_version', 'jax', 'jaxlib'}`; what a backend does
      not report reads "unknown".
    """
    first = devices[0]
    try:
        platform_version = str(first.client.platform_version)
    except Exception:  # noqa: BLE001 - any backend, any failure: it is only a description.
        platform_version = "unknown"
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        jaxlib = "unknown"
    return {
        "kind": getattr(first, "device_kind", "unknown"),
        "count": len(devices),
        "platform": first.platform,
        "platform_version": " ".join(platform_version.split()),
        "jax": jax.__version__,
        "jaxlib": jaxlib,
    }


def peak_memory(devices: Sequence[Any]) -> tuple[int | None, int | None]:
    """The largest `peak_bytes_in_use` over `devices`, and the smallest `bytes_limit`.

    Args:
      devices: JAX devices; a backend without `memory_stats()` (the CPU) returns None there.

    Returns:
      `(peak bytes or None, limit bytes or None)`: None where no device reports the key.
    """
    peaks, limits = [], []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - unimplemented on some backends.
            stats = None
        if not isinstance(stats, Mapping):
            continue
        if "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
        if "bytes_limit" in stats:
            limits.append(int(stats["bytes_limit"]))
    return (max(peaks) if peaks else None, min(limits) if limits else None)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception from compiling or running a step says the device ran out of memory.

    Args:
      error: the exception.

    Returns:
      True for XLA's `RESOURCE_EXHAUSTED` status and for "out of memory" messages.
    """
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def first_that_fits(
    sizes: Sequence[int], attempt: Callable[[int], Any], log: Callable[[str], None]
) -> tuple[int, Any]:
    """`attempt(size)` for each size in turn until one does not run out of device memory.

    Args:
      sizes: the sizes to try, largest first.
      attempt: builds and runs everything at one size; raises on failure.
      log: where to say that a size ran out of memory.

    Returns:
      `(the size that fitted, what attempt returned)`.

    Raises:
      Whatever `attempt` raised: any error that is not out of memory, and out of memory at the
      last size.
    """
    for i, size in enumerate(sizes):
        try:
            return size, attempt(size)
        except Exception as error:  # noqa: BLE001 - re-raised unless it is out of memory.
            if not is_out_of_memory(error) or i == len(sizes) - 1:
                raise
            log(f"{size} per device ran out of memory ({first_line(error)}); trying {sizes[i + 1]}")
        gc.collect()  # The failed attempt's buffers, before the next one allocates.
    raise ValueError("sizes is empty")


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`, shortened: fits a table cell."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".replace("|", "/")
    return text if len(text) <= 200 else text[:197] + "..."


# --------------------------------------------------------------------------- the train steps


@dataclasses.dataclass
class Variant:
    """One compiled train step and the state it is driven with.

    Attributes:
      name: "dense" or "OptG".
      step: the compiled `steps.train_step`, `(state, batch) -> (state, metrics)`; donates the
        state.
      state: the current `steps.TrainState` (replaced after every step).
      compile_s: seconds to trace, lower and compile the step.
      memory: the compiled step's `memory_analysis()`, or None where the backend has none.
    """

    name: str
    step: Callable
    state: Any
    compile_s: float
    memory: Any

    def run(self, batch: dict, num_steps: int) -> dict:
        """Runs `num_steps` steps, waits for them, and returns the last step's metrics."""
        metrics = {}
        for _ in range(num_steps):
            self.state, metrics = self.step(self.state, batch)
        jax.block_until_ready((self.state, metrics))
        return metrics


def benchmark_config(settings: Settings, criterion: str, global_batch: int):
    """The ResNet-50 ImageNet config with what the check changes.

    bfloat16 compute, the check's model and batch, sparse at `SPARSITY` from the first step
    (constant schedule), masks re-selected only where the check asks for it (`REFRESH_AT`).
    """
    config = load_config(RESNET_CONFIG)
    config.model = settings.model
    config.dtype = "bfloat16"
    config.batch_size = global_batch
    config.criterion = criterion
    config.sparsity = SPARSITY
    config.reference_schedules = False  # The paper config's per-epoch schedules would start dense.
    config.schedule = "constant"
    config.mask_update_every = REFRESH_AT
    config.update_masks_after_pruning = True
    return config


def build_variant(
    settings: Settings,
    name: str,
    criterion: str,
    batch: dict,
    replicated: NamedSharding,
    batch_sharding: NamedSharding,
) -> Variant:
    """Creates the train state, compiles the training program's train step, and runs one step.

    Args:
      settings: the check's settings.
      name: the variant's name in the table.
      criterion: "dense", or the OptG criterion.
      batch: the global synthetic batch, sharded by `batch_sharding`.
      replicated: the state's sharding (replicated over the mesh).
      batch_sharding: the batch's sharding (leading axis over the mesh).

    Returns:
      The `Variant`, after one untimed step (where running out of memory shows).
    """
    global_batch = batch["label"].shape[0]
    config = benchmark_config(settings, criterion, global_batch)
    model = models.create(settings.model, settings.num_classes, dtype=jnp.dtype(config.dtype))
    sparse = not config_lib.is_dense(config)
    lr = steps.learning_rate_schedule(config, TOTAL_STEPS, STEPS_PER_EPOCH)
    tx = steps.make_optimizer(config, TOTAL_STEPS, STEPS_PER_EPOCH, lr, sparse=sparse)
    init = jax.jit(
        functools.partial(
            steps.create_train_state,
            model=model,
            tx=tx,
            input_shape=(settings.image_size, settings.image_size, 3),
        ),
        out_shardings=replicated,
    )
    state = init(jax.random.key(0, impl="rbg"))
    train_step = steps.jit_train_step(
        model,
        tx,
        settings.num_classes,
        sparse=sparse,
        label_smoothing=float(config.label_smoothing),
        shardings=steps.Shardings(replicated, batch_sharding, replicated),
    )
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    try:
        memory = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend analyses memory.
        memory = None
    variant = Variant(name, compiled, state, compile_s, memory)
    variant.run(batch, 1)
    return variant


def synthetic_batch(global_batch: int, settings: Settings, sharding: NamedSharding) -> dict:
    """A normal-noise image batch with random labels, made on the devices in its sharding.

    Returns:
      `{'image': float32 [B, S, S, 3], 'label': int32 [B]}`, sharded on B.
    """

    def make(key):
        images, labels = jax.random.split(key)
        size = settings.image_size
        return {
            "image": jax.random.normal(images, (global_batch, size, size, 3), jnp.float32),
            "label": jax.random.randint(labels, (global_batch,), 0, settings.num_classes),
        }

    return jax.jit(make, out_shardings=sharding)(jax.random.key(1, impl="rbg"))


def with_optg_count(opt_state: Any, count: int) -> Any:
    """`opt_state` with the OptG step count set to `count` (same dtype and sharding).

    Args:
      opt_state: an optax chain state holding one `optg_jax.OptGState`.
      count: the new count.

    Returns:
      The chain state, everything else unchanged.
    """

    def replace(node):
        if not isinstance(node, optg_jax.OptGState):
            return node
        new = jax.device_put(np.asarray(count, node.count.dtype), node.count.sharding)
        return node._replace(count=new)

    return jax.tree.map(replace, opt_state, is_leaf=lambda x: isinstance(x, optg_jax.OptGState))


def interleaved_throughput(
    variants: Sequence[Variant], batch: dict, settings: Settings, deadline: float
) -> dict[str, list[float]]:
    """Images/s of each variant in each of the windows it ran in interleaved rounds.

    Every round times one window of `window_steps` steps of each variant (the order reverses
    every other round), so that a machine that slows down slows all alike. Rounds beyond
    `min_rounds` start only before `deadline` (a `time.perf_counter()` value).

    Returns:
      `{name: [images/s of each window]}`, one window per round.
    """
    for variant in variants:
        variant.run(batch, settings.warmup_steps)
    seconds: dict[str, list[float]] = {v.name: [] for v in variants}
    rounds = 0
    while rounds < settings.max_rounds and (
        rounds < settings.min_rounds or time.perf_counter() < deadline
    ):
        for variant in variants if rounds % 2 == 0 else variants[::-1]:
            start = time.perf_counter()
            metrics = variant.run(batch, settings.window_steps)
            seconds[variant.name].append(time.perf_counter() - start)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise FloatingPointError(f"the {variant.name} step's loss became {loss}")
        rounds += 1
    images = batch["label"].shape[0] * settings.window_steps
    return {name: [images / t for t in times] for name, times in seconds.items()}


def refresh_step_times(variant: Variant, batch: dict, repeats: int) -> dict[str, float]:
    """Median seconds of an OptG step that re-selects the masks and of an ordinary one.

    Before each refresh step the OptG count is set to `REFRESH_AT`, a multiple of the variant's
    `mask_update_every`; the ordinary step follows it (count `REFRESH_AT + 1`). One untimed pair
    goes first. Every step is timed alone, waiting for its result.

    Returns:
      `{'refresh_s', 'ordinary_s'}`.

    Raises:
      RuntimeError: the state says a timed step did not refresh the masks.
    """
    times: dict[str, list[float]] = {"refresh_s": [], "ordinary_s": []}
    for repeat in range(repeats + 1):
        for key in times:
            if key == "refresh_s":
                opt_state = with_optg_count(variant.state.opt_state, REFRESH_AT)
                variant.state = variant.state.replace(opt_state=opt_state)
                jax.block_until_ready(variant.state)
            start = time.perf_counter()
            variant.run(batch, 1)
            elapsed = time.perf_counter() - start
            last_refresh = int(optg_jax.get_optg_state(variant.state.opt_state).last_refresh)
            if key == "refresh_s" and last_refresh != REFRESH_AT:
                raise RuntimeError(
                    f"the step at OptG count {REFRESH_AT} did not refresh the masks (last "
                    f"refresh at {last_refresh})"
                )
            if repeat:
                times[key].append(elapsed)
    return {key: statistics.median(t) for key, t in times.items()}


# --------------------------------------------------------------------------- the phases


@dataclasses.dataclass
class Check:
    """The check's running state: its settings, the table, and what each phase leaves the next.

    Attributes:
      settings: what to run and for how long.
      out: the Markdown file rewritten after every phase.
      data_dir: the TFDS data dir of the Fashion-MNIST run ("" for TFDS's default).
      command: the command line, for the table's heading.
      start: `time.perf_counter()` when the check started (its budget counts from there).
      table: the figures so far.
      context: the line under the table's title (devices, versions, date, command).
      variants: the dense and OptG `Variant`s, once compiled.
      batch: the synthetic global batch.
      failed: the names of the phases that failed.
      tensorflow: why TensorFlow cannot run here, "" when it can.
    """

    settings: Settings
    out: str
    data_dir: str
    command: str
    start: float
    table: Table = dataclasses.field(init=False)
    context: str = ""
    variants: dict[str, Variant] = dataclasses.field(default_factory=dict)
    batch: dict | None = None
    failed: list[str] = dataclasses.field(default_factory=list)
    tensorflow: str = ""

    def __post_init__(self):
        self.table = Table(self.elapsed)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.settings.budget_s - self.elapsed()

    def render(self, status: str) -> str:
        return self.table.render(
            "Accelerator check (benchmarks/accelerator_check.py)", self.context, status
        )

    def write(self, status: str) -> str:
        text = self.render(status)
        os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
        with open(self.out, "w", encoding="utf-8") as f:
            f.write(text)
        return text


def phase_devices(check: Check) -> None:
    devices = jax.devices()
    d = describe_devices(devices)
    check.table.add(
        "devices",
        f"{d['count']} x {d['kind']}",
        f"platform {d['platform']}, {d['platform_version']}",
    )
    check.table.add(
        "JAX, jaxlib", f"{d['jax']}, {d['jaxlib']}", f"{jax.process_count()} process(es)"
    )
    check.context = (
        f"{d['count']} x {d['kind']} ({d['platform']}), jax {d['jax']}, run "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with `{check.command}`."
    )


def phase_compile(check: Check) -> None:
    s = check.settings
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    n = len(jax.devices())

    def attempt(per_device: int):
        batch = synthetic_batch(per_device * n, s, batch_sharding)
        built = {}
        for name, criterion in (("dense", "dense"), ("OptG", CRITERION)):
            say(check.elapsed(), f"{name} step, {per_device} per device: compiling and one step")
            built[name] = build_variant(s, name, criterion, batch, replicated, batch_sharding)
            say(check.elapsed(), f"{name} step compiled in {built[name].compile_s:.1f} s")
        return batch, built

    log = lambda line: say(check.elapsed(), line)
    per_device, (check.batch, check.variants) = first_that_fits(s.batches_per_device, attempt, log)
    check.table.add(
        "model",
        f"{s.model}, {s.image_size}x{s.image_size}",
        "bfloat16 compute, float32 params; optimizer and loss of `configs/resnet50_imagenet.py`",
    )
    tried = ", ".join(str(b) for b in s.batches_per_device)
    check.table.add(
        "batch per device (global)",
        f"{per_device} ({per_device * n})",
        f"the first of {tried} that fits in memory",
    )
    how = "trace, lower and XLA compile of the jitted `steps.train_step` (`.lower().compile()`)"
    for name, variant in check.variants.items():
        check.table.add(f"compile time, {name} step (s)", significant(variant.compile_s), how)


def phase_throughput(check: Check) -> None:
    s = check.settings
    dense, optg = check.variants["dense"], check.variants["OptG"]
    deadline = check.start + 0.6 * s.budget_s
    windows = interleaved_throughput([dense, optg], check.batch, s, deadline)
    rates = {name: statistics.median(w) for name, w in windows.items()}
    for name, figure in (("dense", "dense"), ("OptG", f"OptG {SPARSITY:.0%} ({CRITERION})")):
        w = windows[name]
        check.table.add(
            f"images/s, {figure}",
            significant(rates[name]),
            f"median of {len(w)} windows of {s.window_steps} step(s) (from {significant(min(w))} "
            f"to {significant(max(w))}), interleaved with the other variant, after "
            f"{s.warmup_steps} warm-up step(s); global batch {check.batch['label'].shape[0]}, one "
            "synthetic batch" + ("; ordinary steps (no mask refresh)" if name == "OptG" else ""),
        )
    check.table.add("OptG / dense images/s", f"{rates['OptG'] / rates['dense']:.3f}", "")


def phase_refresh(check: Check) -> None:
    s = check.settings
    optg = check.variants["OptG"]
    times = refresh_step_times(optg, check.batch, s.refresh_repeats)
    masks = optg_jax.get_masks(optg.state.opt_state)
    num_masked = sum(m.size for m in jax.tree.leaves(masks))
    how = f"median of {s.refresh_repeats} single steps, alternating, each waited for"
    check.table.add("OptG step, ordinary (ms)", significant(1e3 * times["ordinary_s"]), how)
    check.table.add(
        "OptG step with a mask refresh (ms)",
        significant(1e3 * times["refresh_s"]),
        how + f"; re-selects the masks of all {num_masked:,} masked weights (checked)",
    )
    check.table.add(
        "refresh step / ordinary step", f"{times['refresh_s'] / times['ordinary_s']:.3f}", ""
    )


def phase_threshold(check: Check) -> None:
    s = check.settings
    masks = jax.tree.leaves(optg_jax.get_masks(check.variants["OptG"].state.opt_state))
    kept = sum(int(jnp.sum(m, dtype=jnp.int32)) for m in masks)
    result = threshold_timings([m.shape for m in masks], kept, s.threshold_repeats)
    if not result["exact"]:
        raise RuntimeError(f"the exact mask kept {result['kept']:,} scores, expected {kept:,}")
    how = (
        f"median of {s.threshold_repeats}; keep {kept:,} of {result['num_scores']:,} random "
        f"normal float32 scores in {len(masks)} arrays, on {jax.devices()[0].device_kind}"
    )
    n = f"{result['num_scores']:,}"
    check.table.add(
        f"global threshold, k-th largest of {n} scores (ms)",
        significant(1e3 * result["threshold_s"]),
        how,
    )
    check.table.add(
        f"exact global mask of {n} scores (ms)",
        significant(1e3 * result["masks_s"]),
        how + "; threshold plus deterministic ties; kept exactly k, checked against NumPy",
    )


def phase_memory(check: Check) -> None:
    peak, limit = peak_memory(jax.devices())
    if peak is None:
        check.table.add(
            "peak device memory (MiB)", "n/a", "the backend reports no `peak_bytes_in_use`"
        )
    else:
        of = f" of {limit / MIB:,.0f} MiB" if limit else ""
        check.table.add(
            "peak device memory (MiB)",
            significant(peak / MIB),
            f"`memory_stats()['peak_bytes_in_use']`, largest over devices{of}; since the start",
        )
    memory = check.variants["OptG"].memory
    if memory is None:
        check.table.add("compiled OptG step footprint (MiB)", "n/a", "no `memory_analysis()`")
        return
    footprint = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    check.table.add(
        "compiled OptG step footprint (MiB)",
        significant(footprint / MIB),
        f"arguments {memory.argument_size_in_bytes / MIB:.1f} + outputs "
        f"{memory.output_size_in_bytes / MIB:.1f} - donated {memory.alias_size_in_bytes / MIB:.1f}"
        f" + temporaries {memory.temp_size_in_bytes / MIB:.1f} (`memory_analysis()`)",
    )


def phase_fashion_mnist(check: Check) -> None:
    s = check.settings
    if check.tensorflow:
        raise Unavailable(check.tensorflow)
    if check.left() < s.fashion_mnist_reserve_s:
        raise Unavailable(
            f"{check.left():.0f} s of the {s.budget_s:.0f} s budget left, the run needs "
            f"about {s.fashion_mnist_reserve_s:.0f} s"
        )
    # Imported here: the training program reads data through TensorFlow, hidden from the GPUs
    # at the check's start.
    from optg_jax.train import training  # pylint: disable=import-outside-toplevel

    config = load_config(FASHION_MNIST_CONFIG)
    config.data_dir = check.data_dir
    n = jax.device_count()
    config.batch_size = n * math.ceil(config.batch_size / n)
    config.num_epochs = 1
    if s.fashion_mnist_steps:
        config.num_train_steps = s.fashion_mnist_steps
    config.steps_per_eval = s.fashion_mnist_eval_batches
    with tempfile.TemporaryDirectory(prefix="accelerator_check_") as workdir:
        start = time.perf_counter()
        try:
            results = training.train_and_evaluate(config, workdir)
        except FileNotFoundError as error:
            raise Unavailable(first_line(error)) from None
        wall = time.perf_counter() - start
    length = (
        f"{results['steps']} steps"
        if s.fashion_mnist_steps
        else f"1 epoch, {results['steps']} steps"
    )
    what = (
        f"`configs/fashion_mnist.py` ({config.model}, {config.sparsity:.0%} sparsity), {length} of "
        f"batch {config.batch_size}"
    )
    check.table.add(
        "Fashion-MNIST top-1 (%)",
        f"{100 * results['top1']:.2f}",
        f"{what}; {results['num_eval_examples']:,} test examples; sparsity "
        f"{100 * results['sparsity']:.2f}%",
    )
    check.table.add(
        "Fashion-MNIST training time (s)",
        significant(results["train_time_s"]),
        "the training loop: compile, checkpoints and the epoch-end evaluation included",
    )
    check.table.add(
        "Fashion-MNIST steps/s",
        significant(results["steps"] / results["train_time_s"]),
        "steps / training time",
    )
    check.table.add(
        "Fashion-MNIST wall time (s)",
        significant(wall),
        "`train_and_evaluate`: data loading, training, final evaluation and export",
    )


PHASES: tuple[tuple[str, Callable[[Check], None], bool], ...] = (
    # (name, function, whether the later phases need it)
    ("devices", phase_devices, True),
    ("compile", phase_compile, True),
    ("throughput", phase_throughput, False),
    ("mask refresh", phase_refresh, False),
    ("global threshold", phase_threshold, False),
    ("memory", phase_memory, False),
    ("Fashion-MNIST", phase_fashion_mnist, False),
)


def run_check(check: Check) -> None:
    """Runs every phase, rewriting `check.out` after each; a failed phase is noted in the table.

    Phases after a failed one that they need are skipped.
    """
    for name, phase, needed in PHASES:
        say(check.elapsed(), f"{name} ...")
        try:
            phase(check)
        except Unavailable as why:
            check.table.notes.append(f"Not run: {name} ({why}).")
            say(check.elapsed(), f"{name} not run: {why}")
        except Exception as error:  # noqa: BLE001 - reported, and the check goes on.
            traceback.print_exc()
            check.failed.append(name)
            check.table.notes.append(f"**Failed:** {name} ({first_line(error)}).")
            say(check.elapsed(), f"{name} FAILED: {first_line(error)}")
            if needed:
                check.write(f"Stopped after the failed phase `{name}`, {check.elapsed():.0f} s.")
                return
        check.write(
            f"Partial: `{name}` done after {check.elapsed():.0f} s; the check is still running."
        )


def keep_tensorflow_off_accelerators() -> str:
    """Hides the GPUs from TensorFlow before anything starts it (it only feeds data here).

    Returns:
      "" when TensorFlow is ready (off the GPUs), else why it cannot run.
    """
    try:
        from optg_jax.train import data  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        return f"TensorFlow or TFDS cannot be imported ({first_line(error)})"
    data.hide_gpus_from_tensorflow()
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (the tests)")
    parser.add_argument("--out", help=f"the Markdown table (default {OUT}; --tiny: {TINY_OUT})")
    parser.add_argument(
        "--benchmarks-md",
        nargs="?",
        const=BENCHMARKS_MD,
        help=f"also write the `{SECTION}` section of this file (default {BENCHMARKS_MD})",
    )
    parser.add_argument("--data-dir", default="", help="TFDS data dir of Fashion-MNIST")
    parser.add_argument("--budget-s", type=float, help="time the check should take (seconds)")
    parser.add_argument(
        "--allow-cpu",
        action="store_true",
        help="run the full check even when JAX sees no accelerator",
    )
    args = parser.parse_args(argv)
    settings = TINY if args.tiny else FULL
    if args.budget_s is not None:
        if not args.budget_s > 0:
            parser.error(f"--budget-s={args.budget_s} must be > 0")
        settings = dataclasses.replace(settings, budget_s=args.budget_s)
    out = args.out or (TINY_OUT if args.tiny else OUT)
    given = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m benchmarks.accelerator_check", *given])
    check = Check(settings, out, args.data_dir, command, time.perf_counter())
    if jax.process_count() > 1:
        parser.error(f"the check runs in one process; this is one of {jax.process_count()}")
    if jax.default_backend() == "cpu" and not (args.tiny or args.allow_cpu):
        parser.error(
            "JAX sees no accelerator (backend cpu): run with --tiny for the CPU check, or "
            "--allow-cpu for the full one (hours on a CPU)"
        )
    # Before anything starts TensorFlow's runtime: it feeds the Fashion-MNIST run only.
    check.tensorflow = keep_tensorflow_off_accelerators()
    run_check(check)
    done = (
        "Complete"
        if not check.failed
        else f"Finished with failed phases ({', '.join(check.failed)})"
    )
    text = check.write(f"{done} in {check.elapsed():.0f} s.")
    print(text, flush=True)
    if args.benchmarks_md:
        update_section(args.benchmarks_md, SECTION, text)
        print(f"written to {out} and {args.benchmarks_md}", flush=True)
    else:
        print(f"written to {out}", flush=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())

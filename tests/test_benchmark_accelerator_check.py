"""benchmarks/accelerator_check.py: the `--tiny` command end to end on the CPU, and its helpers."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

import optg_jax
from benchmarks import accelerator_check as check
from benchmarks.report import ROOT
from optg_jax.train import models

# Rows whose value must be a positive number on any machine.
POSITIVE_ROWS = (
    "compile time, dense step (s)",
    "compile time, OptG step (s)",
    "images/s, dense",
    "images/s, OptG 90% (optg)",
    "OptG / dense images/s",
    "OptG step, ordinary (ms)",
    "OptG step with a mask refresh (ms)",
    "refresh step / ordinary step",
    "compiled OptG step footprint (MiB)",
    "Fashion-MNIST top-1 (%)",
    "Fashion-MNIST training time (s)",
    "Fashion-MNIST steps/s",
    "Fashion-MNIST wall time (s)",
)


def _num_kernel_weights(name, num_classes, size):
    model = models.create(name, num_classes)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )["params"]
    return sum(s.size for s in jax.tree.leaves(shapes) if s.ndim >= 2)


# The whole command (every phase, ~1.5 minutes on 2 cores); the default set keeps the refresh
# check below, the part of the measurement the command relies on.
@pytest.mark.slow
def test_tiny_command_measures_every_figure(tmp_path):
    out, md = tmp_path / "accelerator_check.md", tmp_path / "BENCHMARKS.md"
    md.write_text(
        "# Benchmarks\n\n<!-- accelerator_check:begin -->\nnot yet run on an accelerator\n"
        "<!-- accelerator_check:end -->\n\n## Other\n"
    )
    command = [sys.executable, "-m", "benchmarks.accelerator_check", "--tiny"]
    command += ["--out", str(out), "--benchmarks-md", str(md)]
    # A budget no loaded machine runs out of: --tiny caps the rounds, and every phase must run.
    command += ["--budget-s", "100000"]
    proc = subprocess.run(
        command,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    rows = check.parse_table(text)

    count, kind = rows["devices"].split(" x ")
    assert kind == "cpu" and int(count) >= 1
    assert rows["JAX, jaxlib"].startswith(jax.__version__ + ", ")
    assert rows["model"] == "tiny_resnet, 32x32"
    assert rows["batch per device (global)"] == f"8 ({8 * int(count)})"
    values = {name: float(rows[name]) for name in POSITIVE_ROWS}
    assert all(v > 0 for v in values.values()), values
    ratio = values["images/s, OptG 90% (optg)"] / values["images/s, dense"]
    assert values["OptG / dense images/s"] == pytest.approx(ratio, rel=0.01)
    refresh = values["OptG step with a mask refresh (ms)"] / values["OptG step, ordinary (ms)"]
    assert values["refresh step / ordinary step"] == pytest.approx(refresh, rel=0.01)
    assert values["Fashion-MNIST top-1 (%)"] <= 100
    # 4 steps over the training time, to the table's 3 significant digits.
    assert values["Fashion-MNIST steps/s"] == pytest.approx(
        4 / values["Fashion-MNIST training time (s)"], rel=0.02
    )
    assert rows["peak device memory (MiB)"] == "n/a"  # The CPU backend keeps no memory stats.

    # The threshold ran over as many scores as the model has kernel weights, keeping 10%.
    n = _num_kernel_weights("tiny_resnet", 10, 32)
    for name in (
        f"global threshold, k-th largest of {n:,} scores (ms)",
        f"exact global mask of {n:,} scores (ms)",
    ):
        assert float(rows[name]) > 0
    assert f"keep {n // 10:,} of {n:,} random normal float32 scores" in text
    assert f"re-selects the masks of all {n:,} masked weights (checked)" in text
    assert "test examples" in text and "Complete in" in text and "Failed" not in text

    # Progress lines came first, the table last; BENCHMARKS.md holds the same section.
    assert proc.stdout.index("[accelerator_check") < proc.stdout.index("| figure |")
    for phase in ("compile", "throughput", "mask refresh", "global threshold", "Fashion-MNIST"):
        assert f"] {phase} ..." in proc.stdout
    written = md.read_text()
    assert text.strip() in written and "not yet run" not in written
    assert written.count("<!-- accelerator_check:begin -->") == 1 and "## Other" in written


def test_first_that_fits_falls_back_only_on_out_of_memory():
    tried, logged = [], []

    def attempt(size):
        tried.append(size)
        if size == 256:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.2GiB.")
        return f"ran at {size}"

    assert check.first_that_fits((256, 128), attempt, logged.append) == (128, "ran at 128")
    assert tried == [256, 128]
    assert len(logged) == 1 and logged[0].startswith("256 per device ran out of memory")

    def broken(size):
        tried.append(size)
        raise ValueError(f"bad shape at {size}")

    tried.clear()
    with pytest.raises(ValueError, match="bad shape at 256"):
        check.first_that_fits((256, 128), broken, logged.append)
    assert tried == [256]

    def never_fits(size):
        raise RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        check.first_that_fits((256, 128), never_fits, logged.append)


def test_is_out_of_memory():
    assert check.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: failed to allocate"))
    assert check.is_out_of_memory(RuntimeError("Allocator ran Out Of Memory"))
    assert not check.is_out_of_memory(RuntimeError("INVALID_ARGUMENT: shapes differ"))


class _Device:
    def __init__(self, stats):
        self._stats = stats

    def memory_stats(self):
        if isinstance(self._stats, Exception):
            raise self._stats
        return self._stats


def test_peak_memory_reads_only_what_devices_report():
    devices = [
        _Device(None),
        _Device({}),
        _Device(NotImplementedError("memory_stats")),
        _Device({"peak_bytes_in_use": 5 * 2**20, "bytes_limit": 80 * 2**20}),
        _Device({"peak_bytes_in_use": 7 * 2**20, "bytes_in_use": 1}),
    ]
    assert check.peak_memory(devices) == (7 * 2**20, 80 * 2**20)
    assert check.peak_memory(devices[:3]) == (None, None)


def test_significant_keeps_three_digits_without_exponent():
    assert [check.significant(x) for x in (3012.4, 86.14, 0.21, 0.09123, 1.0)] == [
        "3012",
        "86.1",
        "0.210",
        "0.0912",
        "1.00",
    ]


def test_table_round_trip():
    table = check.Table(lambda: 0.0)
    table.add("images/s, dense", "3012", "median of 7 windows")
    table.add("peak device memory (MiB)", "n/a", "")
    text = table.render("Title", "context", "Complete in 1 s.")
    assert check.parse_table(text) == {"images/s, dense": "3012", "peak device memory (MiB)": "n/a"}


def test_with_optg_count_makes_the_next_update_refresh():
    params = {"dense": {"kernel": jnp.arange(12.0).reshape(3, 4), "bias": jnp.ones(4)}}
    tx = optax.chain(
        optg_jax.optg_optax(0.5, 100, 0.1, schedule="constant", mask_update_every=10),
        optax.sgd(0.1),
    )
    state = tx.init(params)
    moved = check.with_optg_count(state, 10)
    assert int(optg_jax.get_optg_state(moved).count) == 10
    assert optg_jax.get_optg_state(moved).count.dtype == jnp.int32
    assert int(optg_jax.get_optg_state(state).count) == 0  # The original is unchanged.
    grads = jax.tree.map(jnp.ones_like, params)
    _, after = tx.update(grads, moved, params)
    assert int(optg_jax.get_optg_state(after).last_refresh) == 10
    _, ordinary = tx.update(grads, state, params)
    assert int(optg_jax.get_optg_state(ordinary).last_refresh) == 0

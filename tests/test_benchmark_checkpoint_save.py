"""benchmarks/checkpoint_save.py: its loop, measurement and report on a small state."""

import re
import statistics

import jax
import numpy as np
import pytest

from benchmarks import checkpoint_save as bench
from optg_jax.train import checkpoints


def test_measurement_and_report(tmp_path):
    state, size = bench.tiny_state()
    assert size == sum(x.nbytes for x in jax.tree.leaves(state))
    results = bench.measure(state, num_steps=6, every=3)
    assert sorted(results) == ["async", "none", "sync"]
    assert results["none"]["save_s"] == []
    for mode in ("sync", "async"):
        assert len(results[mode]["save_s"]) == 2 and min(results[mode]["save_s"]) > 0
    settings = dict(model="tiny", bytes=size, num_steps=6, every=3, device="cpu", cpu="c", load=1)
    text = bench.render(results, settings)
    sync = statistics.median(results["sync"]["save_s"])
    assert results["sync"]["overlapped"] == [False, False]  # Nothing runs in the background.
    row = re.search(r"\| synchronous \| ([\d.]+) s \| ([\d.]+) s \| ([\d.]+) s \|", text)
    assert row and float(row.group(2)) == pytest.approx(sync, abs=0.005)
    assert float(row.group(3)) == pytest.approx(results["sync"]["loop_s"], abs=0.005)
    assert f"{sum(results['async']['overlapped'])} of 2 asynchronous saves" in text
    assert "| asynchronous (default) |" in text and "a save every 3 steps" in text


def test_the_loop_saves_the_state_of_its_step(tmp_path):
    state, _ = bench.tiny_state()
    workdir = str(tmp_path / "w")
    out = bench.run_loop(state, workdir, num_steps=4, every=2, asynchronous=True)
    assert checkpoints.checkpoint_steps_on_disk(workdir) == [2, 4]
    mngr = checkpoints.manager(workdir, keep=2, create=False)
    restored, step = checkpoints.restore_latest(mngr, bench.tiny_state()[0], workdir)
    mngr.close()
    assert step == 4 and int(restored.step) == 5  # One compile step before the loop, then 4.
    np.testing.assert_array_equal(
        restored.params["conv"]["kernel"], out["state"].params["conv"]["kernel"]
    )


def test_main_writes_the_section(tmp_path):
    out, md = tmp_path / "checkpoint_save.md", tmp_path / "BENCHMARKS.md"
    bench.main(
        ["--tiny", "--steps", "4", "--every", "2", "--out", str(out), "--benchmarks-md", str(md)]
    )
    text = md.read_text()
    assert text.count("<!-- checkpoint_save:begin -->") == 1
    assert out.read_text().strip() in text

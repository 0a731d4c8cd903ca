"""Data parallelism: 8 fake CPU devices train the same weights as 1 device (same seed, same global
batch), and a batch that does not split over the devices is refused in one line. FSDP
(`param_sharding="fsdp"`, the train state split over the 8 devices) trains the same masks and,
to float tolerance, the same weights as the replicated state, and resumes from its checkpoints.

XLA's device count is fixed when JAX starts, so each run is its own Python process. The runs
share a persistent compilation cache, so that a rerun of a program already compiled (a resume)
does not compile it again.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, {root!r})
    from tests.test_train import imagenet_test_config, mock_data
    from optg_jax.train import training
    from optg_jax.train.config import ConfigError

    workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
    config = imagenet_test_config(**overrides)
    try:
      with mock_data():
        results = training.train_and_evaluate(config, workdir)
    except ConfigError as e:
      print("CONFIG_ERROR", e)
      sys.exit(2)
    print("DEVICES", jax.device_count())
""")

# 4 steps of batch 16 (mask refreshes at the updates with counts 1, 2 and 3, and the final
# masks after the 4th), checkpoints at steps 0, 2 and 4 (the last 2 kept); one eval batch.
OVERRIDES = {
    "batch_size": 16,
    "steps_per_epoch": 2,
    "num_epochs": 2,
    "reference_schedules": False,  # per-step schedules, so that masks can refresh every step
    "mask_update_every": 1,
    "steps_per_eval": 1,
    "checkpoint_every_steps": 2,
    "log_every_steps": 1,
}


def run_on(num_devices, workdir, overrides=OVERRIDES, cache_dir=None):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=ROOT,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
    )
    if cache_dir is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(root=ROOT), str(workdir), json.dumps(overrides)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_same_model(workdir, reference, exact=False):
    """The exports of two runs: the same masks (zeros), the same weights to float tolerance."""
    got, want = (np.load(w / "export" / "model.npz") for w in (workdir, reference))
    assert sorted(got.files) == sorted(want.files)
    for k in want.files:
        if exact:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
        # Same masks: the zeros of the masked weights are in the same places.
        np.testing.assert_array_equal(got[k] == 0, want[k] == 0, err_msg=k)


def results(workdir):
    return json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


def train(workdir, num_devices=8, cache_dir=None, **overrides):
    """A run of the test config on `num_devices` devices; its stdout."""
    proc = run_on(num_devices, workdir, dict(OVERRIDES, **overrides), cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"DEVICES {num_devices}" in proc.stdout
    return proc.stdout


@pytest.fixture(scope="module")
def replicated_run(tmp_path_factory, compile_cache):
    workdir = tmp_path_factory.mktemp("replicated") / "w"
    train(workdir, cache_dir=compile_cache)
    return workdir


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, compile_cache):
    workdir = tmp_path_factory.mktemp("fsdp") / "w"
    train(workdir, cache_dir=compile_cache, param_sharding="fsdp")
    return workdir


def test_eight_devices_match_one(tmp_path, replicated_run, compile_cache):
    train(tmp_path / "d1", num_devices=1, cache_dir=compile_cache)
    assert_same_model(replicated_run, tmp_path / "d1")
    r1, r8 = results(tmp_path / "d1"), results(replicated_run)
    assert r8["num_devices"] == 8 and r1["num_devices"] == 1
    assert r8["sparsity"] == r1["sparsity"] and r8["macs"] == r1["macs"]


def test_fsdp_matches_replicated(fsdp_run, replicated_run):
    assert_same_model(fsdp_run, replicated_run)
    fsdp, replicated = results(fsdp_run), results(replicated_run)
    assert fsdp["sparsity"] == replicated["sparsity"] and fsdp["macs"] == replicated["macs"]
    assert fsdp["layer_sparsity"] == replicated["layer_sparsity"]
    assert (fsdp["top1"], fsdp["top5"]) == (replicated["top1"], replicated["top5"])
    assert fsdp["eval_loss"] == pytest.approx(replicated["eval_loss"], rel=1e-5)
    # Step by step: the same losses and gradient norms, the same scheduled sparsity.
    logs = [
        [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
        for w in (fsdp_run, replicated_run)
    ]
    steps = [[r for r in log if "train/loss_step" in r] for log in logs]
    assert [r["step"] for r in steps[0]] == [r["step"] for r in steps[1]] == [1, 2, 3, 4]
    for got, want in zip(*steps):
        for key in ("train/loss_step", "train/grad_norm_step", "train/sparsity_step"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (got["step"], key)
    assert [r["train/sparsity_step"] for r in steps[0]][-1] == pytest.approx(0.9, abs=1e-4)


def resumable_copy(workdir, to):
    """A copy of a finished run's workdir without its last checkpoint, results and export."""
    shutil.copytree(workdir, to)
    assert sorted(os.listdir(to / "checkpoints")) == ["2", "4"]
    shutil.rmtree(to / "checkpoints" / "4")
    shutil.rmtree(to / "export")
    os.remove(to / "results.json")
    return to


# Two more 8-device runs; the default set keeps FSDP against the replicated run (above) and exact
# resumes through tests/test_reliability.py and tests/test_train.py.
@pytest.mark.slow
def test_fsdp_resumes_from_its_checkpoint_and_from_a_replicated_one(
    tmp_path, fsdp_run, replicated_run, compile_cache
):
    """A sharded checkpoint resumes sharded exactly; a replicated one resumes sharded too
    (`param_sharding` is not part of a run's identity)."""
    own = resumable_copy(fsdp_run, tmp_path / "own")
    out = train(own, cache_dir=compile_cache, param_sharding="fsdp")
    assert "resuming from the checkpoint at step 2" in out
    assert_same_model(own, fsdp_run, exact=True)
    assert results(own)["top1"] == results(fsdp_run)["top1"]

    other = resumable_copy(replicated_run, tmp_path / "other")
    out = train(other, cache_dir=compile_cache, param_sharding="fsdp")
    assert "resuming from the checkpoint at step 2" in out
    assert_same_model(other, replicated_run)


def test_batch_not_divisible_by_devices(tmp_path):
    workdir = tmp_path / "w"
    proc = run_on(8, workdir, dict(OVERRIDES, batch_size=12))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("CONFIG_ERROR")][0]
    assert "batch_size=12" in line and "8" in line
    assert not workdir.exists()

"""Data parallelism: 8 fake CPU devices train the same weights as 1 device (same seed, same global
batch), and a batch that does not split over the devices is refused in one line.

XLA's device count is fixed when JAX starts, so each run is its own Python process.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import tensorflow_datasets as tfds
    sys.path.insert(0, {root!r})
    from tests.test_train import imagenet_test_config
    from optg_jax import training
    from optg_jax.config import ConfigError

    workdir, overrides = sys.argv[1], json.loads(sys.argv[2])
    config = imagenet_test_config(**overrides)
    try:
      with tfds.testing.mock_data(num_examples=32):
        results = training.train_and_evaluate(config, workdir)
    except ConfigError as e:
      print("CONFIG_ERROR", e)
      sys.exit(2)
    print("DEVICES", jax.device_count())
""")

# 4 steps (2 mask refreshes) of batch 16; one eval batch.
OVERRIDES = {
    "batch_size": 16,
    "steps_per_epoch": 2,
    "num_epochs": 2,
    "steps_per_eval": 1,
    "checkpoint_every_steps": 100,
    "log_every_steps": 1,
}


def run_on(num_devices, workdir, overrides=OVERRIDES):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=ROOT,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
    )
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(root=ROOT), str(workdir), json.dumps(overrides)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_eight_devices_match_one(tmp_path):
    runs = {}
    for n in (1, 8):
        proc = run_on(n, tmp_path / f"d{n}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"DEVICES {n}" in proc.stdout
        runs[n] = np.load(tmp_path / f"d{n}" / "export" / "model.npz")
    one, eight = runs[1], runs[8]
    assert sorted(one.files) == sorted(eight.files)
    for k in one.files:
        np.testing.assert_allclose(eight[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)
        # Same masks: the zeros of the masked weights are in the same places.
        np.testing.assert_array_equal(eight[k] == 0, one[k] == 0, err_msg=k)
    r1 = json.loads((tmp_path / "d1" / "results.json").read_text())
    r8 = json.loads((tmp_path / "d8" / "results.json").read_text())
    assert r8["num_devices"] == 8 and r1["num_devices"] == 1
    assert r8["sparsity"] == r1["sparsity"] and r8["macs"] == r1["macs"]


def test_batch_not_divisible_by_devices(tmp_path):
    workdir = tmp_path / "w"
    proc = run_on(8, workdir, dict(OVERRIDES, batch_size=12))
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("CONFIG_ERROR")][0]
    assert "batch_size=12" in line and "8" in line
    assert not workdir.exists()

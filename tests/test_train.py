"""End-to-end `train_and_evaluate` on mocked ImageNet with a tiny ResNet: results, exact final
sparsity, checkpoints, resume (after completion, and from a corrupt latest checkpoint), eval-only,
refusal of another run's workdir, and a diverging run."""

import contextlib
import functools
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from optg_jax.train import checkpoints, training
from optg_jax.train.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 6


def imagenet_test_config(**overrides):
    """configs/resnet50_imagenet.py shrunk to 2 epochs of 3 steps of a tiny ResNet at 32x32."""
    spec = importlib.util.spec_from_file_location(
        "r50", os.path.join(ROOT, "configs", "resnet50_imagenet.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(
        dict(
            model="tiny_resnet",
            image_size=32,
            batch_size=8,
            steps_per_epoch=3,
            num_epochs=2,
            steps_per_eval=2,
            checkpoint_every_steps=2,
            keep_checkpoints=2,
            log_every_steps=1,
            warmup_epochs=1.0,
            sparsity=0.9,
        )
    )
    config.update(overrides)
    return config


@contextlib.contextmanager
def mock_data(num_examples=32):
    """`tfds.testing.mock_data`, with checkpoints saved synchronously while it is active.

    While the mock builds a data set it swaps the file system under every thread (TFDS's
    `MockFs`), so orbax's background thread would find its own directories missing; real TFDS
    swaps nothing. The tests on real Fashion-MNIST (test_reliability.py) save asynchronously.
    """
    synchronous = functools.partial(checkpoints.manager, asynchronous=False)
    with tfds.testing.mock_data(num_examples=num_examples):
        with mock.patch.object(checkpoints, "manager", synchronous):
            yield


def run(config, workdir):
    with mock_data():
        return training.train_and_evaluate(config, str(workdir))


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def snapshot(workdir):
    """{relative path: (size, mtime)} of every file under workdir."""
    out = {}
    for base, _, files in os.walk(workdir):
        for f in files:
            p = os.path.join(base, f)
            out[os.path.relpath(p, workdir)] = (os.path.getsize(p), os.path.getmtime(p))
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "w"
    results = run(imagenet_test_config(), workdir)
    return workdir, results


def test_results_and_exact_target_sparsity(finished):
    workdir, results = finished
    for key in (
        "top1",
        "top5",
        "sparsity",
        "macs",
        "dense_macs",
        "steps",
        "model",
        "criterion",
        "target_sparsity",
        "wall_time_s",
        "train_time_s",
    ):
        assert key in results
    assert results["steps"] == NUM_STEPS and results["model"] == "tiny_resnet"
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["top1"] == results["top1"]
    assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
    assert 0 < results["macs"] < results["dense_macs"]
    # Exactly floor(N * (1 - 0.9)) of the N masked weights are kept.
    export = np.load(workdir / "export" / "model.npz")
    kernels = [k for k in export.files if k.startswith("params/") and export[k].ndim >= 2]
    total = sum(export[k].size for k in kernels)
    kept = sum(int(np.count_nonzero(export[k])) for k in kernels)
    assert kept == math.floor(total * (1 - 0.9) + 1e-9)
    assert results["sparsity"] == pytest.approx(1 - kept / total, abs=1e-12)
    assert results["target_sparsity"] == 0.9
    # The paper's config runs on the reference's schedules; results.json names them.
    assert results["reference_schedules"] is True and on_disk["schedule"] == "reference_sigmoid"
    assert on_disk["optg_settings"]["schedule"] == "reference_sigmoid"
    assert on_disk["optg_settings"]["mask_update_every"] == 3  # one epoch
    # The best of the epochs' evaluations, and the epoch it came from.
    evals = [(r["eval/top1"], r["epoch"]) for r in records(workdir) if "eval/top1" in r]
    best = max(evals, key=lambda e: e[0])
    assert (results["best_top1"], results["best_top1_epoch"]) == best
    assert on_disk["best_top1"] == results["best_top1"] >= results["top1"]


def test_workdir_contents(finished):
    workdir, _ = finished
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert steps == [4, 6]  # keep_checkpoints=2
    epochs = [r for r in records(workdir) if "eval/top1" in r]
    assert [r["step"] for r in epochs] == [3, 6]
    last = epochs[-1]
    for key in (
        "train/loss",
        "train/accuracy",
        "eval/top5",
        "sparsity/global",
        "sparsity/target",
        "macs/sparse",
        "macs/dense",
        "lr",
        "score_lr",
        "eval/best_top1",
        "eval/best_top1_epoch",
    ):
        assert key in last
    assert last["eval/best_top1"] == max(r["eval/top1"] for r in epochs)
    # The reference's lr per epoch (effective 0.1 * 8 / 256, one warm-up epoch, cosine over 2):
    # epoch 0 at the peak, epoch 1 at 0.5 * peak * (1 + cos(pi / 2)).
    peak = 0.1 * 8 / 256
    assert [r["lr"] for r in epochs] == pytest.approx([peak, 0.5 * peak], rel=1e-6)
    # The reference's sparsity: 0.9 sigmoid(0 - 1) over epoch 0 (masks selected at init), and
    # exactly 0.9 after the last update (instead of the reference's 0.9 sigmoid(1 - 1)).
    export = np.load(workdir / "export" / "model.npz")
    total = sum(
        export[k].size for k in export.files if k.startswith("params/") and export[k].ndim >= 2
    )
    kept = [math.floor(total * (1 - 0.9 / (1 + math.exp(1)))), math.floor(total * 0.1 + 1e-9)]
    assert [r["sparsity/global"] for r in epochs] == pytest.approx([1 - k / total for k in kept])
    assert isinstance(last["sparsity/layers"], dict) and last["sparsity/layers"]
    assert os.listdir(workdir / "tb")
    assert json.loads((workdir / "config.json").read_text())["identity"]["model"] == "tiny_resnet"


def test_rerun_after_completion_does_no_steps(finished):
    workdir, results = finished
    before = snapshot(workdir)
    again = run(imagenet_test_config(), workdir)
    assert again["steps"] == NUM_STEPS and again["top1"] == results["top1"]
    assert snapshot(workdir) == before


def test_rerun_of_a_run_written_before_the_macs_rename_prints_its_results(
    finished, tmp_path, capsys
):
    """A results.json with the old keys `flops`/`dense_flops` still reads as a finished run."""
    workdir, results = finished
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    on_disk = json.loads((old / "results.json").read_text())
    renamed = {"macs": "flops", "dense_macs": "dense_flops"}
    (old / "results.json").write_text(
        json.dumps({renamed.get(k, k): v for k, v in on_disk.items()})
    )
    before = snapshot(old)
    capsys.readouterr()
    again = run(imagenet_test_config(), old)
    out = capsys.readouterr().out
    assert again["macs"] == results["macs"] and again["dense_macs"] == results["dense_macs"]
    assert "flops" not in again and again["top1"] == results["top1"]
    assert "holds a finished run" in out
    ratio = results["dense_macs"] / results["macs"]
    assert f"{ratio:.1f}x fewer" in out and "MACs (dense)" in out
    assert re.search(rf"best top-1 \(epoch\) +{100 * results['best_top1']:.2f}% \(epoch ", out)
    assert snapshot(old) == before


def test_eval_only(finished):
    workdir, results = finished
    out = run(imagenet_test_config(eval_only=True), workdir)
    assert out["steps"] == NUM_STEPS and out["top1"] == pytest.approx(results["top1"])
    assert out["sparsity"] == results["sparsity"] and out["macs"] == results["macs"]
    assert (workdir / "eval_results.json").exists()


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"model": "resnet18"}, "model='tiny_resnet'"),
        ({"sparsity": 0.95}, "sparsity=0.9"),
    ],
)
def test_workdir_of_another_run_is_refused(finished, overrides, named):
    workdir, _ = finished
    before = snapshot(workdir)
    with pytest.raises(ConfigError) as e:
        run(imagenet_test_config(**overrides), workdir)
    assert named in str(e.value) and "\n" not in str(e.value)
    assert snapshot(workdir) == before


def test_checkpoint_of_another_model_is_refused(finished, tmp_path):
    workdir, _ = finished
    other = tmp_path / "w"
    shutil.copytree(workdir / "checkpoints", other / "checkpoints")  # No config.json.
    with pytest.raises(ConfigError, match="another model"):
        run(imagenet_test_config(model="resnet18"), other)


def test_corrupt_latest_checkpoint_falls_back_and_resumes_exactly(finished, tmp_path, capsys):
    workdir, _ = finished
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy)
    os.remove(copy / "results.json")
    for base, _, files in os.walk(copy / "checkpoints" / "6"):
        for f in files:
            with open(os.path.join(base, f), "r+b") as fh:
                fh.truncate(max(0, os.path.getsize(os.path.join(base, f)) // 3))
    # The best top-1 survives the restart through metrics.jsonl: say epoch 1 (step 3, before the
    # checkpoint resumed from) was the best; the record of step 6 (after it) is recomputed.
    lines = []
    for record in records(copy):
        if "eval/top1" in record:
            record["eval/top1"] = {3: 0.99, 6: 1.0}[record["step"]]
        lines.append(json.dumps(record))
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    results = run(imagenet_test_config(), copy)
    out = capsys.readouterr().out
    assert "step 6 is unreadable" in out and "falling back to step 4" in out
    assert results["steps"] == NUM_STEPS
    assert results["top1"] < 0.99
    assert (results["best_top1"], results["best_top1_epoch"]) == (0.99, 1.0)
    assert records(copy)[-1]["eval/best_top1"] == 0.99
    # Resuming from step 4 gives bitwise the same weights as the uninterrupted run.
    want, got = np.load(workdir / "export" / "model.npz"), np.load(copy / "export" / "model.npz")
    assert sorted(want.files) == sorted(got.files)
    for k in want.files:
        np.testing.assert_array_equal(want[k], got[k], err_msg=k)


def test_a_changed_global_batch_resumes_only_with_allow_reshard(finished, tmp_path, capsys):
    """Another batch_size cannot continue the saved run exactly (another data order and epoch):
    one line that names the fix and writes nothing; with allow_reshard it resumes from the
    latest checkpoint (step 4, mid-epoch) and records the new batch."""
    workdir, _ = finished
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy)
    os.remove(copy / "results.json")
    shutil.rmtree(copy / "checkpoints" / "6")
    before = snapshot(copy)
    with pytest.raises(ConfigError) as e:
        run(imagenet_test_config(batch_size=16), copy)
    message = str(e.value)
    assert "\n" not in message and "batch_size=8 (this config: 16)" in message
    assert "--config.allow_reshard=True" in message
    assert snapshot(copy) == before
    with pytest.raises(ConfigError, match="sparsity=0.9"):  # Other fields are still checked.
        run(imagenet_test_config(batch_size=16, sparsity=0.8, allow_reshard=True), copy)
    capsys.readouterr()
    results = run(imagenet_test_config(batch_size=16, allow_reshard=True), copy)
    out = capsys.readouterr().out
    assert "resuming from the checkpoint at step 4" in out
    assert "written with batch_size=8 (this run: 16); resuming anyway" in out
    assert (results["steps"], results["batch_size"]) == (NUM_STEPS, 16)
    stored = json.loads((copy / "config.json").read_text())
    assert stored["identity"]["batch_size"] == 16


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "w"
    config = imagenet_test_config(
        learning_rate=1e30,
        warmup_epochs=0.0,
        steps_per_epoch=6,
        num_epochs=1,
        checkpoint_every_steps=1,
        criterion="dense",
    )
    with pytest.raises(training.TrainingError) as e:
        run(config, workdir)
    message = str(e.value)
    assert "\n" not in message and "at step" in message and "last good checkpoint" in message
    assert not (workdir / "results.json").exists()
    mngr = checkpoints.manager(str(workdir), 2, create=False)
    kept = mngr.latest_step()
    assert kept is not None and f"step {kept}" in message


@pytest.mark.slow
def test_dense_baseline_and_bfloat16(tmp_path):
    results = run(imagenet_test_config(criterion="dense", dtype="bfloat16"), tmp_path / "w")
    assert results["sparsity"] == 0.0 and results["macs"] == results["dense_macs"]
    assert results["steps"] == NUM_STEPS and results["layer_sparsity"] == {}


@pytest.mark.slow
def test_train_py_end_to_end_and_rerun(tmp_path):
    """train.py on mocked data (through a tiny wrapper that enables tfds.testing.mock_data)."""
    import subprocess  # pylint: disable=import-outside-toplevel,multiple-imports
    import sys

    wrapper = tmp_path / "mock_train.py"
    wrapper.write_text(
        "import runpy, sys\n"
        "from tests.test_train import mock_data\n"
        f"sys.argv[0] = {os.path.join(ROOT, 'train.py')!r}\n"
        "with mock_data():\n"
        "  runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    args = [
        sys.executable,
        str(wrapper),
        "--config=configs/resnet50_imagenet.py",
        f"--workdir={tmp_path / 'w'}",
        "--config.model=tiny_resnet",
        "--config.image_size=32",
        "--config.batch_size=8",
        "--config.steps_per_epoch=2",
        "--config.num_epochs=1",
        "--config.steps_per_eval=1",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "top-1 accuracy" in first.stdout
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "holds a finished run" in again.stdout


def test_validation_split_is_evaluated_instead_of_test(tmp_path):
    config = imagenet_test_config(
        dataset="fashion_mnist",
        model="fmnist_cnn",
        image_size=28,
        validation_examples=12,
        steps_per_eval=-1,
        num_epochs=1,
    )
    results = run(config, tmp_path / "w")  # 32 mocked training examples: 20 train, 12 held out.
    assert results["eval_split"] == "train[-12:]" and results["num_eval_examples"] == 12
    config.validation_examples = 0
    results = run(config, tmp_path / "t")
    assert results["eval_split"] == "test" and results["num_eval_examples"] == 32


def test_data_fields_select_the_streamed_augmented_pipeline(tmp_path, monkeypatch):
    """`data_in_memory=False` and `augment='on'` train Fashion-MNIST through tf.data, augmented."""
    from optg_jax.train import data  # pylint: disable=import-outside-toplevel

    calls, first_batches = [], []
    original = data.train_iterator

    def spy(*args, **kwargs):
        calls.append(dict(kwargs, args=args))
        batches = original(*args, **kwargs)
        first_batches.append(next(batches))
        return itertools.chain(first_batches[-1:], batches)

    monkeypatch.setattr(data, "train_iterator", spy)
    fields = dict(dataset="fashion_mnist", model="fmnist_cnn", image_size=28, num_epochs=1)
    config = imagenet_test_config(data_in_memory=False, augment="on", **fields)
    results = run(config, tmp_path / "w")
    assert results["steps"] == 3 and 0 <= results["top1"] <= 1
    options = calls[0]["args"][-1]
    assert (options.cache, options.augment) == (False, True)
    # The batches the run trained on are the streamed, augmented ones: the in-memory pipeline
    # without augmentation yields other images for the same step.
    with tfds.testing.mock_data(num_examples=32):
        plain = next(original("fashion_mnist", None, 8, 0, options=data.Options(augment=False)))
        streamed_options = data.Options(cache=False, augment=True)
        streamed = next(original("fashion_mnist", None, 8, 0, options=streamed_options))
    np.testing.assert_array_equal(first_batches[0]["image"], streamed["image"])
    assert not np.array_equal(first_batches[0]["image"], plain["image"])


def test_sparse_export_loads_to_the_masked_model(finished):
    """export/model_sparse.npz gives the dense export's variables, hence its logits."""
    import jax
    import jax.numpy as jnp

    import optg_jax
    from optg_jax import export
    from optg_jax.train import models

    workdir, _ = finished
    loaded = optg_jax.load_sparse(workdir / "export")
    dense = np.load(workdir / "export" / "model.npz")
    flat = export.flatten(loaded)
    assert sorted(flat) == sorted(dense.files)
    masked = export.unflatten({k: dense[k] for k in dense.files})
    model = models.create("tiny_resnet", dense["params/fc/kernel"].shape[-1])
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
    apply = jax.jit(lambda v: model.apply(v, x, train=False))
    np.testing.assert_array_equal(apply(loaded), apply(masked))
    sparse_size = os.path.getsize(workdir / "export" / export.SPARSE_FILE)
    assert sparse_size < 0.5 * os.path.getsize(workdir / "export" / "model.npz")  # 90% sparse

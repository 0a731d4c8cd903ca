"""Pruning a pretrained network: `config.init_from` and `config.reinit` in the training program
(`optg_jax.train.pretrained`), and the library recipe for a loop of one's own.

Tiny runs on mocked Fashion-MNIST (as tests/test_train.py): a sparse `fmnist_cnn` is trained for
two steps, then new sparse runs start from its workdir and its sparse export and one resumes; a
sparse `vit_tiny` likewise from its sparse export file with a new head (`-m slow`: two ViT runs
take about four minutes on a 2-core CPU). Every zoo model's loading path is checked on a written
checkpoint and export of weights of its own with another number of classes; the errors on
written sources of another model or shape."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

import optg_jax
from optg_jax import export as export_lib
from optg_jax.train import checkpoints, models, pretrained, steps, training
from optg_jax.train import config as config_lib
from optg_jax.train.config import ConfigError
from tests.test_train import mock_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFIER = {"fmnist_cnn": "fc2", "vit_tiny": "head"}  # every other zoo model: "fc"


def load_config(name, **overrides):
    """configs/<name>.py shrunk to one epoch of 2 steps at batch 8, sparse."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(
        dict(
            batch_size=8,
            steps_per_epoch=2,
            num_epochs=1,
            steps_per_eval=1,
            checkpoint_every_steps=2,
            keep_checkpoints=5,
            log_every_steps=1,
            sparsity=0.9,
        )
    )
    config.update(overrides)
    return config


def run(config, workdir):
    with mock_data():  # Synchronous saves while TFDS's mock swaps the file system (test_train).
        return training.train_and_evaluate(config, str(workdir))


def fresh_variables(config):
    """The variables a run of `config` initialises from its seed (as `train_and_evaluate`)."""
    with tfds.testing.mock_data(num_examples=32):
        r = training.Run.create(config, "/nonexistent")
    state = jax.jit(r.init_state)(jax.random.key(config.seed, impl="rbg"))
    return export_lib.flatten({"params": state.params, "batch_stats": state.batch_stats})


def step0(workdir):
    """The flat params and batch statistics of a run's checkpoint at step 0, and its OptG state."""
    tree, _ = pretrained.read_checkpoint(str(workdir), 0, ("params", "batch_stats", "opt_state"))
    # Read without a target, the chain's state is plain containers: the OptGState comes first.
    return export_lib.flatten(tree), tree["opt_state"][0]


def latest(workdir):
    tree, _ = pretrained.read_checkpoint(str(workdir))
    return export_lib.flatten(tree)


def assert_starts_from(got, source, fresh, reinit=()):
    """Every leaf of `got` is the source's, or the fresh init's under a reinit module."""
    assert sorted(got) == sorted(fresh)
    for key, value in got.items():
        want = fresh[key] if set(key.split("/")[1:]) & set(reinit) else source[key]
        np.testing.assert_array_equal(value, want, err_msg=key)


@pytest.fixture(scope="module")
def cnn_source(tmp_path_factory):
    """A finished sparse fmnist_cnn run (2 steps, 90%): its workdir."""
    workdir = tmp_path_factory.mktemp("cnn") / "source"
    run(load_config("fashion_mnist"), workdir)
    return workdir


@pytest.fixture(scope="module")
def from_workdir(cnn_source, tmp_path_factory):
    """A new sparse run (50%, seed 1, one step) from a copy of `cnn_source`, classifier re-init'd."""
    base = tmp_path_factory.mktemp("from_workdir")
    source = base / "source"
    shutil.copytree(cnn_source, source)
    config = load_config(
        "fashion_mnist", init_from=str(source), reinit=("fc2",), sparsity=0.5, seed=1
    )
    config.steps_per_epoch = 1
    results = run(config, base / "new")
    return config, source, base / "new", results


def test_a_run_starts_from_a_workdirs_latest_checkpoint(cnn_source, from_workdir):
    config, _, workdir, results = from_workdir
    got, optg_state = step0(workdir)
    assert_starts_from(got, latest(cnn_source), fresh_variables(config), reinit=("fc2",))
    assert any(k.startswith("batch_stats/") for k in got)  # BatchNorm statistics taken too
    # A fresh optimizer: step 0, no scores, full masks (the cubic ramp starts at 0%).
    assert int(optg_state["count"]) == 0
    assert all(np.all(m == 1) for m in jax.tree.leaves(optg_state["masks"]))
    assert all(np.all(s == 0) for s in jax.tree.leaves(optg_state["scores"]))
    assert results["init_from"] == config_lib.init_from_path(config.init_from)
    assert results["reinit"] == ["fc2"] and results["steps"] == 1
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["init_from"] == str(from_workdir[1]) and on_disk["reinit"] == ["fc2"]
    identity = json.loads((workdir / "config.json").read_text())["identity"]
    assert identity["init_from"] == str(from_workdir[1]) and identity["reinit"] == ["fc2"]


@pytest.mark.slow  # a whole run (a subprocess): ~1-2 minutes on a 2-core CPU
def test_a_run_starts_from_a_sparse_export_with_its_zeros(cnn_source, tmp_path):
    config = load_config(
        "fashion_mnist", init_from=str(cnn_source / "export"), sparsity=0.5, seed=1
    )
    config.steps_per_epoch = 1
    run(config, tmp_path / "new")
    got, optg_state = step0(tmp_path / "new")
    source = export_lib.flatten(optg_jax.load_sparse(cnn_source / "export"))
    assert_starts_from(got, source, fresh_variables(config))
    # The source is 90% sparse; the new run's masks start full and its own ramp prunes again.
    kernel = got["params/fc1/kernel"]
    assert np.mean(kernel == 0) > 0.85
    assert all(np.all(m == 1) for m in jax.tree.leaves(optg_state["masks"]))


def test_resume_restores_its_own_checkpoint_and_never_reads_init_from(from_workdir, tmp_path):
    config, source, workdir, _ = from_workdir
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy)
    os.remove(copy / "results.json")
    shutil.rmtree(copy / "checkpoints" / "1")
    shutil.rmtree(source)  # the source is gone: a resumed run must not need it
    results = run(config, copy)
    assert results["steps"] == 1
    want, got = np.load(workdir / "export" / "model.npz"), np.load(copy / "export" / "model.npz")
    assert sorted(want.files) == sorted(got.files)
    for k in want.files:
        np.testing.assert_array_equal(want[k], got[k], err_msg=k)


def test_another_init_from_or_reinit_is_another_experiment(from_workdir, cnn_source):
    config, _, workdir, _ = from_workdir
    for field, value in (("init_from", str(cnn_source)), ("reinit", ("fc1",))):
        other = config.copy_and_resolve_references()
        other[field] = value
        with pytest.raises(ConfigError, match=f"{field}="):
            run(other, workdir)


@pytest.fixture(scope="module")
def vit_source(tmp_path_factory):
    """A finished sparse vit_tiny run (2 steps, 90%): its workdir (about two minutes here)."""
    workdir = tmp_path_factory.mktemp("vit") / "source"
    run(load_config("vit_fashion_mnist"), workdir)
    return workdir


@pytest.mark.slow
def test_vit_starts_from_a_sparse_export_file_with_a_new_head(vit_source, tmp_path):
    sparse_file = vit_source / "export" / export_lib.SPARSE_FILE
    config = load_config(
        "vit_fashion_mnist", init_from=str(sparse_file), reinit=("head",), sparsity=0.5, seed=3
    )
    config.steps_per_epoch = 1
    results = run(config, tmp_path / "new")
    assert results["reinit"] == ["head"]
    got, _ = step0(tmp_path / "new")
    source = export_lib.flatten(optg_jax.load_sparse(sparse_file))
    assert_starts_from(got, source, fresh_variables(config), reinit=("head",))
    assert not np.array_equal(got["params/head/kernel"], source["params/head/kernel"])


# --------------------------------------------------------------------------- every zoo model


ZOO_INPUT = {"fmnist_cnn": (28, 28, 1), "vit_tiny": (28, 28, 1)}  # the others: 32x32x3


def zoo_shapes(model_name, num_classes=10):
    """`{'params/<path>': shape, ...}` of a zoo model at its test input size."""
    image_shape = ZOO_INPUT.get(model_name, (32, 32, 3))
    model = models.create(model_name, num_classes)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
    )
    return checkpoints.shapes(dict(abstract))


def write_source(model_name, shapes, tmp_path, kind):
    """A checkpoint or an export of `model_name` with weights of its own (90% zeros), flat."""
    rng = np.random.default_rng(0)
    flat = {}
    for key, shape in shapes.items():
        value = np.zeros(int(np.prod(shape)), np.float32)
        value[::10] = rng.standard_normal(value[::10].size)
        flat[key] = value.reshape(shape)
    variables = export_lib.unflatten(flat)
    path = tmp_path / kind
    if kind == "checkpoint":
        state = steps.TrainState(jnp.asarray(7), variables["params"], variables["batch_stats"], {})
        mngr = checkpoints.manager(str(path), keep=1)
        checkpoints.save(mngr, 7, state)
        mngr.close()
        checkpoints.write_workdir_config(str(path), {"model": model_name}, {}, {})
    else:
        checkpoints.export(str(path), variables["params"], variables["batch_stats"], {})
        checkpoints.write_json(path / "export" / "info.json", {"model": model_name})
        path = path / "export"
    return path, flat


# The ResNet-50-sized zoo members take ~25 s each to build on a CPU: under -m slow.
ZOO = [
    pytest.param(name, marks=pytest.mark.slow)
    if name.startswith("resnet") and name != "resnet20"
    else name
    for name in models.names()
]


@pytest.mark.parametrize("model_name", ZOO)
def test_every_zoo_model_loads_with_a_new_classifier(model_name, tmp_path):
    """A checkpoint and an export of 7 classes load into the 10-class model, classifier fresh."""
    shapes = zoo_shapes(model_name)
    head = CLASSIFIER.get(model_name, "fc")
    under_head = {k for k in shapes if head in k.split("/")[1:]}
    assert under_head and all(shapes[k][-1] == 10 for k in under_head)
    source_shapes = {k: v[:-1] + [7] if k in under_head else v for k, v in shapes.items()}
    for kind in ("checkpoint", "export"):
        path, source = write_source(model_name, source_shapes, tmp_path, kind)
        config = config_lib.base_config()
        config.update(dict(model=model_name, init_from=str(path)))
        with pytest.raises(ConfigError, match=rf"leaf params/{head}/(kernel|bias) has shape"):
            pretrained.load(config, shapes)
        config.reinit = (head,)
        loaded = pretrained.load(config, shapes)
        assert set(loaded.leaves) == set(shapes) - under_head
        assert set(loaded.reinit) == under_head
        for k, value in loaded.leaves.items():
            np.testing.assert_array_equal(value, source[k], err_msg=k)


def test_start_state_takes_the_leaves_and_inits_the_optimizer_on_them():
    """`start_state` on a fresh state: the given leaves, the rest kept, OptG's state from them."""
    fresh = steps.TrainState(
        step=jnp.zeros((), jnp.int32),
        params={"a": {"kernel": jnp.zeros((4, 3))}, "head": {"kernel": jnp.ones((3, 2))}},
        batch_stats={"bn": {"mean": jnp.zeros(3)}},
        opt_state=None,
    )
    kernel = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    source = pretrained.Pretrained(
        {"params/a/kernel": kernel, "batch_stats/bn/mean": np.ones(3)},
        {"params/head/kernel": [3, 2]},
        "",
    )
    tx = optg_jax.optg_optax(0.5, 10, 0.1, criterion="magnitude", schedule="constant")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: sharding, fresh.replace(opt_state=tx.init(fresh.params)))
    state = pretrained.start_state(fresh, source, tx, shardings)
    np.testing.assert_array_equal(state.params["a"]["kernel"], kernel)
    np.testing.assert_array_equal(state.params["head"]["kernel"], np.ones((3, 2)))
    np.testing.assert_array_equal(state.batch_stats["bn"]["mean"], np.ones(3))
    # At a constant 50% the magnitude masks at init are selected from the loaded weights.
    masks = optg_jax.get_masks(state.opt_state)
    np.testing.assert_array_equal(masks["a"]["kernel"], kernel >= 3)  # the 9 largest of 18
    np.testing.assert_array_equal(masks["head"]["kernel"], 0)


# --------------------------------------------------------------------------- errors


def snapshot_absent(workdir):
    return not workdir.exists() or not any(workdir.iterdir())


def cnn_config(**overrides):
    return load_config("fashion_mnist", **overrides)


@pytest.fixture(scope="module")
def other_sources(tmp_path_factory):
    """Sources the cnn config cannot start from: a vit_tiny workdir and export, a 7-class
    fmnist_cnn export."""
    vit = zoo_shapes("vit_tiny")
    cnn7 = zoo_shapes("fmnist_cnn", num_classes=7)
    return [
        write_source(name, shapes, tmp_path_factory.mktemp("other"), kind)[0]
        for name, shapes, kind in (
            ("vit_tiny", vit, "checkpoint"),
            ("vit_tiny", vit, "export"),
            ("fmnist_cnn", cnn7, "export"),
        )
    ]


def error_cases(cnn_source, other_sources, tmp_path):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    bad_npz = tmp_path / "bad" / "model.npz"
    bad_npz.parent.mkdir()
    bad_npz.write_bytes(b"not a zip file")
    (bad_npz.parent / "info.json").write_text(json.dumps({"model": "fmnist_cnn"}))
    missing = tmp_path / "no_such_run"
    vit_workdir, vit_export, cnn7_export = other_sources
    return [
        (dict(init_from=str(missing)), f"config.init_from='{missing}': no such file or directory"),
        (dict(init_from=str(empty)), "neither a run's workdir (config.json) nor an export"),
        (dict(init_from=str(bad_npz)), "cannot read model.npz ("),
        (
            dict(init_from=str(vit_workdir)),
            "holds the model vit_tiny, not this config's model fmnist_cnn",
        ),
        (
            dict(init_from=str(vit_export)),
            "holds the model vit_tiny, not this config's model fmnist_cnn",
        ),
        (
            dict(init_from=str(cnn7_export)),
            "leaf params/fc2/bias has shape (7,) there but (10,) in this model",
        ),
        (
            dict(init_from=str(cnn_source), reinit=("head",)),
            "config.reinit name 'head' matches no leaf of the model fmnist_cnn",
        ),
        (dict(reinit=("fc2",)), "config.reinit=('fc2',) needs config.init_from"),
    ]


def test_errors_are_one_line_and_write_nothing(cnn_source, other_sources, tmp_path):
    for i, (overrides, message) in enumerate(error_cases(cnn_source, other_sources, tmp_path)):
        workdir = tmp_path / f"w{i}"
        with pytest.raises(ConfigError) as e:
            run(cnn_config(**overrides), workdir)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert not workdir.exists(), overrides


def test_a_workdir_without_checkpoints_is_refused(cnn_source, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(cnn_source, source)
    shutil.rmtree(source / "checkpoints")
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        run(cnn_config(init_from=str(source)), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_reinit_names_split_commas_and_refuse_paths():
    config = config_lib.base_config()
    config.reinit = ("head,fc", " norm ", "fc")
    assert config_lib.reinit_names(config) == ("head", "fc", "norm")
    config.reinit = ("block0/attn",)
    with pytest.raises(ConfigError, match="not paths"):
        config_lib.reinit_names(config)


@pytest.mark.slow  # a whole run (a subprocess): ~1-2 minutes on a 2-core CPU
def test_train_py_missing_init_from_is_one_error_line(tmp_path):
    workdir, missing = tmp_path / "run", tmp_path / "nowhere"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--config=configs/fashion_mnist.py",
            f"--workdir={workdir}",
            f"--config.init_from={missing}",
            "--config.reinit=fc2,fc1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"error: config.init_from='{missing}': no such file or directory"
    assert "Traceback" not in proc.stderr and not workdir.exists()


# --------------------------------------------------------------------------- the library recipe


class MLP(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32, name="hidden")(x))
        return nn.Dense(self.num_classes, name="head")(x)


@pytest.mark.parametrize("criterion", ["optg", "magnitude"])
def test_library_recipe_starts_optg_from_pretrained_weights(criterion, tmp_path):
    """docs/library.md, "Pruning a pretrained network": load, new head, optg_optax, the loop."""
    x = jax.random.normal(jax.random.key(0), (64, 16))
    y = jax.random.randint(jax.random.key(1), (64,), 0, 3)
    # A "pretrained" 5-class network, exported and read back as a user would.
    old = MLP(5).init(jax.random.key(2), x)
    export_lib.write_sparse(tmp_path / "model_sparse.npz", {"params": old["params"]})

    # The recipe.
    params = optg_jax.load_sparse(tmp_path / "model_sparse.npz")["params"]
    model = MLP(num_classes=3)
    params["head"] = model.init(jax.random.key(3), x)["params"]["head"]  # a new head
    total_steps = 20
    tx = optax.chain(
        optg_jax.optg_optax(0.9, total_steps, learning_rate=1e-2, criterion=criterion),
        optax.adamw(1e-2),
    )
    state = tx.init(params)

    def loss_fn(masked):
        logits = model.apply({"params": masked}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, state):
        grads = jax.grad(loss_fn)(optg_jax.apply_masks(params, state))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # Step 0: the pretrained weights as they are, every mask full.
    np.testing.assert_array_equal(params["hidden"]["kernel"], old["params"]["hidden"]["kernel"])
    masked = optg_jax.apply_masks(params, state)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), masked, params))
    assert all(bool(jnp.all(m == 1)) for m in jax.tree.leaves(optg_jax.get_masks(state)))

    # The first refresh prunes by the criterion: the kept weights are the top-k of its ranking
    # (optg: the accumulated scores; magnitude: |W|) at that update.
    for _ in range(total_steps):
        before, weights = optg_jax.get_optg_state(state), params
        params, state = train_step(params, state)
        masks = jax.tree.leaves(optg_jax.get_masks(state))
        kept = sum(int(m.sum()) for m in masks)
        if kept < sum(m.size for m in masks):
            break
    else:
        pytest.fail("no refresh pruned anything")
    kernels = [weights["head"]["kernel"], weights["hidden"]["kernel"]]
    ranks = jax.tree.leaves(before.scores) if criterion == "optg" else [abs(w) for w in kernels]
    flat = np.concatenate([np.asarray(r).reshape(-1) for r in ranks])
    chosen = np.concatenate([np.asarray(m).reshape(-1) for m in masks]).astype(bool)
    assert flat[chosen].min() >= flat[~chosen].max()

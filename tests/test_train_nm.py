"""N:M sparsity in the training program: the `pattern` and `nm_ramp` fields and their errors
(through `validate` and train.py), the sparsity a pattern implies, the per-leaf validity and MACs
of the report (by hand), whole runs with the N:M export read back to the same logits, and every
zoo model under 2:4 (its dense leaves by name; a real step under -m slow)."""

import functools
import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optg_jax
from optg_jax import export, nm
from optg_jax.train import config as config_lib
from optg_jax.train import models, steps, training
from tests.test_configs import load, refused, run_train_py
from tests.test_models import SPECS, abstract_variables
from tests.test_train import imagenet_test_config, records, run

# ------------------------------------------------------------------------------------ config


def test_fields_default_to_unstructured_and_the_library_ramp():
    config = config_lib.base_config()
    assert config.pattern is None and config.nm_ramp == "groups"
    assert {"pattern", "nm_ramp"} <= set(config_lib.IDENTITY_FIELDS)
    config = load("fashion_mnist")
    config.update(pattern="1:4", sparsity=0.75, nm_ramp="n", criterion="sr_ste")
    config_lib.validate(config)
    settings = steps.optg_settings(config, 100, 10).resolved()
    assert (settings.pattern, settings.nm_ramp) == (nm.NMPattern(1, 4), "n")
    assert settings.rule.name == "sr_ste" and settings.target_sparsity == 0.75


@pytest.mark.parametrize("pattern", ["3:2", "0:4", "2:x", "2:4 ", "4:4"])
def test_bad_pattern_is_one_line_naming_the_field(pattern):
    message = refused(load("fashion_mnist"), "pattern", pattern)
    assert "N:M" in message


def test_sparsity_that_disagrees_with_the_pattern_is_refused_by_the_library_check():
    config = load("fashion_mnist")  # sparsity 0.95
    config.pattern = "2:4"
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(config)
    assert str(e.value) == (
        "config.sparsity 0.95 does not match pattern 2:4, which removes 0.5 of every group"
    )
    config.update(sparsity=0.5, nm_ramp="rows")
    with pytest.raises(config_lib.ConfigError, match="config.nm_ramp must be one of groups, n"):
        config_lib.validate(config)
    config.update(nm_ramp="groups", criterion="dense")
    assert "needs a sparse criterion" in refused(config, "pattern", "2:4")


@pytest.mark.parametrize(
    "pattern,given,want",
    [("2:4", False, 0.5), ("1:4", False, 0.75), ("2:8", False, 0.75)]
    + [("2:4", True, 0.95), (None, False, 0.95), ("3:2", False, 0.95)],
)
def test_the_sparsity_comes_from_the_pattern_unless_given(pattern, given, want):
    config = load("fashion_mnist")
    config.pattern = pattern
    config_lib.pattern_sparsity(config, sparsity_given=given)
    assert config.sparsity == want


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config.pattern=3:2"], "config.pattern='3:2'"),
        pytest.param(["--config.pattern=0:4"], "config.pattern='0:4'", marks=pytest.mark.slow),
        pytest.param(["--config.pattern=2:x"], "config.pattern='2:x'", marks=pytest.mark.slow),
        (["--config.pattern=2:4", "--config.sparsity=0.9"], "config.sparsity 0.9 does not match"),
    ],
)
def test_train_py_bad_pattern_is_one_line_and_writes_nothing(tmp_path, args, expected):
    workdir = tmp_path / "run"
    proc = run_train_py(
        tmp_path, "--config=configs/fashion_mnist.py", f"--workdir={workdir}", *args
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and expected in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and not workdir.exists()


# ------------------------------------------------------------------------------- the figures


class Small(nn.Module):
    """4x4x3 input: conv1 3x3 3 -> 8 (SAME), conv2 3x3 8 -> 8 (SAME), fc 128 -> 4."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(8, (3, 3), name="conv2")(x))
        return nn.Dense(4, name="fc")(x.reshape(x.shape[0], -1))


def small_run_and_state():
    config = imagenet_test_config(pattern="2:4", sparsity=0.5, schedule="constant")
    config.reference_schedules = False
    model = Small()
    tx = steps.make_optimizer(config, 10, 10, lambda step: 0.1, sparse=True)
    init = functools.partial(steps.create_train_state, model=model, tx=tx, input_shape=(4, 4, 3))
    state = jax.jit(init)(jax.random.key(0, impl="rbg"))
    info = types.SimpleNamespace(image_shape=(4, 4, 3))
    return types.SimpleNamespace(config=config, model=model, info=info, sparse=True), state


def test_figures_by_hand_per_leaf_validity_and_macs():
    """MACs per example: conv1 16 positions x 8 outputs x 9 taps x 3 inputs = 3456 (3 inputs do
    not divide by 4: dense); conv2 16 x 8 x 9 x 8 = 9216, at 2:4 4608; fc 128 x 4 = 512, 256.
    The constant schedule holds 2:4 from step 0 (zero scores: the first 2 of each group)."""
    run_, state = small_run_and_state()
    figures = training.sparsity_figures(run_, state)
    assert figures["pattern"] == "2:4" and figures["nm_valid_fraction"] == 1.0
    assert figures["nm_layers"] == {
        "conv1/kernel": {
            "covered": False,
            "valid_fraction": None,
            "dense_macs": 3456,
            "macs": 3456,
        },
        "conv2/kernel": {"covered": True, "valid_fraction": 1.0, "dense_macs": 9216, "macs": 4608},
        "fc/kernel": {"covered": True, "valid_fraction": 1.0, "dense_macs": 512, "macs": 256},
    }
    assert (figures["dense_macs"], figures["macs"]) == (3456 + 9216 + 512, 3456 + 4608 + 256)
    # fc's first group (inputs 0-3 of output 0) keeps 3: 127 of its 128 groups hold 2:4, and of
    # the 144 + 128 groups of the covered leaves 271; fc keeps 257 of 512 weights.
    optg_state = optg_jax.get_optg_state(state.opt_state)
    fc = np.asarray(optg_state.masks["fc"]["kernel"]).copy()
    assert fc[:4, 0].tolist() == [1, 1, 0, 0]
    fc[2, 0] = 1
    masks = {**optg_state.masks, "fc": {"kernel": jnp.asarray(fc)}}
    opt_state = jax.tree.map(
        lambda s: s._replace(masks=masks) if isinstance(s, optg_jax.OptGState) else s,
        state.opt_state,
        is_leaf=lambda s: isinstance(s, optg_jax.OptGState),
    )
    figures = training.sparsity_figures(run_, state.replace(opt_state=opt_state))
    assert figures["nm_layers"]["fc/kernel"] == {
        "covered": True,
        "valid_fraction": 127 / 128,
        "dense_macs": 512,
        "macs": 257,
    }
    assert figures["nm_valid_fraction"] == pytest.approx(271 / 272, abs=1e-7)


# -------------------------------------------------------------------------------- whole runs


def nm_config(**overrides):
    """A 2:4 run of fmnist_cnn on mocked Fashion-MNIST, 2 epochs of 3 steps on the reference's
    schedules: masks at p(0) = P sigmoid(-1) until the refresh of epoch 1, the final ones
    selected after the last step at exactly 2:4."""
    fields = dict(dataset="fashion_mnist", model="fmnist_cnn", image_size=28)
    return imagenet_test_config(pattern="2:4", sparsity=0.5, **(fields | overrides))


@pytest.fixture(scope="module")
def nm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nm") / "w"
    return workdir, run(nm_config(), workdir)


def test_run_reports_each_leaf_and_holds_the_pattern(nm_run):
    workdir, results = nm_run
    on_disk = json.loads((workdir / "results.json").read_text())
    assert on_disk["pattern"] == "2:4" and on_disk["optg_settings"]["pattern"] == "2:4"
    assert on_disk["nm_valid_fraction"] == 1.0 and on_disk["target_sparsity"] == 0.5
    layers = on_disk["nm_layers"]
    assert [k for k, v in layers.items() if not v["covered"]] == ["conv1/kernel"]  # 3 inputs
    for name, leaf in layers.items():
        if leaf["covered"]:
            assert leaf["valid_fraction"] == 1.0 and leaf["macs"] * 2 == leaf["dense_macs"], name
            assert on_disk["layer_sparsity"][name] == 0.5
        else:
            assert leaf["macs"] == leaf["dense_macs"] and on_disk["layer_sparsity"][name] == 0.0
    assert on_disk["macs"] == sum(v["macs"] for v in layers.values())
    evals = [r for r in records(workdir) if "eval/top1" in r]
    # Epoch 1 ran on the masks of p(0): the "groups" ramp had a fraction sigmoid(-1) of the
    # groups at 2:4 (the others whole); epoch 2 ends at exactly 2:4.
    first, last = [r["nm/valid_fraction"] for r in evals]
    assert first == pytest.approx(1 / (1 + np.e), abs=1e-3) and last == 1.0
    assert set(evals[-1]["nm/layers"]) == {k for k, v in layers.items() if v["covered"]}


def test_run_exports_two_four_and_loads_to_the_same_logits(nm_run):
    workdir, _ = nm_run
    with np.load(workdir / "export" / export.SPARSE_FILE) as entries:
        index = json.loads(str(entries["__index__"][()]))
    assert index["format"] == export.FORMAT_NM
    encodings = {k: v["encoding"] for k, v in index["leaves"].items() if k.endswith("kernel")}
    assert encodings.pop("params/conv1/kernel") != "nm" and set(encodings.values()) == {"nm"}
    assert json.loads((workdir / "export" / "info.json").read_text())["pattern"] == "2:4"
    loaded = optg_jax.load_sparse(workdir / "export")
    dense = np.load(workdir / "export" / "model.npz")
    masked = export.unflatten({k: dense[k] for k in dense.files})
    model = models.create("fmnist_cnn", 10)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 28, 28, 1)), jnp.float32)
    apply = jax.jit(lambda v: model.apply(v, x, train=False))
    np.testing.assert_array_equal(apply(loaded), apply(masked))


@pytest.mark.slow
def test_sr_ste_from_the_config_holds_the_pattern_from_the_start(tmp_path):
    """SR-STE as published: the pattern from step 0, masks of |W| every step."""
    config = nm_config(criterion="sr_ste", schedule="constant", mask_update_every=1, num_epochs=1)
    config.reference_schedules = False
    results = run(config, tmp_path / "w")
    assert results["nm_valid_fraction"] == 1.0 and results["sparsity"] > 0.49
    assert results["optg_settings"]["criterion"] == "sr_ste"


# ---------------------------------------------------------------------------------- the zoo

# The leaves whose group axis (input channels) does not divide by 4: 1- or 3-channel stems, and
# MobileNet's depthwise convs (one input channel per group).
DENSE_UNDER_TWO_FOUR = {
    "mobilenet_v1": ["conv1/kernel"] + [f"dw{i}/kernel" for i in range(1, 14)],
    "vgg19_cifar": ["conv0/kernel"],
    "vit_tiny": ["patch_embed/kernel"],
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_zoo_model_takes_the_pattern(name):
    num_classes, shape = SPECS[name]
    params = abstract_variables(models.create(name, num_classes), shape)["params"]
    plan = nm.nm_plan(params, 4)
    dense = sorted(k for k, axis in plan.items() if axis is None)
    assert dense == sorted(DENSE_UNDER_TWO_FOUR.get(name, ["conv1/kernel"]))
    config = imagenet_test_config(model=name, pattern="2:4", sparsity=0.5)
    config_lib.validate(config)


def small_input(shape):
    """ImageNet models at 32x32 (their pools and global average take any size)."""
    return (32, 32, 3) if shape[0] == 224 else shape


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_zoo_model_trains_a_step_at_exactly_two_four(name):
    """One real jitted step; pruning ends with the run, so its final masks are 2:4 exactly."""
    num_classes, shape = SPECS[name]
    shape = small_input(shape)
    model = models.create(name, num_classes)
    config = imagenet_test_config(pattern="2:4", sparsity=0.5)
    tx = steps.make_optimizer(config, 1, 1, lambda step: 0.1, sparse=True)
    init = jax.jit(
        functools.partial(steps.create_train_state, model=model, tx=tx, input_shape=shape)
    )
    state = init(jax.random.key(0, impl="rbg"))
    step = steps.jit_train_step(model, tx, num_classes, sparse=True)
    batch = {
        "image": jnp.asarray(np.random.default_rng(0).normal(size=(2, *shape)), jnp.float32),
        "label": jnp.asarray([0, 1], jnp.int32),
    }
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    report = nm.nm_report(optg_jax.get_masks(state.opt_state), "2:4")
    assert int(optg_jax.get_optg_state(state.opt_state).last_refresh) == 1
    for leaf_name, leaf in report.items():
        assert leaf["valid_fraction"] == (1.0 if leaf["covered"] else None), leaf_name
    assert sorted(k for k, v in report.items() if not v["covered"]) == sorted(
        DENSE_UNDER_TWO_FOUR.get(name, ["conv1/kernel"])
    )

"""Configs: every file loads with the shared fields and the paper's numbers; bad values fail in one
line naming the value (through `validate` and through train.py's command line)."""

import glob
import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from optg_jax.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))
REQUIRED = (
    "resnet50_imagenet",
    "mobilenetv1_imagenet",
    "vgg19_cifar10",
    "resnet50_cifar10",
    "resnet32_cifar10",
    "fashion_mnist",
    "vit_fashion_mnist",
)
# The configs of the paper's runs, on the reference code's schedules.
PAPER_CONFIGS = ("resnet50_imagenet", "mobilenetv1_imagenet", "vgg19_cifar10", "resnet50_cifar10")


def load(name):
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_required_config_files_exist():
    names = {os.path.basename(p)[:-3] for p in CONFIG_FILES}
    assert set(REQUIRED) <= names


def resolved_settings(config, total, steps_per_epoch):
    """What optg_optax runs with for this config: the recipe's values where fields are None."""
    from optg_jax.train import steps  # pylint: disable=import-outside-toplevel

    return vars(steps.optg_settings(config, total, steps_per_epoch).resolved())


@pytest.mark.parametrize("name", REQUIRED)
def test_config_has_shared_fields_and_validates(name):
    config = load(name)
    assert set(config_lib.base_config()) <= set(config)
    config_lib.validate(config)
    assert config.criterion == "optg" and config.beta == 1.0
    assert config.momentum == 0.9 and not config_lib.is_dense(config)
    settings = resolved_settings(config, config.num_epochs * 50, 50)
    if name in ("fashion_mnist", "vit_fashion_mnist"):  # Short runs: the default recipe.
        assert config.recipe == "default"
        assert (settings["schedule"], settings["score_momentum"]) == ("cubic", 0.99)
        assert settings["update_masks_after_pruning"] is False
        assert settings["pruning_end_step"] == round(2 / 3 * config.num_epochs * 50)
    else:  # The paper's long runs: the paper's recipe.
        assert config.recipe == "paper"
        assert settings["score_momentum"] == 0.9
        assert settings["update_masks_after_pruning"] is True
        assert settings["pruning_end_step"] == config.num_epochs * 50
        assert settings["mask_update_every"] == 50  # one epoch
    if name in PAPER_CONFIGS:  # The reference code's per-epoch schedules.
        assert config.reference_schedules is True and config.warmup_epochs == 5
        schedule, epochs, target = settings["schedule"], config.num_epochs, config.sparsity
        for epoch in (0, 3, epochs // 2, epochs - 1):
            want = target / (1 + math.exp(-(epoch - epochs / 2)))
            for step in (epoch * 50, epoch * 50 + 49):
                assert float(schedule(step)) == pytest.approx(want, rel=1e-6, abs=1e-30)
        assert float(schedule(epochs * 50)) == np.float32(target)  # exactly P at the end
    elif name == "resnet32_cifar10":  # Not a network of the paper: the per-step sigmoid.
        assert config.reference_schedules is False and settings["schedule"] == "sigmoid"
    else:
        assert config.reference_schedules is False


@pytest.mark.parametrize("name", REQUIRED)
def test_sparsity_ramp_ends_well_before_the_run(name):
    """Within 1% of the target by 70% of training, exactly the target from the end of pruning."""
    import optg_jax  # pylint: disable=import-outside-toplevel

    config = load(name)
    steps_per_epoch = 50
    total = config.num_epochs * steps_per_epoch
    settings = resolved_settings(config, total, steps_per_epoch)
    end = settings["pruning_end_step"]
    schedule = optg_jax.schedules.make_schedule(
        settings["schedule"], config.sparsity, 0, end, config.beta, steps_per_epoch
    )
    assert float(schedule(int(0.7 * total))) >= 0.99 * config.sparsity
    assert float(schedule(end)) == pytest.approx(config.sparsity, abs=1e-7)
    if config.num_epochs >= 100:  # The paper's runs: centred at the middle of training.
        assert float(schedule(total // 2)) == pytest.approx(config.sparsity / 2, rel=1e-3)


def test_paper_hyper_parameters():
    r50 = load("resnet50_imagenet")
    assert (
        r50.num_epochs,
        r50.batch_size,
        r50.learning_rate,
        r50.weight_decay,
        r50.label_smoothing,
        r50.warmup_epochs,
    ) == (100, 256, 0.1, 1e-4, 0.1, 5.0)
    mbv1 = load("mobilenetv1_imagenet")
    assert (mbv1.num_epochs, mbv1.learning_rate, mbv1.weight_decay) == (180, 0.05, 4e-5)
    for name in ("vgg19_cifar10", "resnet50_cifar10", "resnet32_cifar10"):
        c = load(name)
        assert (c.dataset, c.num_epochs, c.batch_size, c.learning_rate, c.weight_decay) == (
            "cifar10",
            160,
            256,
            0.1,
            5e-4,
        )
    fm = load("fashion_mnist")
    assert (fm.model, fm.dataset, fm.sparsity) == ("fmnist_cnn", "fashion_mnist", 0.95)


def test_learning_rate_scales_linearly_with_batch():
    c = load("resnet50_imagenet")
    assert config_lib.effective_learning_rate(c) == pytest.approx(0.1)
    c.batch_size = 1024
    assert config_lib.effective_learning_rate(c) == pytest.approx(0.4)


def test_names_come_from_their_owners(monkeypatch):
    """A name its owner adds is accepted without an edit in config.py."""
    import optg_jax  # pylint: disable=import-outside-toplevel
    from optg_jax.train import data, models  # pylint: disable=import-outside-toplevel

    choices = config_lib.choices()
    assert choices["model"] == tuple(models.names()) and "fmnist_cnn" in choices["model"]
    assert choices["criterion"] == (*optg_jax.CRITERIA, "dense")
    assert choices["allocation"] == optg_jax.ALLOCATIONS
    assert choices["schedule"] == (*optg_jax.schedules.SCHEDULE_NAMES, None)  # None: the recipe's
    assert choices["recipe"] == optg_jax.RECIPES
    config = load("fashion_mnist")
    config.model, config.dataset = "new_net", "new_data"
    monkeypatch.setattr(models, "names", lambda: ["new_net"])
    monkeypatch.setattr(data, "names", lambda: ["new_data"])
    config_lib.validate(config)
    monkeypatch.undo()
    with pytest.raises(config_lib.ConfigError, match="config.model='new_net' is not one of"):
        config_lib.validate(config)
    config.model = "fmnist_cnn"
    with pytest.raises(
        config_lib.ConfigError,
        match="config.dataset='new_data' is not one of fashion_mnist, cifar10, imagenet2012",
    ):
        config_lib.validate(config)


@pytest.mark.parametrize(
    "field,value",
    [
        ("sparsity", 1.0),
        ("sparsity", -0.1),
        ("model", "resnet5O"),
        ("dataset", "imagenet"),
        ("criterion", "optq"),
        ("schedule", "linear"),
        ("recipe", "fast"),
        ("score_momentum", 1.0),
        ("dtype", "float16"),
        ("batch_size", 0),
        ("pruning_end_fraction", 1.5),
        ("score_lr_floor", 1.5),
        ("score_start", -1.0),
        ("score_start", float("nan")),
        ("score_half_life", -0.25),
        ("score_half_life", float("inf")),
        ("score_half_distance", -0.5),
        ("uncertainty_bonus_at_start", -1.0),
        ("validation_examples", -5),
        ("augment", "yes"),
        ("reference_schedules", None),  # (ml_collections refuses any other non-bool)
    ],
)
def test_validate_names_the_bad_value(field, value):
    refused(load("fashion_mnist"), field, value)


def refused(config, field, value) -> str:
    """`validate`'s message for `config` with `field = value`: one line naming the value."""
    config[field] = value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(config)
    message = str(e.value)
    assert "\n" not in message and f"config.{field}={value!r}" in message
    return message


@pytest.mark.parametrize(
    "field,value",
    [
        ("schedule", "cubic"),
        ("pruning_end_fraction", 0.5),
        ("mask_update_every", 100),
        ("update_masks_after_pruning", False),
        ("warmup_epochs", 0.5),
    ],
)
def test_reference_schedules_refuse_the_fields_they_set(field, value):
    config = load("resnet50_cifar10")
    assert "reference_schedules" in refused(config, field, value)
    config.reference_schedules = False  # The per-step schedules take any of them.
    config_lib.validate(config)


def test_reference_schedules_accept_the_values_they_would_set():
    config = load("resnet50_cifar10")
    config.update(pruning_end_fraction=1.0, mask_update_every=0, update_masks_after_pruning=True)
    config_lib.validate(config)


def test_per_step_schedules_are_unchanged_without_reference_schedules():
    """The short configs keep the per-step lr (warm-up, then a cosine over the remaining steps)."""
    from optg_jax.train import steps  # pylint: disable=import-outside-toplevel

    config = load("fashion_mnist")  # Effective lr 0.1 at batch 128, half an epoch of warm-up.
    assert config.reference_schedules is False
    lr = steps.learning_rate_schedule(config, 800, 100)  # 50 warm-up steps, then 750 of cosine
    for step, want in ((0, 0.0), (25, 0.05), (50, 0.1), (425, 0.05), (800, 0.0)):
        assert float(lr(step)) == pytest.approx(want, abs=1e-7), step
    settings = steps.optg_settings(config, 800, 100)
    assert settings.schedule is None and settings.pruning_end_step is None
    assert settings.mask_update_every is None
    assert settings.update_masks_after_pruning is None


def run_train_py(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config.sparsity=1.5"], "config.sparsity=1.5"),
        (["--config.sparsty=0.9"], "sparsty"),
        (["--config.model=resnet5O"], "resnet5O"),
    ],
)
def test_train_py_bad_input_is_one_line(tmp_path, args, expected):
    workdir = tmp_path / "run"
    proc = run_train_py(
        tmp_path, "--config=configs/fashion_mnist.py", f"--workdir={workdir}", *args
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:") and expected in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


def test_train_py_missing_config_file(tmp_path):
    workdir = tmp_path / "run"
    proc = run_train_py(tmp_path, "--config=configs/no_such_config.py", f"--workdir={workdir}")
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "no_such_config.py" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and not workdir.exists()


def test_train_py_missing_data_names_what_is_needed(tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "empty_tfds"
    data_dir.mkdir()
    proc = run_train_py(
        tmp_path,
        "--config=configs/resnet32_cifar10.py",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and "cifar10" in lines[-1], proc.stderr
    assert str(data_dir) in lines[-1] and "Traceback" not in proc.stderr
    assert not workdir.exists()


@pytest.mark.parametrize(
    "field, value, criterion, accumulating",
    [
        ("score_start", 3.0, "taylor", "supermask"),
        ("score_half_life", 0.25, "magnitude", "optg"),
        ("score_half_distance", 0.5, "taylor", "optg"),
    ],
)
def test_score_fields_need_an_accumulating_criterion_and_are_part_of_the_identity(
    field, value, criterion, accumulating
):
    config = load("fashion_mnist")
    # score_half_distance is left to the recipe (None); the other two default to 0.
    assert config[field] == (None if field == "score_half_distance" else 0.0)
    config.criterion, config[field] = criterion, value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(config)
    assert str(e.value) == (
        f"config.{field} {value} needs a criterion whose scores accumulate (optg, supermask), "
        f"got '{criterion}'"
    )
    config.criterion = accumulating
    config_lib.validate(config)
    assert config_lib.identity(config)[field] == value


def test_identity_records_the_uncertainty_bonus_the_run_ranks_with():
    """The identity holds the resolved kappa, so a change of the library's default is seen."""
    config = load("fashion_mnist")
    assert config.uncertainty_bonus is None and config.criterion == "optg"
    assert config_lib.identity(config)["uncertainty_bonus"] == 4.0  # The default recipe's.
    config.recipe = "paper"
    assert config_lib.identity(config)["uncertainty_bonus"] == 0.0
    config.recipe, config.uncertainty_bonus = "default", 2.5
    assert config_lib.identity(config)["uncertainty_bonus"] == 2.5
    config.criterion, config.uncertainty_bonus = "taylor", None  # No noise estimate: 0.
    assert config_lib.identity(config)["uncertainty_bonus"] == 0.0
    config.criterion = "dense"
    assert config_lib.identity(config)["uncertainty_bonus"] == 0.0


def test_identity_records_the_score_half_distance_the_run_forgets_with():
    """The identity holds the resolved delta: 0.25 for optg by default, 0 otherwise."""
    config = load("fashion_mnist")
    assert config.score_half_distance is None and config.criterion == "optg"
    assert config_lib.identity(config)["score_half_distance"] == 0.25
    config.recipe = "paper"
    assert config_lib.identity(config)["score_half_distance"] == 0.0
    config.recipe, config.score_half_distance = "default", 0.5
    assert config_lib.identity(config)["score_half_distance"] == 0.5
    config.score_half_distance = None
    for criterion in ("supermask", "taylor", "magnitude", "dense"):
        config.criterion = criterion
        assert config_lib.identity(config)["score_half_distance"] == 0.0, criterion


def test_identity_records_the_bonus_at_start_the_run_ranks_with():
    """The identity holds the resolved kappa0: the recipe's (4 for optg by default, 0 in the
    paper's form and for the other criteria), else the config's."""
    config = load("fashion_mnist")
    assert config.uncertainty_bonus_at_start is None and config.criterion == "optg"
    assert config_lib.identity(config)["uncertainty_bonus_at_start"] == 4.0
    config.uncertainty_bonus_at_start = 2.0
    config_lib.validate(config)
    assert config_lib.identity(config)["uncertainty_bonus_at_start"] == 2.0
    # Given, it needs the bonus: refused in one line naming both values.
    config.uncertainty_bonus = 0.0
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(config)
    assert str(e.value).startswith("config.uncertainty_bonus_at_start 2.0 needs the bonus")
    assert "got uncertainty_bonus 0.0, score_half_distance 0.25" in str(e.value)
    # Left None, the bonus off turns it off too, without an error.
    config.uncertainty_bonus_at_start = None
    config_lib.validate(config)
    assert config_lib.identity(config)["uncertainty_bonus_at_start"] == 0.0
    config.uncertainty_bonus, config.recipe = None, "paper"
    assert config_lib.identity(config)["uncertainty_bonus_at_start"] == 0.0
    config.criterion, config.recipe = "dense", "default"
    assert config_lib.identity(config)["uncertainty_bonus_at_start"] == 0.0


def _refused_until_zero(config, workdir, old_identity, field, this_config, shapes):
    """A workdir whose config.json holds `old_identity` (the field missing or 0) refuses
    `config` in one line naming `field=0.0` and `this_config`, then resumes with `field` 0."""
    from optg_jax.train import checkpoints, training

    checkpoints.write_workdir_config(workdir, {}, old_identity, shapes)
    with pytest.raises(config_lib.ConfigError) as e:
        training._check_identity(config, workdir, shapes)
    assert f"{field}=0.0 {this_config}" in str(e.value)
    assert "\n" not in str(e.value)
    config[field] = 0.0
    training._check_identity(config, workdir, shapes)  # Resumes.


def _both_old_forms_refused_until_zero(config, workdir, identity, field, this_config):
    """`_refused_until_zero` for both forms a workdir from before `field`'s default holds in
    its config.json: `identity` without `field`, and `identity` with `field` at 0."""
    shapes = {"w": [2, 2]}
    for old in ({k: v for k, v in identity.items() if k != field}, dict(identity, **{field: 0.0})):
        config[field] = None
        _refused_until_zero(config, workdir, old, field, this_config, shapes)


def test_a_workdir_from_before_distance_forgetting_resumes_only_as_it_began(tmp_path):
    """A workdir whose config.json predates `score_half_distance` (or recorded it at 0) ran the
    plain sum: the default config (0.25) is refused in one line; `score_half_distance=0`
    resumes it."""
    config = load("fashion_mnist")
    # Such a workdir also predates the bonus at the start (0 then: without a distance it is off).
    identity = dict(config_lib.identity(config), uncertainty_bonus_at_start=0.0)
    _both_old_forms_refused_until_zero(
        config, str(tmp_path), identity, "score_half_distance", "(this config: 0.25)"
    )


def test_a_workdir_from_before_the_bonus_at_start_resumes_only_as_it_began(tmp_path):
    """A workdir whose config.json predates `uncertainty_bonus_at_start`, or recorded it at 0
    (the default before it was 4), kept kappa throughout: the default config (kappa0 4) is
    refused in one line; `uncertainty_bonus_at_start=0` resumes it."""
    config = load("fashion_mnist")
    identity = config_lib.identity(config)
    _both_old_forms_refused_until_zero(
        config, str(tmp_path), identity, "uncertainty_bonus_at_start", "(this config: 4.0)"
    )


def test_a_workdir_from_before_the_bonus_resumes_only_as_it_began(tmp_path):
    """A workdir whose config.json predates `uncertainty_bonus` ranked without it (kappa 0): the
    default config (kappa 4) is refused in one line; `uncertainty_bonus=0` resumes it."""
    from optg_jax.train import checkpoints, training

    config = load("fashion_mnist")
    # Such a workdir predates the bonus at the start too (a field it lacks: 0, the bonus off).
    old = {
        k: v
        for k, v in config_lib.identity(config).items()
        if k not in ("uncertainty_bonus", "uncertainty_bonus_at_start")
    }
    shapes = {"w": [2, 2]}
    _refused_until_zero(
        config, str(tmp_path), old, "uncertainty_bonus", "(this config: 4.0)", shapes
    )
    config.criterion, config.uncertainty_bonus = "taylor", None
    old_taylor = {k: v for k, v in config_lib.identity(config).items() if k != "uncertainty_bonus"}
    checkpoints.write_workdir_config(str(tmp_path), {}, old_taylor, shapes)
    training._check_identity(config, str(tmp_path), shapes)  # Taylor never had a bonus.

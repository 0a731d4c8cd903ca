"""The training program's configuration: shared fields, validation and derived values.

Every file in `configs/` starts from `base_config()` and overrides what differs from the paper's
defaults, so the field names are the same for every model and dataset and the command line can
override any of them (`--config.sparsity=0.98`). No field defaults to `None`: ml_collections cannot
override a `None` field from the command line, so "unset" is spelled `0`, `-1` or `""`.

`validate(config)` checks a config before anything touches the workdir and raises `ConfigError`
(a `ValueError`) with a one-line message naming the bad field and value.
"""

from __future__ import annotations

import math

import ml_collections

# Names accepted by `optg_jax.models.create` and `optg_jax.data`; kept here so that a typo fails
# during validation, before data or models are touched.
MODELS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v1",
    "vgg19_cifar",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet50_cifar",
    "fmnist_cnn",
    "tiny_resnet",
    "vit_tiny",
)
DATASETS = ("imagenet2012", "cifar10", "fashion_mnist")
CRITERIA = ("optg", "supermask", "taylor", "magnitude", "dense")
SCHEDULES = ("sigmoid", "cubic", "constant", "one_shot")
DTYPES = ("float32", "bfloat16")
ALLOCATIONS = ("global", "uniform")

# Fields that define an experiment: a workdir written with other values for these is another
# experiment, and resuming from it would silently mix two runs.
IDENTITY_FIELDS = (
    "model",
    "dataset",
    "image_size",
    "num_epochs",
    "num_train_steps",
    "steps_per_epoch",
    "batch_size",
    "learning_rate",
    "sparsity",
    "criterion",
    "schedule",
    "beta",
    "pruning_end_fraction",
    "mask_update_every",
    "seed",
    "warmup_epochs",
    "weight_decay",
    "label_smoothing",
    "momentum",
    "dtype",
    "allocation",
    "score_momentum",
    "score_lr_floor",
    "update_masks_after_pruning",
    "validation_examples",
)


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field and the value."""


def base_config() -> ml_collections.ConfigDict:
    """Fields shared by all configs, with the paper's ImageNet ResNet-50 hyper-parameters.

    Returns:
      A `ConfigDict`; each `configs/*.py` overrides the model/dataset specific fields.
    """
    c = ml_collections.ConfigDict()
    # What to train.
    c.model = "resnet50"
    c.dataset = "imagenet2012"
    c.data_dir = ""  # "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    c.image_size = 0  # 0 = the dataset's native/standard size.
    # > 0: hold out the last N training examples and evaluate on them instead of the test split
    # (tuning without looking at test); results.json names the split it evaluated.
    c.validation_examples = 0
    c.dtype = "float32"  # Compute dtype of the model ('float32' | 'bfloat16'); params stay float32.

    # How long. Learning rate and pruning schedules are in steps derived from these.
    c.num_epochs = 100
    c.batch_size = 256  # Global batch over all devices and processes.
    c.num_train_steps = -1  # > 0 overrides num_epochs * steps_per_epoch (tests, smoke runs).
    c.steps_per_epoch = -1  # > 0 overrides the dataset's size / batch_size (tests).
    c.steps_per_eval = -1  # > 0 caps evaluation batches (tests); -1 = the whole eval split.

    # Optimiser: SGD with momentum, cosine decay after a linear warm-up (PyTorch convention).
    c.learning_rate = (
        0.1  # Base lr at batch 256; the effective lr is learning_rate * batch_size / 256.
    )
    c.warmup_epochs = 5.0
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.label_smoothing = 0.1

    # OptG sparsity.
    c.sparsity = 0.9  # Target fraction of removed weights, in [0, 1); 0 = dense training.
    c.criterion = "optg"  # optg | supermask | taylor | magnitude | dense.
    c.schedule = "sigmoid"  # sigmoid | cubic | constant | one_shot.
    c.beta = 1.0  # Steepness of the sigmoid schedule (per epoch, as in the paper).
    # The sparsity ramp ends at this fraction of training (the sigmoid is centred at its middle);
    # the rest of training recovers at the target sparsity with the final mask.
    c.pruning_end_fraction = 2.0 / 3.0
    c.mask_update_every = 0  # Steps between mask refreshes; 0 = one epoch.
    c.allocation = "global"
    c.score_momentum = 0.9
    # optg only: the score lr factor is floor + (1 - floor) * p(t)/P (0 = the paper's form).
    c.score_lr_floor = 0.0
    # Keep re-selecting masks at the target sparsity after the ramp (the paper's code does). Only
    # optg/supermask masks can change then; GMP/Taylor never revive a removed weight.
    c.update_masks_after_pruning = True

    # Bookkeeping.
    c.seed = 0
    c.eval_only = False  # Evaluate (and export) the latest checkpoint instead of training.
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 100
    c.distributed = False  # Call jax.distributed.initialize() (multi-host runs).
    return c


def paper_config(
    model: str,
    dataset: str,
    *,
    sparsity: float,
    num_epochs: int,
    learning_rate: float,
    weight_decay: float,
) -> ml_collections.ConfigDict:
    """The OptG paper's recipe for a long ImageNet or CIFAR-10 run (OPTG_SPEC.md).

    Batch 256, cosine lr after 5 warm-up epochs, momentum 0.9, label smoothing 0.1 on ImageNet
    only. As in the paper, the sigmoid (beta = 1 per epoch) spans the whole run
    (`pruning_end_fraction = 1`): centred at mid-training and within 1% of the target about five
    epochs later, which leaves ~45% of the run to recover.
    """
    c = base_config()
    imagenet = dataset == "imagenet2012"
    c.model, c.dataset = model, dataset
    c.image_size = 224 if imagenet else 32
    c.num_epochs, c.batch_size = num_epochs, 256
    c.learning_rate, c.weight_decay = learning_rate, weight_decay
    c.label_smoothing = 0.1 if imagenet else 0.0
    c.warmup_epochs = 5.0
    c.pruning_end_fraction = 1.0
    c.sparsity = sparsity
    c.checkpoint_every_steps = 5000 if imagenet else 2000
    return c


def _fail(field: str, value, why: str):
    raise ConfigError(f"config.{field}={value!r} {why}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` naming the first bad field; returns None for a usable config."""
    missing = [k for k in base_config() if k not in config]
    if missing:
        raise ConfigError(
            f"config is missing the fields {', '.join(missing)} (start from "
            "optg_jax.config.base_config())"
        )
    choices = dict(
        model=MODELS,
        dataset=DATASETS,
        criterion=CRITERIA,
        schedule=SCHEDULES,
        dtype=DTYPES,
        allocation=ALLOCATIONS,
    )
    for field, allowed in choices.items():
        if config[field] not in allowed:
            _fail(field, config[field], f"is not one of {', '.join(allowed)}")
    s = config.sparsity
    if not isinstance(s, (int, float)) or not 0.0 <= s < 1.0 or math.isnan(s):
        _fail("sparsity", s, "is outside [0, 1)")
    positive = (
        "num_epochs",
        "batch_size",
        "learning_rate",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "log_every_steps",
    )
    for field in positive:
        if not config[field] > 0:
            _fail(field, config[field], "must be > 0")
    if not config.beta > 0:
        _fail("beta", config.beta, "must be > 0")
    if not 0.0 < config.pruning_end_fraction <= 1.0:
        _fail("pruning_end_fraction", config.pruning_end_fraction, "is outside (0, 1]")
    if not 0.0 <= config.score_lr_floor <= 1.0:
        _fail("score_lr_floor", config.score_lr_floor, "is outside [0, 1]")
    if not isinstance(config.update_masks_after_pruning, bool):
        _fail(
            "update_masks_after_pruning", config.update_masks_after_pruning, "must be True or False"
        )
    for field in (
        "warmup_epochs",
        "weight_decay",
        "mask_update_every",
        "image_size",
        "validation_examples",
    ):
        if config[field] < 0:
            _fail(field, config[field], "must be >= 0")
    for field in ("momentum", "score_momentum", "label_smoothing"):
        if not 0.0 <= config[field] < 1.0:
            _fail(field, config[field], "is outside [0, 1)")
    for field in ("num_train_steps", "steps_per_epoch", "steps_per_eval"):
        if config[field] == 0 or config[field] < -1:
            _fail(field, config[field], "must be > 0, or -1 for the default")


def is_dense(config: ml_collections.ConfigDict) -> bool:
    """True when the run trains a dense network (no OptG transformation in the chain)."""
    return config.criterion == "dense" or config.sparsity == 0.0


def effective_learning_rate(config: ml_collections.ConfigDict) -> float:
    """The peak learning rate: the base lr at batch 256 scaled linearly with the batch size."""
    return config.learning_rate * config.batch_size / 256.0


def identity(config: ml_collections.ConfigDict) -> dict:
    """The fields that define an experiment, as a JSON-friendly dict (see `IDENTITY_FIELDS`)."""
    return {k: config[k] for k in IDENTITY_FIELDS}

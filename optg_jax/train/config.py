"""The training program's configuration: shared fields, validation and derived values.

Every file in `configs/` starts from `base_config()` and overrides what differs from the paper's
defaults, so the field names are the same for every model and dataset and the command line can
override any of them (`--config.sparsity=0.98`). A field that is `None` by default is an
`ml_collections` placeholder of a fixed type, so the command line can still set it; the OptG
fields left `None` take the values of the config's `recipe` (`optg_jax.OptGSettings.resolved`).

`validate(config)` checks a config before anything touches the workdir and raises `ConfigError`
(a `ValueError`) with a one-line message naming the bad field and value. The names a field accepts
come from the modules that own them (`choices()`), so a new model, criterion or schedule needs no
edit here.
"""

from __future__ import annotations

import math
import os
import types

import ml_collections
from ml_collections import config_dict

import optg_jax
from optg_jax import nm, schedules, sharding
from optg_jax.train import models

DTYPES = ("float32", "bfloat16")
# `augment`: the data set's default (ImageNet and CIFAR-10 crop and flip, Fashion-MNIST none), or
# forced on or off.
AUGMENT = {"default": None, "on": True, "off": False}

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
    "recipe",
    "reference_schedules",
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
    "uncertainty_bonus",
    "score_start",
    "score_half_life",
    "score_half_distance",
    "uncertainty_bonus_at_start",
    "pattern",
    "nm_ramp",
    "validation_examples",
    "data_in_memory",
    "augment",
    # A run started from another run's weights is another experiment (compared as the absolute
    # path and the list of names, `identity`).
    "init_from",
    "reinit",
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
    # Training batches of Fashion-MNIST/CIFAR-10 from memory (numpy); False streams them through
    # tf.data as ImageNet always is (another, equally deterministic order). Eval reads from memory.
    c.data_in_memory = True
    c.augment = "default"  # default (per data set) | on | off; see `AUGMENT`.
    # Pruning a pretrained network (`optg_jax.train.pretrained`, docs/training.md): "" = a fresh
    # init from `seed`; else the run starts from the params and batch statistics of a finished
    # run of the same model: its workdir (its latest checkpoint), its export/ directory, or a .npz
    # file of an export. Only step 0 reads it: the optimizer, the OptG state and the step start
    # fresh (masks as the criterion selects them at p(0): full on the ramped schedules), and a
    # resumed run restores its own checkpoint.
    c.init_from = ""
    # Modules NOT taken from init_from but initialised from `seed`: a name anywhere on a leaf's
    # path, as `optg_jax.masking.keep_dense` matches, e.g. ("head",) for vit_tiny's classifier on
    # a task with other classes. Command line: --config.reinit=head,fc or '("head", "fc")'.
    c.reinit = ()

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

    _add_optg_fields(c)
    _add_bookkeeping_fields(c)
    return c


def _add_optg_fields(c: ml_collections.ConfigDict) -> None:
    """The fields of `base_config` that configure the sparsity: target, criterion, OptG settings."""
    c.sparsity = 0.9  # Target fraction of removed weights, in [0, 1); 0 = dense training.
    c.criterion = "optg"  # optg | supermask | taylor | magnitude | sr_ste | dense.
    # The values of the OptG fields below that are left None (docs/library.md, "Library defaults"):
    # "default" (budget-safe: cubic ramp ending at 2/3 of the run, masks frozen after it, score
    # momentum 0.99) or "paper" (the reference code's settings).
    c.recipe = "default"
    # The reference code's per-epoch schedules instead of the per-step ones (`steps.py`): its lr
    # (warm-up, then a cosine over all epochs), its unnormalised sigmoid `P sigmoid(beta (e - E/2))`
    # and through it its score lr, a mask refresh every epoch, and the final masks at exactly `P`.
    # It sets `schedule`, `pruning_end_fraction`, `mask_update_every` and
    # `update_masks_after_pruning` itself: leave them unset.
    c.reference_schedules = False
    c.schedule = config_dict.placeholder(str)  # sigmoid | cubic | constant | one_shot.
    c.beta = 1.0  # Steepness of the sigmoid schedule (per epoch, as in the paper).
    # The sparsity ramp ends at this fraction of training; the rest of training recovers at the
    # target sparsity.
    c.pruning_end_fraction = config_dict.placeholder(float)
    # Steps between mask refreshes; 0 = one epoch.
    c.mask_update_every = config_dict.placeholder(int)
    c.allocation = "global"
    c.score_momentum = config_dict.placeholder(float)
    # optg only: the score lr factor is floor + (1 - floor) * p(t)/P (0 = the paper's form).
    c.score_lr_floor = 0.0
    # Keep re-selecting masks at the target sparsity after the ramp (the paper's code does). Only
    # optg/supermask masks can change then; GMP/Taylor never revive a removed weight.
    c.update_masks_after_pruning = config_dict.placeholder(bool)
    # optg/supermask: rank by score + this many standard errors of it (None: the recipe's, 4 by
    # default and 0 in the paper's form).
    c.uncertainty_bonus = config_dict.placeholder(float)
    # optg/supermask: the scores start at score_start * W_0^2 / 2 (the starting weights' own
    # ranking in the score's units, docs/library.md) instead of 0, the paper's start.
    c.score_start = 0.0
    # optg/supermask: a score step's weight halves every score_half_life of the pruning ramp
    # (optg_jax.optg_optax's score_half_life); 0 keeps every step at full weight, the paper's sum.
    c.score_half_life = 0.0
    # optg/supermask: a score step's weight halves each time the pruned layers' weights move a
    # further score_half_distance of their starting norm (optg_optax's score_half_distance); 0:
    # no such forgetting. None: the recipe's (0.25 for optg by default, 0 for supermask and in
    # the paper's form).
    c.score_half_distance = config_dict.placeholder(float)
    # optg: the bonus is uncertainty_bonus + this * 2^(-r / score_half_distance), r the distance
    # the weights have moved from their start (optg_optax's uncertainty_bonus_at_start): larger
    # while a pretrained network stays near its weights. None: the recipe's (4 for optg by
    # default, 0 for the other criteria and in the paper's form).
    c.uncertainty_bonus_at_start = config_dict.placeholder(float)
    # N:M sparsity (`optg_jax.nm`, docs/training.md): "2:4" keeps 2 of every 4 consecutive
    # weights along each kernel's reduction axis; None = unstructured. With a pattern the target
    # sparsity is 1 - N/M: train.py takes it from the pattern unless --config.sparsity is given.
    c.pattern = config_dict.placeholder(str)
    c.nm_ramp = optg_jax.OptGSettings.nm_ramp  # groups | n: how the ramp reaches the pattern.


def _add_bookkeeping_fields(c: ml_collections.ConfigDict) -> None:
    """The fields of `base_config` that say how a run is kept: seed, checkpoints, logs, devices."""
    c.seed = 0
    c.eval_only = False  # Evaluate (and export) the latest checkpoint instead of training.
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 100
    c.distributed = False  # Call jax.distributed.initialize() (multi-host runs).
    # replicated | fsdp: the train state whole on every device, or each leaf split over the
    # devices (`optg_jax.sharding`). Not an identity field: it changes where the state lives,
    # not the results (beyond float rounding), and a checkpoint restores either way.
    c.param_sharding = "replicated"
    # Resume where the run cannot go on exactly as it would have (a changed batch_size, streamed
    # data on another process count: docs/training.md, "Preemption and resizing"). Not an
    # identity field.
    c.allow_reshard = False


def paper_config(
    model: str,
    dataset: str,
    *,
    sparsity: float,
    num_epochs: int,
    learning_rate: float,
    weight_decay: float,
) -> ml_collections.ConfigDict:
    """The OptG paper's recipe for a long ImageNet or CIFAR-10 run (docs/reference.md).

    Batch 256, cosine lr after 5 warm-up epochs, momentum 0.9, label smoothing 0.1 on ImageNet
    only, and the library's `recipe="paper"` (score momentum 0.9) with the reference code's
    schedules (`reference_schedules=True`): the lr set once per epoch (5 warm-up epochs, then a
    cosine over all epochs), the sparsity `P sigmoid(beta (e - E/2))` per epoch (beta = 1; centred
    at mid-training and within 1% of the target about five epochs later, which leaves ~45% of the
    run to recover) and the score lr `lr(e) sigmoid(beta (e - E/2))`, a mask refresh every epoch,
    and the final masks at exactly the target, selected after the last update.

    Args:
      model: a model name (`optg_jax.train.models.names()`).
      dataset: "imagenet2012" (224x224 inputs, label smoothing 0.1) or a CIFAR data set (32x32).
      sparsity: the target sparsity.
      num_epochs: the run's length in epochs.
      learning_rate: the base learning rate at batch 256.
      weight_decay: the weight decay.

    Returns:
      A `ConfigDict` from `base_config()` with those fields set.
    """
    c = base_config()
    imagenet = dataset == "imagenet2012"
    c.model, c.dataset = model, dataset
    c.image_size = 224 if imagenet else 32
    c.num_epochs, c.batch_size = num_epochs, 256
    c.learning_rate, c.weight_decay = learning_rate, weight_decay
    c.label_smoothing = 0.1 if imagenet else 0.0
    c.warmup_epochs = 5.0
    c.recipe = "paper"
    c.reference_schedules = True
    c.sparsity = sparsity
    c.checkpoint_every_steps = 5000 if imagenet else 2000
    return c


def _fail(field: str, value, why: str):
    raise ConfigError(f"config.{field}={value!r} {why}")


def choices() -> dict[str, tuple[str, ...]]:
    """The names each name-valued field accepts, taken from their owners.

    `dataset` is not here: its names come from `optg_jax.train.data`, which imports TensorFlow, so
    `validate` checks it last.

    Returns:
      `{field: accepted names}` for `model`, `criterion` (the library's criteria and "dense"),
      `schedule` (or None: the recipe's), `allocation`, `recipe`, `dtype`, `augment` and
      `param_sharding`.
    """
    return dict(
        model=tuple(models.names()),
        criterion=(*optg_jax.CRITERIA, "dense"),
        schedule=(*schedules.SCHEDULE_NAMES, None),
        allocation=tuple(optg_jax.ALLOCATIONS),
        recipe=tuple(optg_jax.RECIPES),
        dtype=DTYPES,
        augment=tuple(AUGMENT),
        param_sharding=sharding.PARAM_SHARDINGS,
    )


# OptG's score and bonus fields: a finite number >= 0 when given (None: the recipe's value).
_NON_NEGATIVE_FIELDS = (
    "score_start",
    "score_half_life",
    "score_half_distance",
    "uncertainty_bonus_at_start",
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field of a config, cheapest first.

    Args:
      config: the config to check.

    Raises:
      ConfigError: one line naming the first bad field and its value.
    """
    missing = [k for k in base_config() if k not in config]
    if missing:
        raise ConfigError(
            f"config is missing the fields {', '.join(missing)} (start from "
            "optg_jax.train.config.base_config())"
        )
    for field, allowed in choices().items():
        if config[field] not in allowed:
            names = ", ".join(name for name in allowed if name is not None)
            _fail(field, config[field], f"is not one of {names}")
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
    fraction = config.pruning_end_fraction
    if fraction is not None and not 0.0 < fraction <= 1.0:
        _fail("pruning_end_fraction", fraction, "is outside (0, 1]")
    if not 0.0 <= config.score_lr_floor <= 1.0:
        _fail("score_lr_floor", config.score_lr_floor, "is outside [0, 1]")
    for field in _NON_NEGATIVE_FIELDS:
        if config.get(field) is not None and not 0.0 <= config[field] < math.inf:
            _fail(field, config[field], "must be a non-negative number")
    for field in (
        "warmup_epochs",
        "weight_decay",
        "mask_update_every",
        "image_size",
        "validation_examples",
    ):
        if config[field] is not None and config[field] < 0:
            _fail(field, config[field], "must be >= 0")
    for field in ("momentum", "score_momentum", "label_smoothing"):
        if config[field] is not None and not 0.0 <= config[field] < 1.0:
            _fail(field, config[field], "is outside [0, 1)")
    for field in ("num_train_steps", "steps_per_epoch", "steps_per_eval"):
        if config[field] == 0 or config[field] < -1:
            _fail(field, config[field], "must be > 0, or -1 for the default")
    bools = ("update_masks_after_pruning", "data_in_memory", "reference_schedules", "allow_reshard")
    for field in bools:
        if not isinstance(config[field], bool) and not (
            field == "update_masks_after_pruning" and config[field] is None
        ):
            _fail(field, config[field], "must be True or False")
    if config.reference_schedules:
        _check_reference_schedules(config)
    if not isinstance(config.init_from, str):
        _fail("init_from", config.init_from, "must be a path")
    if reinit_names(config) and not config.init_from:
        _fail(
            "reinit", config.reinit, "needs config.init_from (it names modules not taken from it)"
        )
    _check_optg_settings(config)
    # Last: the data set names come from `optg_jax.train.data`, whose TensorFlow import takes seconds,
    # so every other mistake is reported before it.
    from optg_jax.train import data  # pylint: disable=import-outside-toplevel

    if config.dataset not in data.names():
        _fail("dataset", config.dataset, f"is not one of {', '.join(data.names())}")


# The library's names for the config fields its messages name differently.
_LIBRARY_FIELDS = {"target_sparsity": "sparsity"}


def _check_optg_settings(config: ml_collections.ConfigDict) -> None:
    """The OptG fields through the library's own checks (`OptGSettings.resolved`): the pattern
    string, `nm_ramp`, and the sparsity a pattern implies, with the library's message."""
    if config.pattern is not None:
        try:
            nm.parse_pattern(config.pattern)
        except ValueError as e:
            raise ConfigError(f"config.pattern={config.pattern!r}: {e}") from None
        if config.criterion == "dense":
            _fail(
                "pattern", config.pattern, "needs a sparse criterion, not config.criterion='dense'"
            )
    if config.criterion == "dense":
        return
    from optg_jax.train import steps  # pylint: disable=import-outside-toplevel  # (it imports this)

    try:  # The run's length is not known yet; any length checks the fields above.
        steps.optg_settings(config, num_steps=100, steps_per_epoch=1).resolved()
    except ValueError as e:
        field, _, rest = str(e).partition(" ")
        raise ConfigError(f"config.{_LIBRARY_FIELDS.get(field, field)} {rest}") from None


def pattern_sparsity(config: ml_collections.ConfigDict, sparsity_given: bool) -> None:
    """Sets `config.sparsity` to `1 - N/M` of `config.pattern`, unless the sparsity was given.

    train.py calls it with whether `--config.sparsity` is on the command line: a config file's
    own sparsity (e.g. 0.95) gives way to the pattern's, and a sparsity given with the pattern is
    left for `validate` to refuse when the two disagree.

    Args:
      config: the run's config (changed in place); nothing happens without a pattern or when the
        pattern is not a valid "N:M" (`validate` reports it).
      sparsity_given: whether the user gave `sparsity` explicitly.
    """
    pattern = config.get("pattern")
    if pattern is None or sparsity_given or config.get("criterion") == "dense":
        return
    try:
        n, m = nm.parse_pattern(pattern)
    except (TypeError, ValueError):
        return
    config.sparsity = 1.0 - n / m


def _check_reference_schedules(config: ml_collections.ConfigDict) -> None:
    """Refuses the fields that `reference_schedules=True` sets itself, when set otherwise."""
    # (field, the values that agree with the reference's schedules, what they set instead).
    fields = (
        ("schedule", (None,), "the reference's per-epoch sigmoid"),
        (
            "pruning_end_fraction",
            (None, 1.0),
            "the sparsity reaches the target at the end of the run",
        ),
        ("mask_update_every", (None, 0), "a mask refresh every epoch"),
        (
            "update_masks_after_pruning",
            (None, True),
            "masks are refreshed every epoch until the end",
        ),
    )
    for field, agree, what in fields:
        if config[field] not in agree:
            _fail(
                field,
                config[field],
                f"contradicts config.reference_schedules=True ({what}); leave it unset",
            )
    warmup = config.warmup_epochs
    if isinstance(warmup, bool) or not float(warmup).is_integer():
        _fail("warmup_epochs", warmup, "must be a whole number of epochs with reference_schedules")


def is_dense(config: ml_collections.ConfigDict) -> bool:
    """Whether the run trains a dense network (no OptG transformation in the chain).

    Args:
      config: the run's config.

    Returns:
      True for `criterion == "dense"` or `sparsity == 0`.
    """
    return config.criterion == "dense" or config.sparsity == 0.0


def effective_learning_rate(config: ml_collections.ConfigDict) -> float:
    """The peak learning rate: the base lr at batch 256 scaled linearly with the batch size.

    Args:
      config: the run's config (`learning_rate`, `batch_size`).

    Returns:
      `learning_rate * batch_size / 256`.
    """
    return config.learning_rate * config.batch_size / 256.0


def reinit_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The module names of `config.reinit`, comma-separated entries split.

    Args:
      config: the run's config.

    Returns:
      The names in order, without duplicates: `("head", "fc")` for `reinit=("head", "fc")` and
      for `reinit=("head,fc",)` (what `--config.reinit=head,fc` gives).

    Raises:
      ConfigError: `reinit` is not a tuple (or list) of strings, or a name is not a plain name.
    """
    value = config.reinit
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        _fail("reinit", value, "must be a tuple of module names, e.g. ('head',)")
    names = [n.strip() for v in value for n in v.split(",") if n.strip()]
    bad = [n for n in names if "/" in n or any(c.isspace() for c in n)]
    if bad:
        _fail("reinit", value, f"has {bad[0]!r}: give module names (e.g. head), not paths")
    return tuple(dict.fromkeys(names))


def init_from_path(path: str) -> str:
    """`config.init_from` as the run's identity records it: an absolute, normalised local path.

    Args:
      path: the field's value.

    Returns:
      "" for "", a remote path (`gs://...`) as it is, a local one absolute and normalised.
    """
    if not path or "://" in path:
        return path
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def identity(config: ml_collections.ConfigDict) -> dict:
    """The fields that define an experiment (see `IDENTITY_FIELDS`).

    Args:
      config: the run's config.

    Returns:
      `{field: value}`, JSON-friendly: `init_from` as `init_from_path` gives it, `reinit` as the
      list of `reinit_names`.
    """
    out = {k: config[k] for k in IDENTITY_FIELDS}
    out["init_from"] = init_from_path(config.init_from)
    out["reinit"] = list(reinit_names(config))
    out["uncertainty_bonus"] = uncertainty_bonus(config)
    out["score_half_distance"] = score_half_distance(config)
    out["uncertainty_bonus_at_start"] = uncertainty_bonus_at_start(config)
    return out


# The value an identity field stands for in a workdir written before the field existed, where
# it differs from `base_config`'s: such a run ranked without the bonus (kappa 0), its scores
# did not forget with distance, and its bonus had no extra part near the start (kappa0 0).
LEGACY_IDENTITY = types.MappingProxyType(
    {"uncertainty_bonus": 0.0, "score_half_distance": 0.0, "uncertainty_bonus_at_start": 0.0}
)


def score_half_distance(config: ml_collections.ConfigDict) -> float:
    """The `delta` the run's scores forget with: `config.score_half_distance`, else its
    recipe's value for its criterion (0 for every criterion but optg, and for dense runs).

    Args:
      config: a validated config.

    Returns:
      `config.score_half_distance`, else `optg_jax.default_score_half_distance(criterion,
      recipe)`.
    """
    return _given_or_recipes(config, "score_half_distance", optg_jax.default_score_half_distance)


def uncertainty_bonus(config: ml_collections.ConfigDict) -> float:
    """The `kappa` the run ranks with: `config.uncertainty_bonus`, else its recipe's value for
    its criterion (0 for a criterion without a noise estimate, and for dense runs).

    Args:
      config: a validated config.

    Returns:
      `config.uncertainty_bonus`, else `optg_jax.default_uncertainty_bonus(criterion, recipe)`.
    """
    return _given_or_recipes(config, "uncertainty_bonus", optg_jax.default_uncertainty_bonus)


def uncertainty_bonus_at_start(config: ml_collections.ConfigDict) -> float:
    """The `kappa0` the run ranks with: `config.uncertainty_bonus_at_start`, else its recipe's
    value (0 for every criterion but optg, where the bonus or the distance is off, and for
    dense runs).

    Args:
      config: a validated config.

    Returns:
      `config.uncertainty_bonus_at_start`, else `optg_jax.default_uncertainty_bonus_at_start`
      of the run's criterion, recipe, bonus and distance.
    """

    def recipes_value(criterion: str, recipe: str) -> float:
        return optg_jax.default_uncertainty_bonus_at_start(
            criterion, recipe, uncertainty_bonus(config), score_half_distance(config)
        )

    return _given_or_recipes(config, "uncertainty_bonus_at_start", recipes_value)


def _given_or_recipes(config: ml_collections.ConfigDict, field: str, recipes_value) -> float:
    """`config[field]` as a float, else `recipes_value(criterion, recipe)`; 0 for dense runs
    (`get`: a config saved before the field existed lacks it)."""
    if config.criterion == "dense":
        return 0.0
    given = config.get(field)
    if given is not None:
        return float(given)
    return recipes_value(config.criterion, config.recipe)

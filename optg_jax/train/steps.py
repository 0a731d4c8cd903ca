"""What one training step is: the train state, the optimizer, and the train and eval steps.

`create_train_state` builds the state (`TrainState`: weights, BatchNorm statistics, the optax
chain state with the OptG scores and masks, the step count); `make_optimizer` builds the chain
`optg_optax -> add_decayed_weights -> sgd` with the `learning_rate_schedule`; `train_step` and
`eval_step` are pure functions of the state and one batch, and `jit_train_step` and
`jit_eval_step` jit them, over a device mesh when given its shardings (the training program,
`optg_jax.train.training`, and the benchmarks take both from here). Whether a run is sparse is
decided once, by its caller (`config.is_dense`), and passed to each of them as `sparse`.
With `config.reference_schedules` the lr, the sparsity and the refreshes follow the reference
code's epochs (`learning_rate_schedule`, `reference_sparsity_schedule`, `optg_settings`).

The network that is trained and evaluated is `W * M` (`masked_params`): the forward pass sees the
masked weights, and `optg_optax` turns the gradient with respect to them into weight and score
updates.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import optg_jax
from optg_jax import schedules
from optg_jax.train import config as config_lib


@flax.struct.dataclass
class TrainState:
    """Everything a step changes (a pytree; checkpoints hold exactly this).

    Attributes:
      step: int32 scalar, the number of updates done.
      params: the dense weights `W` (float32 pytree).
      batch_stats: BatchNorm running statistics (`{}` for models without BatchNorm).
      opt_state: the optax chain state; holds the OptG scores, score momentum and masks.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


class Normalization(NamedTuple):
    """The per-channel mean and std that turn uint8 pixels into the model's input.

    Attributes:
      mean: float32 `[C]`, the data set's mean on the 0-255 scale.
      std: float32 `[C]`, its standard deviation on the 0-255 scale.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def create(cls, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        """The normalisation of a data set whose mean and std are given on the [0, 1] scale.

        Args:
          mean: per channel, e.g. a data `Spec`'s `mean`.
          std: per channel, likewise.

        Returns:
          The `Normalization`, its constants computed in float32 as the host's
          `optg_jax.train.data.normalize` computes them.
        """
        return cls(np.asarray(mean, np.float32) * 255, np.asarray(std, np.float32) * 255)


def model_input(images: jax.Array, normalization: Normalization | None) -> jax.Array:
    """The model's input from a batch's images: uint8 pixels normalised, float images as given.

    Args:
      images: uint8 pixels `[B, H, W, C]`, or float images already normalised (the host's
        `optg_jax.train.data.Options(normalize=True)`, or a program of one's own).
      normalization: the data set's mean and std; None passes uint8 pixels on as float32.

    Returns:
      float32 `(pixels - mean) / std` for uint8 images, the images unchanged otherwise.
    """
    if images.dtype != jnp.uint8:
        return images
    x = images.astype(jnp.float32)
    if normalization is None:
        return x
    return (x - normalization.mean) / normalization.std


class Shardings(NamedTuple):
    """Where a jitted step's arguments and results live on a device mesh.

    Attributes:
      state: the train state's sharding (a sharding or a pytree of them).
      batch: the global batch's sharding (leading axis over the mesh).
      metrics: the sharding of the returned scalars (replicated).
    """

    state: Any
    batch: Any
    metrics: Any


def reference_epochs(num_steps: int, steps_per_epoch: int) -> int:
    """`E` of the reference's per-epoch schedules: the epochs the run trains.

    Args:
      num_steps: total number of training steps.
      steps_per_epoch: training steps per epoch.

    Returns:
      `ceil(num_steps / steps_per_epoch)` (the last epoch is partial when `num_train_steps` is
      not a multiple of the epoch).
    """
    return -(-int(num_steps) // int(steps_per_epoch))


def learning_rate_schedule(
    config: ml_collections.ConfigDict, num_steps: int, steps_per_epoch: int
) -> optax.Schedule:
    """The weights' learning rate, with its peak at `learning_rate * batch_size / 256`.

    Per step (`reference_schedules=False`): a linear warm-up over `warmup_epochs`, then a cosine
    decay to 0 over the remaining steps. With `reference_schedules=True`: the reference code's
    rate, set once per epoch (`schedules.reference_lr_schedule`): `peak (e + 1) / W` in the first
    `W = warmup_epochs` epochs, then `0.5 peak (1 + cos(pi e / E))`, the cosine over all
    `E = reference_epochs(...)` epochs (`W` is capped at `E`).

    Args:
      config: the run's config (`learning_rate`, `batch_size`, `warmup_epochs`,
        `reference_schedules`).
      num_steps: total number of training steps.
      steps_per_epoch: training steps per epoch (the warm-up is given in epochs).

    Returns:
      An optax schedule, `step -> float32 learning rate`.
    """
    peak = config_lib.effective_learning_rate(config)
    if config.reference_schedules:
        epochs = reference_epochs(num_steps, steps_per_epoch)
        warmup_epochs = min(int(config.warmup_epochs), epochs)
        return schedules.reference_lr_schedule(peak, epochs, steps_per_epoch, warmup_epochs)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), num_steps - 1)
    if warmup <= 0:
        return optax.cosine_decay_schedule(peak, decay_steps=num_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps=warmup, decay_steps=num_steps, end_value=0.0
    )


def reference_sparsity_schedule(
    config: ml_collections.ConfigDict, num_steps: int, steps_per_epoch: int
) -> schedules.Schedule:
    """The reference code's sparsity per epoch, and exactly the target at the end of the run.

    `P sigmoid(beta (e - E/2))` over the steps of epoch `e` (`schedules.reference_sigmoid_schedule`,
    `E = reference_epochs(...)`), and exactly `P` at step `num_steps`. `optg_optax` selects the
    final masks after the last update at the sparsity of step `num_steps`, so they keep exactly
    `floor(N (1 - P))` of the `N` masked weights, where the reference's last masks (selected at the
    start of epoch `E - 1`) remove only `P sigmoid(beta (E/2 - 1))`. No update runs at step
    `num_steps`, so the score lr `lr(t) p(t) / P` of `optg_optax` stays the reference's
    `lr(e) sigmoid(beta (e - E/2))` at every step.

    Args:
      config: the run's config (`sparsity`, `beta`).
      num_steps: total number of training steps.
      steps_per_epoch: training steps per epoch.

    Returns:
      A jittable schedule `step -> float32 scalar sparsity`.
    """
    target = float(config.sparsity)
    per_epoch = schedules.reference_sigmoid_schedule(
        target, reference_epochs(num_steps, steps_per_epoch), steps_per_epoch, float(config.beta)
    )

    def reference_sigmoid(step):
        at_end = jnp.asarray(step) >= num_steps
        return jnp.where(at_end, jnp.float32(target), per_epoch(step))

    return reference_sigmoid


def pruning_end_step(config: ml_collections.ConfigDict, num_steps: int) -> int | None:
    """The step at which the sparsity reaches the target, when the config sets it.

    Args:
      config: the run's config (`pruning_end_fraction`).
      num_steps: total number of training steps.

    Returns:
      `round(pruning_end_fraction * num_steps)`, at least 1 and at most `num_steps`; None when
      `pruning_end_fraction` is None (the recipe's).
    """
    if config.pruning_end_fraction is None:
        return None
    return int(min(num_steps, max(1, round(config.pruning_end_fraction * num_steps))))


def optg_settings(
    config: ml_collections.ConfigDict,
    num_steps: int,
    steps_per_epoch: int,
    lr_schedule: optax.Schedule | float = 0.0,
) -> optg_jax.OptGSettings:
    """The `optg_optax` settings of a run: its config fields, `None` where unset.

    Args:
      config: the run's config (`sparsity`, `recipe` and the OptG fields).
      num_steps: total number of training steps.
      steps_per_epoch: training steps per epoch (the unit of the sigmoid's `beta`, and the
        refresh interval that `mask_update_every = 0` asks for).
      lr_schedule: the weights' learning rate (the score lr derives from it); only the
        optimizer needs it, a summary of the settings does not.

    Returns:
      An unresolved `optg_jax.OptGSettings`: `resolved()` fills in the recipe's values. With
      `reference_schedules=True` the schedule is `reference_sparsity_schedule`, the masks are
      refreshed every epoch and pruning ends with the run (`config.validate` refuses other
      values for those fields).
    """
    every, bonus = config.mask_update_every, config.get("uncertainty_bonus")
    delta, kappa0 = config.get("score_half_distance"), config.get("uncertainty_bonus_at_start")
    settings = optg_jax.OptGSettings(
        target_sparsity=float(config.sparsity),
        total_steps=num_steps,
        learning_rate=lr_schedule,
        criterion=config.criterion,
        recipe=config.recipe,
        schedule=config.schedule,
        mask_update_every=None if every is None else (int(every) or steps_per_epoch),
        beta=float(config.beta),
        steps_per_epoch=steps_per_epoch,
        pruning_start_step=0,
        pruning_end_step=pruning_end_step(config, num_steps),
        allocation=config.allocation,
        score_momentum=None if config.score_momentum is None else float(config.score_momentum),
        score_lr_floor=float(config.score_lr_floor),
        update_masks_after_pruning=config.update_masks_after_pruning,
        uncertainty_bonus=None if bonus is None else float(bonus),
        score_start=float(config.score_start),
        score_half_life=float(config.score_half_life),
        score_half_distance=None if delta is None else float(delta),
        uncertainty_bonus_at_start=None if kappa0 is None else float(kappa0),
        pattern=config.pattern,
        nm_ramp=config.nm_ramp,
    )
    if config.reference_schedules:
        settings = dataclasses.replace(
            settings,
            schedule=reference_sparsity_schedule(config, num_steps, steps_per_epoch),
            mask_update_every=steps_per_epoch,
            pruning_end_step=num_steps,
            update_masks_after_pruning=True,
        )
    return settings


def make_optimizer(
    config: ml_collections.ConfigDict,
    num_steps: int,
    steps_per_epoch: int,
    lr_schedule: optax.Schedule,
    *,
    sparse: bool,
) -> optax.GradientTransformation:
    """The optax chain `optg_optax -> add_decayed_weights -> sgd(momentum)` of a run.

    Dense runs have no OptG link; a zero `weight_decay` has no decay link.

    Args:
      config: the run's config (sparsity, criterion, schedule and the other OptG fields,
        `weight_decay`, `momentum`).
      num_steps: total number of training steps.
      steps_per_epoch: training steps per epoch (the default mask refresh interval and the unit
        of the sigmoid's `beta`).
      lr_schedule: the weights' learning rate, `step -> lr` (OptG's score lr derives from it).
      sparse: whether the run is sparse (`not config.is_dense(config)`): the chain starts with
        `optg_optax`.

    Returns:
      The `optax.GradientTransformation`.
    """
    links = []
    if sparse:
        settings = optg_settings(config, num_steps, steps_per_epoch, lr_schedule)
        links.append(optg_jax.optg_transformation(settings))
    if config.weight_decay:
        links.append(optax.add_decayed_weights(config.weight_decay))
    links.append(optax.sgd(lr_schedule, momentum=config.momentum or None))
    return optax.chain(*links)


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: Sequence[int],
) -> TrainState:
    """The initial train state: fresh model variables, the optimizer state, step 0.

    Args:
      rng: a JAX PRNG key for `model.init`.
      model: the Flax module, applied as `model.apply(variables, x, train=...)`.
      tx: the optimizer (e.g. from `make_optimizer`); its state is built on the params.
      input_shape: one example's shape `(H, W, C)`, without the batch dimension.

    Returns:
      A `TrainState`. The function is pure: jit it with `model`, `tx` and `input_shape` bound
      (e.g. `jax.jit(functools.partial(create_train_state, model=..., tx=..., input_shape=...))`).
    """
    variables = model.init(rng, jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def masked_params(params: Any, opt_state: Any, sparse: bool) -> Any:
    """The weights the network runs with: `W * M` on the masked leaves of a sparse run.

    Args:
      params: the dense weights `W`.
      opt_state: the optax chain state (holds the masks when `sparse`).
      sparse: whether the run has an OptG link; `False` returns `params` as they are.

    Returns:
      A pytree like `params`.
    """
    return optg_jax.apply_masks(params, opt_state) if sparse else params


def model_variables(params: Any, batch_stats: Any) -> dict:
    """The variables dict `model.apply` takes.

    Args:
      params: the weights to run with.
      batch_stats: BatchNorm statistics; `{}` (or empty) for a model without BatchNorm.

    Returns:
      `{'params': params}`, plus `'batch_stats'` when there are any.
    """
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def train_step(
    state: TrainState,
    batch: dict,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    num_classes: int,
    label_smoothing: float,
    sparse: bool,
    normalization: Normalization | None = None,
) -> tuple[TrainState, dict]:
    """One SGD step on the (global) batch.

    Args:
      state: the train state before the step.
      batch: `{'image': uint8 or float [B, H, W, C], 'label': int32 [B]}` (sharded on B when
        jitted over a mesh; the loss is the mean over the whole batch); uint8 pixels are
        normalised here (`model_input`), float images are taken as normalised.
      model: the Flax module.
      tx: the optimizer whose state is `state.opt_state`.
      num_classes: number of classes (the one-hot width).
      label_smoothing: label smoothing of the cross-entropy (0 for none).
      sparse: whether `tx` holds an OptG link (masked forward pass, sparsity metrics).
      normalization: the data set's mean and std, for uint8 pixels.

    Returns:
      `(new state, metrics)`: metrics are float32 scalars `loss`, `accuracy`, `grad_norm` and,
      for sparse runs, the scheduled `sparsity` and `score_lr` after this step.
    """
    mparams = masked_params(state.params, state.opt_state, sparse)
    images = model_input(batch["image"], normalization)

    def loss_fn(mp):
        logits, new_vars = model.apply(
            model_variables(mp, state.batch_stats),
            images,
            train=True,
            mutable=["batch_stats"],
        )
        targets = jax.nn.one_hot(batch["label"], num_classes)
        if label_smoothing:
            targets = optax.smooth_labels(targets, label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, new_vars.get("batch_stats", state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(mparams)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.global_norm(grads),
    }
    if sparse:
        optg_state = optg_jax.get_optg_state(opt_state)
        metrics["sparsity"] = optg_state.sparsity
        metrics["score_lr"] = optg_state.score_lr
    new_state = TrainState(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


def eval_step(
    state: TrainState,
    batch: dict,
    *,
    model: nn.Module,
    num_classes: int,
    sparse: bool,
    normalization: Normalization | None = None,
) -> dict:
    """Sums of the eval figures over one (padded) batch of the masked model.

    Args:
      state: the train state.
      batch: `{'image': uint8 or float [B, H, W, C], 'label': int32 [B], 'mask': float32 [B]}`,
        mask 0 on padding rows; uint8 pixels are normalised here, as in `train_step`.
      model: the Flax module.
      num_classes: number of classes (top-5 becomes top-`num_classes` below 5 classes).
      sparse: whether `state.opt_state` holds masks to apply.
      normalization: the data set's mean and std, for uint8 pixels.

    Returns:
      float32 scalars: `correct1` and `correct5` (correct top-1/top-5 predictions), `loss` (summed
      cross-entropy) and `count` (real examples), each summed over the non-padding rows.
    """
    mparams = masked_params(state.params, state.opt_state, sparse)
    images = model_input(batch["image"], normalization)
    logits = model.apply(model_variables(mparams, state.batch_stats), images, train=False)
    weight = batch["mask"].astype(jnp.float32)
    labels = batch["label"]
    top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    _, top_k = jax.lax.top_k(logits, min(5, num_classes))
    top5 = jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "correct1": jnp.sum(top1 * weight),
        "correct5": jnp.sum(top5 * weight),
        "loss": jnp.sum(ce * weight),
        "count": jnp.sum(weight),
    }


def _jit(fn: Callable, shardings: Shardings | None, out_sharding: Any, donate: bool) -> Callable:
    """`jax.jit(fn)` with `(state, batch) -> out` shardings when given, donating the state."""
    kwargs = {"donate_argnums": (0,)} if donate else {}
    if shardings is not None:
        kwargs.update(in_shardings=(shardings.state, shardings.batch), out_shardings=out_sharding)
    return jax.jit(fn, **kwargs)


def jit_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    num_classes: int,
    *,
    sparse: bool,
    label_smoothing: float = 0.0,
    normalization: Normalization | None = None,
    shardings: Shardings | None = None,
) -> Callable:
    """`train_step` jitted, over a device mesh when the shardings are given; donates the state.

    Args:
      model: the Flax module.
      tx: the optimizer (`make_optimizer`).
      num_classes: the number of classes.
      sparse: whether `tx` holds an OptG link (the run's one answer, e.g. `Run.sparse`).
      label_smoothing: label smoothing of the cross-entropy (0 for none).
      normalization: the data set's mean and std: uint8 pixels are normalised inside the step.
      shardings: the state's, the batch's and the metrics' shardings; None jits without
        sharding constraints.

    Returns:
      The jitted `(state, batch) -> (state, metrics)`.
    """
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        num_classes=num_classes,
        label_smoothing=float(label_smoothing),
        sparse=sparse,
        normalization=normalization,
    )
    out = None if shardings is None else (shardings.state, shardings.metrics)
    return _jit(step, shardings, out, donate=True)


def jit_eval_step(
    model: nn.Module,
    num_classes: int,
    *,
    sparse: bool,
    normalization: Normalization | None = None,
    shardings: Shardings | None = None,
) -> Callable:
    """`eval_step` jitted, over a device mesh when the shardings are given.

    Args:
      model: the Flax module.
      num_classes: the number of classes.
      sparse: whether the state's optimizer holds masks to apply (as for `jit_train_step`).
      normalization: the data set's mean and std: uint8 pixels are normalised inside the step.
      shardings: the state's, the batch's and the sums' shardings; None jits without sharding
        constraints.

    Returns:
      The jitted `(state, batch) -> sums` (see `eval_step`).
    """
    step = functools.partial(
        eval_step,
        model=model,
        num_classes=num_classes,
        sparse=sparse,
        normalization=normalization,
    )
    out = None if shardings is None else shardings.metrics
    return _jit(step, shardings, out, donate=False)

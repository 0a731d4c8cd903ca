"""Schedules: plain functions `step -> value` in the style of optax schedules.

Every sparsity schedule here returns a float32 scalar in `[0, target]`, is monotone non-decreasing in
`step`, is exactly `0` before `begin_step` (except `constant`) and exactly `target` from
`end_step` on. They work on Python ints and on traced `jnp` integers, so they run inside
`jax.jit`.

The paper's schedule is `P * sigmoid(beta * (e - E / 2))` with `e` the epoch and `E` the
number of epochs. Left as it is, it starts at `P * sigmoid(-beta * E / 2)` (not 0) and ends at
`P * sigmoid(beta * (E - 1 - E / 2))`, short of `P` for short runs. `sigmoid_schedule`
rescales it affinely so that it starts at exactly 0 at `begin_step` and reaches exactly `P`
at `end_step`; `reference_sigmoid_schedule` keeps the reference code's per-epoch form for
comparisons.

One learning-rate schedule sits beside them: `reference_lr_schedule`, the reference code's
per-epoch rate (linear warm-up, then a cosine over the whole run), to hand to optax.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[jax.Array | int], jax.Array]

SCHEDULE_NAMES = ("sigmoid", "cubic", "constant", "one_shot")


def _check_target(target: float) -> None:
    if not (isinstance(target, (int, float)) and 0.0 <= target < 1.0):
        raise ValueError(f"target_sparsity must be a number in [0, 1), got {target!r}")


def _check_window(begin_step: int, end_step: int) -> None:
    if int(begin_step) != begin_step or begin_step < 0:
        raise ValueError(f"begin_step must be a non-negative integer, got {begin_step!r}")
    if int(end_step) != end_step or end_step <= begin_step:
        raise ValueError(
            f"end_step must be an integer greater than begin_step={begin_step}, got {end_step!r}"
        )


def _is_whole_number(value) -> bool:
    """True for an integer-valued finite real (Python or NumPy), False for bools and the rest."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and int(value) == value
    )


def _check_positive_int(name: str, value) -> None:
    if not (_is_whole_number(value) and value > 0):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _progress(step, begin_step: int, end_step: int) -> jax.Array:
    """Fraction of the pruning window `[begin_step, end_step]` elapsed, clipped to [0, 1]."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.clip((step - begin_step) / float(end_step - begin_step), 0.0, 1.0)


def sigmoid_schedule(
    target: float, begin_step: int, end_step: int, beta: float = 1.0, steps_per_epoch: int = 1
) -> Schedule:
    """The paper's sigmoid ramp, normalised to go from exactly 0 to exactly `target`.

    With `e = (step - begin_step) / steps_per_epoch` and `E = (end_step - begin_step) /
    steps_per_epoch` (so `beta` is per epoch, as in the paper's configs)::

        p(step) = target * (sigmoid(beta * (e - E/2)) - sigmoid(-beta*E/2))
                         / (sigmoid(beta*E/2) - sigmoid(-beta*E/2))

    Args:
      target: final sparsity `P` in [0, 1).
      begin_step: step at which pruning starts (`p = 0` up to and including it).
      end_step: step at which `p` reaches `target` exactly (and stays).
      beta: steepness per epoch (> 0); the paper uses 1.
      steps_per_epoch: steps in one epoch, the unit of `beta`.

    Returns:
      A jittable schedule `step -> float32 scalar sparsity` (`step` a Python or traced integer).

    Raises:
      ValueError: an argument outside its range; the message names it.
    """
    _check_target(target)
    _check_window(begin_step, end_step)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    _check_positive_int("steps_per_epoch", steps_per_epoch)
    half_width = beta * (end_step - begin_step) / steps_per_epoch / 2.0
    low = 1.0 / (1.0 + math.exp(half_width))  # sigmoid(-beta E/2)
    span = 1.0 - 2.0 * low  # sigmoid(beta E/2) - sigmoid(-beta E/2)

    def schedule(step):
        x = _progress(step, begin_step, end_step)
        raw = jax.nn.sigmoid(half_width * (2.0 * x - 1.0))
        # Exact endpoints whatever the rounding of the sigmoid: 0 at x = 0 and target at x = 1.
        value = jnp.clip((raw - low) / span, 0.0, 1.0)
        value = jnp.where(x >= 1.0, 1.0, jnp.where(x <= 0.0, 0.0, value))
        return (target * value).astype(jnp.float32)

    return schedule


def cubic_schedule(target: float, begin_step: int, end_step: int) -> Schedule:
    """Zhu & Gupta's gradual pruning ramp `target * (1 - (1 - x)**3)`, x = window progress.

    The sparsity rises fastest at the start of the window (when many weights are redundant) and
    flattens towards `target`; the field's standard ramp for gradual magnitude pruning.

    Args:
      target: final sparsity `P` in [0, 1).
      begin_step: step at which pruning starts (`p = 0` up to and including it).
      end_step: step at which `p` reaches `target` exactly (and stays).

    Returns:
      A jittable schedule `step -> float32 scalar sparsity` (`step` a Python or traced integer).

    Raises:
      ValueError: an argument outside its range; the message names it.
    """
    _check_target(target)
    _check_window(begin_step, end_step)

    def schedule(step):
        x = _progress(step, begin_step, end_step)
        return (target * (1.0 - (1.0 - x) ** 3)).astype(jnp.float32)

    return schedule


def constant_schedule(target: float) -> Schedule:
    """`target` from step 0 on (sparse training from scratch at a fixed sparsity).

    Args:
      target: the sparsity `P` in [0, 1).

    Returns:
      A jittable schedule `step -> float32 scalar sparsity` (`step` a Python or traced integer).

    Raises:
      ValueError: an argument outside its range; the message names it.
    """
    _check_target(target)
    return lambda step: jnp.full((), target, jnp.float32)


def one_shot_schedule(target: float, prune_step: int) -> Schedule:
    """0 before `prune_step`, `target` from `prune_step` on.

    Args:
      target: the sparsity `P` in [0, 1).
      prune_step: the step from which the sparsity is `target` (a non-negative integer).

    Returns:
      A jittable schedule `step -> float32 scalar sparsity` (`step` a Python or traced integer).

    Raises:
      ValueError: an argument outside its range; the message names it.
    """
    _check_target(target)
    if int(prune_step) != prune_step or prune_step < 0:
        raise ValueError(f"prune_step must be a non-negative integer, got {prune_step!r}")
    return lambda step: jnp.where(jnp.asarray(step) >= prune_step, target, 0.0).astype(jnp.float32)


def reference_sigmoid_schedule(
    target: float, num_epochs: int, steps_per_epoch: int, beta: float = 1.0
) -> Schedule:
    """The reference code's schedule: `P * sigmoid(beta * (e - E/2))`, e = epoch of `step`.

    Piecewise constant over each epoch and not normalised (it starts above 0 and ends below
    `target`). The training program uses it with `reference_schedules=True`.

    Args:
      target: the sparsity `P` in [0, 1).
      num_epochs: `E`, the length of the run in epochs.
      steps_per_epoch: optimizer steps in one epoch.
      beta: steepness per epoch (the paper: 1).

    Returns:
      A jittable schedule `step -> float32 scalar sparsity` (`step` a Python or traced integer).

    Raises:
      ValueError: an argument outside its range; the message names it.
    """
    _check_target(target)

    def schedule(step):
        epoch = jnp.floor_divide(jnp.asarray(step), steps_per_epoch).astype(jnp.float32)
        return (target * jax.nn.sigmoid(beta * (epoch - num_epochs / 2.0))).astype(jnp.float32)

    return schedule


def reference_lr_schedule(
    base_lr: float, num_epochs: int, steps_per_epoch: int, warmup_epochs: int = 5
) -> Schedule:
    """The reference code's learning rate: set once per epoch, linear warm-up, then cosine.

    With `e = step // steps_per_epoch` (0-based epoch), `E = num_epochs`, `W = warmup_epochs`::

        lr(e) = base_lr * (e + 1) / W                     if e < W
        lr(e) = 0.5 * base_lr * (1 + cos(pi * e / E))     otherwise

    The cosine runs over all `E` epochs and the warm-up replaces its first `W` epochs (it is
    not a cosine over the remaining `E - W` epochs). The value is constant within an epoch.
    From epoch `E` on (after the run) the schedule stays at `lr(E) = 0`.

    Args:
      base_lr: the peak learning rate (> 0), reached at epoch `W - 1`.
      num_epochs: `E`, the length of the run in epochs (a positive integer).
      steps_per_epoch: optimizer steps in one epoch (a positive integer).
      warmup_epochs: `W`, an integer in `[0, E]`; 0 = no warm-up.

    Returns:
      A jittable schedule `step -> float32 scalar` (`step` a Python or traced integer).

    Raises:
      ValueError: an argument outside the ranges above; the message names it.
    """
    if not (
        isinstance(base_lr, numbers.Real)
        and not isinstance(base_lr, bool)
        and math.isfinite(base_lr)
        and base_lr > 0
    ):
        raise ValueError(f"base_lr must be a finite number > 0, got {base_lr!r}")
    _check_positive_int("num_epochs", num_epochs)
    _check_positive_int("steps_per_epoch", steps_per_epoch)
    if not (_is_whole_number(warmup_epochs) and 0 <= warmup_epochs <= num_epochs):
        raise ValueError(
            f"warmup_epochs must be an integer in [0, num_epochs={num_epochs}], "
            f"got {warmup_epochs!r}"
        )
    base_lr, num_epochs, warmup_epochs = float(base_lr), int(num_epochs), int(warmup_epochs)
    steps_per_epoch = int(steps_per_epoch)

    def schedule(step):
        epoch = jnp.floor_divide(jnp.asarray(step), steps_per_epoch)
        epoch = jnp.minimum(epoch, num_epochs).astype(jnp.float32)
        cosine = 0.5 * base_lr * (1.0 + jnp.cos(jnp.pi * epoch / num_epochs))
        # max(W, 1) only keeps the unused branch finite when W = 0.
        warmup = base_lr * (epoch + 1.0) / max(warmup_epochs, 1)
        return jnp.where(epoch < warmup_epochs, warmup, cosine).astype(jnp.float32)

    return schedule


def make_schedule(
    schedule: str | Schedule,
    target: float,
    begin_step: int,
    end_step: int,
    beta: float = 1.0,
    steps_per_epoch: int = 1,
) -> Schedule:
    """Builds a schedule from its name (one of `SCHEDULE_NAMES`) or passes a callable on.

    Args:
      schedule: `"sigmoid"`, `"cubic"`, `"constant"`, `"one_shot"` (prunes at `begin_step`), or
        a callable `step -> sparsity`, returned as it is.
      target: final sparsity `P` in [0, 1).
      begin_step: step at which the ramp starts.
      end_step: step at which the ramp reaches `target` (`constant` ignores the window).
      beta: the sigmoid's steepness per epoch.
      steps_per_epoch: the sigmoid's epoch, in steps.

    Returns:
      A jittable schedule `step -> float32 scalar sparsity` (`step` a Python or traced integer).

    Raises:
      ValueError: an argument outside its range; the message names it.
    """
    if callable(schedule):
        return schedule
    if schedule == "sigmoid":
        return sigmoid_schedule(target, begin_step, end_step, beta, steps_per_epoch)
    if schedule == "cubic":
        return cubic_schedule(target, begin_step, end_step)
    if schedule == "constant":
        return constant_schedule(target)
    if schedule == "one_shot":
        return one_shot_schedule(target, begin_step)
    raise ValueError(
        f"schedule must be one of {', '.join(SCHEDULE_NAMES)} or a callable, got {schedule!r}"
    )

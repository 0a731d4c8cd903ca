"""OptG as an optax `GradientTransformation`, with the gradient-driven baselines as presets.

One transformation holds the whole sparse-training state beside the weights: scores, score
momentum, masks and a step count, each a pytree shaped like the params (`None` on leaves that
are not masked). The training loop stays the ordinary optax loop::

    tx = optax.chain(optg_optax(...), optax.add_decayed_weights(1e-4), optax.sgd(lr, 0.9))
    state = tx.init(params)
    masked = apply_masks(params, state)              # forward with W * M
    grads = jax.grad(loss_fn)(masked, batch)         # G = dL/d(W * M)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)

`update` passes `G * M` on to the rest of the chain (removed weights get no loss gradient;
weight decay later in the chain still acts on them), moves the scores with the straight-through
gradient `G * W` of every weight, kept or removed, and re-selects the masks, all inside the one
jitted update.

When masks change: the update with count `t` (`t > 0`, `t % mask_update_every == 0`, and
`t == pruning_end_step`) first re-selects the masks from the scores accumulated over steps
`0..t-1` at sparsity `p(t)`, then moves the scores; the forward pass of step `t` has already
run with the old masks, so anything evaluated between two updates (say at the end of an epoch)
is the network that was trained with its masks, BatchNorm statistics included. When pruning ends
with the run (`pruning_end_step == total_steps`) the final masks are selected after the last
update, so the final sparsity is exactly `P` either way.

Criteria (which score ranks the weights at a mask refresh):

* `optg`: scores `S` start at 0 (`score_start=c`: at `c * W^2 / 2`) and follow SGD with
  momentum (`score_momentum`) on `G * W` with learning rate `learning_rate(t) * p(t) / P` (the
  supermask optimizer: later, sparser steps weigh more); `score_half_life=h` makes the scores
  forget, a step's weight halving every `h` of the ramp (`score_decay`), and
  `score_half_distance=delta` as the weights move, every `delta` of their starting norm
  (`distance_decay`).
* `supermask`: the same with learning rate `learning_rate(t)` (ablation).
* `taylor`: `|G * (W * M)|` averaged over the steps since the last refresh, restarted after
  each refresh (the classic first-order criterion, no accumulation across refreshes).
* `magnitude`: `|W * M|` (gradual magnitude pruning, Zhu & Gupta).

For `taylor` and `magnitude` a removed weight scores 0, so it stays removed, as in the classic
methods; OptG's scores keep moving for removed weights, so they can come back.

Recipes (`recipe=`, see `OptGSettings.resolved`) fill in the arguments a caller leaves at None. The
default recipe is budget-safe: whatever the run's length, a cubic ramp ends at two-thirds of the
run, 25 mask refreshes are spread over it, the score momentum is 0.99, the masks are frozen
once the target is reached, so the last third trains the final network, and `optg`'s scores
forget with distance (`score_half_distance=0.25`). `recipe="paper"` gives the reference code's
settings (a sigmoid over the whole run, a refresh per epoch, momentum 0.9, refreshes after the
ramp too, the scores a plain sum).
"""

from __future__ import annotations

import dataclasses
import fractions
import math
import types
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from optg_jax import nm, topk
from optg_jax import schedules as schedules_lib
from optg_jax.masking import default_is_masked

ALLOCATIONS = ("global", "uniform", "sensitivity")
# How an N:M pattern is reached over the ramp: a growing fraction of the groups at N:M, or N
# lowered from M in every group.
NM_RAMPS = ("groups", "n")

MaskPredicate = Callable[[tuple, Any], bool]


class OptGState(NamedTuple):
    """State of `optg_optax`. Pytrees are shaped like the params, `None` where unmasked.

    Attributes:
      count: int32 scalar, number of updates done.
      scores: float32 per masked leaf. `optg`/`supermask`: the accumulated scores;
        `taylor`: mean of `|G * W * M|` since the last refresh; `magnitude`: `None`.
      momentum: float32 score momentum per masked leaf (`optg`/`supermask`), else `None`.
      score_noise: float32 per masked leaf, the accumulated squared noise of the scores (the
        square of their standard error, `Criterion.noise`), when the ranking adds an
        `uncertainty_bonus`; else `None`.
      masks: `mask_dtype` (uint8 by default) per masked leaf, 1 = kept.
      last_refresh: int32 scalar, the step count at which the masks were last selected.
      sparsity: float32 scalar, the fraction of masked weights the current masks remove.
      target: float32 scalar, the final sparsity `P` of the run.
      score_lr: float32 scalar, the score learning rate used by the last update.
      start_weights: float32 per masked leaf, the weights `tx.init` was given, when the scores
        forget with distance (`score_half_distance`); else `None`.
      distance: float32 scalar, the largest relative distance of the masked weights from
        `start_weights` seen so far (`weights_distance`; 0 when not tracked).
    """

    count: jax.Array
    scores: Any
    momentum: Any
    score_noise: Any
    masks: Any
    last_refresh: jax.Array
    sparsity: jax.Array
    target: jax.Array
    score_lr: jax.Array
    start_weights: Any
    distance: jax.Array


class ScoreStep(NamedTuple):
    """What one update hands a criterion: lists of per-leaf arrays over the masked leaves.

    Attributes:
      grads: `G = dL/d(W * M)` per masked leaf (the loss gradient at the masked weights).
      weights: the dense weights `W`.
      masks: the masks `M` the step's forward pass ran with.
      scores: the criterion's scores before the step (empty if it keeps none).
      momentum: the score momentum before the step (empty if it keeps none).
      score_lr: float32 scalar, the score learning rate of the step.
      score_momentum: Python float, the momentum coefficient `mu` (`v = mu v + g`).
      steps_since_refresh: float32 scalar, updates since the masks were last selected (0 at a
        refresh).
    """

    grads: list
    weights: list
    masks: list
    scores: list
    momentum: list
    score_lr: jax.Array
    score_momentum: float
    steps_since_refresh: jax.Array


class Criterion(NamedTuple):
    """A pruning criterion as data: what it keeps per weight, how it ranks, how a step moves it.

    `optg_optax` looks the record up once (by name, or takes one given directly); adding a
    criterion means writing one of these.

    Attributes:
      name: the name `optg_optax(criterion=...)` accepts.
      has_scores: keeps a float32 score array per masked leaf (`OptGState.scores`, zeros at init).
      has_momentum: keeps a float32 score momentum per masked leaf (`OptGState.momentum`).
      progress_scaled_lr: the score learning rate is scaled by the sparsity progress,
        `lr(t) * (floor + (1 - floor) * p(t) / P)` (the supermask optimizer), instead of `lr(t)`.
      rank: `(scores, weights, masks) -> ranking scores` (lists of per-leaf arrays; float32,
        higher is kept). Called only at a mask refresh.
      update: `(ScoreStep) -> (scores, momentum)`, the criterion's state after one step.
      init_scores: `(weights) -> scores` (lists of per-leaf arrays), where the scores start;
        `None`: at zero.
      weight_grad: `(G, W, M) -> gradient` for one masked leaf, what the rest of the chain
        receives; `None`: `G * M` (removed weights get no loss gradient).
      noise: `(ScoreStep) -> list`, per weight the variance this step adds to the scores if its
        gradient were pure noise (what `uncertainty_bonus` adds up); `None`: the criterion has
        no such estimate.
    """

    name: str
    has_scores: bool
    has_momentum: bool
    progress_scaled_lr: bool
    rank: Callable[[list, list, list], list]
    update: Callable[[ScoreStep], tuple[list, list]]
    init_scores: Callable[[list], list] | None = None
    weight_grad: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None
    noise: Callable[[ScoreStep], list] | None = None


def _rank_by_scores(scores: list, weights: list, masks: list) -> list:
    del weights, masks
    return list(scores)


def _rank_by_magnitude(scores: list, weights: list, masks: list) -> list:
    del scores
    return [jnp.abs(w * m.astype(w.dtype)).astype(jnp.float32) for w, m in zip(weights, masks)]


def _straight_through_sgd(step: ScoreStep) -> tuple[list, list]:
    """SGD with momentum on `G * W` for every weight, kept or removed (the supermask gradient)."""
    scores, momentum = [], []
    for g, w, s, v in zip(step.grads, step.weights, step.scores, step.momentum):
        score_grad = (g * w).astype(jnp.float32)
        v = step.score_momentum * v + score_grad
        momentum.append(v)
        scores.append(s - step.score_lr * v)
    return scores, momentum


def _straight_through_noise(step: ScoreStep) -> list:
    """`(score_lr * G * W / (1 - mu))^2`: the variance one step adds to a score under momentum
    `mu` (a step's `G * W` reaches the score `1 / (1 - mu)` times over), if `G` were noise."""
    scale = step.score_lr / (1.0 - step.score_momentum)
    return [
        jnp.square(scale * (g * w).astype(jnp.float32)) for g, w in zip(step.grads, step.weights)
    ]


def _taylor_running_mean(step: ScoreStep) -> tuple[list, list]:
    """Running mean of `|G * W * M|` since the last refresh (restarts at a refresh)."""
    n = step.steps_since_refresh
    scores = [
        s + (jnp.abs(g * w * m.astype(w.dtype)).astype(jnp.float32) - s) / (n + 1)
        for g, w, s, m in zip(step.grads, step.weights, step.scores, step.masks)
    ]
    return scores, step.momentum


def _no_scores(step: ScoreStep) -> tuple[list, list]:
    return step.scores, step.momentum


def _rank_by_dense_magnitude(scores: list, weights: list, masks: list) -> list:
    del scores, masks
    return [jnp.abs(w).astype(jnp.float32) for w in weights]


SR_STE_DECAY = 2e-4


def sr_ste_criterion(decay: float = SR_STE_DECAY) -> Criterion:
    """SR-STE (Zhou et al. 2021): magnitude masks of the dense weights, a straight-through
    gradient, and an extra decay on the removed weights.

    Masks rank `|W|` (removed weights can come back). Every weight receives the loss gradient
    `G` at the masked weights, and the removed ones also `decay * W` (the sparse-refined term),
    so the weights that keep being removed shrink toward zero. The published form is N:M with
    the pattern fixed from the start and masks re-selected every step:
    `optg_optax(P, T, lr, criterion="sr_ste", schedule="constant", mask_update_every=1,
    pattern="2:4")`.

    Args:
      decay: the sparse-refined decay `lambda` (the paper's 2e-4).

    Returns:
      The `Criterion`, named `"sr_ste"`.
    """

    def weight_grad(g, w, m):
        removed = 1 - m.astype(g.dtype)
        return g + decay * removed * w.astype(g.dtype)

    return Criterion(
        "sr_ste", False, False, False, _rank_by_dense_magnitude, _no_scores, None, weight_grad
    )


_CRITERIA: Mapping[str, Criterion] = types.MappingProxyType(
    {
        c.name: c
        for c in (
            Criterion(
                "optg",
                True,
                True,
                True,
                _rank_by_scores,
                _straight_through_sgd,
                noise=_straight_through_noise,
            ),
            Criterion(
                "supermask",
                True,
                True,
                False,
                _rank_by_scores,
                _straight_through_sgd,
                noise=_straight_through_noise,
            ),
            Criterion("taylor", True, False, False, _rank_by_scores, _taylor_running_mean),
            Criterion("magnitude", False, False, False, _rank_by_magnitude, _no_scores),
            sr_ste_criterion(),
        )
    }
)
CRITERIA = tuple(_CRITERIA)


class Recipe(NamedTuple):
    """The values `optg_optax` takes for the arguments a caller leaves at `None`.

    Attributes:
      name: the name `optg_optax(recipe=...)` accepts.
      pruning_end_fraction: the sparsity reaches `P` at `round(fraction * total_steps)`.
      refreshes_during_ramp: `mask_update_every` defaults to `ramp_steps // n` (at least 1);
        0 means one epoch (`steps_per_epoch`, else `total_steps // 100`).
      schedule: the sparsity schedule (a name in `schedules.SCHEDULE_NAMES`).
      score_momentum: momentum of the score SGD.
      update_masks_after_pruning: whether masks keep being re-selected after the ramp.
      uncertainty_bonus: `kappa`, the standard errors a score gains at a mask refresh (for the
        criteria with a `noise` estimate; 0 ranks by the scores alone).
      score_half_distance: `delta`, how far the weights move (in units of their starting norm)
        before a score step's weight halves, for `optg` (the criterion it was chosen for; 0: no
        forgetting).
      uncertainty_bonus_at_start: `kappa0`, the extra bonus while the weights stay near their
        start (`kappa + kappa0 * 2^(-r / delta)`), for `optg` where its bonus and distance are
        both on (0: the bonus stays `kappa`).
    """

    name: str
    pruning_end_fraction: float
    refreshes_during_ramp: int
    schedule: str
    score_momentum: float
    update_masks_after_pruning: bool
    uncertainty_bonus: float
    score_half_distance: float
    uncertainty_bonus_at_start: float


_RECIPES: Mapping[str, Recipe] = types.MappingProxyType(
    {
        r.name: r
        for r in (
            # Budget-safe settings chosen on validation splits (docs/library.md, BENCHMARKS.md): the ramp
            # ends at two-thirds of the run, a fixed number of refreshes during it, the field's
            # cubic ramp, a long score average, masks frozen once the target is reached, and
            # OptG's scores forgetting a step's reading by half for every quarter of their
            # starting norm the weights move, and OptG's bonus doubled while the weights stay
            # near their start (kappa 4 + kappa0 4, fading with the same distance).
            Recipe("default", 2.0 / 3.0, 25, "cubic", 0.99, False, 4.0, 0.25, 4.0),
            # The paper's code: the sigmoid spans the whole run, a refresh every epoch, score
            # momentum 0.9, masks re-selected after the ramp too, the scores a plain sum.
            Recipe("paper", 1.0, 0, "sigmoid", 0.9, True, 0.0, 0.0, 0.0),
        )
    }
)
RECIPES = tuple(_RECIPES)


def _exact_num_kept(num_weights: int, sparsity: float) -> int:
    """`floor(N * (1 - P))` with `P` read as the decimal the user wrote (0.9 is 9/10)."""
    p = fractions.Fraction(repr(float(sparsity)))
    return int(math.floor(num_weights * (1 - p)))


def _is_none(x) -> bool:
    return x is None


def _not_masked(x) -> bool:
    """A mask tree's mark for a leaf left dense: `None`, or `optax.MaskedNode` where `optax.masked`
    or `optax.multi_transform` gave the leaf to another part of the optimizer."""
    return x is None or isinstance(x, optax.MaskedNode)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# ------------------------------------------------------------------------------------ settings


def _recipe(name: str) -> Recipe:
    """The `Recipe` called `name`; a `ValueError` naming it if there is none."""
    if name not in _RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {name!r}")
    return _RECIPES[name]


def default_uncertainty_bonus(criterion: str | Criterion, recipe: str = "default") -> float:
    """The `kappa` a recipe gives a criterion when `uncertainty_bonus` is left `None`.

    Args:
      criterion: a name in `CRITERIA` or a `Criterion` record.
      recipe: a name in `RECIPES`.

    Returns:
      The recipe's bonus for a criterion with a noise estimate (`optg`, `supermask`), else 0
      (and 0 for a name the library does not know; `OptGSettings.resolved` rejects it).

    Raises:
      ValueError: an unknown recipe; the message names it.
    """
    rules = _recipe(recipe)
    rule = criterion if isinstance(criterion, Criterion) else _CRITERIA.get(criterion)
    return rules.uncertainty_bonus if rule is not None and rule.noise is not None else 0.0


def default_score_half_distance(criterion: str | Criterion, recipe: str = "default") -> float:
    """The `delta` a recipe gives a criterion when `score_half_distance` is left `None`.

    Only the library's own `optg` criterion takes the recipe's value: it is the criterion the
    value was chosen for on validation splits (docs/library.md). `supermask` and a `Criterion`
    record of your own keep the plain sum (0) unless asked.

    Args:
      criterion: a name in `CRITERIA` or a `Criterion` record.
      recipe: a name in `RECIPES`.

    Returns:
      The recipe's `score_half_distance` for `"optg"`, else 0.

    Raises:
      ValueError: an unknown recipe; the message names it.
    """
    rules = _recipe(recipe)
    return rules.score_half_distance if criterion == "optg" else 0.0


def default_uncertainty_bonus_at_start(
    criterion: str | Criterion,
    recipe: str = "default",
    uncertainty_bonus: float | None = None,
    score_half_distance: float | None = None,
) -> float:
    """The `kappa0` a recipe gives a criterion when `uncertainty_bonus_at_start` is left `None`.

    Like `default_score_half_distance`, only `optg` takes the recipe's value, and only where the
    run has both things the extra bonus is made of: a bonus and a distance to fade it with. A
    caller who turns either off (`uncertainty_bonus=0` or `score_half_distance=0`) gets 0, not
    an error.

    Args:
      criterion: a name in `CRITERIA` or a `Criterion` record.
      recipe: a name in `RECIPES`.
      uncertainty_bonus: the run's `kappa` (None: the recipe's).
      score_half_distance: the run's `delta` (None: the recipe's).

    Returns:
      The recipe's `uncertainty_bonus_at_start` for `"optg"` with `kappa > 0` and `delta > 0`,
      else 0.

    Raises:
      ValueError: an unknown recipe; the message names it.
    """
    rules = _recipe(recipe)
    kappa = _pick(uncertainty_bonus, default_uncertainty_bonus(criterion, recipe))
    delta = _pick(score_half_distance, default_score_half_distance(criterion, recipe))
    on = criterion == "optg" and kappa and delta
    return rules.uncertainty_bonus_at_start if on else 0.0


@dataclasses.dataclass(frozen=True)
class OptGSettings:
    """Everything `optg_optax` runs with, in one frozen record.

    Built with the caller's arguments (`None` = the recipe's value), then `resolved()` fills in
    the recipe's values and validates every field once; the transformation reads only a resolved
    record. The fields are `optg_optax`'s arguments (see its docstring for each); `criterion` may
    be a name or a `Criterion`, `schedule` a name or a callable.
    """

    target_sparsity: float
    total_steps: int
    learning_rate: float | optax.Schedule
    criterion: str | Criterion = "optg"
    schedule: str | schedules_lib.Schedule | None = None
    mask_update_every: int | None = None
    recipe: str = "default"
    beta: float = 1.0
    steps_per_epoch: int | None = None
    pruning_start_step: int = 0
    pruning_end_step: int | None = None
    allocation: str = "global"
    score_momentum: float | None = None
    score_lr_floor: float = 0.0
    update_masks_after_pruning: bool | None = None
    is_masked: MaskPredicate | None = None
    mask_dtype: Any = jnp.uint8
    pattern: str | nm.NMPattern | None = None
    nm_ramp: str = "groups"
    uncertainty_bonus: float | None = None
    group_axis: Callable[[tuple, Any], int] | None = None
    score_start: float = 0.0
    score_half_life: float = 0.0
    score_half_distance: float | None = None
    uncertainty_bonus_at_start: float | None = None

    def resolved(self) -> OptGSettings:
        """The record with the recipe's values in place of `None`, every field validated.

        The recipe (`RECIPES`) decides: `pruning_end_step` =
        `pruning_start_step + round(fraction * (total_steps - pruning_start_step))`;
        `steps_per_epoch` (the sigmoid's unit) = the caller's `mask_update_every`, else 1% of the
        run; `mask_update_every` = `ramp // refreshes_during_ramp` (at least 1), or one epoch
        for the paper's recipe; `schedule`, `score_momentum` and `update_masks_after_pruning`
        the recipe's own; `uncertainty_bonus` and `score_half_distance` the recipe's for the
        criteria that take them (`default_uncertainty_bonus`, `default_score_half_distance`),
        and `uncertainty_bonus_at_start` likewise (`default_uncertainty_bonus_at_start`).

        Returns:
          A new `OptGSettings` with no `None` left (`is_masked` defaults to
          `masking.default_is_masked`).

        Raises:
          ValueError: a field outside its range; the message names the field and the value.
        """
        given = _python_numbers(self)
        rules = _recipe(given.recipe)
        start, end, total = given.pruning_start_step, given.pruning_end_step, given.total_steps
        if end is None and _is_int(total) and _is_int(start):
            ramp = round(rules.pruning_end_fraction * (total - start))
            end = int(min(total, start + max(1, ramp)))
        epoch, every = given.steps_per_epoch, given.mask_update_every
        if epoch is None:
            # The sigmoid's unit: the caller's refresh interval (their epoch), else 1% of the run.
            epoch = every
            if epoch is None and _is_int(total):
                epoch = max(1, int(total) // 100)
        if every is None:
            if rules.refreshes_during_ramp and _is_int(end) and _is_int(start):
                every = max(1, int(end - start) // rules.refreshes_during_ramp)
            else:
                every = epoch
        kappa = given._bonus()
        delta = _pick(
            given.score_half_distance, default_score_half_distance(given.criterion, given.recipe)
        )
        settings = dataclasses.replace(
            given,
            schedule=rules.schedule if given.schedule is None else given.schedule,
            mask_update_every=every,
            steps_per_epoch=epoch,
            pruning_end_step=end,
            score_momentum=_pick(given.score_momentum, rules.score_momentum),
            update_masks_after_pruning=_pick(
                given.update_masks_after_pruning, rules.update_masks_after_pruning
            ),
            is_masked=given.is_masked or default_is_masked,
            pattern=None if given.pattern is None else nm.parse_pattern(given.pattern),
            uncertainty_bonus=kappa,
            score_half_distance=delta,
            uncertainty_bonus_at_start=_pick(
                given.uncertainty_bonus_at_start,
                default_uncertainty_bonus_at_start(given.criterion, given.recipe, kappa, delta),
            ),
            group_axis=given.group_axis or nm.group_axis,
        )
        _validate(settings)
        return settings

    def _bonus(self) -> float:
        """The given bonus, else `default_uncertainty_bonus` of the criterion and recipe."""
        if self.uncertainty_bonus is not None:
            return self.uncertainty_bonus
        return default_uncertainty_bonus(self.criterion, self.recipe)

    @property
    def rule(self) -> Criterion:
        """The `Criterion` record `criterion` names (or is)."""
        return (
            self.criterion if isinstance(self.criterion, Criterion) else _CRITERIA[self.criterion]
        )

    def sparsity_schedule(self) -> schedules_lib.Schedule:
        """The sparsity schedule `step -> p(step)` of a resolved record.

        Returns:
          A jittable schedule, exactly `target_sparsity` from `pruning_end_step` on.
        """
        return schedules_lib.make_schedule(
            self.schedule,
            float(self.target_sparsity),
            self.pruning_start_step,
            self.pruning_end_step,
            self.beta,
            self.steps_per_epoch,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary of a resolved record, for a run's results.

        Returns:
          The scalar fields as they are; `criterion` by name; `schedule` by name (a callable by
          its `__name__`); `learning_rate`, `is_masked` and `mask_dtype` left out.
        """
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("learning_rate", "is_masked", "mask_dtype", "group_axis"):
                continue
            if field.name == "pattern" and value is not None:
                value = str(value)
            if field.name == "criterion":
                value = self.rule.name
            elif field.name == "schedule" and callable(value):
                value = getattr(value, "__name__", type(value).__name__)
            out[field.name] = value
        return out


def _python_numbers(settings: OptGSettings) -> OptGSettings:
    """The record with NumPy scalars as Python numbers: an integer as `int`, a float as the
    shortest decimal that gives it back (`np.float32(0.9)` is 0.9, not 0.8999999761581421)."""
    changes = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, np.integer):
            changes[field.name] = int(value)
        elif isinstance(value, np.floating):
            changes[field.name] = float(str(value))
    return dataclasses.replace(settings, **changes) if changes else settings


def _pick(given, default):
    return default if given is None else given


def _positive_int(value) -> bool:
    return _is_int(value) and value > 0


def _number_in(lo: float, hi: float, hi_open: bool = False):
    def check(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return lo <= value < hi if hi_open else lo <= value <= hi

    return check


def _learning_rate_ok(value) -> bool:
    """A schedule, a non-negative number, or a real scalar array (`optax.inject_hyperparams`
    passes the learning rate as one, traced inside `update`: only a concrete one is checked for
    its sign)."""
    if callable(value):
        return True
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        dtype = np.dtype(value.dtype)
        if np.ndim(value) != 0 or not (
            np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
        ):
            return False
        try:
            value = float(value)
        except jax.errors.ConcretizationTypeError:  # a tracer: its value is known only at run time
            return True
    return _number_in(0.0, math.inf)(value)


# (field, test on the value, what the value must be): one row per plain check.
_FIELD_CHECKS = (
    ("target_sparsity", _number_in(0.0, 1.0, hi_open=True), "a number in [0, 1)"),
    ("total_steps", _positive_int, "a positive integer"),
    ("mask_update_every", _positive_int, "a positive integer"),
    ("steps_per_epoch", _positive_int, "a positive integer"),
    ("learning_rate", _learning_rate_ok, "a non-negative number or a schedule"),
    (
        "criterion",
        lambda v: isinstance(v, Criterion) or v in CRITERIA,
        f"one of {', '.join(CRITERIA)} or a Criterion",
    ),
    (
        "schedule",
        lambda v: callable(v) or v in schedules_lib.SCHEDULE_NAMES,
        f"one of {', '.join(schedules_lib.SCHEDULE_NAMES)} or a callable",
    ),
    ("beta", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "> 0"),
    ("pruning_start_step", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    ("allocation", lambda v: v in ALLOCATIONS, f"one of {', '.join(ALLOCATIONS)}"),
    ("score_momentum", _number_in(0.0, 1.0, hi_open=True), "in [0, 1)"),
    ("score_lr_floor", _number_in(0.0, 1.0), "in [0, 1]"),
    ("nm_ramp", lambda v: v in NM_RAMPS, f"one of {', '.join(NM_RAMPS)}"),
    ("uncertainty_bonus", _number_in(0.0, math.inf), "a non-negative number"),
    ("score_start", _number_in(0.0, math.inf, hi_open=True), "a non-negative number"),
    ("score_half_life", _number_in(0.0, math.inf, hi_open=True), "a non-negative number"),
    ("score_half_distance", _number_in(0.0, math.inf, hi_open=True), "a non-negative number"),
    (
        "uncertainty_bonus_at_start",
        _number_in(0.0, math.inf, hi_open=True),
        "a non-negative number",
    ),
)


def _validate(settings: OptGSettings) -> None:
    """Raises `ValueError` naming the first field of `settings` outside its range."""
    for name, ok, must_be in _FIELD_CHECKS:
        value = getattr(settings, name)
        if not ok(value):
            raise ValueError(f"{name} must be {must_be}, got {value!r}")
    if settings.uncertainty_bonus and settings.rule.noise is None:
        raise ValueError(
            f"uncertainty_bonus {settings.uncertainty_bonus!r} needs a criterion with a noise "
            f"estimate (optg, supermask), got {settings.rule.name!r}"
        )
    if settings.allocation == "sensitivity" and not settings.uncertainty_bonus:
        raise ValueError(
            "allocation 'sensitivity' needs the uncertainty bonus's noise estimate "
            f"(optg or supermask with uncertainty_bonus > 0), got criterion "
            f"{settings.rule.name!r} with uncertainty_bonus {settings.uncertainty_bonus!r}"
        )
    if settings.uncertainty_bonus_at_start and not (
        settings.uncertainty_bonus and settings.score_half_distance
    ):
        raise ValueError(
            f"uncertainty_bonus_at_start {settings.uncertainty_bonus_at_start!r} needs the bonus "
            "and the distance the weights move (uncertainty_bonus > 0, score_half_distance > 0), "
            f"got uncertainty_bonus {settings.uncertainty_bonus!r}, score_half_distance "
            f"{settings.score_half_distance!r}"
        )
    for name in ("score_start", "score_half_life", "score_half_distance"):
        if getattr(settings, name) and not settings.rule.has_momentum:
            raise ValueError(
                f"{name} {getattr(settings, name)!r} needs a criterion whose scores accumulate "
                f"(optg, supermask), got {settings.rule.name!r}"
            )
    pattern = settings.pattern
    if pattern is not None and not math.isclose(
        settings.target_sparsity, 1 - pattern.n / pattern.m, abs_tol=1e-9
    ):
        raise ValueError(
            f"target_sparsity {settings.target_sparsity!r} does not match pattern {pattern}, "
            f"which removes {1 - pattern.n / pattern.m:g} of every group"
        )
    start, end = settings.pruning_start_step, settings.pruning_end_step
    if not (_is_int(end) and start < end <= settings.total_steps):
        raise ValueError(
            f"pruning_end_step must be an integer in (pruning_start_step={start}, "
            f"total_steps={settings.total_steps}], got {end!r}"
        )


# ------------------------------------------------------------------------- the pieces of a step


def score_lr(settings: OptGSettings, count: jax.Array) -> jax.Array:
    """The score learning rate of the update with count `count`.

    Args:
      settings: a resolved record.
      count: int32 scalar, the update's count `t`.

    Returns:
      float32 scalar: `lr(t) * (floor + (1 - floor) * p(t) / P)` for a criterion with
      `progress_scaled_lr` (the supermask optimizer), else `lr(t)`.
    """
    lr_fn = settings.learning_rate
    lr = jnp.asarray(lr_fn(count) if callable(lr_fn) else lr_fn, jnp.float32)
    target = float(settings.target_sparsity)
    if settings.rule.progress_scaled_lr and target > 0:
        progress = settings.sparsity_schedule()(count) / target
        floor = settings.score_lr_floor
        lr = lr * (floor + (1.0 - floor) * progress)
    return lr.astype(jnp.float32)


def score_decay(settings: OptGSettings) -> float:
    """The factor `d` a score keeps at each update, `0.5 ** (1 / (h * ramp))` (1: no decay).

    With `score_half_life = h > 0` the update is `S <- d * S - lr * v`: a step's contribution to
    the score halves every `h * ramp` updates, `ramp = pruning_end_step - pruning_start_step`,
    so the score weighs what the network has been lately over what it was at the start of
    pruning. The accumulated noise of the uncertainty bonus, a sum of variances, decays by `d^2`
    (the variance of a sum whose terms are weighted by powers of `d`).

    Args:
      settings: a resolved record.

    Returns:
      A Python float in (0, 1].
    """
    if not settings.score_half_life:
        return 1.0
    ramp = max(1, settings.pruning_end_step - settings.pruning_start_step)
    return 0.5 ** (1.0 / (settings.score_half_life * ramp))


def weights_distance(weights: list, start: list) -> jax.Array:
    """`||W - W_0|| / ||W_0||` over all the masked leaves together (0 when `||W_0|| = 0`).

    Args:
      weights: the dense weights `W` per masked leaf.
      start: `W_0`, the weights `tx.init` was given, per masked leaf (float32).

    Returns:
      float32 scalar: the global Euclidean distance, relative to the starting norm.
    """
    moved = sum(jnp.sum(jnp.square(w.astype(jnp.float32) - w0)) for w, w0 in zip(weights, start))
    size = sum(jnp.sum(jnp.square(w0)) for w0 in start)
    return jnp.where(size > 0, jnp.sqrt(moved / jnp.where(size > 0, size, 1.0)), 0.0)


def distance_decay(
    settings: OptGSettings, weights: list, start: list, distance: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The factor a score keeps at this update when it forgets with distance, and the new record.

    With `score_half_distance = delta > 0` a step's contribution to the score halves each time
    the masked weights move a further `delta` of their starting norm away from where `tx.init`
    found them: the update keeps `0.5 ** ((r - r_max) / delta)` of the old score, `r` the
    relative distance now (`weights_distance`) and `r_max` the largest one seen before (never
    below 0: coming back does not restore what was forgotten). A score reading is a first-order
    estimate taken at the weights of its step; it fades as the network moves away from them.
    Training from scratch the weights travel about their own norm and the early readings fade;
    fine-tuning a pretrained network they move a few percent and every reading counts.

    Args:
      settings: a resolved record.
      weights: the dense weights `W` of this update per masked leaf.
      start: `OptGState.start_weights` per masked leaf.
      distance: `OptGState.distance`, `r_max`.

    Returns:
      `(keep, new r_max)`: float32 scalars, `keep` in (0, 1].
    """
    now = jnp.maximum(weights_distance(weights, start), distance)
    keep = jnp.exp2(-(now - distance) / jnp.float32(settings.score_half_distance))
    return keep.astype(jnp.float32), now.astype(jnp.float32)


def select_masks(
    settings: OptGSettings,
    rank_scores: list,
    sparsity: jax.Array,
    axes: list | None = None,
    budget_scores: list | None = None,
) -> list:
    """Masks keeping the highest ranking scores at sparsity `sparsity`.

    With `allocation="global"` all leaves are ranked together (`floor(N (1 - p))` kept of the
    `N` masked weights), with `"uniform"` each leaf keeps `floor(n (1 - p))` of its `n`. With
    `"sensitivity"` each leaf keeps as many weights as it holds among the `floor(N (1 - p))`
    highest `budget_scores` over all leaves, and those with its highest `rank_scores`. At the
    target sparsity the count is computed exactly from the decimal `P` (not in float32). With a
    `pattern` the masks are N:M instead (`select_nm_masks`).

    Args:
      settings: a resolved record.
      rank_scores: float32 ranking scores, one array per masked leaf.
      sparsity: float32 scalar, the fraction to remove.
      axes: with a `pattern`, each leaf's group axis (`group_axes`; `None` for a leaf that
        stays dense).
      budget_scores: with `allocation="sensitivity"`, the float32 scores that share the kept
        count out between the leaves (one array per leaf, like `rank_scores`); else unused.

    Returns:
      One `mask_dtype` array per leaf, 1 = kept; ties are broken by position (`topk`).
    """
    if settings.pattern is not None:
        return select_nm_masks(settings, rank_scores, sparsity, axes)
    target = float(settings.target_sparsity)
    at_target = sparsity >= jnp.float32(target)

    def count(size: int) -> jax.Array:
        return jnp.where(at_target, _exact_num_kept(size, target), topk.num_kept(size, sparsity))

    sizes = [int(np.prod(s.shape)) for s in rank_scores]
    if settings.allocation == "global":
        return topk.topk_masks(rank_scores, count(sum(sizes)), settings.mask_dtype)
    if settings.allocation == "sensitivity":
        shares = topk.topk_masks(budget_scores, count(sum(sizes)), jnp.uint8)
        kept = [jnp.sum(share, dtype=jnp.int32) for share in shares]
        return [topk.topk_masks([s], k, settings.mask_dtype)[0] for s, k in zip(rank_scores, kept)]
    masks = []
    for s, size in zip(rank_scores, sizes):
        masks.extend(topk.topk_masks([s], count(size), settings.mask_dtype))
    return masks


def group_axes(settings: OptGSettings, masks: Any) -> list | None:
    """Each masked leaf's N:M group axis, `None` for a leaf that cannot hold the pattern.

    Args:
      settings: a resolved record.
      masks: the masks pytree (`OptGState.masks`; `None` on unmasked leaves).

    Returns:
      A list over the masked leaves (`settings.group_axis`, or `None` where that axis does not
      divide by M: the leaf stays dense); `None` without a pattern.
    """
    if settings.pattern is None:
        return None
    m, axis_fn = settings.pattern.m, settings.group_axis
    return [
        axis_fn(path, leaf) if nm.nm_applicable(path, leaf, m, axis_fn) else None
        for path, leaf in jax.tree_util.tree_leaves_with_path(masks)
    ]


def select_nm_masks(
    settings: OptGSettings, rank_scores: list, sparsity: jax.Array, axes: list
) -> list:
    """N:M masks at a point `p / P` of the ramp (`nm_ramp`), the highest scores kept per group.

    `nm_ramp="groups"`: the fraction `p / P` of all groups (over every leaf) holds the pattern,
    the others stay whole; the groups go in order of what they lose, the sum of the scores of
    their `M - N` lowest entries (the cheapest first; ties by position). `"n"`: every group
    keeps `M - floor((M - N) p / P)`. At `P` both are exactly N:M; leaves whose axis is `None`
    stay dense.

    Args:
      settings: a resolved record with a `pattern`.
      rank_scores: float32 ranking scores per masked leaf.
      sparsity: float32 scalar, `p` (`P` = 1 - N/M).
      axes: each leaf's group axis or `None` (`group_axes`).

    Returns:
      One `mask_dtype` mask per leaf.
    """
    n, m = settings.pattern
    dtype = settings.mask_dtype
    target = jnp.float32(settings.target_sparsity)
    progress = jnp.where(sparsity >= target, 1.0, sparsity / target)
    if settings.nm_ramp == "n":
        kept = m - jnp.floor((m - n) * progress + 1e-6).astype(jnp.int32)
        return [
            jnp.ones(s.shape, dtype) if a is None else nm.nm_masks(s, kept, m, a, dtype)
            for s, a in zip(rank_scores, axes)
        ]
    patterned = [
        None if a is None else nm.nm_masks(s, n, m, a, dtype) for s, a in zip(rank_scores, axes)
    ]
    # What each group loses at N:M: the sum of its removed entries' scores, shaped like the
    # leaf with the group axis shrunk to size // m. Lowest loss first: rank groups by -loss.
    losses = [
        -nm.group_sums(jnp.where(p == 0, s, 0.0), m, a)
        for s, p, a in zip(rank_scores, patterned, axes)
        if a is not None
    ]
    if not losses:
        return [jnp.ones(s.shape, dtype) for s in rank_scores]
    total = sum(loss.size for loss in losses)
    # The floor(G p / P) groups that lose least (highest -loss) take the pattern.
    chosen = iter(topk.topk_masks(losses, topk.num_kept(total, 1.0 - progress), jnp.bool_))
    masks = []
    for s, p, a in zip(rank_scores, patterned, axes):
        if a is None:
            masks.append(jnp.ones(s.shape, dtype))
            continue
        at_pattern = jnp.repeat(next(chosen), m, axis=a)
        masks.append(jnp.where(at_pattern, p, jnp.ones_like(p)))
    return masks


def realized_sparsity(masks: list) -> jax.Array:
    """The fraction of masked weights that `masks` remove.

    Args:
      masks: one mask per masked leaf (1 = kept).

    Returns:
      float32 scalar, `(total - kept) / total` (exactly 0 when nothing is removed).
    """
    total = sum(m.size for m in masks)
    kept = sum(jnp.sum(m, dtype=jnp.int32) for m in masks)
    return ((total - kept) / max(total, 1)).astype(jnp.float32)


def is_refresh_step(settings: OptGSettings, count: jax.Array) -> jax.Array:
    """Whether the update with count `count` re-selects the masks before moving the scores.

    Refreshes come every `mask_update_every` updates (`count > 0`) while `count < total_steps`,
    and always at `pruning_end_step`; after it only with `update_masks_after_pruning`.

    Args:
      settings: a resolved record.
      count: int32 scalar, the update's count `t`.

    Returns:
      bool scalar.
    """
    every, end = settings.mask_update_every, settings.pruning_end_step
    refresh = (count == end) | ((count > 0) & (count % every == 0) & (count < settings.total_steps))
    if not settings.update_masks_after_pruning:
        refresh = refresh & (count <= end)
    return refresh


def reselect_masks_if(
    settings: OptGSettings,
    pred: jax.Array,
    step: jax.Array,
    rank_fn: Callable[[], list],
    masks: list,
    sparsity: jax.Array,
    axes: list | None = None,
) -> tuple[list, jax.Array]:
    """`(masks, realised sparsity)` re-selected at sparsity `p(step)` when `pred`, else unchanged.

    Args:
      settings: a resolved record.
      pred: bool scalar.
      step: int32 scalar, the step whose sparsity `p(step)` the new masks have.
      rank_fn: `() -> (ranking scores, budget scores or None)` (lists like `masks`; `ranking`),
        called in the taken branch only, so an ordinary step does not compute them
        (`magnitude` would pay `|W * M|` each step).
      masks: the current masks.
      sparsity: float32 scalar, their realised sparsity.
      axes: the leaves' N:M group axes (`group_axes`), with a `pattern`.

    Returns:
      The new masks and their realised sparsity, or the given ones.
    """
    schedule = settings.sparsity_schedule()

    def reselect(_):
        rank, budget = rank_fn()
        new = select_masks(settings, rank, schedule(step), axes, budget)
        return new, realized_sparsity(new)

    return lax.cond(pred, reselect, lambda _: (list(masks), sparsity), None)


def init_state(settings: OptGSettings, params: Any) -> OptGState:
    """The `OptGState` at count 0: scores at the criterion's start (`init_scores`, else 0)
    plus `score_start * W_0^2 / 2`, zero momentum, masks at sparsity `p(0)`.

    Args:
      settings: a resolved record.
      params: the dense weights (a pytree).

    Returns:
      The state; its pytrees are shaped like `params`, `None` on leaves `is_masked` leaves out.
    """
    rule = settings.rule
    flags = jax.tree_util.tree_map_with_path(
        lambda path, leaf: True if settings.is_masked(path, leaf) else None, params
    )
    like_masked = lambda fn: jax.tree.map(
        lambda f, p: fn(p) if f else None, flags, params, is_leaf=_is_none
    )
    nones = jax.tree.map(lambda f: None, flags, is_leaf=_is_none)
    zeros = lambda p: jnp.zeros(p.shape, jnp.float32)
    scores = like_masked(zeros) if rule.has_scores else nones
    momentum = like_masked(zeros) if rule.has_momentum else nones
    score_noise = like_masked(zeros) if settings.uncertainty_bonus else nones
    start_weights = (
        # A copy, never the params' own buffer: a train step that donates the state and the
        # params would otherwise donate one buffer twice.
        like_masked(lambda p: jnp.array(p, jnp.float32, copy=True))
        if settings.score_half_distance
        else nones
    )
    ones = like_masked(lambda p: jnp.ones(p.shape, settings.mask_dtype))
    masks_leaves = jax.tree.leaves(ones)
    count = jnp.zeros((), jnp.int32)
    sparsity = jnp.zeros((), jnp.float32)
    if masks_leaves:
        weights = jax.tree.leaves(like_masked(lambda p: p))
        if rule.has_scores and (rule.init_scores is not None or settings.score_start):
            start = jax.tree.leaves(scores)
            if rule.init_scores is not None:
                start = [jnp.asarray(s, jnp.float32) for s in rule.init_scores(weights)]
            if settings.score_start:
                c = jnp.float32(settings.score_start / 2)
                start = [s + c * jnp.square(w.astype(jnp.float32)) for s, w in zip(start, weights)]
            scores = jax.tree.unflatten(jax.tree.structure(scores), start)
        rank = rule.rank(jax.tree.leaves(scores), weights, masks_leaves)
        axes = group_axes(settings, jax.tree.unflatten(jax.tree.structure(ones), masks_leaves))
        # No noise has been seen yet: the criterion's own ranking shares out the first masks.
        masks_leaves = select_masks(
            settings, rank, settings.sparsity_schedule()(count), axes, budget_scores=rank
        )
        sparsity = realized_sparsity(masks_leaves)
    return OptGState(
        count=count,
        scores=scores,
        momentum=momentum,
        score_noise=score_noise,
        masks=jax.tree.unflatten(jax.tree.structure(ones), masks_leaves),
        last_refresh=jnp.zeros((), jnp.int32),
        sparsity=sparsity,
        target=jnp.asarray(float(settings.target_sparsity), jnp.float32),
        score_lr=jnp.zeros((), jnp.float32),
        start_weights=start_weights,
        distance=jnp.zeros((), jnp.float32),
    )


def ranking(
    settings: OptGSettings,
    scores: list,
    weights: list,
    masks: list,
    noise: list,
    distance: jax.Array | float = 0.0,
) -> tuple[list, list | None]:
    """The ranking scores of a refresh (the criterion's, plus the uncertainty bonus) and the
    scores that share the kept count out between the leaves.

    With `uncertainty_bonus = kappa > 0` a weight ranks by `score + kappa * sqrt(noise)`: its
    accumulated score plus `kappa` of its standard errors (`Criterion.noise` summed), so a weight
    whose score cannot yet be told from noise is not removed for a low draw of that noise. Where
    the gradient is mostly noise (near a minimum: a pretrained network) the bonus, the root of the
    accumulated `(G * W)^2`, ranks by sensitivity; where it carries a signal (training from
    scratch) the score dominates.

    With `uncertainty_bonus_at_start = kappa0 > 0` the bonus is `kappa + kappa0 * 2^(-r / delta)`,
    `r` the relative distance the weights have moved (`OptGState.distance`) and `delta`
    `score_half_distance`: while the weights are still near where pruning began (a pretrained
    network being fine-tuned) the scores' push is a local drift and the sensitivity weighs more;
    once they have travelled (training from scratch) the bonus returns to `kappa`.

    With `allocation="sensitivity"` the leaves' shares of the kept count come from the bonus's
    own term, `sqrt(noise)` (how strongly the loss has depended on each weight), ranked over all
    leaves together; within a leaf the ranking above picks the weights (`select_masks`).

    Args:
      settings: a resolved record.
      scores: per masked leaf, the accumulated scores (`Criterion.rank`'s arguments).
      weights: per masked leaf, the dense weights.
      masks: per masked leaf, the current masks.
      noise: per masked leaf, the accumulated noise (`OptGState.score_noise`); empty without a
        bonus.
      distance: `OptGState.distance` at the refresh (read with `uncertainty_bonus_at_start`).

    Returns:
      `(rank, budget)`: float32 ranking scores per masked leaf, higher is kept; `budget` the
      per-leaf `sqrt(noise)` with `allocation="sensitivity"`, else `None`.
    """
    rank = settings.rule.rank(scores, weights, masks)
    if not settings.uncertainty_bonus:
        return rank, None  # no noise: `_validate` refuses the sensitivity allocation
    roots = [jnp.sqrt(q) for q in noise]
    kappa = jnp.float32(settings.uncertainty_bonus)
    if settings.uncertainty_bonus_at_start:
        near = jnp.exp2(-jnp.asarray(distance, jnp.float32) / settings.score_half_distance)
        kappa = kappa + jnp.float32(settings.uncertainty_bonus_at_start) * near
    budget = roots if settings.allocation == "sensitivity" else None
    return [r + kappa * root for r, root in zip(rank, roots)], budget


def _passed_on(settings: OptGSettings, grads: Any, masks: Any, params: Any) -> Any:
    """What the rest of the chain receives: `G * M` (or the criterion's `weight_grad`)."""
    weight_grad = settings.rule.weight_grad or (lambda g, w, m: g * m.astype(g.dtype))
    return jax.tree.map(
        lambda g, m, w: g if m is None else weight_grad(g, w, m),
        grads,
        masks,
        params,
        is_leaf=_is_none,
    )


def move_scores(
    settings: OptGSettings, step: ScoreStep, noise: list, start: list, distance: jax.Array
) -> tuple[list, list, list, jax.Array]:
    """The criterion's step on the scores, after they forget what they are set to forget.

    `S <- keep * S + (the step's move)`, `keep` the product of `score_decay` (1 without
    `score_half_life`) and, with `score_half_distance`, `distance_decay`'s factor; the bonus's
    accumulated noise becomes `keep^2 * noise + the step's noise`.

    Args:
      settings: a resolved record.
      step: the update's `ScoreStep` (its `scores` are the scores before the step).
      noise: the accumulated noise per masked leaf (empty without a bonus).
      start: `OptGState.start_weights` per masked leaf (empty when not tracked).
      distance: `OptGState.distance`.

    Returns:
      `(scores, momentum, noise, distance)` after the update (lists like the inputs).
    """
    rule = settings.rule
    scores, momentum = rule.update(step)
    keep = score_decay(settings)
    if settings.score_half_distance and scores:
        moved_keep, distance = distance_decay(settings, step.weights, start, distance)
        keep = keep * moved_keep
    if settings.score_half_life or settings.score_half_distance:
        # S <- keep * S_old + (S_new - S_old): the step's move, on the decayed score.
        scores = [s - (1.0 - keep) * o for s, o in zip(scores, step.scores)]
    if noise:
        noise = [keep * keep * q + n for q, n in zip(noise, rule.noise(step))]
    return scores, momentum, noise, distance


def update_state(
    settings: OptGSettings, grads: Any, state: OptGState, params: Any
) -> tuple[Any, OptGState]:
    """One update: refresh the masks if due, move the scores, pass `G * M` on.

    The update with count `t` first re-selects the masks when `is_refresh_step(t)`, from the
    scores accumulated over updates `0..t-1` and at sparsity `p(t)`; then the criterion's step
    moves the scores with this update's gradient. The step's forward pass already ran with the
    old masks, so whatever is evaluated between two updates (say at an epoch's end) is the
    network that was trained with its masks. When pruning ends with the run, the final masks are
    selected after the last update, so the final sparsity is exactly `P`.

    Args:
      settings: a resolved record.
      grads: `G = dL/d(W * M)`, a pytree like the params.
      state: the `OptGState` before the update.
      params: the dense weights `W`.

    Returns:
      `(G * M` on masked leaves and `G` elsewhere, the new `OptGState)`.
    """
    count, rule = state.count, settings.rule
    treedef = jax.tree.structure(state.masks)
    masked_only = lambda tree: jax.tree.leaves(
        jax.tree.map(lambda m, x: None if m is None else x, state.masks, tree, is_leaf=_is_none)
    )
    g_leaves, w_leaves = masked_only(grads), masked_only(params)
    m_leaves = jax.tree.leaves(state.masks)
    s_leaves, v_leaves = jax.tree.leaves(state.scores), jax.tree.leaves(state.momentum)
    q_leaves = jax.tree.leaves(state.score_noise)
    refresh = is_refresh_step(settings, count)
    axes = group_axes(settings, state.masks)
    new_m_leaves, sparsity = m_leaves, state.sparsity
    if m_leaves:
        rank_now = lambda: ranking(settings, s_leaves, w_leaves, m_leaves, q_leaves, state.distance)
        new_m_leaves, sparsity = reselect_masks_if(
            settings, refresh, count, rank_now, m_leaves, sparsity, axes
        )
    step = ScoreStep(
        grads=g_leaves,
        weights=w_leaves,
        masks=m_leaves,
        scores=s_leaves,
        momentum=v_leaves,
        score_lr=score_lr(settings, count),
        score_momentum=settings.score_momentum,
        steps_since_refresh=jnp.where(refresh, 0, count - state.last_refresh).astype(jnp.float32),
    )
    s_leaves, v_leaves, q_leaves, distance = move_scores(
        settings, step, q_leaves, jax.tree.leaves(state.start_weights), state.distance
    )
    last_refresh = jnp.where(refresh, count, state.last_refresh)
    if m_leaves and settings.pruning_end_step == settings.total_steps:
        # Pruning ends with the run: the final masks come after the last update, at exactly P.
        final = count + 1 == settings.total_steps
        rank_after = lambda: ranking(settings, s_leaves, w_leaves, new_m_leaves, q_leaves, distance)
        new_m_leaves, sparsity = reselect_masks_if(
            settings, final, count + 1, rank_after, new_m_leaves, sparsity, axes
        )
        last_refresh = jnp.where(final, count + 1, last_refresh)
    rebuild = lambda leaves, old: jax.tree.unflatten(treedef, leaves) if leaves else old
    new_state = OptGState(
        count=count + 1,
        scores=rebuild(s_leaves, state.scores) if rule.has_scores else state.scores,
        momentum=rebuild(v_leaves, state.momentum) if rule.has_momentum else state.momentum,
        score_noise=rebuild(q_leaves, state.score_noise),
        masks=rebuild(new_m_leaves, state.masks),
        last_refresh=last_refresh.astype(jnp.int32),
        sparsity=sparsity,
        target=state.target,
        score_lr=step.score_lr,
        start_weights=state.start_weights,
        distance=distance,
    )
    # The rest of the chain sees G * M: removed weights get no loss gradient.
    return _passed_on(settings, grads, state.masks, params), new_state


def optg_transformation(settings: OptGSettings) -> optax.GradientTransformation:
    """The optax transformation of a settings record (what `optg_optax` returns).

    Args:
      settings: an `OptGSettings`; resolved here if it is not already (resolving is idempotent).

    Returns:
      An `optax.GradientTransformation` whose state is an `OptGState`.

    Raises:
      ValueError: a field outside its range.
    """
    settings = settings.resolved()

    def init_fn(params):
        return init_state(settings, params)

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("optg_optax needs the params: call tx.update(grads, state, params)")
        return update_state(settings, grads, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


def optg_optax(
    target_sparsity: float,
    total_steps: int,
    learning_rate: float | optax.Schedule,
    criterion: str | Criterion = "optg",
    schedule: str | schedules_lib.Schedule | None = None,
    mask_update_every: int | None = None,
    *,
    recipe: str = "default",
    beta: float = 1.0,
    steps_per_epoch: int | None = None,
    pruning_start_step: int = 0,
    pruning_end_step: int | None = None,
    allocation: str = "global",
    score_momentum: float | None = None,
    score_lr_floor: float = 0.0,
    update_masks_after_pruning: bool | None = None,
    is_masked: MaskPredicate | None = None,
    mask_dtype=jnp.uint8,
    pattern: str | None = None,
    nm_ramp: str = "groups",
    group_axis: Callable[[tuple, Any], int] | None = None,
    uncertainty_bonus: float | None = None,
    score_start: float = 0.0,
    score_half_life: float = 0.0,
    score_half_distance: float | None = None,
    uncertainty_bonus_at_start: float | None = None,
) -> optax.GradientTransformation:
    """OptG sparse training (and its baselines) as one optax transformation.

    Put it first in the chain: it expects `grads` to be the loss gradient with respect to the
    masked weights `W * M` (use `apply_masks` in the forward pass) and `params` the dense
    weights `W`.

    Args:
      target_sparsity: final fraction `P` of masked weights removed, in [0, 1).
      total_steps: number of updates in the whole run (> 0).
      learning_rate: the weights' learning rate, a float or an optax schedule (or a scalar array,
        as `optax.inject_hyperparams` passes it). The scores of `optg` use
        `learning_rate(t) * p(t) / P`, of `supermask` `learning_rate(t)`.
      criterion: `"optg"`, `"supermask"`, `"taylor"` or `"magnitude"` (see the module
        docstring), or a `Criterion` record for a criterion of your own.
      schedule: `"cubic"` (Zhu & Gupta), `"sigmoid"` (the paper's, normalised to reach `P`
        exactly at `pruning_end_step`), `"constant"`, `"one_shot"` (at `pruning_start_step`), a
        callable `step -> sparsity`, or None for the recipe's.
      mask_update_every: steps between mask refreshes, or None for the recipe's (default
        recipe: `refreshes_during_ramp` refreshes spread over the ramp; paper: one epoch,
        `steps_per_epoch`, else 1% of the run).
      recipe: what the arguments left at None become (`OptGSettings.resolved`, `RECIPES`):
        `"default"`, budget-safe settings chosen on validation splits (docs/library.md), or
        `"paper"`, the reference code's settings.
      beta: steepness of the sigmoid schedule, per epoch (paper: 1).
      steps_per_epoch: the epoch length that `beta` refers to (default: `mask_update_every` if
        given, else 1% of the run).
      pruning_start_step: sparsity is 0 up to this step.
      pruning_end_step: sparsity reaches `P` exactly here (None: the recipe's fraction of the
        steps after `pruning_start_step`). The masks are always re-selected at this step
        (after the last update when it is `total_steps`), so the final masks remove exactly
        `N - floor(N * (1 - P))` of the `N` masked weights.
      allocation: `"global"` ranks all masked leaves together (paper); `"uniform"` keeps the
        same fraction in every leaf; `"sensitivity"` (needs `uncertainty_bonus > 0`) shares the
        kept count out between the leaves by the bonus's term `sqrt(noise)` ranked over all of
        them, and picks each leaf's weights by the full ranking (`select_masks`).
      score_momentum: momentum of the score SGD (PyTorch convention `v = mu v + g`), or None
        for the recipe's (default 0.99, paper 0.9).
      score_lr_floor: `optg` only; the score learning rate factor becomes
        `floor + (1 - floor) * p(t) / P` (0 = the paper's supermask optimizer).
      update_masks_after_pruning: keep re-selecting masks (at sparsity `P`) every
        `mask_update_every` steps after `pruning_end_step`, as the reference code does; None for
        the recipe's (default False: masks are frozen once the ramp ends).
      is_masked: predicate on `(key_path, leaf)` choosing the masked leaves (default:
        `optg_jax.masking.default_is_masked`, every `kernel` of rank >= 2).
      mask_dtype: dtype of the masks (`jnp.uint8` or `jnp.bool_`).
      pattern: `"N:M"` (e.g. `"2:4"`): every masked leaf keeps exactly N of each group of M
        consecutive weights along its reduction axis (`optg_jax.nm`), ranked by the criterion's
        scores; `target_sparsity` must then be `1 - N/M`. A leaf whose axis does not divide by M
        stays dense. None: unstructured sparsity.
      nm_ramp: how a pattern is reached during the ramp: `"groups"`, a fraction `p(t)/P` of
        all groups at N:M (the groups that lose the least score first), or `"n"`, N lowered
        from M in every group. `schedule="constant"` imposes the pattern from the start.
      group_axis: `(key_path, leaf) -> axis` for the groups of M (default `nm.group_axis`:
        inputs of Dense, input channels of convs, see `optg_jax.nm`).
      uncertainty_bonus: `kappa >= 0`: at a refresh a weight ranks by its score plus `kappa`
        standard errors of it (`ranking`); None for the recipe's (criteria with a noise estimate,
        `optg` and `supermask`; 0 otherwise). 0 ranks by the scores alone (the paper).
      score_start: `c >= 0`, `optg`/`supermask` only: the scores start at `c * W_0^2 / 2` (the
        weights `init` sees) instead of 0, so the ranking keeps what the starting network's
        magnitudes say (docs/library.md, "Where the scores start"). Under SGD a score moves by
        about `k * (W_t^2 - W_0^2) / 2` plus the gradient energy, `k` the ratio of the score's
        step to the weight's; a start of `c = k` cancels the `-W_0^2` term. 0 (the default) is
        the paper's start.
      score_half_life: `h >= 0`, `optg`/`supermask` only: the scores forget at every update, so
        that a step's contribution halves every `h` of the pruning ramp (`h * (pruning_end_step
        - pruning_start_step)` updates; `score_decay`); the uncertainty bonus's variance decays
        with them. 0 (the default) keeps every step at full weight, the paper's sum.
      score_half_distance: `delta >= 0`, `optg`/`supermask` only: the scores forget as the
        weights move, a step's contribution halving each time the masked weights' distance from
        where `tx.init` found them grows by `delta` of their norm there (`distance_decay`; the
        state then keeps a float32 copy of the starting weights). None for the recipe's
        (`default_score_half_distance`: 0.25 for `optg` under the default recipe; 0 for
        `supermask`, custom criteria and the paper's recipe). 0: no such forgetting, the
        paper's sum. With `score_half_life` too, the two factors multiply.
      uncertainty_bonus_at_start: `kappa0 >= 0` (needs `uncertainty_bonus > 0` and
        `score_half_distance > 0`): the bonus is `kappa + kappa0 * 2^(-r / delta)` at a refresh,
        `r` the relative distance the weights have moved since `init`, so it starts at
        `kappa + kappa0` and halves its extra part for every `delta` the weights travel
        (`ranking`; docs/library.md, "A larger bonus while the weights stay near their start").
        None for the recipe's (`default_uncertainty_bonus_at_start`: 4 for `optg` under the
        default recipe, 0 in the paper's recipe and for the other criteria, and 0 wherever the
        bonus or the distance is off). 0 keeps `kappa` throughout.

    Returns:
      An `optax.GradientTransformation` whose state is an `OptGState`.
    """
    return optg_transformation(
        OptGSettings(
            target_sparsity=target_sparsity,
            total_steps=total_steps,
            learning_rate=learning_rate,
            criterion=criterion,
            schedule=schedule,
            mask_update_every=mask_update_every,
            recipe=recipe,
            beta=beta,
            steps_per_epoch=steps_per_epoch,
            pruning_start_step=pruning_start_step,
            pruning_end_step=pruning_end_step,
            allocation=allocation,
            score_momentum=score_momentum,
            score_lr_floor=score_lr_floor,
            update_masks_after_pruning=update_masks_after_pruning,
            is_masked=is_masked,
            mask_dtype=mask_dtype,
            pattern=pattern,
            nm_ramp=nm_ramp,
            group_axis=group_axis,
            uncertainty_bonus=uncertainty_bonus,
            score_start=score_start,
            score_half_life=score_half_life,
            score_half_distance=score_half_distance,
            uncertainty_bonus_at_start=uncertainty_bonus_at_start,
        )
    )


def get_optg_state(state: Any) -> OptGState:
    """Finds the `OptGState` inside any optimizer state (chain, wrappers, ...).

    Args:
      state: an optax state holding exactly one `optg_optax` state (or that state itself).

    Returns:
      The `OptGState`.

    Raises:
      ValueError: there is no `OptGState` in `state`, or more than one.
    """
    try:
        found = optax.tree_utils.tree_get(state, OptGState.__name__)
    except KeyError:
        raise ValueError("found several optg_optax states; expected exactly one") from None
    if found is None:
        raise ValueError(
            "no optg_optax state found in this optimizer state; "
            "is optg_jax.optg_optax() part of the optimizer?"
        )
    return found


def get_masks(state: Any) -> Any:
    """The masks of the `optg_optax` state inside `state`.

    Args:
      state: any optimizer state holding one `OptGState`.

    Returns:
      A pytree like the params: `mask_dtype` arrays (1 = kept) on masked leaves, `None` elsewhere
      (`optax.MaskedNode` on the leaves that `optax.masked` or `optax.multi_transform` gave to
      another part of the optimizer).
    """
    return get_optg_state(state).masks


def apply_masks(params: Any, state: Any) -> Any:
    """`W * M` on every masked leaf of `params`; other leaves are returned unchanged.

    Args:
      params: the dense weights, a pytree.
      state: the `OptGState`, a mask pytree like `params` (`None` on unmasked leaves), or any
        optimizer state holding an `OptGState`, also inside `optax.masked` or
        `optax.multi_transform` (their other leaves are left as they are).

    Returns:
      A pytree like `params`, each masked leaf multiplied by its mask (in the leaf's dtype).
    """
    if isinstance(state, OptGState):
        masks = state.masks
    else:
        try:
            masks = get_masks(state)
        except ValueError:
            masks = state  # a mask pytree itself
    return jax.tree.map(
        lambda w, m: w if _not_masked(m) else w * m.astype(w.dtype),
        params,
        masks,
        is_leaf=_not_masked,
    )


def sparsity_summary(state: Any) -> dict:
    """Readable sparsity figures (host floats) from any optimizer state holding an OptG state.

    Args:
      state: an `OptGState` or any optimizer state holding one (device or host arrays).

    Returns:
      `{'global': removed fraction of all masked weights now, 'target': the final sparsity P,
      'num_masked': N, 'num_kept': kept count, 'score_lr': last score lr,
      'step': update count, 'layers': {name: removed fraction}}`.
    """
    optg_state = get_optg_state(state)
    layers, total, kept = {}, 0, 0
    for path, mask in jax.tree_util.tree_leaves_with_path(optg_state.masks):
        mask = np.asarray(mask)
        layer_kept = int(np.count_nonzero(mask))
        layers[jax.tree_util.keystr(path, simple=True, separator="/")] = (
            1.0 - layer_kept / mask.size
        )
        total += mask.size
        kept += layer_kept
    return {
        "global": 1.0 - kept / total if total else 0.0,
        "target": float(optg_state.target),
        "num_masked": total,
        "num_kept": kept,
        "score_lr": float(optg_state.score_lr),
        "step": int(optg_state.count),
        "layers": layers,
    }

"""optg-jax: OptG sparse training as an optax transformation, plus a Flax training program.

The library needs only jax, optax, chex and numpy. `optg_jax.nnx` (Flax NNX helpers) needs Flax
(`pip install optg-jax[nnx]`); the training program, `optg_jax.train` and `train.py`, needs the
`train` extra (`pip install optg-jax[train]`).

The library's public names::

    optg_optax(...)          # the transformation (criteria "optg", "supermask", "taylor", "magnitude",
                             # "sr_ste", or a Criterion record of your own; pattern="2:4" for N:M)
    apply_masks(params, opt_state)
    get_masks(opt_state), get_optg_state(opt_state), sparsity_summary(opt_state)
    schedules.*              # sparsity schedules, step -> sparsity
    masking.*                # which leaves are masked: default_is_masked, keep_dense, rank_at_least_2
    load_sparse(export_dir)  # a training run's compact sparse export -> model variables
"""

from optg_jax import masking, nm, schedules
from optg_jax.export import load_sparse
from optg_jax.masking import default_is_masked
from optg_jax.optg import (
    ALLOCATIONS,
    CRITERIA,
    RECIPES,
    Criterion,
    OptGSettings,
    OptGState,
    Recipe,
    ScoreStep,
    apply_masks,
    default_score_half_distance,
    default_uncertainty_bonus,
    default_uncertainty_bonus_at_start,
    get_masks,
    get_optg_state,
    optg_optax,
    optg_transformation,
    sparsity_summary,
    sr_ste_criterion,
)

__all__ = [
    "ALLOCATIONS",
    "CRITERIA",
    "Criterion",
    "OptGSettings",
    "OptGState",
    "ScoreStep",
    "apply_masks",
    "default_is_masked",
    "default_score_half_distance",
    "default_uncertainty_bonus",
    "default_uncertainty_bonus_at_start",
    "get_masks",
    "get_optg_state",
    "RECIPES",
    "Recipe",
    "load_sparse",
    "masking",
    "nm",
    "optg_optax",
    "optg_transformation",
    "schedules",
    "sparsity_summary",
    "sr_ste_criterion",
]

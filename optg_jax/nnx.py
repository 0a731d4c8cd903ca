"""Flax NNX: training an `nnx.Module` with `optg_optax` in the chain.

OptG needs two views of the weights in every step: the forward and backward passes run on the
masked weights `W * M` (so `G = dL/d(W * M)`), and the update gets the dense weights `W` (the
score gradient is `G * W`, removed weights included, and the weights keep moving). An NNX model
holds one set of weights, so writing `W * M` into it would lose the removed weights for good.
Instead the forward pass runs on a masked copy, and the model keeps `W`::

    from flax import nnx
    import optg_jax, optg_jax.nnx

    tx = optax.chain(optg_jax.optg_optax(...), optax.add_decayed_weights(5e-4), optax.sgd(lr, 0.9))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(m):  # m: a copy of `model` holding W * M
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = optg_jax.nnx.value_and_grad(loss_fn, model, optimizer)  # G = dL/d(W * M)
        optimizer.update(model, grads)  # optg_optax gets G and the dense W; the masks move
        return loss

    optg_jax.nnx.masked_model(model, optimizer)  # W * M: for evaluation and export

`nnx.Optimizer.update` passes the model's dense `nnx.Param`s to `tx.update` as `params`, which
is all `optg_optax` needs; the masks, scores and step count live in `optimizer.opt_state`.
BatchNorm statistics and other non-`Param` state that the forward pass changes are written back
into `model` by `value_and_grad`.

This module needs Flax (`pip install optg-jax[nnx]`); the rest of the library does not.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx

from optg_jax import optg


def _masks(masks: Any) -> Any:
    """The mask pytree of an `nnx.Optimizer`, an optimizer state, an `OptGState` or masks."""
    if isinstance(masks, nnx.Optimizer):
        masks = masks.opt_state
    masks = nnx.as_pure(masks)
    if isinstance(masks, optg.OptGState):
        return masks.masks
    try:
        return optg.get_masks(masks)
    except ValueError:
        return masks  # already a mask pytree


def masked_model(model: nnx.Module, masks: Any, wrt: Any = nnx.Param) -> nnx.Module:
    """A copy of `model` whose masked `wrt` variables hold `W * M`; `model` is left as it is.

    Args:
      model: the NNX module holding the dense weights `W`.
      masks: an `nnx.Optimizer` with `optg_optax` in its chain, its `opt_state`, an
        `OptGState`, or a mask pytree shaped like `nnx.state(model, wrt)` (`None` on leaves
        that are not masked).
      wrt: the filter of the variables the optimizer updates (`nnx.Optimizer(..., wrt=...)`).

    Returns:
      A new module of the same graph: masked leaves multiplied by their masks (in the leaf's
      dtype), every other variable (unmasked params, BatchNorm statistics, ...) a copy of the
      model's.
    """
    graphdef, params, rest = nnx.split(model, wrt, ...)
    masked = optg.apply_masks(nnx.as_pure(params), _masks(masks))
    return nnx.merge(graphdef, masked, nnx.as_pure(rest))


def value_and_grad(
    loss_fn: Callable[..., Any],
    model: nnx.Module,
    masks: Any,
    *args: Any,
    has_aux: bool = False,
    wrt: Any = nnx.Param,
    **kwargs: Any,
) -> tuple[Any, nnx.State]:
    """`loss_fn(model_with_W_times_M, *args, **kwargs)` and its gradient at the masked weights.

    Runs `loss_fn` on `masked_model(model, masks, wrt)` under `nnx.value_and_grad`, so the
    gradient is `G = dL/d(W * M)`, the one `optg_optax` expects. Changes the forward pass makes
    to variables outside `wrt` (BatchNorm running statistics, RNG counters) are written back into
    `model`; its `wrt` variables keep the dense `W`.

    Args:
      loss_fn: `(module, *args, **kwargs) -> loss` (a float32 scalar), or
        `-> (loss, aux)` with `has_aux=True`.
      model: the NNX module holding the dense weights.
      masks: as in `masked_model` (usually the `nnx.Optimizer`).
      *args: passed to `loss_fn` after the module (e.g. a batch).
      has_aux: whether `loss_fn` returns `(loss, aux)`.
      wrt: the filter of the variables to differentiate (the optimizer's `wrt`).
      **kwargs: passed to `loss_fn`.

    Returns:
      `(loss, grads)`, or `((loss, aux), grads)` with `has_aux=True`; `grads` is an
      `nnx.State` shaped like `nnx.state(model, wrt)`, ready for `optimizer.update(model, grads)`.
    """
    masked = masked_model(model, masks, wrt)
    value, grads = nnx.value_and_grad(
        lambda m: loss_fn(m, *args, **kwargs),
        argnums=nnx.DiffState(0, wrt),
        has_aux=has_aux,
    )(masked)
    nnx.update(model, nnx.state(masked, nnx.Not(wrt)))
    return value, grads


__all__ = ["masked_model", "value_and_grad"]

"""Multiply-accumulate (MAC) counts of conv and dense layers, read off the traced model.

The model is traced once (`jax.make_jaxpr` of `model.apply` in eval mode, for one example) with
its params as explicit jaxpr inputs. Every `conv_general_dilated` and `dot_general` equation is
costed from its shapes, and the kernel feeding it is followed back, through dtype casts, reshapes
and broadcasts and into nested jaxprs (jit, remat, custom_jvp/vjp, scan, cond), to the param leaf
it came from. No per-architecture table is involved, so any Flax model works.

Costs, for one example:
  conv: output elements * kernel taps * input channels per group (so grouped/depthwise convs,
        strides and padding are all accounted for by the shapes);
  dot:  output elements * contracted size.
A masked kernel costs its dense MACs times `nnz / size` of its mask, which for a conv is exactly
"non-zeros times output positions".
"""

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

UNATTRIBUTED = "(no param)"

# Primitives that only move, cast or replicate a kernel: its origin carries through them.
_TRANSPARENT = frozenset(
    {
        "convert_element_type",
        "reshape",
        "broadcast_in_dim",
        "transpose",
        "squeeze",
        "expand_dims",
        "copy",
        "copy_p",
        "reduce_precision",
        "rev",
        "optimization_barrier",
    }
)


def count(model, variables, input_shape: Sequence[int], masks=None) -> int:
    """Total conv + dense MACs of `model` on one example of shape `input_shape` (H, W, C).

    Args:
      model: a Flax module applied as `model.apply(variables, x, train=False)`.
      variables: its variables ('params' plus e.g. 'batch_stats'); arrays or
        `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape(model.init, ...)`) both work.
      input_shape: one example's shape, without the batch dimension.
      masks: optional pytree shaped like `variables['params']` whose leaves are mask arrays
        (any dtype; non-zero = kept) for masked kernels and None for dense ones. Missing
        entries count as dense.

    Returns:
      MACs as a Python int.
    """
    return sum(count_by_layer(model, variables, input_shape, masks).values())


def count_by_layer(model, variables, input_shape: Sequence[int], masks=None) -> dict[str, int]:
    """Like `count`, split by kernel.

    Args:
      model: a Flax module applied as `model.apply(variables, x, train=False)`.
      variables: its variables (arrays or `jax.ShapeDtypeStruct`s), as for `count`.
      input_shape: one example's shape, without the batch dimension.
      masks: optional masks shaped like `variables['params']`, as for `count`.

    Returns:
      `{"layer1_0/conv1/kernel": macs, ...}` (Python ints): keys are '/'-joined param paths, in
      the order the layers run; MACs of products that use no param (e.g. attention scores) are
      reported under `UNATTRIBUTED`.

    Raises:
      ValueError: a mask's size differs from its kernel's.
    """
    params = variables.get("params", {})
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in path_leaves]
    others = {k: v for k, v in variables.items() if k != "params"}

    def forward(param_leaves, others, x):
        p = jax.tree.unflatten(treedef, param_leaves)
        return model.apply({"params": p, **others}, x, train=False)

    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    closed = jax.make_jaxpr(forward)([leaf for _, leaf in path_leaves], others, x)
    jaxpr = closed.jaxpr
    origins = {var: i for i, var in enumerate(jaxpr.invars[: len(paths)])}

    dense = {}
    _walk(jaxpr, origins, 1, dense)

    fractions = _density(masks, paths, [leaf for _, leaf in path_leaves])
    result = {}
    for idx, macs in dense.items():
        key = UNATTRIBUTED if idx is None else paths[idx]
        if idx is not None and idx in fractions:
            nnz, size = fractions[idx]
            macs = macs * nnz // size
        result[key] = result.get(key, 0) + macs
    return result


def _density(masks, paths: list[str], leaves: list[Any]) -> dict[int, tuple[int, int]]:
    """{param index: (nnz, size)} for every param that has a mask."""
    if masks is None:
        return {}
    by_path = {
        jax.tree_util.keystr(path, simple=True, separator="/"): m
        for path, m in jax.tree_util.tree_flatten_with_path(masks, is_leaf=lambda m: m is None)[0]
        if m is not None
    }
    out = {}
    for i, (path, leaf) in enumerate(zip(paths, leaves)):
        if path in by_path:
            mask = np.asarray(by_path[path])
            if mask.size != math.prod(leaf.shape):
                raise ValueError(f"mask for {path} has {mask.size} entries, the param {leaf.shape}")
            out[i] = (int(np.count_nonzero(mask)), mask.size)
    return out


def _sub_jaxprs(eqn):
    """The (jaxpr, consts-as-invars-count) pairs nested in an equation's params."""
    found = []
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jex_core.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jex_core.Jaxpr):
                found.append(v)
    return found


def _walk(jaxpr, origins: dict, multiplier: int, acc: dict) -> None:
    """Adds the MACs of `jaxpr` (times `multiplier`) to `acc`, keyed by param index.

    `origins` maps a jaxpr variable to the index of the param it is a (cast/reshaped) copy of;
    it is extended in place as equations are walked.
    """
    origin = lambda v: origins.get(v) if isinstance(v, jex_core.Var) else None

    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = eqn.invars
            out = eqn.outvars[0].aval.shape
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feat, in feat, spatial...)
            rhs_shape = rhs.aval.shape
            taps = math.prod(rhs_shape[d] for d in rhs_spec[2:])
            macs = math.prod(out) * taps * rhs_shape[rhs_spec[1]]
            idx = origin(rhs) if origin(rhs) is not None else origin(lhs)
            acc[idx] = acc.get(idx, 0) + macs * multiplier
        elif name == "dot_general":
            lhs, rhs = eqn.invars
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            contracted = math.prod(lhs.aval.shape[d] for d in lhs_contract)
            macs = math.prod(eqn.outvars[0].aval.shape) * contracted
            idx = origin(rhs) if origin(rhs) is not None else origin(lhs)
            acc[idx] = acc.get(idx, 0) + macs * multiplier
        elif name in _TRANSPARENT:
            src = origin(eqn.invars[0])
            if src is not None:
                origins[eqn.outvars[0]] = src
        elif name == "cond":
            # Only one branch runs: charge the most expensive.
            operands = eqn.invars[1:]
            best = {}
            for branch in _sub_jaxprs(eqn):
                inner, branch_acc = _bind(branch, operands, origins), {}
                _walk(branch, inner, multiplier, branch_acc)
                if sum(branch_acc.values()) > sum(best.values()):
                    best = branch_acc
            for k, v in best.items():
                acc[k] = acc.get(k, 0) + v
        else:
            # jit/pjit, remat, custom_jvp/vjp calls and scan take their operands positionally;
            # a scan body runs `length` times. (A while loop's trip count is unknown: counted once.)
            inner_mult = multiplier * eqn.params.get("length", 1) if name == "scan" else multiplier
            for sub in _sub_jaxprs(eqn):
                inner = _bind(sub, eqn.invars, origins)
                _walk(sub, inner, inner_mult, acc)
                if len(sub.outvars) == len(eqn.outvars):
                    for outer, inner_out in zip(eqn.outvars, sub.outvars):
                        if isinstance(inner_out, jex_core.Var) and inner_out in inner:
                            origins[outer] = inner[inner_out]


def _bind(sub, operands, origins: dict) -> dict:
    """Origins for a nested jaxpr whose invars line up with `operands` (the trailing ones)."""
    inner = {}
    offset = len(operands) - len(sub.invars)
    if offset < 0:
        return inner
    for var, operand in zip(sub.invars, operands[offset:]):
        if isinstance(operand, jex_core.Var) and operand in origins:
            inner[var] = origins[operand]
    return inner

"""N:M sparsity: in every group of M consecutive weights along a kernel's reduction axis, N kept.

2:4 is the pattern NVIDIA's sparse tensor cores run (and 1:2 for float32/TF32); 1:4, 2:8 and
any `1 <= N < M`, `M >= 2` are also supported. A pattern is written `"N:M"` (`parse_pattern`).

The group axis (`group_axis`, `group_axis_from_name`; one rule for both): groups of M run along
the axis that the layer sums over, the input features, as sparse tensor cores and NVIDIA's ASP
lay them out:

  Dense kernel `[in, out]`                        axis 0 (M consecutive inputs of each output);
  Conv / ConvTranspose kernel `[*spatial, in, out]` (rank 3, 4, 5, ...)
                                                  axis `ndim - 2` (M consecutive input channels
                                                  at each spatial position and output);
  attention `query`, `key`, `value` kernels `[in, heads, head_dim]` (Flax's
    `MultiHeadDotProductAttention` and `nnx.MultiHeadAttention`)
                                                  axis 0 (the input features);
  attention `out` kernel `[heads, head_dim, out]` axis 1 (head_dim, the inner of its two
                                                  reduction axes).

That is: axis `ndim - 2` for every leaf of rank >= 2, except a rank-3 leaf whose module (the
name before the leaf's own name on its path) is `query`, `key` or `value`: axis 0. The attention
`out` kernel needs no exception (`ndim - 2` is 1). Rank-1 leaves have no group axis. Other
layouts (a `DenseGeneral` of your own with several output axes, `Einsum`) need a rule of the
caller's.

A leaf whose group axis does not divide by M (e.g. a stem conv on 1 or 3 input channels) cannot
hold the pattern: it stays dense (all ones). `nm_masks` refuses it, so the caller decides;
`nm_applicable` and `nm_plan` say which leaves these are.

A mask keeps, in each group, the N highest scores; ties go to the earlier position in the group
and NaN ranks lowest (with -inf). N may be a traced scalar (a schedule lowering N over
training): each entry's rank in its group is counted from the M - 1 others of its group, M
elementwise passes and no sort, so the work is elementwise plus reshapes and a leaf sharded on
another axis stays sharded.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from optg_jax import masking
from optg_jax.topk import ordered_key

ATTENTION_INPUT_PROJECTIONS = ("query", "key", "value")
_PATTERN = re.compile(r"([0-9]+):([0-9]+)")


class NMPattern(NamedTuple):
    """An N:M pattern: `n` kept in every group of `m` consecutive weights (`1 <= n < m`)."""

    n: int
    m: int

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(text: str | NMPattern) -> NMPattern:
    """The pattern of a string `"N:M"` (e.g. `"2:4"`), with `1 <= N < M`.

    Strict: two decimal integers joined by one colon, no sign and no spaces (`" 2:4 "`, `"2-4"`,
    `"2:x"` and `""` are refused). `N = M` (every weight kept) and `N = 0` are refused too: they
    are dense and empty layers, not patterns.

    Args:
      text: the pattern string, or an `NMPattern` (checked and returned).

    Returns:
      The `NMPattern(n, m)`.

    Raises:
      ValueError: `text` is not of that form or breaks `1 <= N < M`.
    """
    if isinstance(text, tuple) and len(text) == 2 and all(type(v) is int for v in text):
        n, m = text
    else:
        match = _PATTERN.fullmatch(text) if isinstance(text, str) else None
        n, m = (int(match[1]), int(match[2])) if match else (0, 0)
    if not 1 <= n < m:
        raise ValueError(f"bad N:M pattern {text!r}: expected 'N:M' with integers 1 <= N < M")
    return NMPattern(n, m)


def index_bits(m: int) -> int:
    """Bits that hold one position in a group of `m`: `ceil(log2(m))` (2 for M = 4).

    Args:
      m: the group size, >= 2.

    Returns:
      The bit count, >= 1.
    """
    return max(1, math.ceil(math.log2(m)))


def path_names(path: Sequence[Any]) -> list[str]:
    """The names on a key path (`masking.key_name`), an NNX Variable's own `.value` left out.

    Args:
      path: a `jax.tree_util` key path (Linen variables, an NNX state, with or without the
        `Variable`s in it).

    Returns:
      E.g. `['params', 'block0', 'attn', 'query', 'kernel']` or `['fc', 'kernel']`.
    """
    keys = list(path)
    last = keys[-1] if keys else None
    if isinstance(last, jax.tree_util.GetAttrKey) and masking.leaf_name(keys) != last.name:
        keys.pop()  # the Variable's own attribute, which `leaf_name` skips
    return [name for name in map(masking.key_name, keys) if name is not None]


def _group_axis_rule(names: Sequence[str], ndim: int) -> int:
    """The rule of the module docstring, from a leaf's path names and rank."""
    if ndim < 2:
        raise ValueError(f"a leaf of rank {ndim} has no N:M group axis (rank >= 2 needed)")
    module = names[-2] if len(names) >= 2 else None
    if ndim == 3 and module in ATTENTION_INPUT_PROJECTIONS:
        return 0
    return ndim - 2


def group_axis(path: Sequence[Any], leaf: Any) -> int:
    """The axis along which a kernel's groups of M consecutive weights run (module docstring).

    Args:
      path: the leaf's `jax.tree_util` key path (Linen or NNX, as `masking` takes it).
      leaf: the array (or anything with `ndim`).

    Returns:
      A non-negative axis: 0 for Dense and attention query/key/value kernels, `ndim - 2` for
      conv kernels and the attention output kernel.

    Raises:
      ValueError: the leaf has rank < 2.
    """
    return _group_axis_rule(path_names(path), leaf.ndim)


def group_axis_from_name(name: str, ndim: int) -> int:
    """`group_axis` from a '/'-joined name (as the export writes them) and a rank.

    Args:
      name: e.g. `'params/block0/attn/query/kernel'` or `'block0/attn/query/kernel'`.
      ndim: the leaf's rank.

    Returns:
      The same axis `group_axis` gives for that path and rank.

    Raises:
      ValueError: `ndim < 2`.
    """
    return _group_axis_rule(name.split("/"), ndim)


def nm_applicable(path: Sequence[Any], leaf: Any, m: int, axis_fn: Callable = group_axis) -> bool:
    """Whether the leaf can hold an N:M pattern: rank >= 2 and its group axis divides by `m`.

    A leaf for which this is false stays dense under an N:M pattern (all ones).

    Args:
      path: the leaf's key path.
      leaf: the array (or anything with `shape`).
      m: the group size.
      axis_fn: the group-axis rule, `(path, leaf) -> axis` (default `group_axis`).

    Returns:
      A Python bool.
    """
    if len(leaf.shape) < 2:
        return False
    return leaf.shape[axis_fn(path, leaf)] % m == 0


def nm_plan(
    params: Any,
    m: int,
    is_masked: Callable = masking.default_is_masked,
    axis_fn: Callable = group_axis,
) -> dict[str, int | None]:
    """Per masked leaf: the group axis its N:M groups run along, or `None` when it stays dense.

    Args:
      params: a params pytree.
      m: the group size.
      is_masked: which leaves are pruned (`masking`'s predicates).
      axis_fn: the group-axis rule, `(path, leaf) -> axis`.

    Returns:
      `{'/'-joined path: axis or None}` over the leaves `is_masked` selects, in leaf order;
      `None` marks a leaf whose group axis does not divide by `m` (kept dense).
    """
    plan = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if is_masked(path, leaf):
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            plan[name] = axis_fn(path, leaf) if nm_applicable(path, leaf, m, axis_fn) else None
    return plan


def nm_report(
    masks: Any, pattern: str | NMPattern, axis_fn: Callable = group_axis
) -> dict[str, dict[str, Any]]:
    """Per masked leaf, whether it holds an N:M pattern: host figures for a run's report.

    Args:
      masks: a masks pytree (`OptGState.masks`: arrays on masked leaves, `None` elsewhere), on
        the host or on device.
      pattern: the pattern the masks should hold, `"N:M"` or an `NMPattern`.
      axis_fn: the group-axis rule, `(path, leaf) -> axis` (default `group_axis`).

    Returns:
      `{'/'-joined path: {'covered', 'axis', 'groups', 'valid_groups', 'valid_fraction'}}` in
      leaf order: `covered` whether the leaf can hold the pattern (`nm_applicable`; a leaf that
      cannot stays dense), `axis` its group axis (`None` when not covered), `groups` its number
      of groups of M and `valid_groups` how many of them keep exactly N (0 when not covered),
      `valid_fraction` their ratio (`None` when not covered). Python types.
    """
    n, m = parse_pattern(pattern)
    report = {}
    for path, mask in jax.tree_util.tree_leaves_with_path(masks):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        covered = nm_applicable(path, mask, m, axis_fn)
        axis = axis_fn(path, mask) if covered else None
        groups = mask.size // m if covered else 0
        valid = int(jnp.sum(nm_group_counts(mask, m, axis) == n)) if covered else 0
        report[name] = {
            "covered": covered,
            "axis": axis,
            "groups": groups,
            "valid_groups": valid,
            "valid_fraction": valid / groups if groups else (1.0 if covered else None),
        }
    return report


def _grouped(x: jax.Array, m: int, axis: int) -> tuple[jax.Array, int]:
    """`x` with `axis` split into `(size // m, m)`, and the index of the new length-m axis."""
    if type(m) is not int or m < 2:
        raise ValueError(f"the N:M group size must be an int >= 2, got {m!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of shape {x.shape}")
    axis %= x.ndim
    size = x.shape[axis]
    if size % m:
        raise ValueError(
            f"axis {axis} of shape {x.shape} has {size} entries, not a multiple of M = {m}: "
            "such a leaf cannot hold the pattern (keep it dense)"
        )
    return x.reshape(x.shape[:axis] + (size // m, m) + x.shape[axis + 1 :]), axis + 1


def nm_masks(scores: jax.Array, n: Any, m: int, axis: int, dtype=jnp.uint8) -> jax.Array:
    """A mask keeping, in every group of `m` consecutive entries along `axis`, the `n` highest.

    Ties go to the earlier position in the group; NaN ranks lowest (equal to -inf). Each entry's
    rank is the number of others in its group that beat it (a greater score, or an equal one at
    a lower position): `m` elementwise passes, no sort, so it jits, `n` may be traced and a leaf
    sharded on another axis stays sharded.

    Args:
      scores: float scores of any shape, e.g. a kernel's `[in, out]`; compared as float32.
      n: kept per group: a Python int or an int32 scalar (traced is fine). `n >= m` keeps
        everything, `n <= 0` nothing.
      m: the group size, a Python int >= 2.
      axis: the group axis (negative counts from the end); its size must divide by `m`.
      dtype: the mask's dtype.

    Returns:
      The mask, shaped like `scores`: 1 on kept entries, 0 elsewhere.

    Raises:
      ValueError: `m` is not an int >= 2, `axis` is out of range, or `scores.shape[axis]` does
        not divide by `m` (such a leaf cannot hold the pattern; the caller keeps it dense).
    """
    scores = jnp.asarray(scores)
    keys, g = _grouped(ordered_key(scores), m, axis)
    position = jnp.arange(m, dtype=jnp.int32).reshape(
        [m if d == g else 1 for d in range(keys.ndim)]
    )
    rank = jnp.zeros(keys.shape, jnp.int32)
    for j in range(m):
        other = lax.slice_in_dim(keys, j, j + 1, axis=g)
        beats = (other > keys) | ((other == keys) & (j < position))
        rank = rank + beats.astype(jnp.int32)
    keep = rank < jnp.asarray(n, jnp.int32)
    return keep.reshape(scores.shape).astype(dtype)


def nm_group_counts(mask: jax.Array, m: int, axis: int) -> jax.Array:
    """The number of kept (non-zero) entries in every group of `m` along `axis`.

    Args:
      mask: a mask (any dtype; non-zero is kept) or masked weights.
      m: the group size.
      axis: the group axis; its size must divide by `m`.

    Returns:
      int32 counts, shaped like `mask` with `axis` shrunk to `shape[axis] // m`.

    Raises:
      ValueError: as `nm_masks` (bad `m` or `axis`, or an axis that does not divide by `m`).
    """
    grouped, g = _grouped(jnp.asarray(mask) != 0, m, axis)
    return jnp.sum(grouped, axis=g, dtype=jnp.int32)


def group_sums(x: jax.Array, m: int, axis: int) -> jax.Array:
    """The sum of every group of `m` consecutive entries along `axis`.

    Args:
      x: values (e.g. scores), any shape.
      m: the group size.
      axis: the group axis; its size must divide by `m`.

    Returns:
      Sums in `x`'s dtype, shaped like `x` with `axis` shrunk to `shape[axis] // m`.

    Raises:
      ValueError: as `nm_group_counts`.
    """
    grouped, g = _grouped(jnp.asarray(x), m, axis)
    return jnp.sum(grouped, axis=g)


def nm_fraction_valid(mask: jax.Array, n: Any, m: int, axis: int) -> jax.Array:
    """The fraction of groups that keep exactly `clip(n, 0, m)` entries (1.0 for no groups).

    Args:
      mask: a mask or masked weights (non-zero is kept).
      n: kept per group (a Python int or an int32 scalar, traced is fine).
      m: the group size.
      axis: the group axis.

    Returns:
      A float32 scalar in [0, 1].

    Raises:
      ValueError: as `nm_group_counts`.
    """
    counts = nm_group_counts(mask, m, axis)
    if counts.size == 0:
        return jnp.float32(1.0)
    return jnp.mean(counts == jnp.clip(jnp.asarray(n, jnp.int32), 0, m), dtype=jnp.float32)


def nm_valid(mask: jax.Array, n: Any, m: int, axis: int) -> jax.Array:
    """Whether every group of `m` along `axis` keeps exactly `clip(n, 0, m)` entries.

    Args:
      mask: a mask or masked weights (non-zero is kept).
      n: kept per group (a Python int or an int32 scalar, traced is fine).
      m: the group size.
      axis: the group axis.

    Returns:
      A bool scalar (True for a leaf with no groups).

    Raises:
      ValueError: as `nm_group_counts`.
    """
    counts = nm_group_counts(mask, m, axis)
    return jnp.all(counts == jnp.clip(jnp.asarray(n, jnp.int32), 0, m))


__all__ = [
    "ATTENTION_INPUT_PROJECTIONS",
    "NMPattern",
    "group_axis",
    "group_axis_from_name",
    "group_sums",
    "index_bits",
    "nm_applicable",
    "nm_fraction_valid",
    "nm_group_counts",
    "nm_masks",
    "nm_plan",
    "nm_report",
    "nm_valid",
    "parse_pattern",
    "path_names",
]

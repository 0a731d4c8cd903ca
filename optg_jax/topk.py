"""Exact top-k masks over a list of score arrays, without sorting.

The k-th largest score is found by counting bisection over an order-preserving integer image of
float32 values: 32 passes, each counting the scores at or above a candidate, so the cost is
`32 * N` fused compares and no `O(N log N)` sort or `N`-sized gather. Ties at the threshold
are broken deterministically by position (leaf order, then row-major index inside a leaf), so a
mask always keeps exactly `k` entries, also when every score is equal (all zero at the start).

Every pass over the scores is elementwise work and sums, so with scores sharded over devices
(FSDP-style) each device counts its own shard and only scalars cross devices; no step needs a
whole array on one device (see `tests/test_fsdp.py`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_SIGN = jnp.uint32(0x80000000)


def ordered_key(x: jax.Array) -> jax.Array:
    """Maps float32 values to uint32 keys with the same order (NaN sorts lowest, -0 == +0).

    Args:
      x: values of any shape (cast to float32).

    Returns:
      uint32 keys, same shape: `a < b` exactly when `ordered_key(a) < ordered_key(b)`.
    """
    x = jnp.asarray(x, jnp.float32)
    x = jnp.where(jnp.isnan(x), -jnp.inf, x)
    x = jnp.where(x == 0, 0.0, x)  # one key for -0.0 and +0.0
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >= _SIGN, ~bits, bits | _SIGN)


def _count_at_least(scores: Sequence[jax.Array], threshold: jax.Array) -> jax.Array:
    return sum(jnp.sum(ordered_key(s) >= threshold, dtype=jnp.int32) for s in scores)


def _largest_axis_first(x: jax.Array) -> jax.Array:
    """`x` with its largest axis moved to the front (the first one of equal sizes).

    FSDP-style rules shard a leaf on its largest axis; with that axis leading, flattening a
    sharded leaf keeps each device's entries together, so the strided sample is taken from each
    device's own shard instead of after gathering the leaf.
    """
    return jnp.moveaxis(x, int(np.argmax(x.shape)), 0) if x.ndim > 1 else x


def _sample_bracket(scores: Sequence[jax.Array], k: jax.Array, sample_size: int):
    """Keys `lo <= hi` that likely bracket the k-th largest key, from a strided sample.

    The sample's order statistics around rank `k * M / N` with a margin of `4 sqrt(M)` give a
    bracket that holds the k-th largest key with overwhelming probability for any data that is
    not adversarially ordered; the caller checks it with one counting pass and falls back to the
    full key range when it does not hold, so the result is exact either way.
    """
    total = sum(s.size for s in scores)
    stride = max(1, total // sample_size)
    sample = jnp.concatenate(
        [ordered_key(_largest_axis_first(s).ravel()[::stride]) for s in scores]
    )
    sample = jnp.sort(sample)[::-1]
    m = sample.shape[0]
    margin = int(4 * m**0.5) + 8
    rank = (k.astype(jnp.float32) * (m / total)).astype(jnp.int32)
    hi_index = rank - margin
    lo_index = rank + margin
    hi = jnp.where(hi_index < 0, jnp.uint32(0xFFFFFFFF), sample[jnp.clip(hi_index, 0, m - 1)])
    lo = jnp.where(lo_index >= m, jnp.uint32(0), sample[jnp.clip(lo_index, 0, m - 1)])
    return lo, hi


def kth_largest_key(
    scores: Sequence[jax.Array], k: jax.Array, sample_size: int = 1 << 18
) -> jax.Array:
    """Key of the k-th largest value over all arrays in `scores`.

    Counting bisection over the key range: each step counts the keys at or above a candidate.
    For large inputs a strided sample first narrows the range (checked by one counting pass), which
    saves about a third of the passes; the answer is exact in every case.

    Args:
      scores: float arrays of any shapes, ranked together.
      k: int scalar, 1-based rank, `0 <= k <= N` (N = the total number of entries).
      sample_size: the strided sample's size; inputs under `4 * sample_size` are not sampled.

    Returns:
      A uint32 scalar key, to compare with `ordered_key` of the scores; for `k = 0` the largest
      possible key, so that nothing lies strictly above it.
    """
    k = jnp.asarray(k, jnp.int32)
    lo, hi = jnp.uint32(0), jnp.uint32(0xFFFFFFFF)
    if sum(s.size for s in scores) > 4 * sample_size:
        s_lo, s_hi = _sample_bracket(scores, k, sample_size)
        # Valid when at least k keys are >= s_lo and fewer than k are > s_hi.
        valid = (_count_at_least(scores, s_lo) >= k) & (
            (s_hi == jnp.uint32(0xFFFFFFFF)) | (_count_at_least(scores, s_hi + 1) < k)
        )
        lo, hi = jnp.where(valid, s_lo, lo), jnp.where(valid, s_hi, hi)

    def body(bounds):
        lo, hi = bounds
        gap = hi - lo
        mid = lo + (gap >> 1) + (gap & 1)
        enough = _count_at_least(scores, mid) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

    lo, _ = lax.while_loop(lambda b: b[0] < b[1], body, (lo, hi))
    return lo


def _positions(shape: tuple[int, ...], offset: int) -> jax.Array:
    """int32 global positions (`offset` + row-major flat index) of an array's entries.

    Built from iotas rather than a reshape, so each device computes the positions of its own
    shard of a sharded array.
    """
    positions = jnp.full(shape, offset, jnp.int32)
    stride = 1
    for axis in reversed(range(len(shape))):
        positions = positions + lax.broadcasted_iota(jnp.int32, shape, axis) * stride
        stride *= shape[axis]
    return positions


def _tie_cutoff(
    ties: Sequence[jax.Array], offsets: Sequence[int], num_kept: jax.Array
) -> jax.Array:
    """The smallest global position `c` such that `num_kept` of the ties lie before it.

    Counting bisection over positions (about `log2 N` passes, each a sum per array) instead of
    a running count over the flattened arrays: a sum over a sharded array is a partial sum per
    device and an all-reduce of one scalar, where a running count needs the whole array on
    every device.
    """

    def ties_before(cut):
        return sum(
            jnp.sum(t & (_positions(t.shape, o) < cut), dtype=jnp.int32)
            for t, o in zip(ties, offsets)
        )

    def body(bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = ties_before(mid) >= num_kept
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    total = jnp.int32(sum(t.size for t in ties))
    cut, _ = lax.while_loop(lambda b: b[0] < b[1], body, (jnp.int32(0), total))
    return cut


def topk_masks(scores: Sequence[jax.Array], k: jax.Array, dtype=jnp.uint8) -> list[jax.Array]:
    """Masks keeping exactly the `k` largest scores over all arrays together.

    Args:
      scores: float arrays of any shapes (one per masked layer).
      k: int scalar, number of entries to keep in all, `0 <= k <= sum of sizes`.
      dtype: mask dtype (`uint8`, `bool`, ...).

    Returns:
      One mask per score array, same shapes, 1 where kept. Among entries equal to the threshold
      the earliest (by array order, then flat index) are kept.
    """
    scores = [jnp.asarray(s) for s in scores]
    k = jnp.asarray(k, jnp.int32)
    threshold = kth_largest_key(scores, k)
    keys = [ordered_key(s) for s in scores]
    above = [key > threshold for key in keys]
    ties = [key == threshold for key in keys]
    num_above = sum(jnp.sum(a, dtype=jnp.int32) for a in above)
    num_ties = sum(jnp.sum(t, dtype=jnp.int32) for t in ties)
    num_ties_kept = k - num_above

    def keep_all_ties(_):
        return [a | t for a, t in zip(above, ties)]

    def keep_first_ties(_):
        offsets = np.cumsum([0] + [t.size for t in ties[:-1]])
        cut = _tie_cutoff(ties, offsets, num_ties_kept)
        return [a | (t & (_positions(t.shape, o) < cut)) for a, t, o in zip(above, ties, offsets)]

    # The cut-off is only needed when the threshold value is shared by more entries than are
    # kept; otherwise every tie is kept and no counting pass runs.
    masks = lax.cond(num_ties_kept >= num_ties, keep_all_ties, keep_first_ties, None)
    return [m.astype(dtype) for m in masks]


def num_kept(num_weights: int, sparsity: jax.Array) -> jax.Array:
    """How many weights a sparsity keeps, computed in float32 on device.

    Args:
      num_weights: the number of weights N.
      sparsity: float scalar, the removed fraction.

    Returns:
      int32 scalar `floor(N * (1 - sparsity))`, clipped to [0, N].
    """
    kept = jnp.floor(num_weights * (1.0 - jnp.asarray(sparsity, jnp.float32)))
    return jnp.clip(kept, 0, num_weights).astype(jnp.int32)

"""Exact top-k masks over a list of score arrays, without sorting.

The k-th largest score is found by counting bisection over an order-preserving integer image of
float32 values: 32 passes, each counting the scores at or above a candidate, so the cost is
``32 * N`` fused compares and no ``O(N log N)`` sort or ``N``-sized gather. Ties at the threshold
are broken deterministically by position (leaf order, then row-major index inside a leaf), so a
mask always keeps exactly ``k`` entries, also when every score is equal (all zero at the start).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_SIGN = jnp.uint32(0x80000000)


def ordered_key(x: jax.Array) -> jax.Array:
    """Maps float32 values to uint32 keys with the same order (NaN sorts lowest, -0 == +0)."""
    x = jnp.asarray(x, jnp.float32)
    x = jnp.where(jnp.isnan(x), -jnp.inf, x)
    x = jnp.where(x == 0, 0.0, x)  # one key for -0.0 and +0.0
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(bits >= _SIGN, ~bits, bits | _SIGN)


def kth_largest_key(scores: Sequence[jax.Array], k: jax.Array) -> jax.Array:
    """Key of the k-th largest value over all arrays in ``scores`` (1-based k, 1 <= k <= N).

    For ``k = 0`` returns the largest possible key, so that nothing lies strictly above it.
    Returns a uint32 scalar; compare with :func:`ordered_key` of the scores.
    """
    k = jnp.asarray(k, jnp.int32)

    def count_at_least(threshold):
        return sum(jnp.sum(ordered_key(s) >= threshold, dtype=jnp.int32) for s in scores)

    def body(_, bounds):
        lo, hi = bounds
        gap = hi - lo
        mid = lo + (gap >> 1) + (gap & 1)
        enough = count_at_least(mid) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid - 1)

    lo, _ = lax.fori_loop(0, 32, body, (jnp.uint32(0), jnp.uint32(0xFFFFFFFF)))
    return lo


def topk_masks(scores: Sequence[jax.Array], k: jax.Array, dtype=jnp.uint8) -> list[jax.Array]:
    """Masks keeping exactly the ``k`` largest scores over all arrays together.

    Args:
      scores: float arrays of any shapes (one per masked layer).
      k: int scalar, number of entries to keep in all, ``0 <= k <= sum of sizes``.
      dtype: mask dtype (``uint8``, ``bool``, ...).

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
    tie_counts = jnp.stack([jnp.sum(t, dtype=jnp.int32) for t in ties])
    num_ties_kept = k - num_above

    def keep_all_ties(_):
        return [a | t for a, t in zip(above, ties)]

    def keep_first_ties(_):
        offsets = jnp.cumsum(tie_counts) - tie_counts
        kept = []
        for a, t, offset in zip(above, ties, offsets):
            rank = offset + jnp.cumsum(t.ravel(), dtype=jnp.int32).reshape(t.shape) - 1
            kept.append(a | (t & (rank < num_ties_kept)))
        return kept

    # The running count is only needed when the threshold value is shared by more entries than
    # are kept; otherwise every tie is kept and no N-sized cumsum runs.
    masks = lax.cond(num_ties_kept >= jnp.sum(tie_counts), keep_all_ties, keep_first_ties, None)
    return [m.astype(dtype) for m in masks]


def num_kept(num_weights: int, sparsity: jax.Array) -> jax.Array:
    """``floor(num_weights * (1 - sparsity))`` as int32, computed in float32 on device."""
    kept = jnp.floor(num_weights * (1.0 - jnp.asarray(sparsity, jnp.float32)))
    return jnp.clip(kept, 0, num_weights).astype(jnp.int32)

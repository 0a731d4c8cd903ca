"""Exact top-k masks: k kept, ties broken by position, checked against a NumPy stable sort."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optg_jax import topk


def numpy_topk_masks(arrays, k):
    """Independent reference: stable sort by (-value, global position), keep the first k."""
    flat = np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays])
    flat = np.where(np.isnan(flat), -np.inf, flat)
    order = np.lexsort((np.arange(flat.size), -flat.astype(np.float64)))
    keep = np.zeros(flat.size, bool)
    keep[order[:k]] = True
    out, start = [], 0
    for a in arrays:
        out.append(keep[start : start + a.size].reshape(a.shape))
        start += a.size
    return out


@pytest.mark.parametrize("jit", [False, True])
def test_all_zero_scores_keep_first_k_by_position(jit):
    scores = [jnp.zeros((2, 3)), jnp.zeros((4,))]
    fn = jax.jit(topk.topk_masks) if jit else topk.topk_masks
    masks = fn(scores, 7)
    np.testing.assert_array_equal(masks[0], np.ones((2, 3), np.uint8))
    np.testing.assert_array_equal(masks[1], np.array([1, 0, 0, 0], np.uint8))
    assert masks[0].dtype == jnp.uint8


def test_repeated_values_hand_computed():
    # Values 3 appear at positions 0, 2, 4; keeping 2 keeps the first two of them.
    masks = topk.topk_masks([jnp.array([3.0, 1.0, 3.0, 2.0, 3.0])], 2)
    np.testing.assert_array_equal(masks[0], [1, 0, 1, 0, 0])
    # Ties across leaves: the earlier leaf wins.
    masks = topk.topk_masks([jnp.array([5.0, 2.0]), jnp.array([2.0, 9.0])], 3)
    np.testing.assert_array_equal(masks[0], [1, 1])
    np.testing.assert_array_equal(masks[1], [0, 1])


def test_negative_zero_equals_zero_and_nan_is_lowest():
    masks = topk.topk_masks([jnp.array([-0.0, 0.0, jnp.nan, -1.0])], 3)
    np.testing.assert_array_equal(masks[0], [1, 1, 0, 1])


@pytest.mark.parametrize("k", [0, 1, 17, 99, 100])
def test_k_extremes_and_bool_dtype(k):
    rng = np.random.default_rng(k)
    scores = [rng.normal(size=(10, 5)).astype(np.float32), rng.normal(size=50).astype(np.float32)]
    masks = topk.topk_masks([jnp.asarray(s) for s in scores], k, dtype=jnp.bool_)
    assert masks[0].dtype == jnp.bool_
    assert sum(int(m.sum()) for m in masks) == k
    for got, want in zip(masks, numpy_topk_masks(scores, k)):
        np.testing.assert_array_equal(np.asarray(got), want)


def test_random_with_many_duplicates_matches_numpy():
    rng = np.random.default_rng(0)
    for trial in range(20):
        shapes = [(rng.integers(1, 6), rng.integers(1, 6)), (rng.integers(1, 30),)]
        arrays = [
            rng.integers(-3, 4, size=s).astype(np.float32) * rng.choice([1.0, 1e-30, 1e30])
            for s in shapes
        ]
        arrays[0].flat[0] = np.inf
        n = sum(a.size for a in arrays)
        k = int(rng.integers(0, n + 1))
        got = jax.jit(topk.topk_masks)([jnp.asarray(a) for a in arrays], k)
        for g, w in zip(got, numpy_topk_masks(arrays, k)):
            np.testing.assert_array_equal(np.asarray(g).astype(bool), w, err_msg=f"trial {trial}")


def test_kth_largest_key_is_exact_value():
    values = np.array([0.5, -2.0, 7.25, 7.25, 1e-38, -1e-38], np.float32)
    for k in range(1, values.size + 1):
        key = topk.kth_largest_key([jnp.asarray(values)], k)
        want = np.sort(values)[::-1][k - 1]
        assert int(key) == int(topk.ordered_key(jnp.float32(want)))


def test_num_kept_floor():
    assert int(topk.num_kept(1000, 0.95)) == 50
    assert int(topk.num_kept(10, 0.0)) == 10
    assert int(topk.num_kept(10, 0.999)) == 0


@pytest.mark.parametrize("order", ["random", "sorted", "reversed", "duplicates"])
def test_sampled_bracket_path_is_exact(order):
    # sample_size=16 sends 1,000+ values through the sampled bracket (and its fallback).
    rng = np.random.default_rng(3)
    values = rng.normal(size=1500).astype(np.float32)
    if order == "sorted":
        values = np.sort(values)
    elif order == "reversed":
        values = np.sort(values)[::-1].copy()
    elif order == "duplicates":
        values = rng.integers(-2, 3, size=1500).astype(np.float32)
    arrays = [values[:700].reshape(7, 100), values[700:]]
    desc = np.sort(values)[::-1]
    fn = jax.jit(lambda a, k: topk.kth_largest_key(a, k, sample_size=16))
    for k in [0, 1, 2, 15, 150, 749, 1499, 1500]:
        got = int(fn([jnp.asarray(a) for a in arrays], k))
        want = 0xFFFFFFFF if k == 0 else int(topk.ordered_key(jnp.float32(desc[k - 1])))
        assert got == want, (order, k)

"""N:M masks (`optg_jax.nm`): hand-computed masks per layer kind, ties, NaN, traced N, the exact
count per group against a NumPy argsort reference, the group-axis rule on Linen, NNX and the
zoo's models, non-divisible axes, `parse_pattern`, and the validity figures."""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from optg_jax import masking, nm
from optg_jax.train import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference_masks(scores, n, m, axis):
    """NumPy: per group, a stable argsort of -score (NaN last) and its first n positions."""
    x = np.moveaxis(np.asarray(scores, np.float32), axis, -1)
    groups = x.reshape(-1, m)
    keep = np.zeros(groups.shape, np.uint8)
    order = np.argsort(-groups, axis=1, kind="stable")  # -NaN is NaN: sorts last
    np.put_along_axis(keep, order[:, : max(0, min(n, m))], 1, axis=1)
    return np.moveaxis(keep.reshape(x.shape), -1, axis)


_nm_masks = jax.jit(nm.nm_masks, static_argnames=("m", "axis", "dtype"))


def masks(scores, n, m, axis):
    return np.asarray(_nm_masks(jnp.asarray(scores, jnp.float32), n, m=m, axis=axis))


# -- hand-computed masks ---------------------------------------------------------------------


def test_dense_kernel_groups_run_down_the_inputs():
    """Dense kernel [in=8, out=2]: groups of 4 consecutive inputs of each output."""
    scores = np.array(
        [
            [0.1, 4.0],
            [0.9, 3.0],
            [0.5, 2.0],
            [0.3, 1.0],
            [-1.0, 1.0],
            [-2.0, 2.0],
            [4.0, 3.0],
            [0.0, 4.0],
        ]
    )
    path = (jax.tree_util.DictKey("params"), jax.tree_util.DictKey("fc"))
    path += (jax.tree_util.DictKey("kernel"),)
    assert nm.group_axis(path, scores) == 0
    two_four = [[0, 1], [1, 1], [1, 0], [0, 0], [0, 0], [0, 0], [1, 1], [1, 1]]
    one_four = [[0, 1], [1, 0], [0, 0], [0, 0], [0, 0], [0, 0], [1, 0], [0, 1]]
    np.testing.assert_array_equal(masks(scores, 2, 4, 0), two_four)
    np.testing.assert_array_equal(masks(scores, 1, 4, 0), one_four)
    # 2:8: one group per output column.
    two_eight = [[0, 1], [1, 0], [0, 0], [0, 0], [0, 0], [0, 0], [1, 0], [0, 1]]
    np.testing.assert_array_equal(masks(scores, 2, 8, 0), two_eight)


def test_conv_kernel_groups_run_over_input_channels():
    """HWIO [1, 2, 4, 2]: at each (h, w, o), groups of the 4 input channels."""
    scores = np.zeros((1, 2, 4, 2), np.float32)
    scores[0, 0, :, 0] = [3, 1, 2, 0]
    scores[0, 0, :, 1] = [0, 1, 2, 3]
    scores[0, 1, :, 0] = [-1, -3, -2, -4]
    scores[0, 1, :, 1] = [5, 5, 6, 1]
    assert nm.group_axis_from_name("params/conv1/kernel", 4) == 2
    got = masks(scores, 2, 4, 2)
    np.testing.assert_array_equal(got[0, 0, :, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(got[0, 0, :, 1], [0, 0, 1, 1])
    np.testing.assert_array_equal(got[0, 1, :, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(got[0, 1, :, 1], [1, 0, 1, 0])  # 6, then the first 5
    # Rank 3 (a 1-D conv [W, in, out]) and rank 5 (3-D): axis ndim - 2.
    assert nm.group_axis_from_name("params/conv1d/kernel", 3) == 1
    assert nm.group_axis_from_name("params/conv3d/kernel", 5) == 3


def test_attention_kernels_axis_per_kind():
    """Query/key/value [in, heads, head_dim]: axis 0; out [heads, head_dim, out]: axis 1."""
    qkv = np.zeros((4, 1, 2), np.float32)  # in=4, heads=1, head_dim=2
    qkv[:, 0, 0] = [1, 4, 3, 2]
    qkv[:, 0, 1] = [9, 8, 7, 6]
    for kind in ("query", "key", "value"):
        axis = nm.group_axis_from_name(f"params/block0/attn/{kind}/kernel", 3)
        assert axis == 0
        got = masks(qkv, 2, 4, axis)
        np.testing.assert_array_equal(got[:, 0, 0], [0, 1, 1, 0])
        np.testing.assert_array_equal(got[:, 0, 1], [1, 1, 0, 0])
    out = np.zeros((2, 4, 1), np.float32)  # heads=2, head_dim=4, out=1
    out[0, :, 0] = [0, 2, 1, 3]
    out[1, :, 0] = [7, 5, 6, 4]
    axis = nm.group_axis_from_name("params/block0/attn/out/kernel", 3)
    assert axis == 1
    got = masks(out, 1, 4, axis)
    np.testing.assert_array_equal(got[:, :, 0], [[0, 0, 0, 1], [1, 0, 0, 0]])


def test_group_axis_on_flax_attention_linen_and_nnx():
    """Shapes and names as the installed Flax makes them, with and without NNX Variables."""
    linen = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=12)
    params = jax.eval_shape(linen.init, jax.random.key(0), jnp.zeros((1, 3, 16)))["params"]
    nnx_attn = nnx.eval_shape(
        lambda: nnx.MultiHeadAttention(
            num_heads=2, in_features=16, qkv_features=8, out_features=12, rngs=nnx.Rngs(0)
        )
    )
    state = nnx.state(nnx_attn, nnx.Param)
    with_variables = jax.tree_util.tree_leaves_with_path(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    expected = {
        ("query", (16, 2, 4)): 0,
        ("key", (16, 2, 4)): 0,
        ("value", (16, 2, 4)): 0,
        ("out", (2, 4, 12)): 1,
    }
    for leaves in (
        jax.tree_util.tree_leaves_with_path(params),
        jax.tree_util.tree_leaves_with_path(state),  # paths end in the Variable's .value
        with_variables,
    ):
        got = {
            (nm.path_names(path)[-2], tuple(leaf.shape)): nm.group_axis(path, leaf)
            for path, leaf in leaves
            if masking.leaf_name(path) == "kernel"
        }
        assert got == expected


def test_plan_of_the_zoo_models():
    """ViT: patch embedding on 1 channel stays dense; every other kernel by its kind."""
    x = jnp.zeros((1, 28, 28, 1))
    shapes = lambda name: jax.eval_shape(
        lambda x: models.create(name, 10).init(jax.random.key(0), x, train=False), x
    )["params"]
    vit = shapes("vit_tiny")
    plan = nm.nm_plan(vit, 4)
    assert plan["patch_embed/kernel"] is None  # [4, 4, 1, 128]: 1 input channel
    assert plan["head/kernel"] == 0
    for i in range(4):
        for kind in ("query", "key", "value"):
            assert plan[f"block{i}/attn/{kind}/kernel"] == 0
        assert plan[f"block{i}/attn/out/kernel"] == 1
        assert plan[f"block{i}/mlp_in/kernel"] == plan[f"block{i}/mlp_out/kernel"] == 0
    assert len(plan) == 1 + 4 * 6 + 1
    cnn = shapes("fmnist_cnn")
    assert nm.nm_plan(cnn, 4) == {
        "conv1/kernel": None,  # [3, 3, 1, 32]
        "conv2/kernel": 2,  # [3, 3, 32, 64]
        "fc1/kernel": 0,
        "fc2/kernel": 0,
    }
    # M = 64: conv2's 32 input channels no longer divide, fc2's 256 inputs do.
    assert nm.nm_plan(cnn, 64)["conv2/kernel"] is None
    assert nm.nm_plan(cnn, 64)["fc2/kernel"] == 0


def test_rank_one_leaves_have_no_group_axis():
    with pytest.raises(ValueError, match="rank 1"):
        nm.group_axis_from_name("params/fc/bias", 1)
    path = (jax.tree_util.DictKey("bias"),)
    assert not nm.nm_applicable(path, np.zeros(8), 4)


# -- ties, NaN, N ----------------------------------------------------------------------------


def test_ties_keep_the_earliest_positions():
    equal = np.zeros((12, 3), np.float32)
    np.testing.assert_array_equal(masks(equal, 2, 4, 0), np.tile([[1], [1], [0], [0]], (3, 3)))
    np.testing.assert_array_equal(masks(equal, 1, 4, 0), np.tile([[1], [0], [0], [0]], (3, 3)))
    np.testing.assert_array_equal(masks([3, 1, 3, 3], 2, 4, 0), [1, 0, 1, 0])
    np.testing.assert_array_equal(masks([0.0, -0.0, 1, -0.0], 2, 4, 0), [1, 0, 1, 0])


def test_nan_ranks_lowest():
    nan, inf = np.nan, np.inf
    np.testing.assert_array_equal(masks([nan, 1, nan, 0], 2, 4, 0), [0, 1, 0, 1])
    np.testing.assert_array_equal(masks([nan, nan, -5, nan], 2, 4, 0), [1, 0, 1, 0])
    np.testing.assert_array_equal(masks([nan, nan, nan, nan], 1, 4, 0), [1, 0, 0, 0])
    # NaN ties with -inf: the earlier position wins.
    np.testing.assert_array_equal(masks([nan, -inf, 1, 2], 3, 4, 0), [1, 0, 1, 1])
    np.testing.assert_array_equal(masks([-inf, nan, 1, 2], 3, 4, 0), [1, 0, 1, 1])


def test_n_zero_and_n_at_least_m():
    scores = np.random.default_rng(0).normal(size=(8, 5))
    np.testing.assert_array_equal(masks(scores, 0, 4, 0), np.zeros((8, 5)))
    np.testing.assert_array_equal(masks(scores, -1, 4, 0), np.zeros((8, 5)))
    np.testing.assert_array_equal(masks(scores, 4, 4, 0), np.ones((8, 5)))
    np.testing.assert_array_equal(masks(scores, 7, 4, 0), np.ones((8, 5)))


def test_traced_n_under_jit_matches_python_n():
    scores = jnp.asarray(np.random.default_rng(1).normal(size=(16, 6)), jnp.float32)
    masks_at = jax.jit(lambda s, n: nm.nm_masks(s, n, 8, 0))
    for n in range(-1, 10):
        np.testing.assert_array_equal(
            masks_at(scores, jnp.int32(n)), nm.nm_masks(scores, n, 8, 0), err_msg=f"n={n}"
        )
        np.testing.assert_array_equal(masks(scores, n, 8, 0), reference_masks(scores, n, 8, 0))
    assert masks_at._cache_size() == 1  # one compilation for every n


def test_dtype_and_negative_axis():
    scores = np.arange(8, dtype=np.float32).reshape(2, 4)  # groups along the last axis
    got = nm.nm_masks(scores, 2, 4, -1, dtype=jnp.bool_)
    assert got.dtype == jnp.bool_
    np.testing.assert_array_equal(got, [[0, 0, 1, 1], [0, 0, 1, 1]])
    assert nm.nm_masks(scores, 2, 4, 1).dtype == jnp.uint8
    assert nm.nm_masks(scores, 2, 4, 1, dtype=jnp.float32).dtype == jnp.float32


@pytest.mark.parametrize(
    "shape,axis,n,m",
    [
        ((16, 3), 0, 2, 4),
        ((8, 12), 0, 1, 4),
        ((3, 3, 16, 5), 2, 2, 4),
        ((3, 3, 16, 5), 2, 2, 8),
        ((24, 2, 8), 0, 2, 4),
        ((2, 8, 6), 1, 3, 8),
        ((10, 7), 0, 1, 2),
        ((32, 4), 0, 5, 16),
    ],
)
def test_exactly_n_per_group_on_random_scores(shape, axis, n, m):
    rng = np.random.default_rng(hash((shape, axis, n, m)) % 2**32)
    scores = rng.normal(size=shape).astype(np.float32)
    scores[rng.random(shape) < 0.2] = 0.5  # some ties
    got = masks(scores, n, m, axis)
    np.testing.assert_array_equal(got, reference_masks(scores, n, m, axis))
    counts = np.asarray(nm.nm_group_counts(got, m, axis))
    expected_shape = shape[:axis] + (shape[axis] // m,) + shape[axis + 1 :]
    assert counts.shape == expected_shape
    assert (counts == n).all()
    assert bool(nm.nm_valid(got, n, m, axis))


# -- non-divisible axes, bad arguments --------------------------------------------------------


def test_non_divisible_axis_is_refused_and_reported():
    stem = np.ones((3, 3, 3, 16), np.float32)  # an RGB stem: 3 input channels
    with pytest.raises(ValueError, match="has 3 entries, not a multiple of M = 4"):
        nm.nm_masks(stem, 2, 4, 2)
    with pytest.raises(ValueError, match="not a multiple"):
        nm.nm_group_counts(stem, 4, 2)
    path = tuple(jax.tree_util.DictKey(k) for k in ("params", "stem", "kernel"))
    assert not nm.nm_applicable(path, stem, 4)
    assert nm.nm_applicable(path, stem, 3)  # 1:3 would fit
    assert nm.nm_plan({"stem": {"kernel": stem}}, 4) == {"stem/kernel": None}


def test_bad_group_size_or_axis_is_refused():
    with pytest.raises(ValueError, match="int >= 2"):
        nm.nm_masks(np.ones((4, 4)), 1, 1, 0)
    with pytest.raises(ValueError, match="int >= 2"):
        nm.nm_masks(np.ones((4, 4)), 1, jnp.int32(4), 0)
    with pytest.raises(ValueError, match="out of range"):
        nm.nm_masks(np.ones((4, 4)), 1, 4, 2)


# -- parse_pattern -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,n,m", [("2:4", 2, 4), ("1:4", 1, 4), ("2:8", 2, 8), ("1:2", 1, 2), ("15:16", 15, 16)]
)
def test_parse_pattern_good(text, n, m):
    pattern = nm.parse_pattern(text)
    assert pattern == nm.NMPattern(n, m) and (pattern.n, pattern.m) == (n, m)
    assert str(pattern) == text
    assert nm.parse_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "text",
    ["3:2", "0:4", "4:4", "2:x", "2-4", "", " 2:4 ", "2:4:8", "-1:4", "+2:4", "2.0:4", "２:４"],
)
def test_parse_pattern_bad(text):
    with pytest.raises(ValueError) as error:
        nm.parse_pattern(text)
    message = str(error.value)
    assert message == f"bad N:M pattern {text!r}: expected 'N:M' with integers 1 <= N < M"
    assert "\n" not in message


def test_parse_pattern_refuses_non_strings():
    for bad in (None, 4, (4, 2), nm.NMPattern(4, 4)):
        with pytest.raises(ValueError, match="bad N:M pattern"):
            nm.parse_pattern(bad)


def test_index_bits():
    assert [nm.index_bits(m) for m in (2, 3, 4, 5, 8, 9, 16)] == [1, 2, 2, 3, 3, 4, 4]


# -- validity --------------------------------------------------------------------------------


def test_group_counts_and_validity_by_hand():
    mask = np.array([1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1], np.uint8).reshape(16, 1)
    np.testing.assert_array_equal(nm.nm_group_counts(mask, 4, 0), [[2], [2], [3], [1]])
    assert not bool(nm.nm_valid(mask, 2, 4, 0))
    assert float(nm.nm_fraction_valid(mask, 2, 4, 0)) == 0.5
    assert float(nm.nm_fraction_valid(mask, 1, 4, 0)) == 0.25
    np.testing.assert_array_equal(nm.nm_group_counts(mask, 8, 0), [[4], [4]])
    assert float(nm.nm_fraction_valid(mask, 3, 8, 0)) == 0.0
    assert float(nm.nm_fraction_valid(mask, 4, 8, 0)) == 1.0
    assert bool(nm.nm_valid(mask, 4, 8, 0))
    fixed = mask.copy()
    fixed[10], fixed[14] = 0, 1  # groups 3 and 4 now keep 2 each
    assert bool(nm.nm_valid(fixed, 2, 4, 0))
    assert float(nm.nm_fraction_valid(fixed, 2, 4, 0)) == 1.0
    # Masked weights count their non-zeros; n is clipped to [0, m]; traced n under jit.
    weights = np.where(fixed, np.arange(16.0).reshape(16, 1) + 1, 0.0)
    assert bool(jax.jit(nm.nm_valid, static_argnums=(2, 3))(weights, jnp.int32(2), 4, 0))
    assert bool(nm.nm_valid(np.ones((8, 2)), 9, 4, 0))
    assert bool(nm.nm_valid(np.zeros((8, 2)), -1, 4, 0))
    assert float(nm.nm_fraction_valid(np.zeros((0, 3)), 2, 4, 0)) == 1.0


def test_report_per_leaf_by_hand():
    """A Dense [16, 1] holding the mask above (2 of 4 groups at 2:4), an attention query
    [8, 2, 4] (axis 0, all kept: no group at 2:4), a stem conv on 3 channels, an unmasked bias."""
    mask = np.array([1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1], np.uint8).reshape(16, 1)
    masks = {
        "fc": {"kernel": mask, "bias": None},
        "attn": {"query": {"kernel": np.ones((8, 2, 4), np.uint8)}},
        "stem": {"kernel": np.ones((3, 3, 3, 8), np.uint8)},
    }
    report = nm.nm_report(masks, "2:4")
    assert report == {
        "attn/query/kernel": {
            "covered": True,
            "axis": 0,
            "groups": 16,
            "valid_groups": 0,
            "valid_fraction": 0.0,
        },
        "fc/kernel": {
            "covered": True,
            "axis": 0,
            "groups": 4,
            "valid_groups": 2,
            "valid_fraction": 0.5,
        },
        "stem/kernel": {
            "covered": False,
            "axis": None,
            "groups": 0,
            "valid_groups": 0,
            "valid_fraction": None,
        },
    }
    assert nm.nm_report(masks, nm.NMPattern(4, 8))["fc/kernel"]["valid_fraction"] == 1.0


# -- sharded leaves ---------------------------------------------------------------------------

_SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from optg_jax import nm

    mesh = jax.make_mesh((4,), ("d",))
    scores = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    out = {}
    for name, spec in (("other_axis", P(None, "d")), ("group_axis", P("d", None))):
        sharding = NamedSharding(mesh, spec)
        fn = jax.jit(lambda s, n: nm.nm_masks(s, n, 4, 0), out_shardings=sharding)
        x = jax.device_put(scores, sharding)
        hlo = fn.lower(x, jnp.int32(2)).compile().as_text()
        got = fn(x, jnp.int32(2))
        out[name] = {
            "equal": bool((np.asarray(got) == np.asarray(nm.nm_masks(scores, 2, 4, 0))).all()),
            "collectives": [op for op in ("all-gather", "all-reduce", "all-to-all",
                            "collective-permute") if op in hlo],
            "shards": len(got.addressable_shards),
        }
    json.dump(out, sys.stdout)
    """
)


def test_sharded_leaf_needs_no_communication():
    """A kernel sharded over 4 CPU devices on either axis: the same masks, no collectives."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    env["JAX_PLATFORMS"] = "cpu"
    run = subprocess.run(
        [sys.executable, "-c", _SHARDED], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    for name in ("other_axis", "group_axis"):
        assert result[name] == {"equal": True, "collectives": [], "shards": 4}, name

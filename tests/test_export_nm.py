"""The N:M encoding of the sparse export: packed positions checked by hand, which leaves take it,
exact round trips, and the zoo's CNN and ViT under 2:4 masks written, read back and run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optg_jax
from optg_jax import export, masking, nm
from optg_jax.train import models


def index_of(entries):
    return json.loads(str(entries["__index__"][()]))


def round_trip(flat, pattern):
    entries = export.encode(flat, pattern)
    decoded = export.decode(entries)
    assert list(decoded) == list(flat)
    for name, array in flat.items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
        np.testing.assert_array_equal(decoded[name], array)
    return entries


def test_two_four_bytes_by_hand():
    """[in=8, out=1]: groups (0, 5, 0, 7) and (1, 0, 0, 2) keep positions (1, 3) and (0, 3)."""
    kernel = np.array([0, 5, 0, 7, 1, 0, 0, 2], np.float32).reshape(8, 1)
    entries = round_trip({"params/fc/kernel": kernel}, "2:4")
    np.testing.assert_array_equal(entries["params/fc/kernel:values"], [[5], [7], [1], [2]])
    # Positions 1, 3, 0, 3 at 2 bits each, the first in the lowest bits: 0b11_00_11_01.
    assert entries["params/fc/kernel:positions"].tolist() == [0b11001101] == [205]
    index = index_of(entries)
    assert index["format"] == export.FORMAT_NM
    assert index["leaves"]["params/fc/kernel"] == {
        "shape": [8, 1],
        "dtype": "<f4",
        "encoding": "nm",
        "n": 2,
        "m": 4,
        "axis": 0,
    }


def test_two_four_dense_kernel_with_two_outputs():
    """[in=4, out=2]: the values are the compressed [in/2, out] matrix, positions row-major."""
    kernel = np.array([[1, 0], [0, 2], [3, 4], [0, 0]], np.float32)
    entries = round_trip({"params/fc/kernel": kernel}, "2:4")
    np.testing.assert_array_equal(entries["params/fc/kernel:values"], [[1, 2], [3, 4]])
    # Positions [[0, 1], [2, 2]] in row-major order: 0, 1, 2, 2 -> 0b10_10_01_00.
    assert entries["params/fc/kernel:positions"].tolist() == [0b10100100]


def test_one_four_and_two_eight_bytes_by_hand():
    kernel = np.array([0, 0, 9, 0, 0, 0, 0, 8, 7, 0, 0, 0, 0, 6, 0, 0], np.float32)
    kernel = kernel.reshape(16, 1)
    one_four = round_trip({"params/fc/kernel": kernel}, "1:4")
    np.testing.assert_array_equal(one_four["params/fc/kernel:values"], [[9], [8], [7], [6]])
    assert one_four["params/fc/kernel:positions"].tolist() == [0b01_00_11_10]  # 2, 3, 0, 1
    # 2:8, 3 bits a position: 2, 7 | 0, 5 -> bits 010 111 000 101, low bit first.
    two_eight = round_trip({"params/fc/kernel": kernel}, "2:8")
    np.testing.assert_array_equal(two_eight["params/fc/kernel:values"], [[9], [8], [7], [6]])
    stream = [0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]  # 2 = 010 read low bit first is 0, 1, 0
    expected = np.packbits(np.array(stream, np.uint8), bitorder="little")
    assert two_eight["params/fc/kernel:positions"].tolist() == expected.tolist() == [58, 10]


def test_conv_and_attention_leaves_group_along_their_axis():
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(3, 3, 8, 4)).astype(np.float32)
    out = rng.normal(size=(2, 8, 6)).astype(np.float32)  # heads, head_dim, out
    query = rng.normal(size=(8, 2, 4)).astype(np.float32)  # in, heads, head_dim
    flat = {}
    for name, array, axis in (
        ("params/conv/kernel", conv, 2),
        ("params/attn/out/kernel", out, 1),
        ("params/attn/query/kernel", query, 0),
    ):
        masks = jax.jit(nm.nm_masks, static_argnums=(2, 3, 4))(abs(array), 2, 4, axis, jnp.float32)
        flat[name] = array * np.asarray(masks)
    entries = round_trip(flat, "2:4")
    leaves = index_of(entries)["leaves"]
    assert {k: (v["encoding"], v["axis"]) for k, v in leaves.items()} == {
        "params/conv/kernel": ("nm", 2),
        "params/attn/out/kernel": ("nm", 1),
        "params/attn/query/kernel": ("nm", 0),
    }
    assert entries["params/conv/kernel:values"].shape == (3, 3, 4, 4)
    assert entries["params/attn/out/kernel:values"].shape == (2, 4, 6)
    assert entries["params/attn/query/kernel:values"].shape == (4, 2, 4)
    # One (h, w, o) column of the conv by hand: its 8 input channels, two groups of 4.
    column = flat["params/conv/kernel"][1, 2, :, 3]
    kept = column[column != 0]
    np.testing.assert_array_equal(entries["params/conv/kernel:values"][1, 2, :, 3], kept)


def test_which_leaves_take_the_encoding():
    rng = np.random.default_rng(1)
    two_four = np.tile(np.array([[1.5], [0], [0], [-2.5]], np.float32), (2, 3))  # [8, 3]
    padded = two_four.copy()
    padded[0, 0] = 0.0  # a group with one non-zero: a zero fills the second slot
    signed_zero = two_four.copy()
    signed_zero[1, 1] = -0.0  # a masked negative weight: -0.0 counts as zero
    three_four = np.tile(np.array([[1], [2], [0], [3]], np.float32), (2, 3))
    flat = {
        "params/a/kernel": two_four,
        "params/b/kernel": padded,
        "params/c/kernel": signed_zero,
        "params/dense/kernel": rng.normal(size=(8, 3)).astype(np.float32),  # not 2:4
        "params/stem/kernel": np.zeros((3, 3, 3, 8), np.float32) + 1,  # 3 inputs: not divisible
        "params/zero/kernel": np.zeros((8, 4), np.float32),  # all zero: the bitmask is smaller
        "params/a/bias": np.array([1, 0, 0, 0], np.float32),  # rank 1: as before
        "batch_stats/bn/mean": np.zeros(4, np.float32),
    }
    entries = round_trip(flat, "2:4")
    encodings = {k: v["encoding"] for k, v in index_of(entries)["leaves"].items()}
    assert encodings == {
        "params/a/kernel": "nm",
        "params/b/kernel": "nm",
        "params/c/kernel": "nm",
        "params/dense/kernel": "dense",
        "params/stem/kernel": "dense",
        "params/zero/kernel": "bitmask",
        "params/a/bias": "bitmask",
        "batch_stats/bn/mean": "bitmask",
    }
    # The padded group stores its first zero (position 0) beside its non-zero (position 3).
    np.testing.assert_array_equal(entries["params/b/kernel:values"][:2, 0], [0.0, -2.5])
    # 3:4 positions (6 bits a group) would cost more than the bitmask (4): bitmask.
    three = round_trip({"params/a/kernel": three_four}, "3:4")
    assert index_of(three)["leaves"]["params/a/kernel"]["encoding"] == "bitmask"
    # Without a pattern, or with no leaf holding it, the archive is exactly as before.
    plain = export.encode(flat)
    assert index_of(plain)["format"] == export.FORMAT
    assert "nm" not in {v["encoding"] for v in index_of(plain)["leaves"].values()}
    dense_only = export.encode({"params/dense/kernel": flat["params/dense/kernel"]}, "2:4")
    assert index_of(dense_only)["format"] == export.FORMAT


def test_bad_pattern_is_refused():
    with pytest.raises(ValueError, match="bad N:M pattern '4:2'"):
        export.encode({"params/fc/kernel": np.zeros((4, 4), np.float32)}, "4:2")


def test_unknown_format_is_refused():
    entries = export.encode({"params/fc/kernel": np.zeros((4, 4), np.float32)})
    entries["__index__"] = np.array(json.dumps({"format": "optg-jax sparse export v9"}))
    with pytest.raises(ValueError, match="unknown sparse export format"):
        export.decode(entries)


def two_four_masked(params):
    """Every masked kernel whose group axis divides by 4 kept 2:4 by magnitude."""

    def mask(path, leaf):
        if not (masking.default_is_masked(path, leaf) and nm.nm_applicable(path, leaf, 4)):
            return leaf
        return leaf * nm.nm_masks(jnp.abs(leaf), 2, 4, nm.group_axis(path, leaf), leaf.dtype)

    return jax.device_get(jax.jit(lambda p: jax.tree_util.tree_map_with_path(mask, p))(params))


@pytest.mark.parametrize("name", ["fmnist_cnn", "vit_tiny"])
def test_two_four_model_round_trip(tmp_path, name):
    model = models.create(name, 10)
    x0 = jnp.zeros((1, 28, 28, 1), jnp.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x0)
    masked = two_four_masked(variables["params"])
    batch_stats = jax.device_get(variables.get("batch_stats", {}))
    if batch_stats:  # running statistics that are not the initial 0 / 1
        rng = np.random.default_rng(1)
        batch_stats = jax.tree.map(lambda s: s + rng.uniform(0.1, 0.5, s.shape), batch_stats)
    plan = nm.nm_plan(masked, 4)
    saved = {"params": masked, "batch_stats": batch_stats}
    path = export.write_sparse(tmp_path / "m24.npz", saved, pattern="2:4")
    loaded = optg_jax.load_sparse(path)
    jax.tree.map(np.testing.assert_array_equal, loaded["params"], masked)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)), jnp.float32)
    apply = jax.jit(lambda v: model.apply(v, x, train=False))
    np.testing.assert_array_equal(apply(loaded), apply(saved))

    # The index: N:M along the plan's axis for every kernel that holds it; the stem is as before.
    with np.load(path) as entries:
        leaves = json.loads(str(entries["__index__"][()]))["leaves"]
    for leaf, axis in plan.items():
        record = leaves["params/" + leaf]
        if axis is None:
            assert record["encoding"] in ("dense", "bitmask"), leaf
        else:
            assert (record["encoding"], record["n"], record["m"], record["axis"]) == (
                "nm",
                2,
                4,
                axis,
            ), leaf
    assert sum(axis is None for axis in plan.values()) == 1  # conv1 / patch_embed: 1 channel

    # The kernels alone: 2:4 against today's bitmask, the same bytes before deflate, and smaller
    # after (the positions of a group sit together, where the bitmask's bytes span groups).
    kernels = {k: v for k, v in export.flatten(saved).items() if k.endswith("/kernel")}
    raw = lambda e: sum(v.nbytes for k, v in e.items() if k != "__index__")
    assert raw(export.encode(kernels, "2:4")) == raw(export.encode(kernels))
    bitmask_file = export.write_sparse(tmp_path / "bitmask.npz", {"params": masked})
    two_four_file = export.write_sparse(tmp_path / "two_four.npz", {"params": masked}, "2:4")
    assert os.path.getsize(two_four_file) < os.path.getsize(bitmask_file)

"""The compact sparse export: exact round trip, sizes by hand, and logits of `load_sparse`'s
variables equal to the masked model's (a CNN with BatchNorm and the ViT)."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optg_jax
from optg_jax import export
from optg_jax.train import checkpoints, models


def sparse_array(shape, nnz, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    flat = np.zeros(math.prod(shape), dtype)
    flat[rng.choice(flat.size, nnz, replace=False)] = rng.normal(size=nnz) + 3.0  # never 0
    return flat.reshape(shape)


def test_round_trip_is_exact_and_picks_the_smaller_encoding():
    flat = {
        "params/fc/kernel": sparse_array((100, 40), 40),  # 1% kept
        "params/fc/bias": np.arange(40, dtype=np.float32),  # no zeros: stays dense
        "params/conv/kernel": sparse_array((3, 3, 2, 4), 70),  # 97% kept: dense is smaller
        "params/empty": np.zeros((0, 3), np.float32),
        "batch_stats/bn/mean": np.zeros(4, np.float32),  # all zero: 1 byte of bits
    }
    entries = export.encode(flat)
    index = json.loads(str(entries["__index__"][()]))["leaves"]
    assert {k: v["encoding"] for k, v in index.items()} == {
        "params/fc/kernel": "bitmask",
        "params/fc/bias": "dense",
        "params/conv/kernel": "dense",
        "params/empty": "dense",
        "batch_stats/bn/mean": "bitmask",
    }
    # 4000 weights: 500 bytes of bits and 40 float32 values.
    assert entries["params/fc/kernel:mask"].nbytes == 500
    assert entries["params/fc/kernel:values"].nbytes == 40 * 4
    decoded = export.decode(entries)
    assert list(decoded) == list(flat)
    for name, array in flat.items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
        np.testing.assert_array_equal(decoded[name], array)


def test_file_size_at_99_percent(tmp_path):
    """80,000 weights, 800 kept: 10,000 bytes of bits + 3,200 of values before deflate."""
    kernel = sparse_array((400, 200), 800)
    dense_bytes = kernel.nbytes  # 320,000
    entries = export.encode({"params/fc/kernel": kernel})
    assert sum(v.nbytes for k, v in entries.items() if k != "__index__") == 10_000 + 3_200
    path = export.write_sparse(tmp_path / "m.npz", {"params": {"fc": {"kernel": kernel}}})
    size = os.path.getsize(path)
    # Deflate shrinks the mostly-zero bits; the values (random floats) hardly shrink.
    assert 3_200 < size < 10_000 + 3_200
    assert size / dense_bytes < 0.03
    np.testing.assert_array_equal(optg_jax.load_sparse(path)["params"]["fc"]["kernel"], kernel)


def init_variables(model, shape):
    x = jnp.zeros((1, *shape), jnp.float32)
    return jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)


@pytest.mark.parametrize("name", ["fmnist_cnn", "vit_tiny"])
def test_load_sparse_gives_the_masked_model(tmp_path, name):
    model = models.create(name, 10)
    variables = init_variables(model, (28, 28, 1))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    if batch_stats:  # running statistics that are not the initial 0 / 1
        rng = np.random.default_rng(1)
        batch_stats = jax.tree.map(lambda s: s + rng.uniform(0.1, 0.5, s.shape), batch_stats)
    # Magnitude masks at 95%, chosen at init (constant schedule), global over the kernels.
    tx = optg_jax.optg_optax(0.95, 10, 0.1, criterion="magnitude", schedule="constant")
    state = jax.jit(tx.init)(params)
    masked = optg_jax.apply_masks(params, state)
    workdir = tmp_path / "run"
    checkpoints.export(str(workdir), masked, batch_stats, {"model": name})

    loaded = optg_jax.load_sparse(workdir / "export")
    assert set(loaded) == {"params", "batch_stats"}
    assert jax.tree.structure(loaded["params"]) == jax.tree.structure(jax.device_get(masked))
    jax.tree.map(np.testing.assert_array_equal, loaded["params"], jax.device_get(masked))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 28, 28, 1)), jnp.float32)
    apply = jax.jit(lambda v: model.apply(v, x, train=False))
    want = apply({"params": masked, "batch_stats": batch_stats})
    got = apply(loaded)
    np.testing.assert_array_equal(got, want)

    # The same variables as the dense export, at a fraction of its size.
    dense = np.load(workdir / "export" / "model.npz")
    flat = export.flatten(loaded)
    assert sorted(dense.files) == sorted(flat)
    for key in dense.files:
        np.testing.assert_array_equal(flat[key], dense[key])
    summary = optg_jax.sparsity_summary(state)
    assert summary["global"] == pytest.approx(0.95, abs=1e-4)
    ratio = os.path.getsize(workdir / "export" / export.SPARSE_FILE) / os.path.getsize(
        workdir / "export" / "model.npz"
    )
    # Kept values (5% of the masked weights) plus ~1/32 for the bits, before deflate, plus the
    # unmasked leaves.
    unmasked = 1 - summary["num_masked"] / sum(x.size for x in jax.tree.leaves(params))
    assert ratio < 0.05 + 1 / 32 + unmasked + 0.01


def test_load_sparse_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sparse export at .*model_sparse.npz"):
        optg_jax.load_sparse(tmp_path)
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not an optg-jax sparse export"):
        optg_jax.load_sparse(tmp_path / "plain.npz")

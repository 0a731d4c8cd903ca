"""OptG on a Flax NNX model (`optg_jax.nnx`) against the same network written in Linen.

Both start from the same weights (the Linen init copied into the NNX model), see the same real
Fashion-MNIST batches and use the same optax chain; after every mask refresh their masks must be
equal and their scores, score momentum, weights and BatchNorm statistics equal to float
tolerance, and the NNX run must end at exactly the target sparsity.
"""

import gzip
import math
import os

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx

import optg_jax
import optg_jax.nnx
from optg_jax.train.data import fashion_mnist

BATCH = 32
TARGET = 0.9
REFRESH = 25

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(fashion_mnist.DEBIAN_DIR, "train-images-idx3-ubyte.gz")),
    reason=f"Debian package dataset-fashion-mnist is not installed ({fashion_mnist.DEBIAN_DIR})",
)


def read_idx(name: str, count: int) -> np.ndarray:
    """The first `count` records of one of Debian's gzipped IDX files (uint8)."""
    with gzip.open(os.path.join(fashion_mnist.DEBIAN_DIR, name), "rb") as f:
        header = f.read(4)
        ndim = header[3]
        shape = [int.from_bytes(f.read(4), "big") for _ in range(ndim)]
        record = math.prod(shape[1:])
        data = f.read(count * record)
    return np.frombuffer(data, np.uint8).reshape(count, *shape[1:])


def fashion_mnist_batches(num_steps: int, split: str = "train"):
    """`num_steps` batches of real images (float32 [B, 28, 28, 1] in [0, 1]) and labels."""
    n = num_steps * BATCH
    images = read_idx(f"{split}-images-idx3-ubyte.gz", n).astype(np.float32) / 255.0
    labels = read_idx(f"{split}-labels-idx1-ubyte.gz", n).astype(np.int32)
    return images.reshape(num_steps, BATCH, 28, 28, 1), labels.reshape(num_steps, BATCH)


def max_pool_2x2(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class LinenCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(8, (3, 3), name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn1")(x)
        x = max_pool_2x2(nn.relu(x))
        x = max_pool_2x2(nn.relu(nn.Conv(16, (3, 3), name="conv2")(x)))
        return nn.Dense(10, name="fc")(x.reshape(x.shape[0], -1))


class NnxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), rngs=rngs)
        self.fc = nnx.Linear(7 * 7 * 16, 10, rngs=rngs)

    def __call__(self, x):
        x = max_pool_2x2(nnx.relu(self.bn1(self.conv1(x))))
        x = max_pool_2x2(nnx.relu(self.conv2(x)))
        return self.fc(x.reshape(x.shape[0], -1))


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_tx(num_steps: int, pattern: str | None = None, **optg_kwargs):
    lr = optax.cosine_decay_schedule(0.1, num_steps)
    return optax.chain(
        optg_jax.optg_optax(
            TARGET if pattern is None else 0.5,  # 2:4 removes half of every group
            num_steps,
            lr,
            mask_update_every=REFRESH,
            pruning_end_step=num_steps * 2 // 3,
            pattern=pattern,
            **optg_kwargs,
        ),
        optax.add_decayed_weights(5e-4),
        optax.sgd(lr, momentum=0.9),
    )


def nnx_from_linen(variables) -> NnxCNN:
    """The NNX network holding the Linen network's params and BatchNorm statistics."""
    # Built abstractly: an eager NNX init would compile every initialiser on its own.
    graphdef, state = nnx.split(nnx.eval_shape(lambda: NnxCNN(nnx.Rngs(0))))
    values = jax.tree.map(np.asarray, variables["params"])
    for name, stats in variables["batch_stats"].items():
        values[name] = {**values[name], **jax.tree.map(np.asarray, stats)}
    nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graphdef, state)


def run_both(num_steps: int, pattern: str | None = None, **optg_kwargs):
    """Trains the Linen and the NNX network side by side; checks them after each refresh."""
    images, labels = fashion_mnist_batches(num_steps)
    linen = LinenCNN()
    variables = jax.jit(lambda x: linen.init(jax.random.key(0, impl="rbg"), x, train=False))(
        images[0]
    )
    tx = make_tx(num_steps, pattern, **optg_kwargs)

    @jax.jit
    def linen_step(params, batch_stats, opt_state, x, y):
        def loss_fn(masked):
            logits, new = linen.apply(
                {"params": masked, "batch_stats": batch_stats}, x, train=True, mutable=True
            )
            return cross_entropy(logits, y), new["batch_stats"]

        masked = optg_jax.apply_masks(params, opt_state)
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(masked)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    model = nnx_from_linen(variables)
    optimizer = nnx.jit(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param))(model)

    # The pattern of `optg_jax/nnx.py`'s docstring, as a user writes it.
    @nnx.jit
    def nnx_step(model, optimizer, x, y):
        loss, grads = optg_jax.nnx.value_and_grad(
            lambda m: cross_entropy(m(x), y), model, optimizer
        )
        optimizer.update(model, grads)
        return loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = jax.jit(tx.init)(params)
    checked = 0
    for t in range(num_steps):
        params, batch_stats, opt_state, linen_loss = linen_step(
            params, batch_stats, opt_state, images[t], labels[t]
        )
        nnx_loss = nnx_step(model, optimizer, images[t], labels[t])
        np.testing.assert_allclose(nnx_loss, linen_loss, rtol=1e-4)
        if (t + 1) % REFRESH == 0 or t + 1 == num_steps:
            # Every REFRESH steps, just before the next refresh: each check sees the masks of
            # another refresh and the scores accumulated since.
            assert_same_state(params, batch_stats, opt_state, model, optimizer)
            checked += 1
    return model, optimizer, params, opt_state, checked


def assert_same_state(params, batch_stats, opt_state, model, optimizer):
    linen_optg = optg_jax.get_optg_state(opt_state)
    nnx_optg = optg_jax.get_optg_state(nnx.as_pure(optimizer.opt_state))
    assert int(nnx_optg.count) == int(linen_optg.count)
    as_dict = lambda tree: nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree
    for field in ("masks", "scores", "momentum"):
        a, b = as_dict(getattr(linen_optg, field)), as_dict(getattr(nnx_optg, field))
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            if field == "masks":
                np.testing.assert_array_equal(x, y)
            else:
                scale = float(np.abs(x).max())
                np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-4 * scale + 1e-30)
    nnx_params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(nnx_params)):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.bn1.mean[...], batch_stats["bn1"]["mean"], atol=1e-5)
    np.testing.assert_allclose(model.bn1.var[...], batch_stats["bn1"]["var"], rtol=1e-4)


@pytest.mark.parametrize(
    "num_steps",
    [100, pytest.param(300, marks=pytest.mark.slow)],
)
def test_nnx_matches_linen_and_reaches_the_target_sparsity(num_steps):
    model, optimizer, params, opt_state, checked = run_both(num_steps)
    assert checked == num_steps // REFRESH
    summary = optg_jax.sparsity_summary(nnx.as_pure(optimizer.opt_state))
    num_masked = 3 * 3 * 1 * 8 + 3 * 3 * 8 * 16 + 7 * 7 * 16 * 10  # conv1, conv2, fc kernels
    assert summary["num_masked"] == num_masked
    assert summary["num_kept"] == math.floor(num_masked * (1 - TARGET)) == 906
    assert summary["global"] == pytest.approx(TARGET, abs=1e-3)

    # The model keeps the dense weights (removed ones too); the masked copy has zeros there.
    masks = optg_jax.get_masks(nnx.as_pure(optimizer.opt_state))
    fc_mask = np.asarray(masks["fc"]["kernel"]).astype(bool)
    dense = np.asarray(model.fc.kernel[...])
    masked = optg_jax.nnx.masked_model(model, optimizer)
    assert np.count_nonzero(dense[~fc_mask]) == np.count_nonzero(~fc_mask)
    np.testing.assert_array_equal(np.asarray(masked.fc.kernel[...]), dense * fc_mask)
    np.testing.assert_array_equal(np.asarray(masked.fc.bias[...]), np.asarray(model.fc.bias[...]))

    # The sparse network has learned: test-split accuracy of the masked model in eval mode.
    images, labels = fashion_mnist_batches(8, split="t10k")
    masked.eval()
    logits = nnx.jit(lambda m, x: m(x))(masked, images.reshape(-1, 28, 28, 1))
    accuracy = float(np.mean(np.argmax(logits, -1) == labels.reshape(-1)))
    assert accuracy > 0.6


def test_nnx_matches_linen_under_a_two_four_pattern():
    """2:4 on both: the same masks after every refresh (NNX paths give the same group axes), and
    at the end conv2 and fc keep exactly 2 of each 4 inputs; conv1 (1 input channel) stays
    dense."""
    _, optimizer, _, opt_state, checked = run_both(50, pattern="2:4")
    assert checked == 2
    want = {
        "conv1/kernel": (False, None),
        "conv2/kernel": (True, 1.0),
        "fc/kernel": (True, 1.0),
    }
    for state in (opt_state, nnx.as_pure(optimizer.opt_state)):
        masks = optg_jax.get_masks(state)
        masks = nnx.to_pure_dict(masks) if isinstance(masks, nnx.State) else masks
        report = optg_jax.nm.nm_report(masks, "2:4")
        assert {k: (v["covered"], v["valid_fraction"]) for k, v in report.items()} == want
    summary = optg_jax.sparsity_summary(opt_state)
    assert summary["num_kept"] == 3 * 3 * 1 * 8 + (3 * 3 * 8 * 16 + 7 * 7 * 16 * 10) // 2


def test_nnx_matches_linen_when_the_scores_forget_with_distance():
    """`score_half_distance` keeps the starting weights in the state: an `nnx.State` under NNX.
    Both runs see the same distances, so their scores and masks agree at every check."""
    _, optimizer, _, opt_state, checked = run_both(50, score_half_distance=0.25)
    assert checked == 2
    linen_optg = optg_jax.get_optg_state(opt_state)
    nnx_optg = optg_jax.get_optg_state(nnx.as_pure(optimizer.opt_state))
    assert 0.0 < float(linen_optg.distance)
    np.testing.assert_allclose(float(nnx_optg.distance), float(linen_optg.distance), rtol=1e-4)

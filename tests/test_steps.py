"""`optg_jax.train.steps` as a module: the train and eval steps on a tiny model and batch against
an independent computation, sparse and dense; their jitted forms; the optimizer a config gives."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax
from optg_jax.train import steps
from tests.test_train import imagenet_test_config

NUM_CLASSES = 3
LR = 0.1


class Tiny(nn.Module):
    """BatchNorm (momentum 0.9) over 4 features, then a bias-free dense layer to 3 classes."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        return nn.Dense(NUM_CLASSES, use_bias=False)(x)


def batch():
    x = np.array(
        [
            [1.0, -2.0, 0.5, 3.0],
            [0.0, 1.0, -1.0, 2.0],
            [2.0, 0.5, 1.5, -1.0],
            [-1.0, 0.0, 2.0, 1.0],
        ],
        np.float32,
    )
    return {"image": jnp.asarray(x), "label": jnp.asarray([0, 2, 1, 2], jnp.int32)}


def make_tx(sparse):
    sgd = optax.sgd(LR)
    if not sparse:
        return sgd
    # Sparse from the first step: 6 of the 12 kernel weights kept (by position, scores all 0).
    pruning = optg_jax.optg_optax(0.5, 100, LR, schedule="constant", mask_update_every=1000)
    return optax.chain(pruning, sgd)


def initial_state(sparse):
    model, tx = Tiny(), make_tx(sparse)
    state = steps.create_train_state(jax.random.key(0), model, tx, (4,))
    return model, tx, state


def independent_step(state, tx, sparse, label_smoothing=0.0):
    """The train step written out with plain jnp: BatchNorm on the batch's own statistics
    (biased variance), the dense layer on `W * M`, softmax cross-entropy, gradient w.r.t. the
    masked weights, then the optimizer on the dense weights."""
    b = batch()
    x, y = b["image"], b["label"]
    masks = optg_jax.get_masks(state.opt_state) if sparse else None
    mean, var = x.mean(0), x.var(0)

    def loss_fn(p):
        bn = p["BatchNorm_0"]
        h = (x - mean) / jnp.sqrt(var + 1e-5) * bn["scale"] + bn["bias"]
        logits = h @ p["Dense_0"]["kernel"]
        targets = jax.nn.one_hot(y, NUM_CLASSES)
        targets = targets * (1 - label_smoothing) + label_smoothing / NUM_CLASSES
        return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1)), logits

    masked = dict(state.params)
    if sparse:
        kernel = state.params["Dense_0"]["kernel"] * masks["Dense_0"]["kernel"]
        masked["Dense_0"] = {"kernel": kernel}
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(masked)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats = {"BatchNorm_0": {"mean": 0.1 * mean, "var": 0.9 * 1.0 + 0.1 * var}}
    return {
        "loss": float(loss),
        "accuracy": float(np.mean(np.argmax(logits, -1) == np.asarray(y))),
        "grad_norm": float(optax.global_norm(grads)),
        "params": params,
        "batch_stats": batch_stats,
        "opt_state": opt_state,
    }


def assert_trees_close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_train_step_matches_an_independent_computation(sparse, label_smoothing):
    model, tx, state = initial_state(sparse)
    want = independent_step(state, tx, sparse, label_smoothing)
    new, metrics = steps.train_step(
        state,
        batch(),
        model=model,
        tx=tx,
        num_classes=NUM_CLASSES,
        label_smoothing=label_smoothing,
        sparse=sparse,
    )
    assert int(new.step) == 1
    for key in ("loss", "accuracy", "grad_norm"):
        assert float(metrics[key]) == pytest.approx(want[key], rel=1e-5), key
    assert_trees_close(new.params, want["params"], rtol=1e-5, atol=1e-6)
    assert_trees_close(new.batch_stats, want["batch_stats"], rtol=1e-5, atol=1e-6)
    if sparse:
        optg_state = optg_jax.get_optg_state(new.opt_state)
        assert set(metrics) == {"loss", "accuracy", "grad_norm", "sparsity", "score_lr"}
        assert float(metrics["sparsity"]) == float(optg_state.sparsity) == 0.5
        assert float(metrics["score_lr"]) == float(optg_state.score_lr)
        assert int(optg_jax.get_masks(new.opt_state)["Dense_0"]["kernel"].sum()) == 6
        # Removed weights get no weight gradient (`G * M`): plain SGD leaves them as they were.
        mask = np.asarray(optg_jax.get_masks(state.opt_state)["Dense_0"]["kernel"], bool)
        np.testing.assert_array_equal(
            np.asarray(new.params["Dense_0"]["kernel"])[~mask],
            np.asarray(state.params["Dense_0"]["kernel"])[~mask],
        )
    else:
        assert set(metrics) == {"loss", "accuracy", "grad_norm"}


def test_dense_step_by_hand():
    """Without BatchNorm's gradient in the way: the dense layer's SGD step, written in NumPy."""
    model, tx, state = initial_state(False)
    b = batch()
    x, y = np.asarray(b["image"], np.float64), np.asarray(b["label"])
    h = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)  # BatchNorm at scale 1, bias 0.
    w = np.asarray(state.params["Dense_0"]["kernel"], np.float64)
    logits = h @ w
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(4), y]))
    grad_w = h.T @ (p - np.eye(NUM_CLASSES)[y]) / 4
    new, metrics = steps.train_step(
        state, b, model=model, tx=tx, num_classes=NUM_CLASSES, label_smoothing=0.0, sparse=False
    )
    assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(new.params["Dense_0"]["kernel"], w - LR * grad_w, rtol=1e-4)
    np.testing.assert_allclose(new.batch_stats["BatchNorm_0"]["mean"], 0.1 * x.mean(0), rtol=1e-5)


def eval_batch():
    b = batch()
    # The last row is padding: its label and image must not count.
    return {**b, "mask": jnp.asarray([1.0, 1.0, 1.0, 0.0])}


@pytest.mark.parametrize("sparse", [False, True])
def test_eval_step_sums_over_the_real_rows(sparse):
    model, _, state = initial_state(sparse)
    b = eval_batch()
    sums = steps.eval_step(state, b, model=model, num_classes=NUM_CLASSES, sparse=sparse)
    variables = steps.model_variables(
        steps.masked_params(state.params, state.opt_state, sparse), state.batch_stats
    )
    logits = np.asarray(model.apply(variables, b["image"], train=False), np.float64)[:3]
    labels = np.asarray(b["label"])[:3]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(sums["count"]) == 3.0
    assert float(sums["correct1"]) == float(np.sum(np.argmax(logits, -1) == labels))
    assert float(sums["correct5"]) == 3.0  # Top-5 of 3 classes is top-3: always right.
    assert float(sums["loss"]) == pytest.approx(-log_p[np.arange(3), labels].sum(), rel=1e-5)


def test_masked_params_applies_the_masks_of_a_sparse_run_only():
    _, _, state = initial_state(True)
    masked = steps.masked_params(state.params, state.opt_state, True)
    mask = optg_jax.get_masks(state.opt_state)["Dense_0"]["kernel"]
    np.testing.assert_array_equal(
        masked["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"] * mask
    )
    assert steps.masked_params(state.params, state.opt_state, False) is state.params
    assert steps.model_variables({"a": 1}, {}) == {"params": {"a": 1}}


@pytest.mark.parametrize("sparse", [False, True])
def test_jitted_steps_give_the_plain_steps_numbers_and_donate_the_state(sparse):
    model, tx, state = initial_state(sparse)
    plain, plain_metrics = steps.train_step(
        state, batch(), model=model, tx=tx, num_classes=NUM_CLASSES, label_smoothing=0.0,
        sparse=sparse,
    )  # fmt: skip
    plain_sums = steps.eval_step(
        plain, eval_batch(), model=model, num_classes=NUM_CLASSES, sparse=sparse
    )
    train = steps.jit_train_step(model, tx, NUM_CLASSES, sparse=sparse)
    evaluate = steps.jit_eval_step(model, NUM_CLASSES, sparse=sparse)
    _, _, donated = initial_state(sparse)
    new, metrics = train(donated, batch())
    assert donated.params["Dense_0"]["kernel"].is_deleted()
    assert_trees_close(new.params, plain.params, rtol=1e-5, atol=1e-6)
    assert_trees_close(metrics, plain_metrics, rtol=1e-5)
    assert_trees_close(evaluate(new, eval_batch()), plain_sums, rtol=1e-5)
    assert not new.params["Dense_0"]["kernel"].is_deleted()  # The eval step donates nothing.


def test_jitted_steps_over_a_mesh_keep_the_shardings():
    model, tx, state = initial_state(True)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    shardings = steps.Shardings(state=replicated, batch=rows, metrics=replicated)
    train = steps.jit_train_step(model, tx, NUM_CLASSES, sparse=True, shardings=shardings)
    evaluate = steps.jit_eval_step(model, NUM_CLASSES, sparse=True, shardings=shardings)
    new, metrics = train(state, batch())
    assert new.params["Dense_0"]["kernel"].sharding == replicated
    assert metrics["loss"].sharding == replicated
    assert evaluate(new, eval_batch())["count"].sharding == replicated


def test_make_optimizer_has_an_optg_link_only_when_sparse():
    config = imagenet_test_config()
    params = {"dense": {"kernel": jnp.ones((4, 3))}}
    sparse = steps.make_optimizer(config, 6, 3, lambda step: 0.1, sparse=True).init(params)
    assert optg_jax.get_masks(sparse)["dense"]["kernel"].shape == (4, 3)
    dense = steps.make_optimizer(config, 6, 3, lambda step: 0.1, sparse=False).init(params)
    with pytest.raises(ValueError, match="no optg_optax state"):
        optg_jax.get_optg_state(dense)


def test_config_fields_reach_optg_optax(monkeypatch):
    """make_optimizer builds the OptG link from a settings record (`optg_transformation`)."""
    seen = {}
    original = optg_jax.optg_transformation

    def spy(settings):
        seen.update(dataclasses.asdict(settings))
        return original(settings)

    monkeypatch.setattr(optg_jax, "optg_transformation", spy)
    config = imagenet_test_config(
        score_lr_floor=0.25,
        update_masks_after_pruning=False,
        score_momentum=0.5,
        mask_update_every=2,
        score_start=3.0,
        score_half_life=0.25,
        score_half_distance=0.5,
        uncertainty_bonus=1.5,  # (the paper's recipe has none; the bonus at start needs one)
        uncertainty_bonus_at_start=2.0,
    )
    config.reference_schedules = False  # It would set the refresh interval itself.
    steps.make_optimizer(config, 6, 3, lambda step: 0.1, sparse=True)
    assert (seen["score_lr_floor"], seen["update_masks_after_pruning"]) == (0.25, False)
    assert (seen["score_momentum"], seen["mask_update_every"]) == (0.5, 2)
    assert (seen["score_start"], seen["score_half_life"]) == (3.0, 0.25)
    assert (seen["score_half_distance"], seen["uncertainty_bonus"]) == (0.5, 1.5)
    assert seen["uncertainty_bonus_at_start"] == 2.0
    # With reference_schedules: the reference's sigmoid per epoch (0.9 sigmoid(e - 2) for 4
    # epochs of 3 steps), exactly 0.9 at the end, a refresh every epoch until the end.
    seen.clear()
    steps.make_optimizer(imagenet_test_config(), 12, 3, lambda step: 0.1, sparse=True)
    assert (seen["mask_update_every"], seen["pruning_end_step"]) == (3, 12)
    assert seen["update_masks_after_pruning"] is True
    want = [0.9 / (1 + math.exp(-(step // 3 - 2))) for step in range(12)] + [0.9]
    assert [float(seen["schedule"](step)) for step in range(13)] == pytest.approx(want, rel=1e-6)


class TinyConv(nn.Module):
    """A 3x3 convolution to 4 channels, BatchNorm, ReLU, global mean, 10 logits."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(10)(nn.relu(x).mean(axis=(1, 2)))


def test_uint8_pixels_normalised_in_the_step_give_the_host_normalised_logits():
    """The same batch both ways: uint8 pixels normalised inside the jitted steps (what the
    pipelines send) and float32 normalised on the host (`data.Options(normalize=True)`, what
    they sent before) give the same logits, loss and updated state to float32 rounding."""
    from optg_jax.train import data

    spec = data.dataset_spec("cifar10")
    norm = steps.Normalization.create(spec.mean, spec.std)
    model = TinyConv()
    tx = make_tx(sparse=False)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    labels = jnp.arange(8, dtype=jnp.int32) % 10
    host = data.normalize(pixels, spec)
    assert host.dtype == np.float32 and pixels.nbytes * 4 == host.nbytes

    # The "rbg" key: an eager init compiles in a second where threefry takes ~15 s.
    state = steps.create_train_state(jax.random.key(1, impl="rbg"), model, tx, (8, 8, 3))
    variables = steps.model_variables(state.params, state.batch_stats)

    @jax.jit
    def logits(images, normalization):
        return model.apply(variables, steps.model_input(images, normalization), train=False)

    on_device = np.asarray(logits(jnp.asarray(pixels), norm))
    on_host = np.asarray(logits(jnp.asarray(host), norm))  # float images pass through as given.
    np.testing.assert_allclose(on_device, on_host, rtol=1e-5, atol=1e-5)
    # Pixels not normalised give other logits: the comparison can tell the two apart.
    raw = np.asarray(logits(jnp.asarray(pixels), None))
    assert np.abs(raw - on_host).max() > 100 * np.abs(on_device - on_host).max() + 1e-3

    train = steps.jit_train_step(model, tx, 10, sparse=False, normalization=norm)
    evaluate = steps.jit_eval_step(model, 10, sparse=False, normalization=norm)
    out = {}
    for name, images in (("device", pixels), ("host", host)):
        copy = jax.tree.map(jnp.copy, state)  # The train step donates its state.
        new, metrics = train(copy, {"image": jnp.asarray(images), "label": labels})
        sums = evaluate(new, {"image": jnp.asarray(images), "label": labels, "mask": jnp.ones(8)})
        out[name] = (new.params, metrics, sums)
    assert_trees_close(out["device"][0], out["host"][0], rtol=1e-4, atol=1e-5)
    assert_trees_close(out["device"][1], out["host"][1], rtol=1e-4, atol=1e-6)
    assert_trees_close(out["device"][2], out["host"][2], rtol=1e-4, atol=1e-5)

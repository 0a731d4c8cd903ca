"""optg_optax against hand-computed values: straight-through gradients, the supermask optimizer,
criteria, exact final sparsity, composition with other optax transforms, argument errors."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax
from optg_jax import optg, schedules
from optg_jax.masking import rank_at_least_2


def toy_params():
    w1 = np.array(
        [[0.5, -1.0, 2.0, 0.25], [1.5, 0.75, -0.5, -2.0], [-1.25, 1.0, 0.1, 0.3]], np.float32
    )
    w2 = np.array([[1.0, -0.5], [0.2, 0.4], [-0.3, 0.9], [0.6, -1.1]], np.float32)
    return {
        "l1": {"kernel": jnp.asarray(w1), "bias": jnp.zeros(4)},
        "l2": {"kernel": jnp.asarray(w2), "bias": jnp.zeros(2)},
    }


X = np.array([[1.0, 2.0, -1.0], [0.5, -0.5, 1.5]], np.float32)
T = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)


def toy_loss(params):
    """Two-layer linear model, loss = 0.5 * sum((x W1 + b1) W2 + b2 - t)^2."""
    h = X @ params["l1"]["kernel"] + params["l1"]["bias"]
    y = h @ params["l2"]["kernel"] + params["l2"]["bias"]
    return 0.5 * jnp.sum((y - T) ** 2)


def hand_grads(w1m, w2m):
    """G = dL/d(W*M) for toy_loss, by hand in NumPy."""
    h = X @ w1m
    r = h @ w2m - T
    return X.T @ (r @ w2m.T), h.T @ r


@pytest.mark.parametrize("jit", [False, True])
def test_straight_through_gradients(jit):
    params = toy_params()
    lr = 0.1
    # constant schedule at 50%: masks chosen at init from all-zero scores keep the first
    # 10 of 20 kernel entries (global order: l1 then l2, row-major).
    tx = optg_jax.optg_optax(
        0.5,
        total_steps=100,
        learning_rate=lr,
        criterion="optg",
        schedule="constant",
        mask_update_every=50,
    )
    state = tx.init(params)
    m1 = np.asarray(state.masks["l1"]["kernel"])
    m2 = np.asarray(state.masks["l2"]["kernel"])
    np.testing.assert_array_equal(m1, np.ones((3, 4)) * (np.arange(12).reshape(3, 4) < 10))
    np.testing.assert_array_equal(m2, np.zeros((4, 2)))
    assert state.masks["l1"]["bias"] is None and state.scores["l2"]["bias"] is None

    masked = optg_jax.apply_masks(params, state)
    np.testing.assert_array_equal(masked["l1"]["kernel"], np.asarray(params["l1"]["kernel"]) * m1)
    grads = jax.grad(toy_loss)(masked)
    g1, g2 = hand_grads(
        np.asarray(params["l1"]["kernel"]) * m1, np.asarray(params["l2"]["kernel"]) * m2
    )
    np.testing.assert_allclose(grads["l1"]["kernel"], g1, rtol=1e-5, atol=1e-6)

    update = jax.jit(tx.update) if jit else tx.update
    out, new_state = update(grads, state, params)
    # Weight gradient passed on: G * M; biases untouched.
    np.testing.assert_allclose(out["l1"]["kernel"], g1 * m1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["l2"]["kernel"], g2 * m2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["l1"]["bias"], grads["l1"]["bias"])
    # Score change: -lr * (G * W) for every weight, kept or removed (p/P = 1 for constant).
    np.testing.assert_allclose(
        new_state.scores["l1"]["kernel"],
        -lr * g1 * np.asarray(params["l1"]["kernel"]),
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        new_state.scores["l2"]["kernel"],
        -lr * g2 * np.asarray(params["l2"]["kernel"]),
        rtol=1e-5,
        atol=1e-7,
    )
    assert np.abs(np.asarray(new_state.scores["l2"]["kernel"])).min() > 0  # removed weights move
    assert int(new_state.count) == 1


def test_supermask_optimizer_score_lr_and_pytorch_momentum():
    params = {"w": jnp.asarray(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))}
    total, every, target = 40, 4, 0.8
    lr_fn = optax.cosine_decay_schedule(0.5, total)
    tx = optg_jax.optg_optax(
        target,
        total,
        lr_fn,
        criterion="optg",
        schedule="sigmoid",
        mask_update_every=every,
        recipe="paper",
        beta=1.0,
        is_masked=rank_at_least_2,  # params named "w", not "kernel"
    )
    state = tx.init(params)
    sched = schedules.sigmoid_schedule(target, 0, total, 1.0, every)
    rng = np.random.default_rng(0)
    v = np.zeros((3, 4), np.float32)
    s = np.zeros((3, 4), np.float32)
    w = np.asarray(params["w"])
    update = jax.jit(tx.update)
    for t in range(12):
        g = rng.normal(size=(3, 4)).astype(np.float32)
        _, state = update({"w": jnp.asarray(g)}, state, params)
        # Paper: score lr = lr(t) * p(t) / P with the normalised sigmoid, by hand:
        epochs, e = total / every, t / every
        low = 1 / (1 + math.exp(epochs / 2))
        p_over_P = (1 / (1 + math.exp(-(e - epochs / 2))) - low) / (1 - 2 * low)
        lr_t = 0.5 * 0.5 * (1 + math.cos(math.pi * t / total))
        assert float(state.score_lr) == pytest.approx(lr_t * p_over_P, rel=1e-4, abs=1e-9)
        assert float(state.score_lr) == pytest.approx(
            float(lr_fn(t) * sched(t) / target), rel=1e-5, abs=1e-9
        )
        # PyTorch momentum: v <- 0.9 v + g ; s <- s - lr v (the mask does not enter G * W).
        v = 0.9 * v + g * w
        s = s - np.float32(state.score_lr) * v
        np.testing.assert_allclose(state.momentum["w"], v, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.scores["w"], s, rtol=1e-4, atol=1e-7)
    # At t = 0 the score lr is exactly 0 (p(0) = 0).


def test_supermask_criterion_uses_plain_lr():
    params = {"w": jnp.ones((2, 2))}
    tx = optg_jax.optg_optax(
        0.5, 10, 0.3, criterion="supermask", mask_update_every=2, is_masked=rank_at_least_2
    )
    state = tx.init(params)
    _, state = tx.update({"w": jnp.full((2, 2), 2.0)}, state, params)
    assert float(state.score_lr) == pytest.approx(0.3)
    np.testing.assert_allclose(state.scores["w"], -0.3 * 2.0 * np.ones((2, 2)), rtol=1e-6)


def test_score_lr_floor():
    params = {"w": jnp.ones((2, 2))}
    tx = optg_jax.optg_optax(
        0.5,
        10,
        1.0,
        criterion="optg",
        mask_update_every=2,
        score_lr_floor=0.25,
        is_masked=rank_at_least_2,
    )
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
    assert float(state.score_lr) == pytest.approx(0.25)  # p(0) = 0: only the floor remains


def test_taylor_is_mean_since_last_refresh_and_magnitude_keeps_largest():
    w = jnp.asarray(np.array([[1.0, -2.0], [3.0, -4.0]], np.float32))
    params = {"w": w}
    tx = optg_jax.optg_optax(
        0.5,
        100,
        0.1,
        criterion="taylor",
        schedule="one_shot",
        mask_update_every=3,
        pruning_start_step=3,
        is_masked=rank_at_least_2,
    )
    state = tx.init(params)
    grads = [
        np.array([[1.0, 1.0], [0.1, 0.1]], np.float32),
        np.array([[3.0, 0.5], [0.1, 0.2]], np.float32),
        np.array([[2.0, 0.0], [0.4, 0.0]], np.float32),
    ]
    for g in grads:
        _, state = tx.update({"w": jnp.asarray(g)}, state, params)
    want = np.mean([np.abs(g * np.asarray(w)) for g in grads], axis=0)
    np.testing.assert_allclose(state.scores["w"], want, rtol=1e-6)
    np.testing.assert_array_equal(state.masks["w"], np.ones((2, 2)))
    # The update with count 3 (one-shot to 50%) first re-selects from the mean over steps 0-2,
    # mean |G W| = [[2, 1], [0.6, 0.8]], keeping the first row; then the mean restarts with this
    # step's |G W M_old| (the forward pass of this step still used the old, all-ones masks).
    g = np.ones((2, 2), np.float32)
    _, state = tx.update({"w": jnp.asarray(g)}, state, params)
    np.testing.assert_array_equal(state.masks["w"], [[1, 1], [0, 0]])
    np.testing.assert_allclose(state.scores["w"], [[1.0, 2.0], [3.0, 4.0]], rtol=1e-6)
    assert int(state.last_refresh) == 3
    _, state = tx.update({"w": jnp.asarray(g)}, state, params)
    np.testing.assert_allclose(state.scores["w"], [[1.0, 2.0], [1.5, 2.0]], rtol=1e-6)

    tx = optg_jax.optg_optax(
        0.5, 10, 0.1, criterion="magnitude", schedule="constant", is_masked=rank_at_least_2
    )
    state = tx.init(params)
    np.testing.assert_array_equal(state.masks["w"], [[0, 0], [1, 1]])
    assert state.scores["w"] is None and state.momentum["w"] is None


@pytest.mark.parametrize("criterion", optg_jax.CRITERIA)
@pytest.mark.parametrize("allocation", optg_jax.ALLOCATIONS)
def test_final_sparsity_exact(criterion, allocation):
    if allocation == "sensitivity" and optg_jax.default_uncertainty_bonus(criterion) == 0:
        # The bonus's noise shares the count out: criteria without one are refused.
        with pytest.raises(ValueError, match="allocation 'sensitivity' needs the uncertainty"):
            optg_jax.optg_optax(0.95, 30, 0.1, criterion=criterion, allocation=allocation)
        return
    params = {
        "a": jnp.asarray(np.random.default_rng(1).normal(size=(37, 11)), jnp.float32),
        "b": jnp.asarray(np.random.default_rng(2).normal(size=(5, 3, 3, 4)), jnp.float32),
        "bias": jnp.zeros(4),
    }
    total, target = 30, 0.95
    tx = optax.chain(
        optg_jax.optg_optax(
            target,
            total,
            0.1,
            criterion=criterion,
            mask_update_every=7,
            allocation=allocation,
            is_masked=rank_at_least_2,  # "a", "b": rank >= 2 leaves that are not named kernel
        ),
        optax.sgd(0.1),
    )
    state = tx.init(params)
    step = jax.jit(tx.update)
    key = jax.random.key(0)
    for t in range(total):
        key, sub = jax.random.split(key)
        grads = jax.tree.map(lambda p: jax.random.normal(sub, p.shape), params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
    summary = optg_jax.sparsity_summary(state)
    n = 37 * 11 + 5 * 3 * 3 * 4
    if allocation in ("global", "sensitivity"):
        assert summary["num_kept"] == math.floor(n * (1 - target)) == 29
    else:
        assert summary["num_kept"] == math.floor(407 * 0.05) + math.floor(180 * 0.05)
    assert summary["num_masked"] == n and summary["target"] == pytest.approx(0.95)
    assert set(summary["layers"]) == {"a", "b"}


def test_sparsity_zero_keeps_everything():
    params = toy_params()
    tx = optg_jax.optg_optax(0.0, 5, 0.1, mask_update_every=1)
    state = tx.init(params)
    for _ in range(5):
        _, state = tx.update(jax.grad(toy_loss)(optg_jax.apply_masks(params, state)), state, params)
    assert optg_jax.sparsity_summary(state)["global"] == 0.0


def test_composition_clip_before_adamw_after_and_wrappers():
    params = toy_params()
    total = 60
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optg_jax.optg_optax(0.5, total, 0.05, mask_update_every=10, mask_dtype=jnp.bool_),
        optax.adamw(0.05, weight_decay=1e-4),
    )
    state = tx.init(params)
    assert optg_jax.get_masks(state)["l1"]["kernel"].dtype == jnp.bool_

    @jax.jit
    def train_step(params, state):
        loss, grads = jax.value_and_grad(toy_loss)(optg_jax.apply_masks(params, state))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(total):
        params, state, loss = train_step(params, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    summary = optg_jax.sparsity_summary(state)
    assert summary["num_kept"] == 10 and summary["step"] == total
    # Found through wrappers too.
    wrapped = optax.MultiSteps(tx, every_k_schedule=2)
    assert isinstance(optg_jax.get_optg_state(wrapped.init(params)), optg_jax.OptGState)
    with pytest.raises(ValueError, match="no optg_optax state"):
        optg_jax.get_masks(optax.sgd(0.1).init(params))


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(target_sparsity=1.0), "target_sparsity"),
        (dict(target_sparsity=-0.01), "target_sparsity"),
        (dict(total_steps=0), "total_steps"),
        (dict(total_steps=-5), "total_steps"),
        (dict(criterion="snip"), "criterion"),
        (dict(schedule="linear"), "schedule"),
        (dict(mask_update_every=0), "mask_update_every"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(allocation="per-layer"), "allocation"),
        (dict(pruning_end_step=200), "pruning_end_step"),
        (dict(beta=0), "beta"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, word):
    args = dict(target_sparsity=0.9, total_steps=100, learning_rate=0.1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=word) as info:
        optg_jax.optg_optax(**args)
    bad = list(kwargs.values())[0]
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)


def test_custom_predicate():
    params = toy_params()
    tx = optg_jax.optg_optax(
        0.5,
        10,
        0.1,
        is_masked=lambda path, leaf: (
            jax.tree_util.keystr(path, simple=True, separator="/") == "l1/kernel"
        ),
    )
    state = tx.init(params)
    assert state.masks["l2"]["kernel"] is None and state.masks["l1"]["kernel"].shape == (3, 4)


# ----------------------------------------------------------------------------------- recipes


def _resolved(total_steps, recipe="default", **kwargs):
    """The recipe-dependent fields `optg_optax` resolves, as a dict."""
    settings = optg_jax.OptGSettings(0.5, total_steps, 0.1, recipe=recipe, **kwargs).resolved()
    keys = ("schedule", "mask_update_every", "steps_per_epoch", "pruning_start_step")
    keys += ("pruning_end_step", "score_momentum", "update_masks_after_pruning")
    return {k: getattr(settings, k) for k in keys}


def test_recipe_settings_by_hand():
    # Default: the ramp ends at round(2/3 * 300) = 200, refreshes every 200 // 25 = 8 steps.
    assert _resolved(300) == {
        "schedule": "cubic",
        "mask_update_every": 8,
        "steps_per_epoch": 3,
        "pruning_start_step": 0,
        "pruning_end_step": 200,
        "score_momentum": 0.99,
        "update_masks_after_pruning": False,
    }
    # With a start step the ramp is two-thirds of what is left: 60 + round(2/3 * 240) = 220.
    s = _resolved(300, pruning_start_step=60, steps_per_epoch=30)
    assert (s["pruning_end_step"], s["mask_update_every"], s["steps_per_epoch"]) == (220, 6, 30)
    # An explicit refresh interval is kept and is also the sigmoid's epoch.
    s = _resolved(4690, mask_update_every=469, schedule="sigmoid")
    assert (s["mask_update_every"], s["steps_per_epoch"], s["pruning_end_step"]) == (469, 469, 3127)
    assert s["schedule"] == "sigmoid"
    # The paper: sigmoid over the whole run, one refresh per epoch, momentum 0.9, no freezing.
    assert _resolved(300, "paper", steps_per_epoch=30) == {
        "schedule": "sigmoid",
        "mask_update_every": 30,
        "steps_per_epoch": 30,
        "pruning_start_step": 0,
        "pruning_end_step": 300,
        "score_momentum": 0.9,
        "update_masks_after_pruning": True,
    }
    assert _resolved(250, "paper")["mask_update_every"] == 2  # 1% of the run
    with pytest.raises(ValueError, match="recipe must be one of default, paper, got 'fast'"):
        _resolved(300, "fast")
    with pytest.raises(ValueError, match="recipe must be one of"):
        optg_jax.optg_optax(0.5, 10, 0.1, recipe="fast")


def test_settings_record_is_resolved_once_and_summarised():
    settings = optg_jax.OptGSettings(0.9, 300, 0.1, criterion="taylor").resolved()
    assert settings.resolved() == settings  # idempotent
    assert settings.is_masked is optg_jax.default_is_masked
    summary = settings.to_dict()
    assert summary["criterion"] == "taylor" and summary["schedule"] == "cubic"
    assert (summary["pruning_end_step"], summary["mask_update_every"]) == (200, 8)
    assert "learning_rate" not in summary and "is_masked" not in summary
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.total_steps = 10


def _mask_history(tx, steps, params):
    """Masks (flattened, concatenated) after every update of a run on random gradients."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for t in range(steps):
        grads = jax.tree.map(
            lambda p, t=t: jnp.asarray(np.random.default_rng(t).normal(size=p.shape), jnp.float32),
            params,
        )
        _, state = update(grads, state, params)
        masks = optg_jax.get_masks(state)
        history.append(np.concatenate([np.ravel(m) for m in jax.tree.leaves(masks)]))
    return np.stack(history)


def test_default_recipe_ramps_cubically_and_freezes_masks_after_the_ramp():
    params = {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(40, 50)), jnp.float32)}
    total = 300  # ramp ends at 200; refresh every 200 // 25 = 8 steps
    history = _mask_history(optg_jax.optg_optax(0.9, total, 0.1), total, params)
    changed = [t for t in range(1, total) if (history[t] != history[t - 1]).any()]
    # Update t re-selects at its start; it is the (t+1)-th update, history index t.
    assert changed[0] == 8 and all(t % 8 == 0 for t in changed)
    assert changed[-1] == 200 and max(changed) == 200  # frozen from the end of the ramp on
    kept = history.sum(axis=1)
    n = 2000
    for t in (8, 96, 152):  # sparsity p(t) = 0.9 * (1 - (1 - t/200)^3) at a refresh
        expected = math.floor(n * (1 - 0.9 * (1 - (1 - t / 200) ** 3)) + 1e-6)
        assert abs(kept[t] - expected) <= 1, (t, kept[t], expected)
    assert kept[-1] == 200  # exactly 10% of 2000


def test_default_recipe_score_momentum_is_0_99():
    params = toy_params()
    tx = optg_jax.optg_optax(0.5, 30, 0.1, criterion="supermask")
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    for _ in range(2):
        _, state = tx.update(g, state, params)
    w = np.asarray(params["l1"]["kernel"])
    # v1 = g*w, v2 = 0.99 v1 + g*w; s = -0.1 (v1 + v2) (no mask change at steps 0 and 1)
    np.testing.assert_allclose(
        np.asarray(state.scores["l1"]["kernel"]), -0.1 * (w + 1.99 * w), rtol=1e-6
    )


def test_paper_recipe_keeps_refreshing_after_the_ramp_and_ends_at_the_run_end():
    params = {"kernel": jnp.asarray(np.random.default_rng(1).normal(size=(20, 30)), jnp.float32)}
    tx = optg_jax.optg_optax(
        0.8, 60, 0.1, recipe="paper", mask_update_every=10, pruning_end_step=30
    )
    history = _mask_history(tx, 60, params)
    changed = [t for t in range(1, 60) if (history[t] != history[t - 1]).any()]
    assert any(t > 30 for t in changed)  # re-selected after the ramp (scores keep moving)
    assert all(t % 10 == 0 or t == 59 for t in changed)


# -------------------------------------------------------------------- uncertainty bonus


def _refresh_every_two_steps_tx(**options):
    """The bonus tests' link: P = 0.5 of 10 steps at lr 0.1, constant sparsity (the score lr is
    0.1), masks re-selected every 2 steps, score momentum 0 (a step's G * W reaches the score
    once), every leaf masked, the bonus `kappa` alone (no extra bonus at the start);
    `options` add to or override these."""
    settings = dict(
        uncertainty_bonus_at_start=0.0,
        schedule="constant",
        mask_update_every=2,
        score_momentum=0.0,
        is_masked=lambda path, leaf: True,
    )
    return optg_jax.optg_optax(0.5, 10, 0.1, **{**settings, **options})


@pytest.mark.parametrize("kappa, kept", [(0.0, [1, 1, 0, 0]), (1.0, [0, 1, 1, 0])])
def test_uncertainty_bonus_ranks_by_score_plus_standard_errors(kappa, kept):
    # lr 0.1, constant p = P: the score lr is 0.1; momentum 0, so a step's G * W reaches the
    # score once. Two steps, then the refresh at count 2.
    # S = -0.1 (G0 + G1) W = [0, 0, 0, -0.02]; Q = 0.01 (G0^2 + G1^2) = [0, 0.02, 0.02, 0.0034].
    # kappa 0: S ties at 0 for entries 0-2, the first two by position are kept.
    # kappa 1: S + sqrt(Q) = [0, 0.1414, 0.1414, 0.0383]: entries 1 and 2 are kept.
    params = {"w": jnp.ones(4)}
    tx = _refresh_every_two_steps_tx(uncertainty_bonus=kappa)
    state = tx.init(params)
    for g in ([0.0, 1.0, -1.0, 0.5], [0.0, -1.0, 1.0, -0.3], [0.0, 0.0, 0.0, 0.0]):
        _, state = tx.update({"w": jnp.asarray(g)}, state, params)
    np.testing.assert_array_equal(state.masks["w"], kept)
    if kappa:
        np.testing.assert_allclose(
            state.score_noise["w"], 0.01 * np.array([0.0, 2.0, 2.0, 0.34]), rtol=1e-6
        )
    else:
        assert state.score_noise["w"] is None


def test_sensitivity_allocation_shares_by_noise_and_picks_by_rank():
    # lr 0.1, constant p = P = 0.5 (4 of 8 kept), momentum 0, kappa 1; weights all 1, two
    # steps of the same gradient, then the refresh at count 2. Per entry S = -0.2 G and
    # sqrt(Q) = sqrt(0.02) |G| = 0.1414 |G|:
    #   a: G = [2, -0.5, 0, 0]   -> S = [-0.4, 0.1, 0, 0],  sqrt(Q) = [0.2828, 0.0707, 0, 0]
    #   b: G = [1, 1, 1, 0.5]    -> S = [-0.2, -0.2, -0.2, -0.1], sqrt(Q) = [0.1414 x3, 0.0707]
    # rank S + sqrt(Q): a = [-0.117, 0.171, 0, 0], b = [-0.059 x3, -0.029].
    # global: the 4 highest ranks are a1, a2, a3, b3.
    # sensitivity: the 4 highest sqrt(Q) are a0, b0, b1, b2, so a keeps 1 and b keeps 3;
    # a keeps its best rank (a1), b its three best (b3, then b0 and b1 by position).
    params = {"a": jnp.ones(4), "b": jnp.ones(4)}
    grads = {"a": jnp.asarray([2.0, -0.5, 0.0, 0.0]), "b": jnp.asarray([1.0, 1.0, 1.0, 0.5])}
    expected = {
        "global": ([0, 1, 1, 1], [0, 0, 0, 1]),
        "sensitivity": ([0, 1, 0, 0], [1, 1, 0, 1]),
    }
    for allocation, (kept_a, kept_b) in expected.items():
        tx = _refresh_every_two_steps_tx(uncertainty_bonus=1.0, allocation=allocation)
        state = tx.init(params)
        for _ in range(3):
            _, state = jax.jit(tx.update)(grads, state, params)
        # The third update refreshed first (from two steps), then took its own step.
        np.testing.assert_allclose(state.scores["b"], [-0.3, -0.3, -0.3, -0.15], rtol=1e-6)
        np.testing.assert_array_equal(state.masks["a"], kept_a, err_msg=allocation)
        np.testing.assert_array_equal(state.masks["b"], kept_b, err_msg=allocation)


@pytest.mark.parametrize(
    "kappa0, start_value, half_distance, kept",
    [
        (0.0, 1.0, 0.25, [0, 1, 0, 1]),  # kappa 2 throughout
        (2.0, 1.0, 0.25, [0, 1, 1, 0]),  # weights unmoved: kappa 2 + 2 = 4
        (2.0, 0.8, 0.25, [0, 1, 0, 1]),  # moved a quarter: kappa 2 + 2 * 0.5 = 3
        (2.0, 0.8, 1.0, [0, 1, 1, 0]),  # the same move, delta 1: kappa 2 + 2 * 2^-0.25 = 3.68
    ],
)
def test_uncertainty_bonus_at_start_fades_as_the_weights_move(
    kappa0, start_value, half_distance, kept
):
    # lr 0.1, constant p = P = 0.5 (2 of 4 kept), momentum 0; the weights are 1 at every step,
    # `init` saw `start_value` (the relative distance moved is |1 - start| / start: 0 or 0.25).
    # Two steps, then the refresh at count 2: S = -0.1 (G0 + G1) and sqrt(Q) = 0.1 |G| sqrt(2):
    #   G = [0, 1 / -1, 0.5, -0.2]: S = [0, 0, -0.1, 0.04], sqrt(Q) = [0, 0.1414, 0.0707, 0.0283].
    # Entry 1 ranks first for any kappa >= 2 and entry 0 last; entry 2 beats entry 3 when
    # -0.1 + 0.0707 kappa > 0.04 + 0.0283 kappa, i.e. kappa > 3.30.
    # (The forgetting by distance halves the score before the first step only, when it is 0.)
    params = {"w": jnp.ones(4)}
    tx = _refresh_every_two_steps_tx(
        uncertainty_bonus=2.0,
        score_half_distance=half_distance,
        uncertainty_bonus_at_start=kappa0,
    )
    state = tx.init({"w": jnp.full(4, start_value)})
    steps = ([0.0, 1.0, 0.5, -0.2], [0.0, -1.0, 0.5, -0.2], [0.0, 0.0, 0.0, 0.0])
    for g in steps:
        _, state = jax.jit(tx.update)({"w": jnp.asarray(g)}, state, params)
    np.testing.assert_allclose(state.distance, abs(1.0 - start_value) / start_value, rtol=1e-6)
    np.testing.assert_allclose(state.scores["w"], [0.0, 0.0, -0.1, 0.04], atol=1e-7)
    np.testing.assert_array_equal(state.masks["w"], kept)


def test_uncertainty_bonus_at_start_needs_the_bonus_and_the_distance():
    with pytest.raises(ValueError, match="got uncertainty_bonus 0.0, score_half_distance 0.25"):
        optg_jax.optg_optax(0.5, 10, 0.1, uncertainty_bonus=0.0, uncertainty_bonus_at_start=4.0)
    with pytest.raises(ValueError, match="got uncertainty_bonus 4.0, score_half_distance 0.0"):
        optg_jax.optg_optax(0.5, 10, 0.1, score_half_distance=0.0, uncertainty_bonus_at_start=4.0)
    with pytest.raises(ValueError, match="uncertainty_bonus_at_start must be a non-negative"):
        optg_jax.optg_optax(0.5, 10, 0.1, uncertainty_bonus_at_start=-1.0)


def test_a_recipes_bonus_at_start_reaches_optg_only_where_its_bonus_and_distance_are_on(
    monkeypatch,
):
    # A recipe giving 3 (not the default's 4) shows that the value read is the recipe's.
    recipe = optg._RECIPES["default"]._replace(uncertainty_bonus_at_start=3.0)
    monkeypatch.setattr(optg, "_RECIPES", {**optg._RECIPES, "default": recipe})

    def resolved(**kwargs):
        return optg_jax.OptGSettings(0.5, 10, 0.1, **kwargs).resolved().uncertainty_bonus_at_start

    assert resolved() == 3.0
    assert optg_jax.default_uncertainty_bonus_at_start("optg") == 3.0
    assert resolved(uncertainty_bonus_at_start=1.5) == 1.5  # The caller's value wins.
    # Without a bonus or a distance to fade it with, the recipe's value is 0, not an error.
    assert resolved(uncertainty_bonus=0.0) == 0.0
    assert resolved(score_half_distance=0.0) == 0.0
    assert optg_jax.default_uncertainty_bonus_at_start("optg", "default", 0.0, None) == 0.0
    # supermask has a bonus but no distance by default; the baselines have neither.
    assert resolved(criterion="supermask") == 0.0
    assert resolved(criterion="taylor") == 0.0
    assert optg_jax.default_uncertainty_bonus_at_start("optg", "paper") == 0.0
    # A value the caller gives is still checked.
    with pytest.raises(ValueError, match="got uncertainty_bonus 0.0, score_half_distance 0.25"):
        resolved(uncertainty_bonus=0.0, uncertainty_bonus_at_start=3.0)


def test_the_default_recipe_doubles_optgs_bonus_at_start_and_the_paper_leaves_it_off():
    def resolved(**kwargs):
        return optg_jax.OptGSettings(0.5, 10, 0.1, **kwargs).resolved()

    default = resolved()
    assert (default.uncertainty_bonus, default.uncertainty_bonus_at_start) == (4.0, 4.0)
    assert resolved(recipe="paper").uncertainty_bonus_at_start == 0.0
    for criterion in ("supermask", "taylor", "magnitude"):
        assert resolved(criterion=criterion).uncertainty_bonus_at_start == 0.0, criterion
    # One argument back to the bonus of before: kappa throughout.
    assert resolved(uncertainty_bonus_at_start=0.0).uncertainty_bonus_at_start == 0.0


def test_sensitivity_allocation_needs_the_bonus():
    with pytest.raises(ValueError, match="criterion 'taylor' with uncertainty_bonus 0"):
        optg_jax.optg_optax(0.5, 10, 0.1, criterion="taylor", allocation="sensitivity")
    with pytest.raises(ValueError, match="criterion 'optg' with uncertainty_bonus 0.0"):
        optg_jax.optg_optax(0.5, 10, 0.1, uncertainty_bonus=0.0, allocation="sensitivity")


def test_uncertainty_bonus_needs_a_noise_estimate():
    with pytest.raises(ValueError, match="uncertainty_bonus 1.0 needs a criterion with a noise"):
        optg_jax.optg_optax(0.5, 10, 0.1, criterion="taylor", uncertainty_bonus=1.0)
    with pytest.raises(ValueError, match="uncertainty_bonus must be a non-negative number"):
        optg_jax.optg_optax(0.5, 10, 0.1, uncertainty_bonus=-1.0)
    # The recipe's value applies only where it can (taylor gets 0).
    assert optg_jax.OptGSettings(0.5, 10, 0.1, criterion="taylor").resolved().uncertainty_bonus == 0


def test_default_uncertainty_bonus_is_what_resolved_settings_use():
    # The default recipe gives kappa 4 to the criteria with a noise estimate, the paper form 0.
    want = {("optg", "default"): 4.0, ("supermask", "default"): 4.0, ("optg", "paper"): 0.0}
    for criterion in ("optg", "supermask", "taylor", "magnitude", "sr_ste"):
        for recipe in optg_jax.RECIPES:
            got = optg_jax.default_uncertainty_bonus(criterion, recipe)
            assert got == want.get((criterion, recipe), 0.0), (criterion, recipe)
            settings = optg_jax.OptGSettings(0.5, 10, 0.1, criterion=criterion, recipe=recipe)
            assert settings.resolved().uncertainty_bonus == got
    with pytest.raises(ValueError, match="recipe must be one of default, paper, got 'fast'"):
        optg_jax.default_uncertainty_bonus("optg", "fast")


def test_default_score_half_distance_is_what_resolved_settings_use():
    # The default recipe gives delta 0.25 to optg alone; supermask, the others and the paper
    # form keep the plain sum (0); an explicit value wins.
    for criterion in ("optg", "supermask", "taylor", "magnitude", "sr_ste"):
        for recipe in optg_jax.RECIPES:
            got = optg_jax.default_score_half_distance(criterion, recipe)
            assert got == (0.25 if (criterion, recipe) == ("optg", "default") else 0.0)
            settings = optg_jax.OptGSettings(0.5, 10, 0.1, criterion=criterion, recipe=recipe)
            assert settings.resolved().score_half_distance == got, (criterion, recipe)
    custom = optg_jax.OptGSettings(0.5, 10, 0.1).rule._replace(name="mine")
    assert optg_jax.default_score_half_distance(custom) == 0.0
    explicit = optg_jax.OptGSettings(0.5, 10, 0.1, score_half_distance=0.0).resolved()
    assert explicit.score_half_distance == 0.0
    with pytest.raises(ValueError, match="recipe must be one of default, paper, got 'fast'"):
        optg_jax.default_score_half_distance("optg", "fast")


def test_default_optg_forgets_with_distance_as_an_explicit_quarter_does():
    # Left at None, optg_optax keeps the starting weights and forgets by 0.25 of their norm:
    # every state leaf equals the run with score_half_distance=0.25 written out, and the scores
    # differ from the plain sum's (0) once the weights have moved.
    params = toy_params()
    runs = {}
    for name, kwargs in {
        "none": {},
        "quarter": {"score_half_distance": 0.25},
        "zero": {"score_half_distance": 0.0},
    }.items():
        tx = optg_jax.optg_optax(0.5, 20, 0.1, is_masked=rank_at_least_2, **kwargs)
        state, p = tx.init(params), params
        for t in range(6):
            grads = jax.tree.map(lambda x, t=t: jnp.full_like(x, 0.3 * (t + 1)) - x, p)
            updates, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, jax.tree.map(lambda u: -0.5 * u, updates))
        runs[name] = state
    np.testing.assert_array_equal(
        runs["none"].start_weights["l1"]["kernel"], params["l1"]["kernel"]
    )
    assert runs["zero"].start_weights["l1"]["kernel"] is None
    for a, b in zip(jax.tree.leaves(runs["none"]), jax.tree.leaves(runs["quarter"])):
        np.testing.assert_array_equal(a, b)
    assert float(runs["none"].distance) > 0.25
    moved = runs["none"].scores["l1"]["kernel"] - runs["zero"].scores["l1"]["kernel"]
    assert float(jnp.max(jnp.abs(moved))) > 1e-3


# -------------------------------------------------------------------------- score start


def test_score_start_puts_the_starting_weights_magnitude_in_the_scores():
    # score_start c: S_0 = c * W_0^2 / 2 on every masked leaf. With lr 0.1, constant p = P and
    # momentum 0, one step gives S_1 = S_0 - 0.1 * G * W.
    params = {"w": jnp.asarray([[2.0, -1.0], [0.5, -3.0]]), "b": jnp.zeros(2)}
    tx = optg_jax.optg_optax(
        0.5,
        10,
        0.1,
        schedule="constant",
        mask_update_every=5,
        score_momentum=0.0,
        uncertainty_bonus=0.0,
        score_start=3.0,
        is_masked=rank_at_least_2,
    )
    state = tx.init(params)
    np.testing.assert_allclose(state.scores["w"], [[6.0, 1.5], [0.375, 13.5]], rtol=1e-7)
    assert state.scores["b"] is None
    # The initial masks already rank by the start: the two largest |W_0| are kept.
    np.testing.assert_array_equal(state.masks["w"], [[1, 0], [0, 1]])
    g = jnp.asarray([[1.0, 2.0], [-4.0, 0.5]])
    _, state = tx.update({"w": g, "b": jnp.zeros(2)}, state, params)
    # -0.1 * G * W = [[-0.2, 0.2], [0.2, 0.15]]
    np.testing.assert_allclose(state.scores["w"], [[5.8, 1.7], [0.575, 13.65]], rtol=1e-6)


def test_score_start_zero_is_the_paper_form_and_the_default():
    params = toy_params()
    assert optg_jax.OptGSettings(0.9, 10, 0.1).resolved().score_start == 0.0
    for recipe in optg_jax.RECIPES:
        state = optg_jax.optg_optax(0.9, 10, 0.1, recipe=recipe).init(params)
        for s in jax.tree.leaves(state.scores):
            np.testing.assert_array_equal(s, np.zeros_like(s))


def test_score_start_adds_to_a_criterions_own_start():
    rule = optg_jax.OptGSettings(0.5, 10, 0.1).rule._replace(
        init_scores=lambda weights: [jnp.ones_like(w) for w in weights]
    )
    params = {"w": jnp.asarray([[1.0, -2.0]])}
    state = optg_jax.optg_optax(
        0.5, 10, 0.1, criterion=rule, score_start=0.5, is_masked=rank_at_least_2
    ).init(params)
    np.testing.assert_allclose(state.scores["w"], [[1.25, 2.0]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"score_start": -1.0}, "score_start must be a non-negative number, got -1.0"),
        ({"score_start": float("nan")}, "score_start must be a non-negative number, got nan"),
        ({"score_start": float("inf")}, "score_start must be a non-negative number, got inf"),
        (
            {"score_start": 2.0, "criterion": "taylor"},
            "score_start 2.0 needs a criterion whose scores accumulate (optg, supermask), "
            "got 'taylor'",
        ),
        (
            {"score_start": 2.0, "criterion": "magnitude"},
            "score_start 2.0 needs a criterion whose scores accumulate (optg, supermask), "
            "got 'magnitude'",
        ),
        ({"score_half_life": -0.5}, "score_half_life must be a non-negative number, got -0.5"),
        (
            {"score_half_life": float("inf")},
            "score_half_life must be a non-negative number, got inf",
        ),
        (
            {"score_half_life": 0.25, "criterion": "magnitude"},
            "score_half_life 0.25 needs a criterion whose scores accumulate (optg, supermask), "
            "got 'magnitude'",
        ),
        (
            {"score_half_distance": -0.1},
            "score_half_distance must be a non-negative number, got -0.1",
        ),
        (
            {"score_half_distance": 0.25, "criterion": "taylor"},
            "score_half_distance 0.25 needs a criterion whose scores accumulate (optg, "
            "supermask), got 'taylor'",
        ),
    ],
)
def test_score_fields_bad_values_raise_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        optg_jax.optg_optax(0.5, 10, 0.1, **kwargs)


def _train_toy(tx, steps):
    params, state = toy_params(), tx.init(toy_params())

    @jax.jit
    def step(params, state):
        grads = jax.grad(toy_loss)(optg_jax.apply_masks(params, state))
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def test_learning_rate_injected_by_inject_hyperparams_is_the_same_as_a_float():
    # optax.inject_hyperparams rebuilds the chain inside the jitted update with the learning
    # rate as a traced float32 scalar: OptG takes it like the float.
    def chain(learning_rate):
        return optax.chain(
            optg_jax.optg_optax(0.5, 8, learning_rate, mask_update_every=2),
            optax.sgd(learning_rate),
        )

    plain_params, plain = _train_toy(chain(0.1), 6)
    injected = optax.inject_hyperparams(chain)(learning_rate=0.1)
    params, state = _train_toy(injected, 6)
    inner = optg_jax.get_optg_state(state)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain_params)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(inner.scores), jax.tree.leaves(plain[0].scores)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert jax.tree.leaves(inner.masks) == [] or all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(inner.masks), jax.tree.leaves(plain[0].masks))
    )
    # A learning rate changed in the state reaches the scores: lr(t) * p(t) / P at the update
    # with count 6 (cubic ramp over the first 2/3 of 8 steps, i.e. 5 steps: p(6) = P).
    state.hyperparams["learning_rate"] = jnp.asarray(0.03, jnp.float32)
    tx = optax.inject_hyperparams(chain)(learning_rate=0.1)
    grads = jax.grad(toy_loss)(optg_jax.apply_masks(params, state))
    _, state = jax.jit(tx.update)(grads, state, params)
    assert float(optg_jax.get_optg_state(state).score_lr) == pytest.approx(0.03)


@pytest.mark.parametrize(
    "learning_rate, shown",
    [
        (np.float32(-0.1), "-0.1"),
        (jnp.asarray(-0.5), "Array(-0.5"),
        (jnp.asarray([0.1, 0.2]), "Array([0.1, 0.2]"),
        (np.asarray(0.1 + 0.2j), "array(0.1+0.2j)"),
        ("0.1", "'0.1'"),
    ],
)
def test_bad_learning_rate_arrays_raise_naming_them(learning_rate, shown):
    with pytest.raises(ValueError, match=re.escape("learning_rate must be a non-negative")) as e:
        optg_jax.optg_optax(0.5, 10, learning_rate)
    assert shown in str(e.value)


def test_concrete_scalar_arrays_are_taken_as_learning_rates():
    # Once the ramp has reached P the score lr is lr(t) * P / P = lr.
    for lr in (np.float32(0.1), jnp.asarray(0.1), np.asarray(1), jnp.asarray(0, jnp.int32)):
        optg_jax.optg_optax(0.5, 10, lr).init(toy_params())
        settings = optg_jax.OptGSettings(0.5, 10, lr).resolved()
        end = jnp.asarray(settings.pruning_end_step, jnp.int32)
        assert float(optg.score_lr(settings, end)) == pytest.approx(float(lr))


def test_optg_inside_optax_masked_and_multi_transform_prunes_its_part_only():
    # Pruning one layer through optax's own partitioning gives what is_masked gives for it.
    only_l1 = {"l1": {"kernel": True, "bias": False}, "l2": {"kernel": False, "bias": False}}
    kwargs = dict(target_sparsity=0.5, total_steps=8, learning_rate=0.1, mask_update_every=2)

    def is_l1_kernel(path, leaf):
        return jax.tree_util.keystr(path) == "['l1']['kernel']"

    reference = optax.chain(optg_jax.optg_optax(**kwargs, is_masked=is_l1_kernel), optax.sgd(0.1))
    labels = jax.tree.map(lambda f: "pruned" if f else "dense", only_l1)
    variants = {
        "masked": optax.chain(optax.masked(optg_jax.optg_optax(**kwargs), only_l1), optax.sgd(0.1)),
        "multi_transform": optax.multi_transform(
            {
                "pruned": optax.chain(optg_jax.optg_optax(**kwargs), optax.sgd(0.1)),
                "dense": optax.sgd(0.1),
            },
            labels,
        ),
    }
    ref_params, ref_state = _train_toy(reference, 8)
    assert optg_jax.sparsity_summary(ref_state)["layers"] == {"l1/kernel": 0.5}
    for name, tx in variants.items():
        params, state = _train_toy(tx, 8)
        masked = optg_jax.apply_masks(params, state)
        for a, b in zip(
            jax.tree.leaves(masked), jax.tree.leaves(optg_jax.apply_masks(ref_params, ref_state))
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)
        np.testing.assert_array_equal(
            optg_jax.get_masks(state)["l1"]["kernel"], optg_jax.get_masks(ref_state)["l1"]["kernel"]
        )
        assert optg_jax.sparsity_summary(state)["layers"] == {"l1/kernel": 0.5}, name
        np.testing.assert_array_equal(masked["l2"]["kernel"], params["l2"]["kernel"])


def test_optg_counts_optimizer_updates_inside_multisteps_and_apply_if_finite():
    # MultiSteps(every 2) over 8 micro-steps on a fixed batch: the params do not move between
    # the two micro-steps of an update, so the averaged gradient is the plain one and 4 plain
    # updates give the same network; OptG counts the 4 updates.
    kwargs = dict(target_sparsity=0.5, total_steps=4, learning_rate=0.1, mask_update_every=1)

    def chain():
        return optax.chain(optg_jax.optg_optax(**kwargs), optax.sgd(0.1))

    plain_params, plain = _train_toy(chain(), 4)
    for name, tx, steps in (
        ("MultiSteps", optax.MultiSteps(chain(), every_k_schedule=2), 8),
        ("apply_if_finite", optax.apply_if_finite(chain(), max_consecutive_errors=2), 4),
    ):
        params, state = _train_toy(tx, steps)
        assert int(optg_jax.get_optg_state(state).count) == 4, name
        assert optg_jax.sparsity_summary(state)["global"] == 0.5, name
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain_params)):
            np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)


def test_numpy_scalars_are_taken_as_the_numbers_they_print_as():
    # np.float32(0.9) is 0.8999999761581421 as a double; the record keeps the 0.9 it prints as.
    settings = optg_jax.OptGSettings(
        np.float32(0.9), np.int64(20), np.float32(0.1), score_momentum=np.float32(0.95)
    ).resolved()
    assert (settings.target_sparsity, settings.total_steps, settings.score_momentum) == (
        0.9,
        20,
        0.95,
    )
    assert type(settings.target_sparsity) is float and type(settings.total_steps) is int
    kwargs = dict(mask_update_every=2, uncertainty_bonus=2.0)
    numpy_kwargs = dict(mask_update_every=np.int32(2), uncertainty_bonus=np.float64(2.0))
    _, plain = _train_toy(optax.chain(optg_jax.optg_optax(0.5, 8, 0.1, **kwargs)), 8)
    _, numpy_state = _train_toy(
        optax.chain(
            optg_jax.optg_optax(np.float32(0.5), np.int64(8), np.float32(0.1), **numpy_kwargs)
        ),
        8,
    )
    for a, b in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(numpy_state[0])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(
        ValueError, match=re.escape("target_sparsity must be a number in [0, 1), got 1.5")
    ):
        optg_jax.optg_optax(np.float32(1.5), 10, 0.1)


def test_score_decay_halves_a_step_every_half_life_of_the_ramp():
    # 10 steps, the default ramp ends at round(2/3 * 10) = 7: ramp 7, half-life 0.5 -> 3.5 steps.
    settings = optg_jax.OptGSettings(0.5, 10, 0.1, score_half_life=0.5).resolved()
    assert optg.score_decay(settings) == pytest.approx(0.5 ** (1 / 3.5))
    assert optg.score_decay(settings) ** 3.5 == pytest.approx(0.5)
    assert optg.score_decay(optg_jax.OptGSettings(0.5, 10, 0.1).resolved()) == 1.0
    ramp_20 = optg_jax.OptGSettings(0.5, 100, 0.1, pruning_start_step=10, pruning_end_step=30)
    assert optg.score_decay(dataclasses.replace(ramp_20, score_half_life=0.25).resolved()) == (
        pytest.approx(0.5 ** (1 / 5))
    )


@pytest.mark.parametrize("criterion", ["optg", "supermask"])
def test_decayed_scores_are_the_discounted_sum_of_the_plain_steps(criterion):
    # Before the first refresh (every 50 of 100 steps) the masks stay full, so the weights and
    # every score step -lr * v are the same with or without decay: the decayed score after t
    # steps is sum_i d^(t - i) * step_i, its bonus variance sum_i d^(2 (t - i)) * noise_i.
    # (score_half_distance=0: the plain sum, no forgetting with distance on either side.)
    kwargs = dict(
        criterion=criterion, mask_update_every=50, uncertainty_bonus=4.0, score_half_distance=0.0
    )
    plain = optax.chain(optg_jax.optg_optax(0.5, 100, 0.01, **kwargs), optax.sgd(0.01))
    decayed = optax.chain(
        optg_jax.optg_optax(0.5, 100, 0.01, score_half_life=0.02, **kwargs), optax.sgd(0.01)
    )
    d = 0.5 ** (1 / (0.02 * 67))  # ramp round(2/3 * 100) = 67 steps
    scores, noises = [], []
    for t in range(1, 6):
        _, state = _train_toy(plain, t)
        scores.append(state[0].scores["l1"]["kernel"])
        noises.append(state[0].score_noise["l1"]["kernel"])
    steps = [scores[0]] + [b - a for a, b in zip(scores, scores[1:])]
    noise_steps = [noises[0]] + [b - a for a, b in zip(noises, noises[1:])]
    _, state = _train_toy(decayed, 5)
    want = sum(d ** (4 - i) * s for i, s in enumerate(steps))
    want_noise = sum(d ** (2 * (4 - i)) * n for i, n in enumerate(noise_steps))
    assert not np.allclose(want, scores[-1], rtol=1e-2)  # the decay shows
    np.testing.assert_allclose(state[0].scores["l1"]["kernel"], want, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(state[0].score_noise["l1"]["kernel"], want_noise, rtol=1e-5)


def test_weights_distance_is_the_global_relative_euclidean_distance():
    # ||W0|| = sqrt(9 + 16 + 0) = 5; W - W0 = (0, -4) and (3): ||.||^2 = 16 + 9 = 25 -> 1.0.
    start = [jnp.array([3.0, 4.0]), jnp.array([[0.0]])]
    weights = [jnp.array([3.0, 0.0]), jnp.array([[3.0]], jnp.bfloat16)]
    assert float(optg.weights_distance(weights, start)) == pytest.approx(1.0)
    assert float(optg.weights_distance(start, start)) == 0.0
    zeros = [jnp.zeros(2)]
    assert float(optg.weights_distance([jnp.ones(2)], zeros)) == 0.0  # no starting norm


def test_distance_decay_halves_per_half_distance_of_new_ground():
    settings = optg_jax.OptGSettings(0.5, 10, 0.1, score_half_distance=0.4).resolved()
    start = [jnp.array([3.0, 4.0])]  # norm 5
    # Now at distance 0.8 (W - W0 = (0, -4)), the record 0.4: 0.4 further = one half-distance.
    keep, record = optg.distance_decay(settings, [jnp.array([3.0, 0.0])], start, jnp.float32(0.4))
    assert float(keep) == pytest.approx(0.5)
    assert float(record) == pytest.approx(0.8)
    # Coming back (distance 0.2 < record 0.8) forgets nothing and keeps the record.
    keep, record = optg.distance_decay(settings, [jnp.array([3.0, 3.0])], start, jnp.float32(0.8))
    assert float(keep) == 1.0
    assert float(record) == pytest.approx(0.8)
    # 0.1 of new ground at delta 0.4: 0.5 ** 0.25.
    keep, _ = optg.distance_decay(settings, [jnp.array([3.0, 3.5])], start, jnp.float32(0.0))
    assert float(keep) == pytest.approx(0.5**0.25, rel=1e-6)


@pytest.mark.parametrize("criterion", ["optg", "supermask"])
def test_distance_decayed_scores_discount_each_step_by_the_ground_covered_since(criterion):
    # Before the first refresh (every 50 of 100 steps) the masks stay full, so the weights and
    # every score step -lr * v are the same with or without forgetting. The factor of update t
    # is 0.5 ** ((r_t - r_{t-1}) / delta), r_t the running maximum of ||W_t - W_0|| / ||W_0||
    # over the masked kernels, W_t the weights update t saw; the score after 5 updates is
    # sum_i (prod_{j > i} factor_j) * step_i, its bonus variance with the factors squared.
    kwargs = dict(criterion=criterion, mask_update_every=50, uncertainty_bonus=4.0)
    plain = optax.chain(
        optg_jax.optg_optax(0.5, 100, 0.01, score_half_distance=0.0, **kwargs), optax.sgd(0.05)
    )
    delta = 0.25
    forgets = optax.chain(
        optg_jax.optg_optax(0.5, 100, 0.01, score_half_distance=delta, **kwargs), optax.sgd(0.05)
    )
    masked = lambda p: [p["l1"]["kernel"], p["l2"]["kernel"]]
    w0 = masked(toy_params())
    size = np.sqrt(sum(np.sum(np.square(w)) for w in w0))
    scores, noises, record, factors = [], [], 0.0, []
    params = toy_params()  # the weights update t sees: those after t - 1 updates
    for t in range(1, 6):
        gap = np.sqrt(sum(np.sum(np.square(w - v)) for w, v in zip(masked(params), w0))) / size
        factors.append(0.5 ** ((max(gap, record) - record) / delta))
        record = max(gap, record)
        params, state = _train_toy(plain, t)
        scores.append(state[0].scores["l1"]["kernel"])
        noises.append(state[0].score_noise["l1"]["kernel"])
    steps = [scores[0]] + [b - a for a, b in zip(scores, scores[1:])]
    noise_steps = [noises[0]] + [b - a for a, b in zip(noises, noises[1:])]
    after = lambda i: float(np.prod(factors[i + 1 :]))
    want = sum(after(i) * s for i, s in enumerate(steps))
    want_noise = sum(after(i) ** 2 * n for i, n in enumerate(noise_steps))
    _, state = _train_toy(forgets, 5)
    # The toy covers new ground at updates 2, 4 and 5 (distances 0.25, 0.46, 0.53: factors
    # about 0.5, 0.57, 0.82) and comes back a little at update 3 (0.22: factor 1).
    np.testing.assert_allclose(factors, [1.0, 0.50, 1.0, 0.57, 0.82], atol=0.02)
    np.testing.assert_allclose(float(state[0].distance), record, rtol=1e-4)
    np.testing.assert_allclose(state[0].scores["l1"]["kernel"], want, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(state[0].score_noise["l1"]["kernel"], want_noise, rtol=1e-4)

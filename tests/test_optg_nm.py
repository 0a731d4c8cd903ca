"""optg_optax with an N:M pattern, and SR-STE, against hand-computed masks and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optg_jax
from optg_jax import nm

# A Dense kernel [in=8, out=2]: groups of 4 run down each column (the inputs).
W = np.array(
    [
        [0.1, -2.0],
        [-0.5, 0.3],
        [0.9, 0.05],
        [-0.2, 1.0],
        [0.0, -0.7],
        [3.0, 0.6],
        [-1.5, 0.2],
        [0.4, -0.1],
    ],
    np.float32,
)
# |W| top-2 of each group of 4 along axis 0, by hand: column 0 rows {1, 2} and {5, 6};
# column 1 rows {0, 3} and {4, 5}.
W_24 = np.zeros((8, 2), np.uint8)
W_24[[1, 2, 5, 6], 0] = 1
W_24[[0, 3, 4, 5], 1] = 1


def _params():
    return {
        "fc": {"kernel": jnp.asarray(W), "bias": jnp.zeros(2)},
        "stem": {"kernel": jnp.ones((3, 3, 3, 4))},  # 3 input channels: cannot hold 2:4
        "conv": {"kernel": jnp.asarray(np.arange(16, dtype=np.float32).reshape(1, 1, 8, 2))},
    }


@pytest.mark.parametrize("jit", [False, True])
def test_constant_schedule_imposes_the_pattern_from_the_start(jit):
    params = _params()
    tx = optg_jax.optg_optax(
        0.5, 10, 0.1, criterion="magnitude", schedule="constant", pattern="2:4"
    )
    init = jax.jit(tx.init) if jit else tx.init
    masks = init(params).masks
    np.testing.assert_array_equal(masks["fc"]["kernel"], W_24)
    np.testing.assert_array_equal(masks["stem"]["kernel"], np.ones((3, 3, 3, 4)))  # stays dense
    # conv [1, 1, 8, 2]: groups of 4 input channels (axis 2); the values grow with the index,
    # so the last two of each group are kept.
    conv = np.asarray(masks["conv"]["kernel"])[0, 0]
    expected = np.zeros((8, 2), np.uint8)
    expected[[2, 3, 6, 7], :] = 1
    np.testing.assert_array_equal(conv, expected)
    assert masks["fc"]["bias"] is None


def test_target_must_match_the_pattern_and_bad_patterns_are_refused():
    with pytest.raises(ValueError, match=r"target_sparsity 0.9 does not match pattern 2:4"):
        optg_jax.optg_optax(0.9, 10, 0.1, pattern="2:4")
    for bad in ("3:2", "0:4", "2:x"):
        with pytest.raises(ValueError, match=f"bad N:M pattern '{bad}'"):
            optg_jax.optg_optax(0.5, 10, 0.1, pattern=bad)
    with pytest.raises(ValueError, match="nm_ramp must be one of groups, n, got 'fast'"):
        optg_jax.optg_optax(0.5, 10, 0.1, pattern="2:4", nm_ramp="fast")


def test_groups_ramp_patterns_the_cheapest_groups_first():
    # One [8, 1] kernel, two groups. Group 0's two lowest |W| sum to 0.3, group 1's to 3.0.
    kernel = np.array([[0.1], [0.2], [5.0], [6.0], [1.0], [2.0], [7.0], [8.0]], np.float32)
    settings = optg_jax.OptGSettings(0.5, 10, 0.1, criterion="magnitude", pattern="2:4").resolved()
    scores = [jnp.asarray(kernel)]
    half = optg_jax.optg.select_nm_masks(settings, scores, jnp.float32(0.25), [0])  # p/P = 1/2
    np.testing.assert_array_equal(np.ravel(half[0]), [0, 0, 1, 1, 1, 1, 1, 1])
    none = optg_jax.optg.select_nm_masks(settings, scores, jnp.float32(0.1), [0])  # 1 group * 0.2
    np.testing.assert_array_equal(np.ravel(none[0]), np.ones(8))
    full = optg_jax.optg.select_nm_masks(settings, scores, jnp.float32(0.5), [0])
    np.testing.assert_array_equal(np.ravel(full[0]), [0, 0, 1, 1, 0, 0, 1, 1])


def test_n_ramp_lowers_n_in_every_group():
    kernel = jnp.asarray(np.arange(1, 17, dtype=np.float32).reshape(16, 1))  # 2 groups of 8
    settings = optg_jax.OptGSettings(
        0.75, 10, 0.1, criterion="magnitude", pattern="2:8", nm_ramp="n"
    ).resolved()
    for p, kept_per_group in ((0.0, 8), (0.125, 7), (0.4, 5), (0.7, 3), (0.75, 2)):
        # N = 8 - floor(6 * p / 0.75): 8, 7, 4.8 -> 5, 2.4 -> 3... by hand: 6p/0.75 = 8p.
        masks = optg_jax.optg.select_nm_masks(settings, [kernel], jnp.float32(p), [0])
        counts = np.asarray(nm.nm_group_counts(masks[0], 8, 0)).ravel()
        np.testing.assert_array_equal(counts, [kept_per_group] * 2, err_msg=str(p))
        # the highest values of each group are the ones kept
        kept = np.asarray(masks[0]).ravel().reshape(2, 8)
        np.testing.assert_array_equal(kept[:, 8 - kept_per_group :], 1)


@pytest.mark.parametrize("criterion", ["optg", "supermask", "taylor", "magnitude", "sr_ste"])
@pytest.mark.parametrize("ramp", ["groups", "n"])
def test_every_group_keeps_exactly_n_at_the_end(criterion, ramp):
    rng = np.random.default_rng(0)
    params = {
        "a": {"kernel": jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)},
        "b": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 4)), jnp.float32)},
    }
    total = 24
    tx = optax.chain(
        optg_jax.optg_optax(0.75, total, 0.05, criterion=criterion, pattern="1:4", nm_ramp=ramp),
        optax.sgd(0.05),
    )
    state = tx.init(params)

    @jax.jit
    def step(params, state, t):
        masked = optg_jax.apply_masks(params, state)
        x = jax.random.normal(jax.random.key(t), (4, 16))
        loss = lambda p: jnp.sum((x @ p["a"]["kernel"]) ** 2) + jnp.sum(jnp.sin(p["b"]["kernel"]))
        updates, state = tx.update(jax.grad(loss)(masked), state, params)
        return optax.apply_updates(params, updates), state

    for t in range(total):
        params, state = step(params, state, t)
    masks = optg_jax.get_masks(state)
    assert bool(nm.nm_valid(masks["a"]["kernel"], 1, 4, 0))
    assert bool(nm.nm_valid(masks["b"]["kernel"], 1, 4, 2))
    assert optg_jax.sparsity_summary(state)["global"] == pytest.approx(0.75)


def test_sr_ste_passes_the_gradient_straight_through_with_the_refined_decay():
    params = {"fc": {"kernel": jnp.asarray(W)}}
    tx = optg_jax.optg_optax(
        0.5, 10, 0.1, criterion="sr_ste", schedule="constant", mask_update_every=1, pattern="2:4"
    )
    state = tx.init(params)
    np.testing.assert_array_equal(state.masks["fc"]["kernel"], W_24)
    g = np.full((8, 2), 0.5, np.float32)
    out, state = tx.update({"fc": {"kernel": jnp.asarray(g)}}, state, params)
    # G on every weight, plus 2e-4 * W on the removed ones.
    want = g + optg_jax.optg.SR_STE_DECAY * (1 - W_24) * W
    np.testing.assert_allclose(out["fc"]["kernel"], want, rtol=1e-6)
    # Masks rank the dense |W| every step: a removed weight that grows comes back.
    grown = W.copy()
    grown[0, 0] = 10.0  # row 0 of column 0 was removed
    _, state = tx.update({"fc": {"kernel": jnp.asarray(g)}}, state, {"fc": {"kernel": grown}})
    kept = np.asarray(state.masks["fc"]["kernel"])[:4, 0]
    np.testing.assert_array_equal(kept, [1, 0, 1, 0])  # 10.0 and 0.9 (rows 0, 2)


def test_sr_ste_criterion_with_another_decay():
    rule = optg_jax.sr_ste_criterion(decay=0.5)
    w, m = jnp.asarray([1.0, 2.0]), jnp.asarray([1, 0], jnp.uint8)
    np.testing.assert_allclose(rule.weight_grad(jnp.asarray([0.1, 0.1]), w, m), [0.1, 1.1])


def test_settings_summary_names_the_pattern():
    settings = optg_jax.OptGSettings(0.5, 10, 0.1, pattern="2:4").resolved()
    assert settings.pattern == nm.NMPattern(2, 4)
    assert settings.to_dict()["pattern"] == "2:4" and settings.to_dict()["nm_ramp"] == "groups"

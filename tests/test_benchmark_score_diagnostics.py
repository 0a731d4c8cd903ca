"""benchmarks/score_diagnostics.py: the effective window, the recording link, the layer rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optg_jax
from benchmarks import score_diagnostics as diag


@pytest.mark.parametrize(
    "lrs, distances, half, expected",
    [
        ([1.0, 1.0], [0.0, 0.0], 0.0, 2.0),  # two equal steps
        ([1.0, 2.0], [0.0, 0.0], 0.0, 9.0 / 5.0),  # (1 + 2)^2 / (1 + 4)
        # step 0 has lost half by the end (0.5 further, delta 0.5): weights 0.5, 1
        ([1.0, 1.0], [0.0, 0.5], 0.5, 1.5**2 / 1.25),
        ([0.0, 0.0], [0.0, 0.0], 0.25, 0.0),  # nothing weighed yet
    ],
)
def test_effective_window_by_hand(lrs, distances, half, expected):
    assert diag.effective_window(np.array(lrs), np.array(distances), half) == pytest.approx(
        expected, rel=1e-12
    )


def test_recording_hands_over_what_the_state_holds():
    params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)}
    tx = optg_jax.optg_optax(0.5, 8, 0.1, mask_update_every=2, is_masked=lambda p, leaf: True)
    seen = {"steps": []}

    def sink(kind, *values):
        if kind == "step":
            seen["steps"].append(tuple(float(v) for v in values))
        else:
            seen["end"] = [[np.asarray(v) for v in leaves] for leaves in values]

    link = diag.recording(tx, 3, sink)
    update = jax.jit(link.update)
    state, states = link.init(params), []
    for t in range(5):
        grads = {"w": jnp.full((6, 4), 0.1 * (t + 1), jnp.float32)}
        _, state = update(grads, state, params)
        params = {"w": params["w"] * 1.05}
        states.append(state)
    jax.effects_barrier()
    assert [s[0] for s in sorted(seen["steps"])] == [1, 2, 3, 4, 5]
    for (count, lr, dist), st in zip(sorted(seen["steps"]), states):
        assert lr == float(st.score_lr) and dist == float(st.distance)
    assert max(s[2] for s in seen["steps"]) > 0  # the weights moved: the distance is recorded
    scores, noise = seen["end"]
    np.testing.assert_array_equal(scores[0], states[2].scores["w"])
    np.testing.assert_array_equal(noise[0], states[2].score_noise["w"])


def test_layer_rows_quartiles_of_score_over_its_standard_error():
    scores = [np.array([-4.0, 0.0, 2.0, 6.0, 1.0])]
    noise = [np.array([4.0, 1.0, 1.0, 4.0, 0.0])]  # t = -2, 0, 2, 3, and 0 where Q = 0
    masks = [np.array([0, 1, 1, 1, 0], np.uint8)]
    (row,) = diag.layer_rows(["a"], scores, noise, masks)
    # t sorted: -2, 0, 0, 2, 3 -> quartiles (linear) 0, 0, 2
    assert (row["t25"], row["t50"], row["t75"]) == (0.0, 0.0, 2.0)
    assert row["size"] == 5 and row["kept"] == pytest.approx(0.6)

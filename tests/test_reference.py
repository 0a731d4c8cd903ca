"""optg_optax side by side with a NumPy transcription of the reference procedure.

The transcription follows the procedure stated in docs/reference.md: at the start of each epoch e
the sparsity is p(e) = P * sigmoid(beta * (e - E/2)); k = floor(N (1 - p)); the threshold is the
k-th largest score over all layers; each layer prunes, by its own argsort, as many of its
lowest-scored entries as it has scores below the threshold. Weights: SGD momentum 0.9 (PyTorch convention) with weight decay on
G * M; scores: SGD momentum 0.9, no decay, on G * W with lr(e) * sigmoid(beta * (e - E/2)).
Gradients of the toy MLP are computed by hand in NumPy. One timing detail follows optg_optax's
documented semantics rather than the reference loop: the new masks take effect after the first
step of the epoch (that step's forward pass ran before the update that selects them).

The first test hands `optg_optax` the reference's sparsity schedule and an arbitrary per-epoch lr;
the second builds the optimizer as the training program does with `reference_schedules=True`
(`steps.learning_rate_schedule` and `steps.make_optimizer` from a config) and checks the
reference's lr (warm-up, then the cosine over all epochs), score lr and every-epoch refresh, and
the one change that stays: the final masks, selected after the last update, at exactly `P`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optg_jax
from optg_jax import schedules
from optg_jax.train import config as config_lib
from optg_jax.train import steps

P, BETA, EPOCHS, STEPS_PER_EPOCH, WD, MU = 0.9, 1.0, 4, 5, 5e-4, 0.9
LR_PER_EPOCH = np.array([0.2, 0.15, 0.1, 0.05], np.float32)  # any per-epoch lr (cosine-like)
LAYERS = ("fc1", "fc2")
NUM_MASKED = 6 * 9 + 9 * 3


def make_problem(num_steps):
    rng = np.random.default_rng(42)
    params = {
        "fc1": {
            "kernel": rng.normal(0, 0.6, (6, 9)).astype(np.float32),
            "bias": rng.normal(0, 0.1, 9).astype(np.float32),
        },
        "fc2": {
            "kernel": rng.normal(0, 0.6, (9, 3)).astype(np.float32),
            "bias": rng.normal(0, 0.1, 3).astype(np.float32),
        },
    }
    batches = [
        (rng.normal(size=(16, 6)).astype(np.float32), rng.normal(size=(16, 3)).astype(np.float32))
        for _ in range(num_steps)
    ]
    return params, batches


def numpy_grads(params, masks, x, t):
    """dL/d(W*M) and dL/db of L = mean_b 0.5 |tanh(x W1m + b1) W2m + b2 - t|^2, by hand."""
    w1 = params["fc1"]["kernel"] * masks["fc1"]
    w2 = params["fc2"]["kernel"] * masks["fc2"]
    h = np.tanh(x @ w1 + params["fc1"]["bias"])
    dy = (h @ w2 + params["fc2"]["bias"] - t) / x.shape[0]
    dpre = (dy @ w2.T) * (1 - h * h)
    return {
        "fc1": {"kernel": x.T @ dpre, "bias": dpre.sum(0)},
        "fc2": {"kernel": h.T @ dy, "bias": dy.sum(0)},
    }


def jax_loss(params, x, t):
    h = jnp.tanh(x @ params["fc1"]["kernel"] + params["fc1"]["bias"])
    return 0.5 * jnp.mean(
        jnp.sum((h @ params["fc2"]["kernel"] + params["fc2"]["bias"] - t) ** 2, axis=1)
    )


def reference_masks(scores, sparsity):
    flat = np.concatenate([scores[name].ravel() for name in LAYERS])
    k = math.floor(flat.size * (1 - sparsity))
    threshold = np.sort(flat)[::-1][k - 1]
    masks = {}
    for name in LAYERS:
        s = scores[name].ravel()
        num_pruned = int(np.sum(s < threshold))
        mask = np.ones(s.size, np.uint8)
        mask[np.argsort(s, kind="stable")[:num_pruned]] = 0
        masks[name] = mask.reshape(scores[name].shape)
    return masks


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def run_side_by_side(tx, lr_of_epoch, num_epochs, steps_per_epoch, final_at_target):
    """Trains the toy MLP with `tx` and with the NumPy reference on the same batches.

    Asserts the masks and the score lr after every step, and the scores and weights at the end of
    every epoch. With `final_at_target`, the reference is given optg_optax's one change: after the
    last step its masks are re-selected from the final scores at exactly `P`.

    Returns:
      (the reference's final masks, optg_optax's initial masks), dicts of uint8 arrays.
    """
    params, batches = make_problem(num_epochs * steps_per_epoch)
    jparams = jax.tree.map(jnp.asarray, params)
    state = tx.init(jparams)

    @jax.jit
    def step(jparams, state, x, t):
        grads = jax.grad(jax_loss)(optg_jax.apply_masks(jparams, state), x, t)
        updates, state = tx.update(grads, state, jparams)
        return optax.apply_updates(jparams, updates), state

    # NumPy reference state. At step 0 every score is 0: a tie, where the reference's "below the
    # threshold" rule prunes nothing and optg_optax keeps exactly k by position (a documented
    # deviation). The reference therefore starts from optg_optax's initial masks; every later
    # mask is computed independently from the scores.
    initial = {name: np.asarray(optg_jax.get_masks(state)[name]["kernel"]) for name in LAYERS}
    masks = dict(initial)
    scores = {name: np.zeros_like(params[name]["kernel"]) for name in LAYERS}
    score_mom = {name: np.zeros_like(params[name]["kernel"]) for name in LAYERS}
    weight_mom = jax.tree.map(np.zeros_like, params)
    params = jax.tree.map(np.copy, params)

    for epoch in range(num_epochs):
        lr = lr_of_epoch(epoch)
        score_lr = lr * sigmoid(BETA * (epoch - num_epochs / 2))
        for i in range(steps_per_epoch):
            x, t = batches[epoch * steps_per_epoch + i]
            grads = numpy_grads(params, masks, x, t)
            new_masks = masks
            if epoch > 0 and i == 0:
                # The epoch's masks, from the scores accumulated over all earlier steps. (The
                # forward/backward pass of this first step used the previous masks.)
                new_masks = reference_masks(scores, P * sigmoid(BETA * (epoch - num_epochs / 2)))
            for name in LAYERS:
                w = params[name]["kernel"]
                score_mom[name] = MU * score_mom[name] + grads[name]["kernel"] * w
                scores[name] = scores[name] - score_lr * score_mom[name]
                grads[name]["kernel"] = grads[name]["kernel"] * masks[name]
            for name in LAYERS:
                for leaf in ("kernel", "bias"):
                    g = grads[name][leaf] + WD * params[name][leaf]
                    weight_mom[name][leaf] = MU * weight_mom[name][leaf] + g
                    params[name][leaf] = params[name][leaf] - lr * weight_mom[name][leaf]
            masks = new_masks
            last = epoch == num_epochs - 1 and i == steps_per_epoch - 1
            if last and final_at_target:
                masks = reference_masks(scores, P)
            jparams, state = step(jparams, state, x, t)
            where = f"after step {i} of epoch {epoch}"
            np.testing.assert_allclose(
                float(optg_jax.get_optg_state(state).score_lr),
                score_lr,
                rtol=1e-6,
                err_msg=f"score lr differs {where}",
            )
            for name in LAYERS:
                np.testing.assert_array_equal(
                    np.asarray(optg_jax.get_masks(state)[name]["kernel"]),
                    masks[name],
                    err_msg=f"masks differ {where}",
                )
        for name in LAYERS:
            np.testing.assert_allclose(
                np.asarray(optg_jax.get_optg_state(state).scores[name]["kernel"]),
                scores[name],
                rtol=2e-4,
                atol=1e-7,
                err_msg=f"scores differ at the end of epoch {epoch}",
            )
            for leaf in ("kernel", "bias"):
                np.testing.assert_allclose(
                    np.asarray(jparams[name][leaf]),
                    params[name][leaf],
                    rtol=1e-4,
                    atol=1e-6,
                    err_msg=f"{name}/{leaf} differs at the end of epoch {epoch}",
                )
    return masks, initial


def test_matches_numpy_reference_procedure_for_three_epochs_of_pruning():
    # optg_optax with the reference's per-epoch schedule and per-epoch lr.
    lr_fn = lambda step: jnp.asarray(LR_PER_EPOCH)[jnp.minimum(step // STEPS_PER_EPOCH, EPOCHS - 1)]
    tx = optax.chain(
        optg_jax.optg_optax(
            P,
            total_steps=100 * STEPS_PER_EPOCH,
            learning_rate=lr_fn,
            criterion="optg",
            schedule=schedules.reference_sigmoid_schedule(P, EPOCHS, STEPS_PER_EPOCH, BETA),
            mask_update_every=STEPS_PER_EPOCH,
            recipe="paper",
        ),
        optax.add_decayed_weights(WD),
        optax.sgd(lr_fn, momentum=MU),
    )
    masks, _ = run_side_by_side(
        tx, lambda e: LR_PER_EPOCH[e], EPOCHS, STEPS_PER_EPOCH, final_at_target=False
    )
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == math.floor(NUM_MASKED * (1 - P * sigmoid(1.0)))  # 28 of 81 kept
    assert kept < NUM_MASKED * 0.4


def test_training_program_with_reference_schedules_matches_the_reference_procedure():
    """`make_optimizer` of a `reference_schedules=True` config against the NumPy reference."""
    epochs, warmup, steps_per_epoch, peak = 6, 2, 4, 0.2
    num_steps = epochs * steps_per_epoch
    config = config_lib.paper_config(
        "fmnist_cnn", "fashion_mnist", sparsity=P, num_epochs=epochs, learning_rate=peak,
        weight_decay=WD,
    )  # fmt: skip
    config.warmup_epochs = float(warmup)
    assert config.reference_schedules and config.batch_size == 256  # effective lr = peak

    def reference_lr(epoch):  # The reference's adjust_learning_rate, per epoch.
        if epoch < warmup:
            return peak * (epoch + 1) / warmup
        return 0.5 * peak * (1 + math.cos(math.pi * epoch / epochs))

    lr = steps.learning_rate_schedule(config, num_steps, steps_per_epoch)
    for epoch in range(epochs):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            np.testing.assert_allclose(float(lr(step)), reference_lr(epoch), rtol=1e-6)
    tx = steps.make_optimizer(config, num_steps, steps_per_epoch, lr, sparse=True)
    masks, initial = run_side_by_side(tx, reference_lr, epochs, steps_per_epoch, True)

    # Epoch 0: k = floor(81 (1 - 0.9 sigmoid(-3))) = 77 of the all-zero scores, kept by position
    # (all 54 of fc1, then the first 23 of fc2 in row-major order).
    assert (initial["fc1"] == 1).all()
    assert initial["fc2"].ravel().tolist() == [1] * 23 + [0] * 4
    # The final masks keep exactly floor(N (1 - P)) = 8 weights, where the reference's last masks
    # (epoch 5, p = 0.9 sigmoid(2)) keep 16.
    assert sum(int(m.sum()) for m in masks.values()) == 8
    assert math.floor(NUM_MASKED * (1 - P * sigmoid(2.0))) == 16

"""Sparsity schedules against hand-computed values."""

import math

import jax
import numpy as np
import pytest

from optg_jax import schedules


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_sigmoid_hand_computed():
    # 10 epochs of 100 steps, beta = 1 per epoch, P = 0.9.
    fn = schedules.sigmoid_schedule(0.9, begin_step=0, end_step=1000, beta=1.0, steps_per_epoch=100)
    low, high = sig(-5.0), sig(5.0)
    for epoch in [0.0, 2.0, 3.5, 5.0, 7.0, 10.0]:
        want = 0.9 * (sig(epoch - 5.0) - low) / (high - low)
        assert float(fn(int(epoch * 100))) == pytest.approx(want, abs=1e-6)
    assert float(fn(0)) == 0.0
    assert float(fn(500)) == pytest.approx(0.45, abs=1e-6)  # symmetric: P/2 at the middle
    assert float(fn(1000)) == np.float32(0.9)  # exactly P at the end
    assert float(fn(5000)) == np.float32(0.9)


def test_sigmoid_window_and_beta():
    fn = schedules.sigmoid_schedule(0.5, begin_step=200, end_step=600, beta=2.0, steps_per_epoch=50)
    # E = 8 epochs, half width = beta * E / 2 = 8.
    low = sig(-8.0)
    assert float(fn(100)) == 0.0 and float(fn(200)) == 0.0
    e = (300 - 200) / 50
    assert float(fn(300)) == pytest.approx(
        0.5 * (sig(2.0 * (e - 4.0)) - low) / (1 - 2 * low), abs=1e-6
    )
    assert float(fn(600)) == np.float32(0.5)


def test_cubic_constant_one_shot():
    cubic = schedules.cubic_schedule(0.8, begin_step=100, end_step=300)
    assert float(cubic(50)) == 0.0
    assert float(cubic(200)) == pytest.approx(0.8 * (1 - 0.5**3), abs=1e-6)
    assert float(cubic(300)) == np.float32(0.8)
    assert float(schedules.constant_schedule(0.7)(0)) == np.float32(0.7)
    one = schedules.one_shot_schedule(0.6, prune_step=10)
    assert float(one(9)) == 0.0 and float(one(10)) == np.float32(0.6)


@pytest.mark.parametrize("name", ["sigmoid", "cubic", "one_shot", "constant"])
def test_monotone_and_bounded_under_jit(name):
    fn = jax.jit(
        jax.vmap(schedules.make_schedule(name, 0.95, 10, 990, beta=1.0, steps_per_epoch=98))
    )
    values = np.asarray(fn(np.arange(0, 1200)))
    assert np.all(np.diff(values) >= 0)
    assert values.min() >= 0.0 and values.max() == np.float32(0.95)
    assert values[-1] == np.float32(0.95)


def test_reference_sigmoid_is_per_epoch_and_short_of_target():
    fn = schedules.reference_sigmoid_schedule(0.9, num_epochs=4, steps_per_epoch=10)
    assert float(fn(0)) == pytest.approx(0.9 * sig(-2.0), abs=1e-7)
    assert float(fn(19)) == pytest.approx(0.9 * sig(-1.0), abs=1e-7)
    assert float(fn(39)) == pytest.approx(0.9 * sig(1.0), abs=1e-7)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(schedule="linear"), "schedule"),
        (dict(target=1.0), "target_sparsity"),
        (dict(target=-0.1), "target_sparsity"),
        (dict(begin_step=5, end_step=5), "end_step"),
        (dict(beta=0.0), "beta"),
    ],
)
def test_bad_arguments(kwargs, word):
    args = dict(schedule="sigmoid", target=0.9, begin_step=0, end_step=10, beta=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=word):
        schedules.make_schedule(
            args["schedule"],
            args["target"],
            args["begin_step"],
            args["end_step"],
            beta=args["beta"],
        )


class TestReferenceLr:
    """`reference_lr_schedule` against values worked out by hand (base 0.1, E = 100, W = 5)."""

    @pytest.fixture
    def fn(self):
        return schedules.reference_lr_schedule(
            0.1, num_epochs=100, steps_per_epoch=10, warmup_epochs=5
        )

    @pytest.mark.parametrize(
        "epoch, want",
        [
            (0, 0.02),  # 0.1 * 1 / 5
            (1, 0.04),
            (4, 0.1),  # 0.1 * 5 / 5: the peak, at the last warm-up epoch
            (5, 0.05 * (1 + math.cos(math.pi * 5 / 100))),  # 0.0993844, the cosine's own value
            (50, 0.05),  # 0.05 * (1 + cos(pi / 2))
            (75, 0.0146447),  # 0.05 * (1 - sqrt(2) / 2)
            (99, 0.05 * (1 + math.cos(math.pi * 0.99))),  # 2.467e-5, the last epoch
            (100, 0.0),  # after the run
            (250, 0.0),
        ],
    )
    def test_hand_computed_at_the_start_middle_and_end_of_each_epoch(self, fn, epoch, want):
        for step in (10 * epoch, 10 * epoch + 5, 10 * epoch + 9):
            # abs: float32 rounding of 1 + cos near the end (0.1 * eps ~ 1e-8)
            assert float(fn(step)) == pytest.approx(want, rel=1e-5, abs=1e-8)

    def test_the_warm_up_replaces_the_start_of_a_cosine_over_all_epochs(self, fn):
        # Not a cosine over the remaining E - W = 95 epochs, which gives 0.0541 at epoch 50.
        other = 0.05 * (1 + math.cos(math.pi * 45 / 95))
        assert other == pytest.approx(0.0541, abs=1e-4)
        assert float(fn(500)) != pytest.approx(other, abs=1e-3)

    def test_constant_within_each_epoch_under_jit(self, fn):
        values = np.asarray(jax.jit(jax.vmap(fn))(np.arange(1000)))
        per_epoch = values.reshape(100, 10)
        assert np.all(per_epoch == per_epoch[:, :1])
        assert values.dtype == np.float32

    def test_no_warm_up(self):
        fn = schedules.reference_lr_schedule(0.4, num_epochs=8, steps_per_epoch=3, warmup_epochs=0)
        assert float(fn(0)) == pytest.approx(0.4, rel=1e-6)
        assert float(fn(12)) == pytest.approx(0.2, rel=1e-6)  # epoch 4 of 8: cos(pi/2) = 0

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(base_lr=0.0), "base_lr must be a finite number > 0, got 0.0"),
            (dict(base_lr=float("nan")), "base_lr must be a finite number > 0, got nan"),
            (dict(base_lr="0.1"), "base_lr must be a finite number > 0, got '0.1'"),
            (dict(num_epochs=0), "num_epochs must be a positive integer, got 0"),
            (dict(num_epochs=10.5), "num_epochs must be a positive integer, got 10.5"),
            (dict(steps_per_epoch=-3), "steps_per_epoch must be a positive integer, got -3"),
            (dict(steps_per_epoch=True), "steps_per_epoch must be a positive integer, got True"),
            (dict(warmup_epochs=11), r"warmup_epochs must be an integer in \[0, num_epochs=10\]"),
            (dict(warmup_epochs=-1), r"warmup_epochs must be an integer in \[0, num_epochs=10\]"),
            (dict(warmup_epochs=2.5), r"warmup_epochs .*got 2.5"),
        ],
    )
    def test_bad_arguments_name_the_value_in_one_line(self, kwargs, message):
        args = dict(base_lr=0.1, num_epochs=10, steps_per_epoch=5, warmup_epochs=5) | kwargs
        with pytest.raises(ValueError, match=message) as info:
            schedules.reference_lr_schedule(**args)
        assert "\n" not in str(info.value)

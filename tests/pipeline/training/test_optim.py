"""The schedule, the per-variable rate multipliers, the loss and the optimizer choice, as
pure functions of the config: no model is built (training/optim.py's own fast tests)."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError, OptimConfig
from pipeline.run_length import RunLength
from pipeline.training import optim

LENGTH = RunLength(steps_per_epoch=10, total_steps=50)


def _lr(step, **fields):
    return float(optim.lr_at(step, OptimConfig(**fields), LENGTH))


def _variable(path):
    return types.SimpleNamespace(path=path)


def test_warm_up_climbs_linearly_from_its_start_fraction_to_the_peak():
    cfg = dict(lr=1.0, schedule="onecycle", warmup_epochs=1.0, warmup_start_fraction=0.2)
    # 10 warm-up steps (1 epoch of 10): 0.2 + 0.8 * step / 10.
    assert [_lr(s, **cfg) for s in (0, 5, 9)] == pytest.approx([0.2, 0.6, 0.92])
    assert _lr(10, **cfg) == pytest.approx(1.0)  # the peak, where the decay starts


def test_onecycle_falls_linearly_to_its_final_fraction_and_stays_there():
    cfg = dict(lr=2.0, schedule="onecycle", warmup_epochs=1.0, final_lr_fraction=0.1)
    # From step 10 (2.0) to step 50 (0.2) over 40 steps: -0.045 a step.
    assert [_lr(s, **cfg) for s in (10, 30, 50, 80)] == pytest.approx([2.0, 1.1, 0.2, 0.2])


def test_cosine_falls_by_half_a_cosine_without_warm_up():
    cfg = dict(lr=1.0, schedule="cosine", final_lr_fraction=0.0)
    # progress = step / 50: 1 at 0, 0.5 at 25, (1 + cos(0.2 pi)) / 2 at 40, 0 at 50.
    expected = [1.0, 0.5, (1 + np.cos(0.8 * np.pi)) / 2, 0.0]
    assert [_lr(s, **cfg) for s in (0, 25, 40, 50)] == pytest.approx(expected, abs=1e-6)


def test_cosine_ends_on_its_final_fraction():
    cfg = dict(lr=2.0, schedule="cosine", final_lr_fraction=0.25)
    # final 0.5 + (2.0 - 0.5) * (1 + cos(pi * progress)) / 2: 2.0, 1.25 halfway, 0.5 at 50.
    assert [_lr(s, **cfg) for s in (0, 25, 50)] == pytest.approx([2.0, 1.25, 0.5], abs=1e-6)


def test_a_decay_of_one_step_reaches_its_final_rate_after_it():
    # 49 warm-up steps of 50: the decay spans one step, so after it (the rate a history row
    # records) the rate is final, not halfway there.
    cfg = OptimConfig(lr=1.0, schedule="onecycle", warmup_epochs=4.9, final_lr_fraction=0.1)
    assert float(optim.lr_at(50, cfg, LENGTH)) == pytest.approx(0.1)
    assert float(optim.lr_at(49, cfg, LENGTH)) == pytest.approx(1.0)


def test_constant_holds_the_peak_with_or_without_a_warm_up():
    assert [_lr(s, lr=0.3) for s in (0, 49)] == pytest.approx([0.3, 0.3])
    cfg = dict(lr=0.4, warmup_epochs=0.5, warmup_start_fraction=0.5)  # 5 steps up
    assert [_lr(s, **cfg) for s in (0, 4, 5, 40)] == pytest.approx([0.2, 0.36, 0.4, 0.4])


def test_a_fractional_warm_up_rounds_to_the_nearest_step():
    # 0.36 epochs of 10 steps: 4 steps (3.6 rounded), so step 2 is halfway up.
    assert _lr(2, lr=1.0, warmup_epochs=0.36) == pytest.approx(0.5)


def test_the_schedule_is_lr_at_and_names_its_length():
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=1.0)
    schedule = optim.Schedule(cfg, LENGTH)
    for step in (0, 7, 33):
        assert float(schedule(step)) == pytest.approx(float(optim.lr_at(step, cfg, LENGTH)))
    assert schedule.get_config() == {"total_steps": 50, "steps": 10}


def test_variables_are_told_apart_by_their_layer_and_name():
    assert optim.is_bn_shift(_variable("stage1_bn1/beta"))
    assert not optim.is_bn_shift(_variable("stage1_bn1/gamma"))
    assert optim.is_head(_variable("head/kernel")) and optim.is_head(_variable("model/head/bias"))
    assert not optim.is_head(_variable("headless/kernel")) and not optim.is_head(_variable("head"))
    assert optim.is_whitening_bias(_variable("whiten/bias"))
    assert not optim.is_whitening_bias(_variable("whiten/kernel"))
    assert not optim.is_whitening_bias(_variable("stage1_conv1/bias"))
    # Without a path, the name (its ":0" dropped) is read.
    assert optim.is_bn_shift(types.SimpleNamespace(path=None, name="bn/beta:0"))
    assert optim.is_whitening_bias(types.SimpleNamespace(name="whiten/bias:0"))


def test_rate_multipliers_are_none_when_every_variable_takes_the_base_rate():
    variables = [_variable("conv/kernel"), _variable("bn/beta"), _variable("head/kernel")]
    assert optim.rate_multipliers(variables, OptimConfig(), LENGTH) is None


def test_bn_shifts_and_the_head_take_their_own_multipliers():
    variables = [_variable("conv/kernel"), _variable("bn/beta"), _variable("head/kernel")]
    cfg = OptimConfig(bias_lr_scale=64.0, head_lr_scale=12.5)
    multipliers = optim.rate_multipliers(variables, cfg, LENGTH)
    assert [float(m) for m in multipliers(3)] == [1.0, 64.0, 12.5]


def test_the_whitening_bias_rate_falls_to_zero_at_its_freeze_whatever_the_schedule():
    variables = [_variable("whiten/bias"), _variable("conv/kernel")]
    cfg = OptimConfig(
        lr=1.0,
        schedule="onecycle",
        warmup_epochs=1.0,
        warmup_start_fraction=0.2,
        whiten_bias_lr="to_zero",
        whiten_bias_epochs=2.0,  # frozen at step 20
    )
    multipliers = optim.rate_multipliers(variables, cfg, LENGTH)
    for step in (0, 5, 10, 15, 20, 30):
        wanted = max(0.0, 1.0 - step / 20)  # lr * (1 - step / freeze)
        scale, other = (float(m) for m in multipliers(step))
        assert scale * float(optim.lr_at(step, cfg, LENGTH)) == pytest.approx(wanted, abs=1e-6), (
            step
        )
        assert other == 1.0
    # The schedule at 0 (the last step of a decay to 0): no division by zero.
    ends_at_zero = OptimConfig(
        lr=1.0, schedule="onecycle", whiten_bias_lr="to_zero", whiten_bias_epochs=10.0
    )
    at_end = optim.rate_multipliers(variables, ends_at_zero, LENGTH)(50)
    assert float(at_end[0]) == 0.0


def test_cross_entropy_in_float32_with_and_without_label_smoothing():
    labels = tf.constant([0, 2])
    logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], tf.bfloat16)
    log_p = tf.nn.log_softmax(tf.cast(logits, tf.float32)).numpy()
    plain = optim.cross_entropy(labels, logits, 3)
    assert plain.dtype == tf.float32
    np.testing.assert_allclose(plain.numpy(), -log_p[[0, 1], [0, 2]], rtol=1e-6)
    # Smoothing 0.3 over 3 classes: target 0.8 on the label, 0.1 on each other class.
    smoothed = optim.cross_entropy(labels, logits, 3, smoothing=0.3).numpy()
    target = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    np.testing.assert_allclose(smoothed, -(target * log_p).sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize(
    "name, kind, nesterov",
    [
        ("sgd", keras.optimizers.SGD, False),
        ("nesterov", keras.optimizers.SGD, True),
        ("adam", keras.optimizers.Adam, None),
        ("adamw", keras.optimizers.AdamW, None),
    ],
)
def test_each_optimizer_name_makes_its_optimizer_on_the_schedule(name, kind, nesterov):
    cfg = OptimConfig(optimizer=name, lr=0.5, momentum=0.9, weight_decay=0.01)
    made = optim.make_optimizer(cfg, LENGTH)
    assert type(made) is kind
    assert isinstance(made._learning_rate, optim.Schedule)  # the schedule, not a value
    assert made.weight_decay == pytest.approx(0.01)
    if nesterov is not None:
        assert made.nesterov is nesterov and made.momentum == pytest.approx(0.9)
    assert not made.use_ema


def test_no_weight_decay_is_none_and_an_ema_is_kept_by_the_optimizer():
    made = optim.make_optimizer(OptimConfig(ema_decay=0.99), LENGTH)
    assert made.weight_decay is None
    assert made.use_ema and made.ema_momentum == pytest.approx(0.99)


def test_muon_takes_its_filter_rate_as_a_scale_of_the_base_rate():
    cfg = OptimConfig(optimizer="muon", lr=0.1, muon_lr=0.25, momentum=0.8, muon_momentum=0.6)
    made = optim.make_optimizer(cfg, LENGTH)
    assert made.muon_lr_scale == pytest.approx(2.5)
    # The filters' momentum is Muon's own; the other variables' is SGD's.
    assert made.momentum == pytest.approx(0.6) and made.sgd_momentum == pytest.approx(0.8)


@pytest.mark.parametrize("lr, muon_lr", [(0.1, 0.0), (0.0, 0.24)])
def test_muon_needs_both_rates_above_zero(lr, muon_lr):
    cfg = OptimConfig(optimizer="muon", lr=lr, muon_lr=muon_lr)
    with pytest.raises(ConfigError, match="muon_lr.*above 0.*--set optim.muon_lr"):
        optim.make_optimizer(cfg, LENGTH)

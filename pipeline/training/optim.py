"""Optimizer, learning-rate schedule and loss from config; schedules are pure step functions."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from pipeline.config import Config, ConfigError, OptimConfig
from pipeline.run_length import RunLength
from pipeline.training import muon, precision


def lr_at(step, cfg: OptimConfig, length: RunLength):
    """The learning rate at `step` (0-based): a linear warm-up from `warmup_start_fraction`
    of the peak at step 0 to the peak at step `warmup`, then the schedule's decay (airbench94's
    `get_lr`: 0.2 + 0.8 * step / warmup, then 1 - 0.93 * (step - warmup) / (total - warmup))."""
    step = tf.cast(step, tf.float32)
    total_steps = length.total_steps
    warmup = float(length.steps_for(cfg.warmup_epochs, at_least=0))
    peak, final = cfg.lr, cfg.lr * cfg.final_lr_fraction
    start = cfg.warmup_start_fraction
    # Only read while step < warmup, so warmup >= 1 there (without one it is not read).
    # The minimum changes no value here, but without it the traced step folds the product
    # differently and the losses move in their last bits.
    up = peak * (start + (1.0 - start) * tf.minimum(1.0, step / max(warmup, 1.0)))
    progress = tf.clip_by_value((step - warmup) / max(total_steps - warmup, 1.0), 0.0, 1.0)
    if cfg.schedule == "cosine":
        down = final + (peak - final) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif cfg.schedule == "onecycle":  # linear up, linear down (airbench's triangle)
        down = peak + (final - peak) * progress
    else:
        down = peak * tf.ones_like(progress)
    return tf.where(step < warmup, up, down)


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, cfg: OptimConfig, length: RunLength):
        self.cfg, self.length = cfg, length

    def __call__(self, step):
        return lr_at(step, self.cfg, self.length)

    def get_config(self):
        return {"total_steps": self.length.total_steps, "steps": self.length.steps_per_epoch}


def build_optimizer(cfg: Config, length: RunLength):
    """The run's optimizer: its schedule over `length`, and loss scaling for float16.

    The one place an optimizer is made (the loop, model.fit, the benchmark, the profiler).
    Call it under the strategy's scope, so its slots live where the model's weights do.
    """
    return precision.wrap_optimizer(make_optimizer(cfg.optim, length), cfg.train.precision)


def make_optimizer(cfg: OptimConfig, length: RunLength):
    lr = Schedule(cfg, length)
    common = {"learning_rate": lr, "weight_decay": cfg.weight_decay or None}
    if cfg.ema_decay:
        # Weights' EMA kept by the optimizer; swapped in by `finalize_variable_values`.
        common.update(use_ema=True, ema_momentum=cfg.ema_decay)
    if cfg.optimizer in ("sgd", "nesterov"):
        return keras.optimizers.SGD(
            momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov", **common
        )
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(**common)
    if cfg.optimizer == "muon":
        if cfg.muon_lr <= 0 or cfg.lr <= 0:
            raise ConfigError(
                "optim.optimizer=muon needs optim.muon_lr (the filters' rate) and optim.lr "
                f"(the other variables') above 0; got {cfg.muon_lr} and {cfg.lr}: e.g. --set "
                "optim.muon_lr=0.24"
            )
        return muon.FilterMuon(
            muon_lr_scale=cfg.muon_lr / cfg.lr,
            momentum=cfg.momentum,
            muon_momentum=cfg.muon_momentum,
            **common,
        )
    return keras.optimizers.AdamW(**{**common, "weight_decay": cfg.weight_decay})


def is_bn_shift(variable) -> bool:
    """A batch norm's learned shift (beta): what airbench94's 64x rate applies to. Other
    biases (the whitening stem's) learn at the base rate, as airbench94's do."""
    return _variable_name(variable) == "beta"


def is_head(variable) -> bool:
    """The classifier head's weights (the `head` layer of custom_convnet)."""
    return _layer_name(variable) == "head"


def is_whitening_bias(variable) -> bool:
    return _layer_name(variable) == "whiten" and _variable_name(variable) == "bias"


def _path(variable) -> list[str]:
    return (getattr(variable, "path", None) or variable.name).split(":")[0].split("/")


def _variable_name(variable) -> str:
    return _path(variable)[-1]


def _layer_name(variable) -> str:
    parts = _path(variable)
    return parts[-2] if len(parts) > 1 else ""


def rate_multipliers(variables: list, cfg: OptimConfig, length: RunLength):
    """Per-variable learning-rate multipliers at a step, as `multipliers(step) -> list`, or
    None when every one is 1. The step applies them to the gradients: for SGD with momentum
    that is the same as scaling the rate, and decoupled decay stays at the base rate, as
    airbench's does.

    BN shifts take `bias_lr_scale`, the head `head_lr_scale`; with `whiten_bias_lr="to_zero"`
    the whitening bias's rate falls linearly from the peak to 0 at its freeze
    (airbench94_muon: `lr * (1 - step / whiten_bias_train_steps)`), whatever the schedule.
    """
    constant_scales = [
        cfg.bias_lr_scale if is_bn_shift(v) else cfg.head_lr_scale if is_head(v) else 1.0
        for v in variables
    ]
    ramp = [cfg.whiten_bias_lr == "to_zero" and is_whitening_bias(v) for v in variables]
    if not any(ramp):
        return None if all(k == 1.0 for k in constant_scales) else lambda step: constant_scales
    freeze = float(length.steps_for(cfg.whiten_bias_epochs))

    def multipliers(step):
        step = tf.cast(step, tf.float32)
        # The wanted rate over the schedule's: the step scales by the schedule already.
        to_zero = tf.math.divide_no_nan(
            cfg.lr * tf.maximum(0.0, 1.0 - step / freeze), lr_at(step, cfg, length)
        )
        return [to_zero if r else k for k, r in zip(constant_scales, ramp, strict=True)]

    return multipliers


def cross_entropy(
    labels: tf.Tensor, logits: tf.Tensor, num_classes: int, smoothing: float = 0.0
) -> tf.Tensor:
    """Per-example softmax cross-entropy in float32, with optional label smoothing."""
    logits = tf.cast(logits, tf.float32)
    if smoothing == 0.0:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    target = tf.one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(target, logits)

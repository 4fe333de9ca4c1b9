"""Optimizer, learning-rate schedule and loss from config; schedules are pure step functions."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from pipeline.config import Config, OptimConfig
from pipeline.run_length import RunLength
from pipeline.training import precision


def lr_at(step, cfg: OptimConfig, length: RunLength):
    """The learning rate at `step` (0-based): a linear warm-up from `warmup_start_fraction`
    of the peak at step 0 to the peak at step `warmup`, then the schedule's decay (airbench94's
    `get_lr`: 0.2 + 0.8 * step / warmup, then 1 - 0.93 * (step - warmup) / (total - warmup))."""
    step = tf.cast(step, tf.float32)
    total_steps = length.total_steps
    warmup = float(round(cfg.warmup_epochs * length.steps_per_epoch))
    peak, final = cfg.lr, cfg.lr * cfg.final_lr_fraction
    if cfg.schedule == "constant" and warmup == 0:
        return tf.fill([], tf.constant(peak, tf.float32))
    start = cfg.warmup_start_fraction
    up = peak * (start + (1.0 - start) * tf.minimum(1.0, step / max(warmup, 1.0)))
    progress = tf.clip_by_value((step - warmup) / max(total_steps - warmup, 1.0), 0.0, 1.0)
    if cfg.schedule == "cosine":
        down = final + (peak - final) * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif cfg.schedule == "onecycle":  # linear up, linear down (airbench's triangle)
        down = peak + (final - peak) * progress
    else:
        down = tf.fill([], tf.constant(peak, tf.float32))
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
    return keras.optimizers.AdamW(**{**common, "weight_decay": cfg.weight_decay})


def cross_entropy(
    labels: tf.Tensor, logits: tf.Tensor, num_classes: int, smoothing: float = 0.0
) -> tf.Tensor:
    """Per-example softmax cross-entropy in float32, with optional label smoothing."""
    logits = tf.cast(logits, tf.float32)
    if smoothing == 0.0:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    target = tf.one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(target, logits)

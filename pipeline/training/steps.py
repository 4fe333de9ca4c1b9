"""The compiled steps every model trains and evaluates through: `make_train_step`,
`make_eval_step`, BN recalibration, test-time augmentation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pipeline.config import Config
from pipeline.data.datasets import Inputs
from pipeline.run_length import RunLength
from pipeline.training import optim


def trainable(model) -> list:
    return list(model.trainable_variables)


def _regularisation(model) -> tf.Tensor | float:
    losses = getattr(model, "losses", None)
    return tf.add_n([tf.cast(v, tf.float32) for v in losses]) if losses else 0.0


def _step_totals(per_example: tf.Tensor, logits: tf.Tensor, y: tf.Tensor) -> tuple:
    """(loss sum, correct predictions, examples) of one replica's batch."""
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), y), tf.float32))
    return tf.reduce_sum(per_example), correct, tf.cast(tf.size(y), tf.float32)


def make_train_step(
    model,
    optimizer,
    inputs: Inputs,
    cfg: Config,
    strategy: tf.distribute.Strategy,
    length: RunLength,
    stop_flag: tf.Variable | None = None,
) -> Callable:
    """Returns `train_steps(iterator, n) -> ((loss_sum, correct, count), step_losses)`,
    compiled, for a run of `length` (what step-dependent rate multipliers need);
    `step_losses` holds each step's mean training loss, for the per-step curve.

    Runs `n` steps in one `tf.function` call (fewer Python round trips). Each replica's
    loss is its per-example losses summed and divided by the GLOBAL batch, so the sum the
    optimizer all-reduces is the global mean gradient, whatever the replica count.

    With `stop_flag` (a boolean variable that something outside may set at any time), a
    call ends early, before the first step that starts after the flag is set; every
    worker of a cluster agrees on that step. `count` / global batch is the steps done.
    """
    global_batch = float(cfg.data.batch_size)
    replicas = strategy.num_replicas_in_sync
    on_device = cfg.data.augment_on_device
    num_classes, smoothing = cfg.model.num_classes, cfg.optim.label_smoothing
    variables = trainable(model)
    # Some variables learn at a multiple of the rate (airbench: BN shifts at 64x), by
    # scaling their gradients: the same for SGD with momentum (not for Adam).
    multipliers = optim.rate_multipliers(variables, cfg.optim, length)

    def gradients(x, y):
        if on_device:
            x = inputs.device_preprocess(*x)
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            per_example = optim.cross_entropy(y, logits, num_classes, smoothing)
            loss = tf.reduce_sum(per_example) / global_batch
            loss += _regularisation(model) / replicas
            scaled = optimizer.scale_loss(loss)
        return tape.gradient(scaled, variables), _step_totals(per_example, logits, y)

    if cfg.train.jit_compile:
        # XLA fuses the whole forward and backward pass; the optimizer's cross-replica
        # all-reduce stays outside the cluster.
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(x, y):
        grads, totals = gradients(x, y)
        if multipliers is not None:
            scales = multipliers(optimizer.iterations)
            # A multiplier of exactly 1 (a Python float) costs nothing: most variables.
            grads = [
                g if isinstance(k, float) and k == 1.0 else g * k
                for g, k in zip(grads, scales, strict=True)
            ]
        optimizer.apply(grads, variables)
        return totals

    stop_requested = agreed_flag(stop_flag, strategy)

    @tf.function
    def train_steps(iterator, n):
        totals = tf.zeros([3])
        losses = tf.TensorArray(tf.float32, size=0, dynamic_size=True)
        for i in tf.range(n):
            if stop_requested():
                break
            x, y = next(iterator)
            out = strategy.run(replica_step, args=(x, y))
            step = tf.stack([strategy.reduce("SUM", v, axis=None) for v in out])
            losses = losses.write(i, step[0] / step[2])
            totals += step
        return totals, losses.stack()

    return train_steps


def agreed_flag(flag: tf.Variable | None, strategy: tf.distribute.Strategy) -> Callable:
    """A graph-side reader of `flag`: False without one; on several workers, True when any
    worker's flag is set (a sum over replicas), so all of them stop at the same step."""
    if flag is None:
        return lambda: tf.constant(False)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return flag.read_value

    def any_worker():
        per_replica = strategy.run(lambda: tf.cast(flag.read_value(), tf.float32))
        return strategy.reduce("SUM", per_replica, axis=None) > 0

    return any_worker


def make_eval_step(
    model, cfg: Config, strategy: tf.distribute.Strategy, tta: str = "none"
) -> Callable:
    """Returns `eval_step(x, y) -> (loss_sum, correct, count)`, compiled."""
    num_classes = cfg.model.num_classes

    def replica_step(x, y):
        logits = predict_logits(model, x, tta)
        return _step_totals(optim.cross_entropy(y, logits, num_classes), logits, y)

    @tf.function
    def eval_step(x, y):
        out = strategy.run(replica_step, args=(x, y))
        return tf.stack([strategy.reduce("SUM", v, axis=None) for v in out])

    return eval_step


def make_bn_recalibration(model, inputs: Inputs, cfg: Config, strategy) -> Callable:
    """Returns `recalibrate()`: forward passes in training mode over the first
    `bn_recalibration_batches` eval-size batches of training images (no augmentation,
    no gradients), so BN's running statistics match the current weights.

    With fast-moving weights (high learning rate, 64x BN-shift rate) the running averages
    lag the weights and evaluation suffers (measured in docs/experiments.md).
    """
    batches = cfg.train.bn_recalibration_batches

    @tf.function
    def forward(x):
        strategy.run(lambda x: model(x, training=True), args=(x,))

    def recalibrate():
        if not batches:
            return
        data = inputs.eval_dataset("train").take(batches)
        for x, _ in strategy.experimental_distribute_dataset(data):
            forward(x)

    return recalibrate


def predict_logits(model, x: tf.Tensor, tta: str = "none") -> tf.Tensor:
    """float32 logits, averaged over test-time augmentations: "flip" adds the mirror image,
    "flip_translate" also 1 px shifts of both, up-left and down-right (reflect padding).

    As airbench94 weighs them, the untranslated pair counts for half and the four shifted
    views for the other half (measured: docs/experiments.md, "TTA view weights").
    """
    logits = lambda v: tf.cast(model(v, training=False), tf.float32)  # noqa: E731
    if tta == "none":
        return logits(x)
    flip_mean = lambda v: (logits(v) + logits(tf.reverse(v, axis=[2]))) / 2  # noqa: E731
    if tta == "flip":
        return flip_mean(x)
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    shifted = (flip_mean(padded[:, :-2, :-2]) + flip_mean(padded[:, 2:, 2:])) / 2
    return (flip_mean(x) + shifted) / 2


def evaluate(eval_step: Callable, dataset, strategy) -> dict:
    """Mean loss and accuracy of `eval_step` over `dataset`, distributed by `strategy`."""
    totals = np.zeros(3)
    for x, y in strategy.experimental_distribute_dataset(dataset):
        totals += eval_step(x, y).numpy()
    return {"loss": totals[0] / max(totals[2], 1), "accuracy": totals[1] / max(totals[2], 1)}

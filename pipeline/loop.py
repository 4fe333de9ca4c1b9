"""The one training loop: compiled train / eval steps and `fit`, for every model and strategy."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import distribute, optim, precision
from pipeline.config import Config
from pipeline.input import Inputs


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last good checkpoint is kept."""


def _trainable(model) -> list:
    return list(model.trainable_variables)


def _is_bias(variable) -> bool:
    name = getattr(variable, "path", None) or variable.name
    return name.split("/")[-1].split(":")[0] in ("bias", "beta")


def _regularisation(model) -> tf.Tensor | float:
    losses = getattr(model, "losses", None)
    return tf.add_n([tf.cast(v, tf.float32) for v in losses]) if losses else 0.0


def _step_totals(per_example: tf.Tensor, logits: tf.Tensor, y: tf.Tensor) -> tuple:
    """(loss sum, correct predictions, examples) of one replica's batch."""
    correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, tf.int32), y), tf.float32))
    return tf.reduce_sum(per_example), correct, tf.cast(tf.size(y), tf.float32)


def make_train_step(
    model, optimizer, inputs: Inputs, cfg: Config, strategy: tf.distribute.Strategy
) -> Callable:
    """Returns `train_steps(iterator, n) -> (loss_sum, correct, count)`, compiled.

    Runs `n` steps in one `tf.function` call (fewer Python round trips). Each replica's
    loss is its per-example losses summed and divided by the GLOBAL batch, so the sum the
    optimizer all-reduces is the global mean gradient, whatever the replica count.
    """
    global_batch = float(cfg.data.batch_size)
    replicas = strategy.num_replicas_in_sync
    on_device = cfg.data.augment_on_device
    num_classes, smoothing = cfg.model.num_classes, cfg.optim.label_smoothing
    variables = _trainable(model)
    # Biases and BN shifts may learn faster (airbench: 64x). Scaling their gradients is the
    # same as scaling their learning rate for SGD with momentum (not for Adam).
    grad_scales = [cfg.optim.bias_lr_scale if _is_bias(v) else 1.0 for v in variables]
    scale_grads = cfg.optim.bias_lr_scale != 1.0

    def gradients(x, y):
        if on_device:
            x = inputs.device_preprocess(*x)
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            per_example = optim.cross_entropy(y, logits, num_classes, smoothing)
            loss = tf.reduce_sum(per_example) / global_batch
            loss += _regularisation(model) / replicas
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        if scale_grads:
            grads = [g * k if k != 1.0 else g for g, k in zip(grads, grad_scales, strict=True)]
        return grads, _step_totals(per_example, logits, y)

    if cfg.train.jit_compile:
        # XLA fuses the whole forward and backward pass; the optimizer's cross-replica
        # all-reduce stays outside the cluster.
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(x, y):
        grads, totals = gradients(x, y)
        optimizer.apply(grads, variables)
        return totals

    @tf.function
    def train_steps(iterator, n):
        totals = tf.zeros([3])
        for _ in tf.range(n):
            x, y = next(iterator)
            out = strategy.run(replica_step, args=(x, y))
            totals += tf.stack([strategy.reduce("SUM", v, axis=None) for v in out])
        return totals

    return train_steps


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
    lag the weights and evaluation suffers; measured on the challenge recipe at epoch 4:
    val accuracy 34% with the trained averages, 81% after 3 batches of 1,000 images.
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
    "flip_translate" also 1 px shifts of both (reflect padding)."""
    if tta == "none":
        return tf.cast(model(x, training=False), tf.float32)
    views = [x, tf.reverse(x, axis=[2])]
    if tta == "flip_translate":
        padded = [tf.pad(v, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT") for v in views]
        views += [p[:, :-2, :-2] for p in padded] + [p[:, 2:, 2:] for p in padded]
    return tf.add_n([tf.cast(model(v, training=False), tf.float32) for v in views]) / len(views)


def evaluate(eval_step: Callable, dataset, strategy) -> dict:
    totals = np.zeros(3)
    for x, y in strategy.experimental_distribute_dataset(dataset):
        totals += eval_step(x, y).numpy()
    return {"loss": totals[0] / max(totals[2], 1), "accuracy": totals[1] / max(totals[2], 1)}


def _progress_bar(cfg: Config, steps: int):
    mode = cfg.train.progress
    show = mode == "bar" or (mode == "auto" and sys.stdout.isatty())
    return keras.utils.Progbar(steps, verbose=1 if show else 0, stateful_metrics=["loss", "acc"])


def _write_json(path: Path, payload) -> None:
    # Write then rename: a kill mid-write never leaves a half file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


class _Outputs:
    """Checkpoints, history, TensorBoard and curves under `out_dir`; only the chief writes."""

    def __init__(self, out_dir: str | None, chief: bool, keep: int, checkpoint):
        self.dir = Path(out_dir) if out_dir else None
        self.chief = chief
        self.manager = None
        if self.dir:
            ckpt_dir = self.dir / "checkpoints"
            if not chief:  # non-chief workers must save too (collectives), somewhere private
                ckpt_dir = Path(tempfile.mkdtemp(prefix="cifar-worker-ckpt-"))
            self.manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=keep)
            self.writer = (
                tf.summary.create_file_writer(str(self.dir / "tensorboard")) if chief else None
            )

    def restore(self) -> list[dict]:
        # Every worker restores the chief's latest checkpoint, so all resume at one epoch.
        latest = self.dir and tf.train.latest_checkpoint(str(self.dir / "checkpoints"))
        if not latest:
            return []
        self.manager.checkpoint.restore(latest)
        history_path = self.dir / "history.json"
        return json.loads(history_path.read_text()) if history_path.is_file() else []

    def epoch_end(self, history: list[dict], save: bool) -> None:
        if not self.dir:
            return
        if self.chief:
            _write_json(self.dir / "history.json", history)
            with self.writer.as_default(step=len(history)):
                for key, value in history[-1].items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        tf.summary.scalar(key, value)
            self.writer.flush()
            from pipeline.report import plot_curves  # noqa: PLC0415 - matplotlib is slow to import

            plot_curves(history, self.dir / "curves.png")
        if save:
            self.manager.save(checkpoint_number=len(history))


def build_optimizer(cfg: Config, total_steps: int, steps_per_epoch: int):
    """The run's optimizer: its schedule over `total_steps`, and loss scaling for float16.

    Call it under the strategy's scope, so its slots live where the model's weights do.
    """
    return precision.wrap_optimizer(
        optim.make_optimizer(cfg.optim, total_steps, steps_per_epoch), cfg.train.precision
    )


def steps_per_epoch(inputs: Inputs, tcfg) -> int:
    """Full batches per epoch, cut to `train.steps_per_epoch` when that is set."""
    steps = inputs.steps_per_epoch
    return min(steps, tcfg.steps_per_epoch) if tcfg.steps_per_epoch else steps


def fit(
    model,
    inputs: Inputs,
    cfg: Config,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: list | None = None,
    log: Callable[[str], None] = print,
    initial_epoch: int = 0,
) -> dict:
    """Trains `model` (built under `strategy.scope()`) for `cfg.train.epochs` epochs.

    Resumes from the latest checkpoint in `cfg.train.out_dir` when there is one, else
    starts at `initial_epoch` (keras-tuner's Hyperband continues trials this way).

    Returns:
        {"history": [per-epoch dicts], "val_accuracy", "test_accuracy", ...}.

    Raises:
        NonFiniteLossError: when the training loss becomes NaN or inf; the last good
            checkpoint is kept.
    """
    strategy = strategy or tf.distribute.get_strategy()
    tcfg = cfg.train
    steps = steps_per_epoch(inputs, tcfg)
    total_steps = steps * tcfg.epochs
    with strategy.scope():
        optimizer = build_optimizer(cfg, total_steps, steps)
        optimizer.build(_trainable(model))
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
    outputs = _Outputs(
        tcfg.out_dir, distribute.is_chief(strategy), tcfg.keep_checkpoints, checkpoint
    )
    history = outputs.restore()[: int(epoch_var.numpy())]
    if not history and initial_epoch:
        epoch_var.assign(initial_epoch)
    start = int(epoch_var.numpy())
    if start:
        log(f"resuming from the checkpoint of epoch {start} in {tcfg.out_dir}")

    train_steps = make_train_step(model, optimizer, inputs, cfg, strategy)
    eval_step = make_eval_step(model, cfg, strategy, tcfg.tta)
    plain_eval = eval_step if tcfg.tta == "none" else make_eval_step(model, cfg, strategy)
    recalibrate = make_bn_recalibration(model, inputs, cfg, strategy)
    callback_list = keras.callbacks.CallbackList(
        callbacks or [],
        model=model if isinstance(model, keras.Model) else None,
        epochs=tcfg.epochs,
        steps=steps,
    )
    # Each epoch's order is a function of (seed, epoch), so starting the dataset at `start`
    # gives a resumed run the very batches an uninterrupted one would have seen.
    train_data = strategy.distribute_datasets_from_function(
        inputs.train_dataset_fn(start, tcfg.epochs)
    )
    iterator = iter(train_data)
    chunk = max(1, min(steps, 50))
    has_val = len(inputs.splits.val.labels) > 0
    callback_list.on_train_begin()
    wall = time.perf_counter()
    train_seconds = 0.0
    for epoch in range(start, tcfg.epochs):
        callback_list.on_epoch_begin(epoch)
        bar = _progress_bar(cfg, steps)
        totals = np.zeros(3)
        t0 = time.perf_counter()
        done = 0
        while done < steps:
            n = min(chunk, steps - done)
            totals += train_steps(iterator, tf.constant(n)).numpy()
            done += n
            loss = totals[0] / totals[2]
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"training loss became {loss} at epoch {epoch + 1}, step {done}: lower the "
                    "learning rate (--lr) or use float32; "
                    + (
                        f"the last good checkpoint (epoch {epoch}) is kept in {tcfg.out_dir}"
                        if tcfg.out_dir
                        else "nothing was saved (no --out)"
                    )
                )
            bar.update(done, [("loss", loss), ("acc", totals[1] / totals[2])])
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        row = {
            "epoch": epoch + 1,
            "train_loss": totals[0] / totals[2],
            "train_accuracy": totals[1] / totals[2],
            "seconds": seconds,
            "lr": float(optim.lr_at(optimizer.iterations, cfg.optim, total_steps, steps)),
        }
        recalibrate()
        if has_val:
            val = evaluate(eval_step, inputs.eval_dataset("val"), strategy)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        history.append(row)
        epoch_var.assign(epoch + 1)
        last = epoch + 1 == tcfg.epochs
        outputs.epoch_end(history, save=last or (epoch + 1 - start) % tcfg.checkpoint_every == 0)
        log(_summary(row, tcfg.epochs))
        callback_list.on_epoch_end(epoch, {k: v for k, v in row.items() if k != "epoch"})
    callback_list.on_train_end()
    if cfg.optim.ema_decay:
        # Evaluate the exponential moving average of the weights, not the last step's.
        optimizer.finalize_variable_values(_trainable(model))
        recalibrate()
    result = {"history": history, "wall_seconds": time.perf_counter() - wall}
    images = (tcfg.epochs - start) * steps * cfg.data.batch_size
    result["train_images_per_second"] = images / train_seconds if train_seconds else None
    if history and "val_accuracy" in history[-1]:
        result["val_accuracy"] = history[-1]["val_accuracy"]
    if len(inputs.splits.test.labels):
        test = evaluate(eval_step, inputs.eval_dataset("test"), strategy)
        result.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
        if tcfg.tta != "none":
            result["test_accuracy_no_tta"] = evaluate(
                plain_eval, inputs.eval_dataset("test"), strategy
            )["accuracy"]
    return result


def _summary(row: dict, epochs: int) -> str:
    text = (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.4f}"
    )
    if "val_accuracy" in row:
        text += f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
    return text + f"  {row['seconds']:.1f}s"

"""The same model, data, optimizer and loss through Keras's own `model.compile` +
`model.fit` (`--loop fit`), for comparison with the project's loop, as the notebook does
both; its history has the loop's format."""

from __future__ import annotations

import time

import keras
import tensorflow as tf

from pipeline.config import Config
from pipeline.data.datasets import Inputs
from pipeline.errors import UserError
from pipeline.run_length import RunLength
from pipeline.training import optim


class KerasFitError(UserError):
    """--loop fit was asked for something Keras's model.fit cannot do here."""


def fit_with_keras(
    model, inputs: Inputs, cfg: Config, strategy, log=print, length: RunLength | None = None
) -> dict:
    """The same model, data and optimizer through `model.compile` + `model.fit`, for comparison
    with the project's loop (the notebook does both). Keras's loop, not a second one of ours."""
    if not isinstance(model, keras.Model):
        raise KerasFitError(
            f"--loop fit needs a keras.Model; {cfg.model.name} is a tf.Module "
            "(a low-level variant): use --loop custom."
        )
    ignored = {
        "data.augment_on_device": cfg.data.augment_on_device,
        "train.tta": cfg.train.tta != "none",
        "optim.bias_lr_scale": cfg.optim.bias_lr_scale != 1.0,
        "optim.head_lr_scale": cfg.optim.head_lr_scale != 1.0,
        "optim.whiten_bias_lr": cfg.optim.whiten_bias_lr != "schedule",
        "optim.ema_decay": cfg.optim.ema_decay != 0.0,
        "train.bn_recalibration_batches": cfg.train.bn_recalibration_batches != 0,
        "optim.lookahead_every_steps": cfg.optim.lookahead_every_steps != 0,
        "optim.whiten_bias_epochs": cfg.optim.whiten_bias_epochs != 0,
        "train.epochs": cfg.train.epochs != int(cfg.train.epochs),  # model.fit: whole epochs
    }
    asked = [key for key, on in ignored.items() if on]
    if asked:
        raise KerasFitError(
            f"--loop fit (Keras's model.fit) cannot apply {', '.join(asked)}: use --loop "
            "custom, or reset them (e.g. --set optim.bias_lr_scale=1)"
        )
    length = length or inputs.length_for_config(cfg.train)
    steps, epochs = length.steps_per_epoch, length.epochs
    with strategy.scope():
        model.compile(
            optimizer=optim.build_optimizer(cfg, length),
            loss=loss_fn(cfg),
            metrics=["accuracy"],
        )
    train_ds = inputs.train_dataset_fn(length)(None)
    has_val = len(inputs.splits.val.labels) > 0
    t0 = time.perf_counter()
    keras_history = model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=inputs.eval_dataset("val") if has_val else None,
        verbose=2 if cfg.train.progress != "none" else 0,
    )
    seconds = time.perf_counter() - t0
    h = keras_history.history
    history = [
        {
            "epoch": e + 1,
            "train_loss": h["loss"][e],
            "train_accuracy": h["accuracy"][e],
            **(
                {"val_loss": h["val_loss"][e], "val_accuracy": h["val_accuracy"][e]}
                if has_val
                else {}
            ),
            "seconds": seconds / epochs,
        }
        for e in range(epochs)
    ]
    result = {
        "history": history,
        "train_images_per_second": steps * epochs * cfg.data.batch_size / seconds,
    }
    if has_val:
        result["val_accuracy"] = history[-1]["val_accuracy"]
    if len(inputs.splits.test.labels):
        test_loss, test_acc = model.evaluate(inputs.eval_dataset("test"), verbose=0)
        result.update(test_loss=test_loss, test_accuracy=test_acc)
    return result


def loss_fn(cfg: Config):
    # The loop's own loss function, so both loops optimise the same objective.
    def loss(y, logits):
        return optim.cross_entropy(
            tf.cast(tf.reshape(y, [-1]), tf.int32),
            logits,
            cfg.model.num_classes,
            cfg.optim.label_smoothing,
        )

    return loss

"""The one training loop: a `Trainer` that owns the compiled steps and trains an epoch,
and `fit`, the controller that restores, trains epoch by epoch, records and reports.

Every model, strategy, precision and the tuner's trials go through `fit`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import Config, TrainConfig
from pipeline.data.datasets import Inputs
from pipeline.errors import NonFiniteLossError
from pipeline.run_length import RunLength
from pipeline.training import distribute, optim, steps
from pipeline.training.run_dir import RunDirectory

STEPS_PER_CALL = 50  # train steps per tf.function call: fewer Python round trips


class Trainer:
    """A model with its optimizer, compiled steps and training data, for one run length.

    `checkpoint` holds everything a resume needs (model, optimizer, epochs done); `start`
    positions the data at an epoch; `train_epoch` trains one and evaluates on val.
    """

    def __init__(self, model, inputs: Inputs, cfg: Config, strategy, length: RunLength):
        self.model, self.inputs, self.cfg = model, inputs, cfg
        self.strategy, self.length = strategy, length
        with strategy.scope():
            self.optimizer = optim.build_optimizer(cfg, length)
            self.optimizer.build(steps.trainable(model))
            self._epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=self.optimizer, epoch=self._epochs_done
        )
        self._train_steps = steps.make_train_step(model, self.optimizer, inputs, cfg, strategy)
        self._eval_steps: dict[str, Callable] = {}
        self._recalibrate = steps.make_bn_recalibration(model, inputs, cfg, strategy)
        self._iterator = None
        self.train_seconds = 0.0
        self.trained_images = 0

    @property
    def epochs_done(self) -> int:
        return int(self._epochs_done.numpy())

    def start(self, epoch: int) -> None:
        """Positions the training data at `epoch`: each epoch's batches are a function of
        (seed, epoch), so a resumed run sees the very batches an uninterrupted one would."""
        self._epochs_done.assign(epoch)
        data = self.strategy.distribute_datasets_from_function(
            self.inputs.train_dataset_fn(self.length, epoch)
        )
        self._iterator = iter(data)

    def train_epoch(self, progress: keras.utils.Progbar | None = None) -> dict:
        """Trains the next epoch, then scores val; returns its history row.

        Raises:
            NonFiniteLossError: when the training loss becomes NaN or inf.
        """
        epoch, n_steps = self.epochs_done, self.length.steps_per_epoch
        totals, done = np.zeros(3), 0
        t0 = time.perf_counter()
        while done < n_steps:
            n = min(STEPS_PER_CALL, n_steps - done)
            totals += self._train_steps(self._iterator, tf.constant(n)).numpy()
            done += n
            loss = totals[0] / totals[2]
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"training loss became {loss} at epoch {epoch + 1}, step {done}: lower the "
                    "learning rate (--lr) or use float32"
                )
            if progress is not None:
                progress.update(done, [("loss", loss), ("acc", totals[1] / totals[2])])
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        self.trained_images += n_steps * self.cfg.data.batch_size
        row = {
            "epoch": epoch + 1,
            "train_loss": totals[0] / totals[2],
            "train_accuracy": totals[1] / totals[2],
            "seconds": seconds,
            "lr": float(optim.lr_at(self.optimizer.iterations, self.cfg.optim, self.length)),
        }
        self._recalibrate()
        if self._has("val"):
            val = self.evaluate("val")
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        self._epochs_done.assign(epoch + 1)
        return row

    def evaluate(self, split: str, tta: str | None = None) -> dict:
        """{"loss", "accuracy"} on `split`, with the run's test-time augmentation unless
        `tta` says otherwise."""
        tta = self.cfg.train.tta if tta is None else tta
        if tta not in self._eval_steps:
            self._eval_steps[tta] = steps.make_eval_step(self.model, self.cfg, self.strategy, tta)
        dataset = self.inputs.eval_dataset(split)
        return steps.evaluate(self._eval_steps[tta], dataset, self.strategy)

    def final_weights(self) -> None:
        """Swaps in the weights the run is judged by: the EMA's when the recipe keeps one
        (with BN statistics refreshed for them); otherwise the last step's, unchanged."""
        if self.cfg.optim.ema_decay:
            self.optimizer.finalize_variable_values(steps.trainable(self.model))
            self._recalibrate()

    def finish(self) -> dict:
        """Final weights (see `final_weights`) and the run's summary figures."""
        self.final_weights()
        result = {
            "train_images_per_second": (
                self.trained_images / self.train_seconds if self.train_seconds else None
            )
        }
        if self._has("test"):
            test = self.evaluate("test")
            result.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
            if self.cfg.train.tta != "none":
                result["test_accuracy_no_tta"] = self.evaluate("test", tta="none")["accuracy"]
        return result

    def _has(self, split: str) -> bool:
        return len(getattr(self.inputs.splits, split).labels) > 0


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
        {"history": [per-epoch rows], "val_accuracy", "test_accuracy", ...}.

    Raises:
        NonFiniteLossError: when the training loss becomes NaN or inf; the last good
            checkpoint is kept.
    """
    wall = time.perf_counter()
    strategy = strategy or tf.distribute.get_strategy()
    tcfg = cfg.train
    length = inputs.run_length(tcfg.epochs, tcfg.steps_per_epoch)
    trainer = Trainer(model, inputs, cfg, strategy, length)
    run_dir = RunDirectory(
        tcfg.out_dir, distribute.is_chief(strategy), tcfg.keep_checkpoints, trainer.checkpoint
    )
    history = run_dir.restore()[: trainer.epochs_done]
    start = trainer.epochs_done or initial_epoch
    if trainer.epochs_done:
        log(f"resuming from the checkpoint of epoch {start} in {tcfg.out_dir}")
    trainer.start(start)
    hooks = keras.callbacks.CallbackList(
        callbacks or [],
        model=model if isinstance(model, keras.Model) else None,
        epochs=length.epochs,
        steps=length.steps_per_epoch,
    )
    hooks.on_train_begin()
    for epoch in range(start, length.epochs):
        hooks.on_epoch_begin(epoch)
        try:
            row = trainer.train_epoch(_progress_bar(tcfg, length.steps_per_epoch))
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}; {run_dir.what_is_kept(epoch)}") from None
        history.append(row)
        last = epoch + 1 == length.epochs
        run_dir.epoch_end(history, save=last or (epoch + 1 - start) % tcfg.checkpoint_every == 0)
        log(_summary(row, length.epochs))
        hooks.on_epoch_end(epoch, {k: v for k, v in row.items() if k != "epoch"})
    hooks.on_train_end()
    result = {"history": history, **trainer.finish()}
    if history and "val_accuracy" in history[-1]:
        result["val_accuracy"] = history[-1]["val_accuracy"]
    return {**result, "wall_seconds": time.perf_counter() - wall}


def _progress_bar(tcfg: TrainConfig, n_steps: int) -> keras.utils.Progbar:
    show = tcfg.progress == "bar" or (tcfg.progress == "auto" and sys.stdout.isatty())
    return keras.utils.Progbar(n_steps, verbose=1 if show else 0, stateful_metrics=["loss", "acc"])


def _summary(row: dict, epochs: int) -> str:
    text = (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.4f}"
    )
    if "val_accuracy" in row:
        text += f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
    return text + f"  {row['seconds']:.1f}s"

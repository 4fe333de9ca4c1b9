"""The Trainer, as Orbit's: a model with its optimizer, compiled steps and running metrics.
`train(n, data)` trains n steps, `evaluate` scores a split; it knows no epochs and runs no
actions (the Controller does both)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from pipeline.config import Config
from pipeline.data.datasets import Inputs
from pipeline.errors import NonFiniteLossError
from pipeline.run_length import RunLength
from pipeline.training import optim, steps


class Trainer:
    """Trains `model` on the run of `length` (what the schedule needs) in compiled calls.

    Its metrics run from one `reset_metrics` to the next (the Controller resets them at
    each epoch): loss sum, correct, examples and seconds, and each step's loss, up to
    `length.steps_per_epoch` steps. They are variables, so a checkpoint taken between
    resets resumes them (`state`).
    """

    def __init__(
        self,
        model,
        inputs: Inputs,
        cfg: Config,
        strategy,
        length: RunLength,
        stop_flag: tf.Variable | None = None,
    ):
        self.model, self.inputs, self.cfg = model, inputs, cfg
        self.strategy, self.length = strategy, length
        with strategy.scope():
            self.optimizer = optim.build_optimizer(cfg, length)
            # Every variable trained at some point: an action may freeze some later.
            self._optimized = steps.trainable(model)
            self.optimizer.build(self._optimized)
            self._totals = tf.Variable(tf.zeros([4], tf.float64), trainable=False)
            self._step_losses = tf.Variable(tf.zeros([length.steps_per_epoch]), trainable=False)
        self._stop_flag = stop_flag
        self._train_steps, self._trained = None, ()
        self.stop_agreed = tf.function(steps.agreed_flag(stop_flag, strategy))
        self._eval_steps: dict[str, Callable] = {}
        self.recalibrate = steps.make_bn_recalibration(model, inputs, cfg, strategy)
        self.train_seconds = 0.0
        self.trained_images = 0

    def state(self) -> dict:
        """What a checkpoint keeps of the Trainer, by the names the run's checkpoint uses."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "epoch_totals": self._totals,
            "step_losses": self._step_losses,
        }

    def checkpoint_bytes(self) -> int:
        """About what one checkpoint takes on disk: the model's and optimizer's variables."""
        variables = {id(v): v for v in [*self.model.variables, *self.optimizer.variables]}
        return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables.values())

    def _compiled_steps(self) -> Callable:
        """The compiled step calls for the variables trained now: traced again when an
        action changed that set (a frozen layer), so the step never updates a frozen
        variable nor misses a trained one."""
        trained = tuple(id(v) for v in steps.trainable(self.model))
        if trained != self._trained:
            self._train_steps = steps.make_train_step(
                self.model,
                self.optimizer,
                self.inputs,
                self.cfg,
                self.strategy,
                self.length,
                self._stop_flag,
            )
            self._trained = trained
        return self._train_steps

    def train(self, n: int, data) -> int:
        """Trains up to `n` steps on the distributed iterator `data`, fewer when a stop was
        requested (the stop flag); returns the steps done.

        Raises:
            NonFiniteLossError: when the training loss becomes NaN or inf.
        """
        t0 = time.perf_counter()
        totals, losses = self._compiled_steps()(data, tf.constant(n))
        totals = totals.numpy()
        seconds = time.perf_counter() - t0
        done = round(float(totals[2]) / self.cfg.data.batch_size)
        recorded = self.steps_recorded
        values = self._step_losses.numpy()
        values[recorded : recorded + done] = losses.numpy()[:done]
        self._step_losses.assign(values)  # whole: a distributed variable takes no slice
        self._totals.assign_add(np.append(totals, seconds).astype(np.float64))
        self.train_seconds += seconds
        self.trained_images += done * self.cfg.data.batch_size
        loss, _ = self.running_loss_and_accuracy()
        if recorded + done and not math.isfinite(loss):
            raise NonFiniteLossError(f"training loss became {loss}")
        return done

    @property
    def steps_recorded(self) -> int:
        """Steps trained since the metrics were last reset."""
        return round(float(self._totals.numpy()[2]) / self.cfg.data.batch_size)

    def running_loss_and_accuracy(self) -> tuple[float, float]:
        """Mean training loss and accuracy since the last reset (NaN before any step): what
        every call checks and a progress bar shows, without `metrics`' schedule and copy."""
        loss_sum, correct, count, _ = self._totals.numpy()
        count = count or math.nan
        return loss_sum / count, correct / count

    def metrics(self) -> dict:
        """The running metrics: mean training loss and accuracy, seconds, each step's loss."""
        loss, accuracy = self.running_loss_and_accuracy()
        return {
            "train_loss": loss,
            "train_accuracy": accuracy,
            "seconds": self._totals.numpy()[3],
            "lr": float(optim.lr_at(self.optimizer.iterations, self.cfg.optim, self.length)),
            "step_losses": self._step_losses.numpy()[: self.steps_recorded].tolist(),
        }

    def reset_metrics(self) -> None:
        self._totals.assign(tf.zeros([4], tf.float64))

    def evaluate(self, split: str, tta: str | None = None) -> dict:
        """{"loss", "accuracy"} on `split`, with the run's test-time augmentation unless
        `tta` says otherwise; {} for a split without images."""
        if not len(getattr(self.inputs.splits, split).labels):
            return {}
        tta = self.cfg.train.tta if tta is None else tta
        if tta not in self._eval_steps:
            self._eval_steps[tta] = steps.make_eval_step(self.model, self.cfg, self.strategy, tta)
        dataset = self.inputs.eval_dataset(split)
        return steps.evaluate(self._eval_steps[tta], dataset, self.strategy)

    def finish(self) -> dict:
        """Swaps in the weights the run is judged by (the EMA's, BN statistics refreshed
        for them, when the recipe keeps one; else the last step's) and returns the run's
        summary figures on the test split."""
        if self.cfg.optim.ema_decay:
            self.optimizer.finalize_variable_values(self._optimized)
            self.recalibrate()
        result = {
            "train_images_per_second": (
                self.trained_images / self.train_seconds if self.train_seconds else None
            )
        }
        test = self.evaluate("test")
        if test:
            result.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
            if self.cfg.train.tta != "none":
                result["test_accuracy_no_tta"] = self.evaluate("test", tta="none")["accuracy"]
        return result

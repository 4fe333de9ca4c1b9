"""Progress while training: a bar on a terminal, timed lines elsewhere, and each epoch's
summary line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import keras

from pipeline.config import TrainConfig


def epoch_logs(row: dict) -> dict:
    """A history row as Keras callbacks take it: scalars only (no epoch, no step list)."""
    return {k: v for k, v in row.items() if k not in ("epoch", "step_losses")}


class ProgressLines:
    """Progress where no bar can show (a log file, `nohup`, SLURM, CI): a line at most every
    `every_seconds`, with the epoch, the step, loss and accuracy so far, images/s and the
    epoch's time left. The same `update` as keras.utils.Progbar."""

    def __init__(self, n_steps: int, epoch: str, batch_size: int, every_seconds: float, log=print):
        self.n_steps, self.epoch, self.batch_size = n_steps, epoch, batch_size
        self.every_seconds, self.log = every_seconds, log
        self.start = self.last = time.monotonic()
        self.first_step = None

    def update(self, step: int, values: list[tuple[str, float]]) -> None:
        now = time.monotonic()
        if self.first_step is None:  # steps before this object (a resume) are not timed
            self.first_step, self.start = step, self.last
        if now - self.last < self.every_seconds or step >= self.n_steps:
            return  # the epoch's own summary line closes it
        self.last = now
        done, seconds = step - self.first_step, now - self.start
        rate = done / seconds if seconds > 0 and done > 0 else 0.0
        left = f"{(self.n_steps - step) / rate:.0f} s" if rate else "?"
        figures = "  ".join(f"{name} {value:.4f}" for name, value in values)
        self.log(
            f"epoch {self.epoch} step {step}/{self.n_steps}  {figures}  "
            f"{rate * self.batch_size:.0f} images/s  epoch ends in {left}"
        )


def progress_bar(train_cfg: TrainConfig, batch_size: int, epochs: int) -> Callable:
    """A progress factory for an epoch of n steps (`factory(n_steps, epoch)`): a bar on a
    TTY (or when asked), timed lines elsewhere (`progress=auto`), nothing for "none"."""
    if train_cfg.progress == "none":
        return lambda n_steps, epoch: None
    if train_cfg.progress == "bar" or sys.stdout.isatty():
        return lambda n_steps, epoch: keras.utils.Progbar(
            n_steps, verbose=1, stateful_metrics=["loss", "acc"]
        )
    every = train_cfg.progress_every_seconds
    return lambda n_steps, epoch: ProgressLines(
        n_steps, f"{epoch}/{epochs}", batch_size, every, lambda s: print(s, flush=True)
    )


def summary(row: dict, epochs: int) -> str:
    text = (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.4f}"
    )
    if "val_accuracy" in row:
        text += f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
    return text + f"  {row['seconds']:.1f}s"

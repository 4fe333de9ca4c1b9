"""The outer loop, as Orbit's Controller: trains the run epoch by epoch in compiled step
calls and runs its run actions at named points (begin, epoch begin, after a step call,
epoch end, between epochs, a stop, end). Evaluation, recording, checkpoints and the
epoch's report are such actions; the run directory is called from them alone.

Run actions are about the run, not the training state: what Lookahead and the whitening
freeze do to the weights are the Trainer's actions (`training/actions.py`), which act
first at every step they are due, so a checkpoint at that step holds their result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import keras

from pipeline.config import TrainConfig
from pipeline.errors import NonFiniteLossError
from pipeline.run_length import is_due, steps_until_due


class RunAction:
    """Does nothing at every point; subclasses override the points they act at."""

    def begin(self, trainer) -> None:
        """Training starts or resumes at `trainer.global_step`."""

    def epoch_begin(self, trainer, epoch: int) -> None:
        """0-based `epoch` is about to train (from `trainer.epoch_step` on a resume)."""

    def steps_to_next(self, trainer) -> int | None:
        """Steps of the epoch in progress until this action wants a call to end; None: any."""
        return None

    def after_call(self, trainer) -> None:
        """A step call ended (at `trainer.epoch_step`), the epoch not yet complete."""

    def epoch_end(self, trainer, history: list[dict]) -> None:
        """The epoch of `history[-1]` is trained; its row may still be completed (val)."""

    def between_epochs(self, trainer, history: list[dict], stopping: bool) -> None:
        """The epoch's row is complete; `stopping`: every worker agreed to stop here."""

    def stopped(self, trainer) -> None:
        """A stop was agreed inside an epoch, at `trainer.position`."""

    def end(self, trainer, history: list[dict]) -> None:
        """The run's last epoch is done."""


class Controller:
    """Runs `trainer` from `start` to the run's end, calling `run_actions` in list order at
    each point, in step calls of at most `steps_per_call`. `stops` is the active stop
    request (a `preemption.StopRequests`); `what_is_kept` says what a failed or stopped run
    leaves, for messages."""

    def __init__(
        self,
        trainer,
        run_actions: list[RunAction],
        stops,
        what_is_kept: Callable[[], str],
        steps_per_call: int,
    ):
        self.trainer, self.run_actions, self.stops = trainer, run_actions, stops
        self.what_is_kept, self.steps_per_call = what_is_kept, steps_per_call

    def run(self, start: int, history: list[dict], progress: Callable | None = None) -> None:
        """Trains epochs `start`.. of the run, appending each one's row to `history`.

        Raises:
            NonFiniteLossError: naming the checkpoint kept.
            Preempted: once a stop agreed by every worker is saved.
        """
        trainer = self.trainer
        self._each("begin", trainer)
        for epoch in range(start, trainer.length.epochs):
            self._each("epoch_begin", trainer, epoch)
            self._train_rest_of_epoch(progress)
            history.append(trainer.end_epoch())
            self._each("epoch_end", trainer, history)
            stopping = bool(trainer.stop_agreed())  # a signal during the last steps or val
            self._each("between_epochs", trainer, history, stopping)
            if stopping:
                self.stops.raise_stopped(f"after epoch {epoch + 1}", self.what_is_kept())
        self._each("end", trainer, history)

    def _train_rest_of_epoch(self, progress: Callable | None) -> None:
        """Trains the epoch in progress to its end, in calls of at most `steps_per_call` steps
        that end where a Trainer action or a run action is due. A stop request runs the
        `stopped` actions (a save) and raises `Preempted`."""
        trainer = self.trainer
        n_steps = trainer.steps_in_epoch
        bar = progress(n_steps, trainer.epochs_done + 1) if progress else None
        while not trainer.epoch_complete:
            wanted = [a.steps_to_next(trainer) for a in self.run_actions]
            limit = min(
                self.steps_per_call,
                n_steps - trainer.epoch_step,
                trainer.actions.steps_to_next(trainer.global_step),
                *[n for n in wanted if n],
            )
            try:
                done = trainer.train_steps(limit, bar)
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e}; {self.what_is_kept()}") from None
            if done < limit:  # the call stopped early: a stop every worker agreed on
                self._each("stopped", trainer)
                self.stops.raise_stopped(f"at {trainer.position}", self.what_is_kept())
            if not trainer.epoch_complete:
                self._each("after_call", trainer)

    def _each(self, point: str, *args) -> None:
        for action in self.run_actions:
            getattr(action, point)(*args)


class Checkpoints(RunAction):
    """Saves the run's checkpoint every `checkpoint_every_epochs` epochs counted from the epoch a
    run (or its resume) starts at, after the last epoch, every `checkpoint_every_steps`
    steps inside an epoch, and wherever a stop is agreed."""

    def __init__(self, run_dir, train_cfg: TrainConfig, start: int):
        self.run_dir, self.start = run_dir, start
        self.every_epochs = train_cfg.checkpoint_every_epochs
        self.every_steps = train_cfg.checkpoint_every_steps

    def steps_to_next(self, trainer) -> int | None:
        return steps_until_due(trainer.epoch_step, self.every_steps)

    def after_call(self, trainer) -> None:
        if is_due(trainer.epoch_step, self.every_steps):
            self._save(trainer)

    def between_epochs(self, trainer, history: list[dict], stopping: bool) -> None:
        epoch = history[-1]["epoch"]  # 1-based: the epoch just trained
        last = epoch == trainer.length.epochs
        if last or stopping or is_due(epoch - self.start, self.every_epochs):
            self._save(trainer)

    def stopped(self, trainer) -> None:
        self._save(trainer)

    def _save(self, trainer) -> None:
        self.run_dir.save(trainer.global_step, trainer.position)


class Validate(RunAction):
    """Scores each epoch on the validation split (BN statistics refreshed first when the
    recipe asks), into its row."""

    def epoch_end(self, trainer, history: list[dict]) -> None:
        history[-1].update(trainer.validate())


class Record(RunAction):
    """Each epoch's row into the run folder: history.json, TensorBoard scalars, curves.png."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def epoch_end(self, trainer, history: list[dict]) -> None:
        self.run_dir.record_epoch(history)


class Report(RunAction):
    """The epoch's line through `log`, and the Keras callbacks' hooks (keras-tuner's
    included): train begin and end, epoch begin and end with the epoch's scalars."""

    def __init__(self, hooks: keras.callbacks.CallbackList, log: Callable[[str], None]):
        self.hooks, self.log = hooks, log

    def begin(self, trainer) -> None:
        self.hooks.on_train_begin()

    def epoch_begin(self, trainer, epoch: int) -> None:
        self.hooks.on_epoch_begin(epoch)

    def between_epochs(self, trainer, history: list[dict], stopping: bool) -> None:
        row = history[-1]
        self.log(summary(row, trainer.length.epochs))
        self.hooks.on_epoch_end(row["epoch"] - 1, epoch_logs(row))

    def end(self, trainer, history: list[dict]) -> None:
        self.hooks.on_train_end()


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

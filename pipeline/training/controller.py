"""The one training loop, as Orbit's Controller: it holds where the run stands (epochs
done, the step inside the epoch in progress), calls `trainer.train(n)` for as many steps
as remain until the next due action, and runs the actions due at each point
(`training/actions.py`), in list order."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pipeline.errors import NonFiniteLossError
from pipeline.training.actions import At


class Controller:
    """Trains `trainer` on `inputs` to the end of its run length, in calls of at most
    `steps_per_call` steps. `stops` is the active stop request (a
    `preemption.StopRequests`); `what_is_kept` says what a failed or stopped run leaves."""

    def __init__(
        self,
        trainer,
        inputs,
        actions: list,
        stops,
        steps_per_call: int,
        what_is_kept: Callable[[], str],
    ):
        self.trainer, self.inputs, self.actions, self.stops = trainer, inputs, actions, stops
        self.steps_per_call, self.what_is_kept = steps_per_call, what_is_kept
        self.length = trainer.length
        with trainer.strategy.scope():
            self._epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.start_epoch = 0

    def state(self) -> dict:
        """What a checkpoint keeps of the run's position and its actions, by name."""
        held = {f"action_{k}": v for a in self.actions for k, v in a.state().items()}
        return {"epoch": self._epochs_done, "epoch_step": self._epoch_step, **held}

    @property
    def epochs_done(self) -> int:
        return int(self._epochs_done.numpy())

    @property
    def epoch_step(self) -> int:
        """Steps done in the epoch in progress."""
        return int(self._epoch_step.numpy())

    @property
    def global_step(self) -> int:
        done = min(self.epochs_done * self.length.steps_per_epoch, self.length.total_steps)
        return done + self.epoch_step

    @property
    def position(self) -> str:
        """Where training stands, for messages: "epoch 3, step 17/97" or "end of epoch 2"."""
        if self.epoch_step:
            steps = self.length.steps_in_epoch(self.epochs_done)
            return f"epoch {self.epochs_done + 1}, step {self.epoch_step}/{steps}"
        return f"end of epoch {self.epochs_done}"

    def run(self, start: int, history: list[dict], progress: Callable | None = None) -> None:
        """Trains epochs `start`.. of the run (from `epoch_step` of the first, when a
        checkpoint of a stopped epoch was restored), appending each one's row to `history`.
        Each epoch's batches are a function of (seed, epoch), so a resumed run sees the
        very batches an uninterrupted one would.

        Raises:
            NonFiniteLossError: naming the checkpoint kept.
            Preempted: once a stop agreed by every worker is saved.
        """
        self.start_epoch = start
        self._epochs_done.assign(start)
        data = iter(
            self.trainer.strategy.distribute_datasets_from_function(
                self.inputs.train_dataset_fn(self.length, start, self.epoch_step)
            )
        )
        self._act("begin", history)
        for epoch in range(start, self.length.epochs):
            self._act("epoch_begin", history)
            self._train_epoch(data, history, progress)
            history.append({"epoch": epoch + 1, **self.trainer.metrics()})
            self._epochs_done.assign_add(1)
            self._epoch_step.assign(0)
            self.trainer.reset_metrics()
            self._act("epoch_end", history)
            stopping = bool(self.trainer.stop_agreed())  # a signal during the last steps or val
            self._act("after_epoch", history, stopping)
            if stopping:
                self.stops.raise_stopped(f"after epoch {epoch + 1}", self.what_is_kept())
        self._act("end", history)

    def _train_epoch(self, data, history: list[dict], progress: Callable | None) -> None:
        """Trains the epoch in progress to its end, in calls that end where an action is
        due. A stop request runs the "stopped" actions (a save) and raises `Preempted`."""
        n_steps = self.length.steps_in_epoch(self.epochs_done)
        bar = progress(n_steps, self.epochs_done + 1) if progress else None
        while self.epoch_step < n_steps:
            at = self._at("steps", history)
            wanted = [a.when.steps_to_next(at) for a in self.actions]
            limit = min(self.steps_per_call, n_steps - self.epoch_step, *filter(None, wanted))
            try:
                done = self.trainer.train(limit, data)
            except NonFiniteLossError as e:
                step = self.trainer.steps_recorded
                raise NonFiniteLossError(
                    f"{e} at epoch {self.epochs_done + 1}, step {step}: lower the learning "
                    f"rate (--lr) or use float32; {self.what_is_kept()}"
                ) from None
            self._epoch_step.assign_add(done)
            if done:
                if bar is not None:
                    loss, acc = self.trainer.running_loss_and_accuracy()
                    bar.update(self.epoch_step, [("loss", loss), ("acc", acc)])
                self._act("steps", history)
            if done < limit:  # the call stopped early: a stop every worker agreed on
                self._act("stopped", history)
                self.stops.raise_stopped(f"at {self.position}", self.what_is_kept())

    def _at(self, point: str, history: list[dict], stopping: bool = False) -> At:
        epochs_done, epoch_step = self.epochs_done, self.epoch_step
        return At(
            point=point,
            trainer=self.trainer,
            history=history,
            global_step=self.global_step,
            epoch=epochs_done,
            epoch_step=epoch_step,
            epoch_complete=epoch_step >= self.length.steps_in_epoch(epochs_done),
            position=self.position,
            start_epoch=self.start_epoch,
            last_step=self.global_step >= self.length.total_steps,
            last_epoch=epochs_done >= self.length.epochs,
            stopping=stopping,
        )

    def _act(self, point: str, history: list[dict], stopping: bool = False) -> None:
        at = self._at(point, history, stopping)
        for action in self.actions:
            if action.when.due(at):
                action(at)

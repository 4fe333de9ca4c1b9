"""The one training loop: a `Trainer` that owns the compiled steps and trains an epoch,
and `fit`, which restores the run and hands it to the controller (`training/controller.py`)
with the run's actions: validate, record, checkpoint, report.

Every model, strategy, precision and the tuner's trials go through `fit`.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline.config import Config
from pipeline.data.datasets import Inputs
from pipeline.errors import NonFiniteLossError, WorkerLostError
from pipeline.run_length import RunLength
from pipeline.runtime import distribute, preemption
from pipeline.training import actions, checkpoint_layout, controller, optim, steps
from pipeline.training.run_dir import RunDirectory

STEPS_PER_CALL = 50  # train steps per tf.function call: fewer Python round trips


class Trainer:
    """A model with its optimizer, compiled steps and training data, for one run length.

    `checkpoint` holds everything a resume needs: model, optimizer, epochs done, the
    position inside the epoch in progress with that epoch's running totals (so a run
    stopped mid-epoch resumes at its next step), and the actions' state. `start` positions
    the data there; `train_steps` trains some of the epoch's steps and runs the actions
    due after them; `end_epoch` closes it and `validate` scores it.
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
            self._epochs_done = tf.Variable(0, dtype=tf.int64, trainable=False)
            self._epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False)
            # The epoch in progress: loss sum, correct, examples, seconds; each step's loss.
            self._epoch_totals = tf.Variable(tf.zeros([4], tf.float64), trainable=False)
            self._step_losses = tf.Variable(tf.zeros([length.steps_per_epoch]), trainable=False)
        self.actions = actions.from_config(cfg, model, length, strategy)
        self.checkpoint = checkpoint_layout.run_checkpoint(
            model,
            self.optimizer,
            self._epochs_done,
            epoch_step=self._epoch_step,
            epoch_totals=self._epoch_totals,
            step_losses=self._step_losses,
            **self.actions.state(),
        )
        self._stop_flag = stop_flag
        self._train_steps, self._trained = None, ()
        self.stop_agreed = tf.function(steps.agreed_flag(stop_flag, strategy))
        self._eval_steps: dict[str, Callable] = {}
        self._recalibrate = steps.make_bn_recalibration(model, inputs, cfg, strategy)
        self._iterator = None
        self.train_seconds = 0.0
        self.trained_images = 0

    def checkpoint_bytes(self) -> int:
        """About what one checkpoint takes on disk: the model's and optimizer's variables."""
        variables = {id(v): v for v in [*self.model.variables, *self.optimizer.variables]}
        return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables.values())

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
    def steps_in_epoch(self) -> int:
        """Steps of the epoch in progress (fewer in a fractional run's last epoch)."""
        return self.length.steps_in_epoch(self.epochs_done)

    @property
    def position(self) -> str:
        """Where training stands, for messages: "epoch 3, step 17/97" or "end of epoch 2"."""
        if self.epoch_step:
            return f"epoch {self.epochs_done + 1}, step {self.epoch_step}/{self.steps_in_epoch}"
        return f"end of epoch {self.epochs_done}"

    @property
    def epoch_complete(self) -> bool:
        return self.epoch_step >= self.steps_in_epoch

    def start(self, epoch: int) -> None:
        """Positions the training data at `epoch`, `epoch_step` steps in (0 unless a
        checkpoint of a stopped epoch was restored). Each epoch's batches are a function
        of (seed, epoch), so a resumed run sees the very batches an uninterrupted one
        would."""
        self._epochs_done.assign(epoch)
        data = self.strategy.distribute_datasets_from_function(
            self.inputs.train_dataset_fn(self.length, epoch, self.epoch_step)
        )
        self._iterator = iter(data)
        self.actions.begin(self)

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

    def train_steps(self, limit: int, progress=None) -> int:
        """Trains up to `limit` more steps of the epoch in progress, fewer when a stop was
        requested (the stop flag), then runs the actions due at the step reached; returns
        the steps done.

        Raises:
            NonFiniteLossError: when the training loss becomes NaN or inf.
        """
        t0 = time.perf_counter()
        totals, losses = self._compiled_steps()(self._iterator, tf.constant(limit))
        totals = totals.numpy()
        seconds = time.perf_counter() - t0
        done = round(float(totals[2]) / self.cfg.data.batch_size)
        values = self._step_losses.numpy()
        values[self.epoch_step : self.epoch_step + done] = losses.numpy()[:done]
        self._step_losses.assign(values)  # whole: a distributed variable takes no slice
        self._epoch_totals.assign_add(np.append(totals, seconds).astype(np.float64))
        self._epoch_step.assign_add(done)
        self.train_seconds += seconds
        self.trained_images += done * self.cfg.data.batch_size
        loss_sum, correct, count, _ = self._epoch_totals.numpy()
        if count and not math.isfinite(loss_sum / count):
            raise NonFiniteLossError(
                f"training loss became {loss_sum / count} at epoch {self.epochs_done + 1}, "
                f"step {self.epoch_step}: lower the learning rate (--lr) or use float32"
            )
        if progress is not None and count:
            progress.update(self.epoch_step, [("loss", loss_sum / count), ("acc", correct / count)])
        self.actions.after_call(self)
        return done

    def end_epoch(self) -> dict:
        """Closes the epoch just trained and moves on to the next; returns its history row
        (its training figures; `validate` adds the validation ones)."""
        loss_sum, correct, count, seconds = self._epoch_totals.numpy()
        row = {
            "epoch": self.epochs_done + 1,
            "train_loss": loss_sum / count,
            "train_accuracy": correct / count,
            "seconds": seconds,
            "lr": float(optim.lr_at(self.optimizer.iterations, self.cfg.optim, self.length)),
            "step_losses": self._step_losses.numpy()[: self.epoch_step].tolist(),
        }
        self._epochs_done.assign_add(1)
        self._epoch_step.assign(0)
        self._epoch_totals.assign(tf.zeros([4], tf.float64))
        return row

    def validate(self) -> dict:
        """{"val_loss", "val_accuracy"} of the weights now, BN statistics refreshed first when
        the recipe asks; {} without validation images."""
        self._recalibrate()
        if not self._has("val"):
            return {}
        val = self.evaluate("val")
        return {"val_loss": val["loss"], "val_accuracy": val["accuracy"]}

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
            self.optimizer.finalize_variable_values(self._optimized)
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
    length: RunLength | None = None,
) -> dict:
    """Trains `model` (built under `strategy.scope()`) for `length` (default: the one
    `cfg.train` asks for; `run.train` hands over the one it computed and logged).

    Resumes from the latest checkpoint in `cfg.train.out_dir` when there is one (at the
    step it was saved, mid-epoch included), else starts at `initial_epoch` (keras-tuner's
    Hyperband continues trials this way).

    Returns:
        {"history": [per-epoch rows], "val_accuracy", "test_accuracy", ...}.

    Raises:
        NonFiniteLossError: when the training loss becomes NaN or inf; the last good
            checkpoint is kept.
        Preempted: after SIGTERM / SIGINT, once the step in progress is done and saved.
    """
    wall = time.perf_counter()
    strategy = strategy or tf.distribute.get_strategy()
    train_cfg = cfg.train
    length = length or inputs.length_for_config(train_cfg)
    stops = preemption.StopRequests()
    trainer = Trainer(model, inputs, cfg, strategy, length, stops.flag)
    run_dir = RunDirectory(
        train_cfg.out_dir,
        distribute.is_chief(strategy),
        train_cfg.keep_checkpoints,
        trainer.checkpoint,
        trainer.checkpoint_bytes(),
    )
    history = run_dir.restore()[: trainer.epochs_done]
    start = trainer.epochs_done or initial_epoch
    if trainer.epochs_done >= length.epochs:
        run_dir.describe_latest(trainer.position)
        log(
            f"{train_cfg.out_dir} holds this run fully trained ({length.epochs} epochs): "
            "evaluating it again, without training (a new --out trains afresh)"
        )
    elif trainer.epochs_done or trainer.epoch_step:
        run_dir.describe_latest(trainer.position)
        where = trainer.position if trainer.epoch_step else f"epoch {start}"
        log(f"resuming from the checkpoint of {where} in {train_cfg.out_dir}")
    trainer.start(start)
    hooks = keras.callbacks.CallbackList(
        callbacks or [],
        model=model if isinstance(model, keras.Model) else None,
        epochs=length.epochs,
        steps=length.steps_per_epoch,
    )
    run_actions = [
        controller.Validate(),
        controller.Record(run_dir),
        controller.Checkpoints(run_dir, train_cfg, start),
        controller.Report(hooks, log),
    ]
    run_loop = controller.Controller(
        trainer, run_actions, stops, run_dir.what_is_kept, STEPS_PER_CALL
    )
    with stops, _peers_watched(strategy, run_dir):
        progress = controller.progress_bar(train_cfg, cfg.data.batch_size, length.epochs)
        run_loop.run(start, history, progress)
    with stops:  # a signal now stops the run once the evaluation in progress is done
        result = {"history": history, **trainer.finish()}
    if stops.signum is not None:
        stops.raise_stopped(
            "during the final evaluation", f"training had finished; {run_dir.what_is_kept()}"
        )
    run_dir.record_final(result, length.epochs)
    if history and "val_accuracy" in history[-1]:
        result["val_accuracy"] = history[-1]["val_accuracy"]
    return {**result, "wall_seconds": time.perf_counter() - wall}


# What collective ops raise when a peer dies, or when the coordination service finds that
# a peer stopped sending heartbeats and aborts them.
_PEER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
    tf.errors.InternalError,
)
_PEER_WORDS = re.compile(r"abort|reset|timed out|deadline|unavailable|heartbeat", re.IGNORECASE)


@contextlib.contextmanager
def _peers_watched(strategy, run_dir: RunDirectory):
    """On several workers, turns a collective op's failure into a WorkerLostError that
    says what is kept and how to resume (the CLIs exit 4)."""
    try:
        yield
    except _PEER_ERRORS as e:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        lines = [line.strip() for line in str(e).splitlines()]
        reason = next((line for line in lines if _PEER_WORDS.search(line)), type(e).__name__)
        raise WorkerLostError(
            f"lost contact with another worker ({reason}); {run_dir.what_is_kept()}"
        ) from None

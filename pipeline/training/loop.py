"""`fit`: a run from its model to its scores. It builds the Trainer (`training/trainer.py`),
the run's actions (`training/actions.py`) and the Controller that runs them
(`training/controller.py`), restores the run's latest checkpoint, and trains.

Every model, strategy, precision and the tuner's trials go through `fit`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

import keras
import tensorflow as tf

from pipeline.config import Config
from pipeline.data.datasets import Inputs
from pipeline.errors import WorkerLostError
from pipeline.run_length import RunLength
from pipeline.runtime import distribute, preemption
from pipeline.training import actions, checkpoint_layout, progress
from pipeline.training.controller import Controller
from pipeline.training.run_dir import RunDirectory
from pipeline.training.trainer import Trainer

STEPS_PER_CALL = 50  # train steps per tf.function call: fewer Python round trips


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
        trainer.checkpoint_bytes(),
    )
    hooks = keras.callbacks.CallbackList(
        callbacks or [],
        model=model if isinstance(model, keras.Model) else None,
        epochs=length.epochs,
        steps=length.steps_per_epoch,
    )
    run_actions = actions.for_run(cfg, model, length, strategy, run_dir, hooks, log)
    run_loop = Controller(trainer, inputs, run_actions, stops, STEPS_PER_CALL, run_dir.what_is_kept)
    run_dir.track(checkpoint_layout.run_checkpoint(**trainer.state(), **run_loop.state()))
    history = run_dir.restore()[: run_loop.epochs_done]
    start = run_loop.epochs_done or initial_epoch
    if run_loop.epochs_done >= length.epochs:
        run_dir.describe_latest(run_loop.position)
        log(
            f"{train_cfg.out_dir} holds this run fully trained ({length.epochs} epochs): "
            "evaluating it again, without training (a new --out trains afresh)"
        )
    elif run_loop.epochs_done or run_loop.epoch_step:
        run_dir.describe_latest(run_loop.position)
        where = run_loop.position if run_loop.epoch_step else f"epoch {start}"
        log(f"resuming from the checkpoint of {where} in {train_cfg.out_dir}")
    with stops, _peers_watched(strategy, run_dir):
        bar = progress.progress_bar(train_cfg, cfg.data.batch_size, length.epochs)
        run_loop.run(start, history, bar)
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

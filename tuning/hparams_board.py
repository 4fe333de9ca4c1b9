"""A search in TensorBoard's HParams dashboard: each trial is a run under OUT/tensorboard
holding its hyperparameters and its metrics per epoch, so `tensorboard --logdir
OUT/tensorboard` shows the table, parallel coordinates and scatter plots.

Every process writes the trials it trains (workers of a distributed search too, into the
shared --out); the chief writes the search space once.
"""

from __future__ import annotations

from pathlib import Path

import keras_tuner as kt
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import summary as hparams_v1

LOGDIR = "tensorboard"  # inside the search's --out
METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")  # per epoch


def _domain(param: kt.engine.hyperparameters.HyperParameter):
    if isinstance(param, kt.engine.hyperparameters.Int):
        return hparams.IntInterval(param.min_value, param.max_value)
    if isinstance(param, kt.engine.hyperparameters.Float):
        return hparams.RealInterval(float(param.min_value), float(param.max_value))
    if isinstance(param, kt.engine.hyperparameters.Boolean):
        return hparams.Discrete([False, True])
    if isinstance(param, (kt.engine.hyperparameters.Choice, kt.engine.hyperparameters.Fixed)):
        return hparams.Discrete(list(param.values))
    return None


def write_search_space(out: Path, space: kt.HyperParameters) -> None:
    """The dashboard's columns: every hyperparameter with its domain, and the metrics."""
    writer = tf.summary.create_file_writer(str(out / LOGDIR))
    with writer.as_default():
        hparams.hparams_config(
            hparams=[hparams.HParam(p.name, _domain(p)) for p in space.space],
            metrics=[hparams.Metric(name, display_name=name) for name in METRICS],
        )
    writer.close()


def write_trial(
    out: Path, trial_id: str, values: dict, history: list[dict], failed: bool = False
) -> None:
    """One trial's run: its hyperparameter values (scalars only: keras-tuner's bookkeeping
    such as a Hyperband parent's id may be None), each epoch's metrics, and how it ended
    (the dashboard's Status column: success, or failure for a diverged trial)."""
    run = tf.summary.create_file_writer(str(out / LOGDIR / f"trial_{trial_id}"))
    with run.as_default():
        shown = {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}
        hparams.hparams(shown, trial_id=trial_id)
        for row in history:
            for name in METRICS:
                if name in row:
                    tf.summary.scalar(name, row[name], step=row["epoch"])
        status = api_pb2.Status.STATUS_FAILURE if failed else api_pb2.Status.STATUS_SUCCESS
        end = hparams_v1.session_end_pb(status)
        tf.summary.experimental.write_raw_pb(end.SerializeToString(), step=0)
    run.close()

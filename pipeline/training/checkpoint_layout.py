"""The names a run's checkpoint holds its state under: one layout, for `fit` that writes it
and for `inference/restore`, which reads the weights back without the data."""

from __future__ import annotations

import tensorflow as tf


def run_checkpoint(model, optimizer, epoch: tf.Variable, **resume) -> tf.train.Checkpoint:
    """The model, its optimizer and the epochs done (all a checkpoint of an older version
    holds, and all a restore reads), plus what a resume needs besides (`resume`: the
    position in the epoch, the Trainer's running metrics, the actions' state), by name."""
    return tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch, **resume)

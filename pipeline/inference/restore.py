"""A finished (or stopped) run's model rebuilt from its folder: config.json says what to
build, the latest checkpoint what the weights are."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.config import Config, ConfigError, from_dict, override, recipe
from pipeline.data import sources
from pipeline.data.datasets import Inputs
from pipeline.errors import UserError
from pipeline.run_length import RunLength
from pipeline.training import checkpoint_layout, data_record, export, optim, run, steps


class RunDirError(UserError):
    """The folder holds no run that can be restored; the message says what is there."""


@dataclass
class Restored:
    cfg: Config  # the run's config, on one device
    model: object
    inputs: Inputs | None  # the test split (when asked for) with the run's statistics
    checkpoint: str  # the checkpoint restored
    epochs_done: int  # of cfg.train.epochs
    mean: np.ndarray  # what the model was trained with: per-channel statistics (0-255)
    std: np.ndarray
    class_names: tuple[str, ...]

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.cfg.train.epochs


def _contents(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing"


def restore_run(run_dir: str | Path, test_split: bool = True, data_dir: str | None = None):
    """Rebuilds the run's model on this machine's default device and restores its latest
    checkpoint, with the weights the run is judged by (EMA swapped in when the recipe keeps
    one). A run trained on several replicas restores onto one.

    The run folder says what the model was trained with (data.json), so this reads no
    data unless `test_split` asks for the test images (from `data_dir` when given, else
    from where the run read them). Runs written before data.json, and EMA runs that refresh
    BN statistics, read the training split too.

    Raises:
        RunDirError: when `run_dir` has no config.json and checkpoint written by
            `cifar-train --out`, or the checkpoint does not hold the model config.json
            describes.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a folder: give the --out folder of a cifar-train run")
    config_path = run_dir / "config.json"
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if not config_path.is_file() or not latest:
        raise RunDirError(
            f"{run_dir} holds no trained run: expected config.json and checkpoints/ as "
            f"`cifar-train --out {run_dir}` writes them; it holds {_contents(run_dir)}"
        )
    try:
        cfg = from_dict(json.loads(config_path.read_text()))
    except (json.JSONDecodeError, ConfigError) as e:
        raise RunDirError(f"{config_path} is not a run's config: {e}") from e
    cfg = override(recipe(cfg), {"train.progress": "none"})  # on one device, writing nothing
    if data_dir is not None:
        cfg = override(cfg, {"data.data_dir": data_dir})
    strategy = tf.distribute.get_strategy()
    model = run.build(cfg, strategy)
    weights, epoch = _weights_checkpoint(model, cfg, strategy)
    try:
        # Every model variable must be found; the training state beside it (optimizer,
        # Lookahead's slow copies) is left unread, without a warning per value.
        weights.restore(latest).assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise RunDirError(
            f"{latest} does not hold the {cfg.model.name} (params {cfg.model.params}) that "
            f"{config_path} describes, so it cannot be restored: {str(e).splitlines()[0]}"
        ) from e
    record = data_record.read_data_record(run_dir)
    recalibrate = bool(cfg.optim.ema_decay and cfg.train.bn_recalibration_batches)
    if record is None or recalibrate:
        inputs = run.prepare(cfg)[1]  # the whole dataset, as the run saw it
        splits = inputs.splits
        mean, std, names = splits.mean, splits.std, splits.class_names
    else:
        mean, std = np.asarray(record["mean"]), np.asarray(record["std"])
        names = tuple(record["class_names"])
        inputs = None
        if test_split:
            test = sources.load_test_split(cfg.data, cfg.train.seed)
            empty = sources.Split(test.images[:0], test.labels[:0])
            splits = sources.Splits(empty, empty, test, mean, std, names)
            inputs = Inputs(splits, cfg.data, cfg.train.seed)
    if cfg.optim.ema_decay:
        weights.optimizer.finalize_variable_values(steps.trainable(model))
        if recalibrate:
            steps.make_bn_recalibration(model, inputs, cfg, strategy)()
    return Restored(cfg, model, inputs, latest, int(epoch.numpy()), mean, std, names)


def _weights_checkpoint(model, cfg: Config, strategy) -> tuple[tf.train.Checkpoint, tf.Variable]:
    """The part of a run's checkpoint that holds its weights (model, optimizer, epochs
    done), built without the training data."""
    length = RunLength(1, max(1, math.ceil(cfg.train.epochs)))  # the schedule holds no state
    with strategy.scope():
        optimizer = optim.build_optimizer(cfg, length)
        optimizer.build(steps.trainable(model))  # every variable trained at some point
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    return checkpoint_layout.run_checkpoint(model, optimizer, epoch), epoch


def export_restored(restored: Restored, to: str | Path, overwrite: bool = False) -> Path:
    """Exports a restored run's model (see training/export.py) with what it was trained on."""
    return export.export_run(
        restored.model,
        restored,
        restored.cfg,
        to,
        restored.epochs_done,
        overwrite,
        checkpoint=Path(restored.checkpoint).name,
    )


def training_images(restored: Restored, data_dir: str | None = None, n: int = 200):
    """The first `n` training images of the run's split (uint8): what int8 quantisation
    calibrates on. Reads the data (from `data_dir` when given)."""
    data = restored.cfg.data
    if data_dir is not None:
        data = override(data, {"data_dir": data_dir})
    small = override(data, {"val_examples": 0, "test_examples": 0})
    return sources.load_splits(small, restored.cfg.train.seed).train.images[:n]

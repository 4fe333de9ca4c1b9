"""A finished (or stopped) run's model rebuilt from its folder: config.json says what to
build, the latest checkpoint what the weights are."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from pipeline.config import Config, ConfigError, from_dict, override
from pipeline.data.datasets import Inputs
from pipeline.errors import UserError
from pipeline.training import export, loop, run


class RunDirError(UserError):
    """The folder holds no run that can be restored; the message says what is there."""


@dataclass
class Restored:
    cfg: Config  # the run's config, on one device
    model: object
    inputs: Inputs
    checkpoint: str  # the checkpoint restored
    epochs_done: int  # of cfg.train.epochs

    @property
    def finished(self) -> bool:
        return self.epochs_done >= self.cfg.train.epochs


def _contents(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:12]) + (" ..." if len(names) > 12 else "") if names else "nothing"


def restore_run(run_dir: str | Path) -> Restored:
    """Rebuilds the run's model on this machine's default device and restores its latest
    checkpoint, with the weights the run is judged by (EMA swapped in when the recipe keeps
    one). A run trained on several replicas restores onto one.

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
    cfg = override(
        cfg,
        {
            "train.strategy": "default",
            "train.cpu_replicas": 0,
            "train.out_dir": None,
            "train.progress": "none",
        },
    )
    strategy, inputs = run.prepare(cfg)
    model = run.build(cfg, strategy)
    length = inputs.run_length(cfg.train.epochs, cfg.train.steps_per_epoch)
    trainer = loop.Trainer(model, inputs, cfg, strategy, length)
    try:
        trainer.weights_checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise RunDirError(
            f"{latest} does not hold the {cfg.model.name} (params {cfg.model.params}) that "
            f"{config_path} describes, so it cannot be restored: {str(e).splitlines()[0]}"
        ) from e
    trainer.final_weights()
    return Restored(cfg, model, inputs, latest, trainer.epochs_done)


def export_restored(restored: Restored, to: str | Path, overwrite: bool = False) -> Path:
    """Exports a restored run's model (see training/export.py) with what it was trained on."""
    return export.export_run(
        restored.model,
        restored.inputs,
        restored.cfg,
        to,
        restored.epochs_done,
        overwrite,
        checkpoint=Path(restored.checkpoint).name,
    )

"""A run's folder: checkpoints to restore and save, history.json, TensorBoard scalars and
curves.png. Only the chief writes; other workers checkpoint to a private folder, since
saving is collective."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import tensorflow as tf


def write_json(path: Path, payload) -> None:
    """Writes then renames: a kill mid-write never leaves a half file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


class RunDirectory:
    """Checkpoints, history, TensorBoard and curves under `out_dir` (None: nothing kept)."""

    def __init__(self, out_dir: str | None, chief: bool, keep: int, checkpoint):
        self.dir = Path(out_dir) if out_dir else None
        self.chief = chief
        self.manager = self.writer = None
        if self.dir:
            ckpt_dir = self.dir / "checkpoints"
            if not chief:
                ckpt_dir = Path(tempfile.mkdtemp(prefix="cifar-worker-ckpt-"))
            self.manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=keep)
            if chief:
                self.writer = tf.summary.create_file_writer(str(self.dir / "tensorboard"))

    def restore(self) -> list[dict]:
        """Restores the latest checkpoint (every worker reads the chief's, so all resume at
        one epoch) and returns the history written with it; [] when there is none."""
        latest = self.dir and tf.train.latest_checkpoint(str(self.dir / "checkpoints"))
        if not latest:
            return []
        self.manager.checkpoint.restore(latest)
        history_path = self.dir / "history.json"
        return json.loads(history_path.read_text()) if history_path.is_file() else []

    def epoch_end(self, history: list[dict], save: bool) -> None:
        """Records the epoch just trained (history[-1]); `save` writes a checkpoint too."""
        if not self.dir:
            return
        if self.chief:
            write_json(self.dir / "history.json", history)
            with self.writer.as_default(step=len(history)):
                for key, value in history[-1].items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        tf.summary.scalar(key, value)
            self.writer.flush()
            from pipeline.training.curves import plot_curves  # noqa: PLC0415 - slow import

            plot_curves(history, self.dir / "curves.png")
        if save:
            self.manager.save(checkpoint_number=len(history))

    def what_is_kept(self, epochs_done: int) -> str:
        """Where the last good state is, for an error that ends the run."""
        if not self.dir:
            return "nothing was saved (no --out)"
        return f"the last good checkpoint (epoch {epochs_done}) is kept in {self.dir}"

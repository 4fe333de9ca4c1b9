"""A run's folder while it trains: checkpoints to restore and save, history.json,
TensorBoard scalars and curves.png (data.json: `data_record`). Only the chief writes; other
workers checkpoint to a private folder, since saving is collective."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import tensorflow as tf

from pipeline.files import write_json
from pipeline.runtime.out_claim import check_free_space

SMALL_FILES_BYTES = 8 * 2**20  # history, curves, TensorBoard events, config, metrics


class RunDirectory:
    """Checkpoints, history, TensorBoard and curves under `out_dir` (None: nothing kept)."""

    def __init__(self, out_dir: str | None, chief: bool, keep: int, checkpoint_bytes: int = 0):
        self.dir = Path(out_dir) if out_dir else None
        self.chief, self.keep = chief, keep
        self.manager = self.writer = None
        self._saved_at: dict[str, str] = {}
        if self.dir and chief:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Room for the checkpoints kept plus the one being written, and the small files.
            needed = checkpoint_bytes * (keep + 1) + SMALL_FILES_BYTES
            check_free_space(self.dir, needed, f"{keep} checkpoint(s) of this run")
            self.writer = tf.summary.create_file_writer(str(self.dir / "tensorboard"))

    def track(self, checkpoint: tf.train.Checkpoint) -> None:
        """The run's checkpoint, which `restore` reads and `save` writes."""
        if self.dir:
            ckpt_dir = self.dir / "checkpoints"
            if not self.chief:
                ckpt_dir = Path(tempfile.mkdtemp(prefix="cifar-worker-ckpt-"))
            self.manager = tf.train.CheckpointManager(
                checkpoint, str(ckpt_dir), max_to_keep=self.keep
            )

    def restore(self) -> list[dict]:
        """Restores the latest checkpoint (every worker reads the chief's, so all resume at
        one epoch) and returns the history written with it; [] when there is none."""
        latest = self.dir and tf.train.latest_checkpoint(str(self.dir / "checkpoints"))
        if not latest:
            return []
        self.manager.checkpoint.restore(latest)
        history_path = self.dir / "history.json"
        return json.loads(history_path.read_text()) if history_path.is_file() else []

    def record_epoch(self, history: list[dict]) -> None:
        """Records the epoch just trained (history[-1]): history.json, TensorBoard, curves."""
        if not (self.dir and self.chief):
            return
        write_json(self.dir / "history.json", history)
        with self.writer.as_default(step=len(history)):
            for key, value in history[-1].items():
                if isinstance(value, (int, float)) and key != "epoch":
                    tf.summary.scalar(key, value)
        # Each step's loss at its global step (1-based), beside the per-epoch scalars.
        first = sum(len(row.get("step_losses", ())) for row in history[:-1])
        with self.writer.as_default():
            for i, loss in enumerate(history[-1].get("step_losses", ())):
                tf.summary.scalar("train_loss_per_step", loss, step=first + i + 1)
        self.writer.flush()
        from pipeline.training.curves import plot_curves  # noqa: PLC0415 - slow import

        plot_curves(history, self.dir / "curves.png")

    def record_final(self, scores: dict, epochs: int) -> None:
        """The run's final scores (test accuracy with and without TTA) as TensorBoard
        scalars at the last epoch, beside the per-epoch curves."""
        if not (self.dir and self.chief):
            return
        with self.writer.as_default(step=epochs):
            for key in ("test_accuracy", "test_accuracy_no_tta", "test_loss"):
                if scores.get(key) is not None:
                    tf.summary.scalar(key, scores[key])
        self.writer.flush()

    def save(self, global_step: int, position: str) -> None:
        """Writes a checkpoint numbered by the global step (collective: every worker calls
        it at the same step); `position` says where in the run it is, for messages."""
        if self.manager:
            self._saved_at[self.manager.save(checkpoint_number=global_step)] = position

    def describe_latest(self, position: str) -> None:
        """Names where the restored checkpoint is in the run, for messages."""
        if self.manager and self.manager.latest_checkpoint:
            self._saved_at[self.manager.latest_checkpoint] = position

    def what_is_kept(self) -> str:
        """Where the last good state is, and how to go on from it."""
        latest = self.manager and self.manager.latest_checkpoint
        if not latest:
            return "nothing was saved (no --out)" if not self.dir else "no checkpoint yet"
        position = self._saved_at.get(latest)
        name = Path(latest).name + (f" ({position})" if position else "")
        return f"checkpoint {name} is kept in {self.dir}: run the same command again to resume"

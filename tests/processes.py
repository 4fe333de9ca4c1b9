"""Helpers of the tests that run the console scripts as processes: the command lines,
the environment, polling waits and what a run folder's checkpoints say."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, TINY

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

# Epochs long enough to be interrupted between two steps: 128 steps of 32 images, with
# random shifts and flips (the resumed run must draw the same ones).
EPOCHS_OF_MANY_STEPS = [
    *TINY,
    "--set",
    "data.synthetic_examples=4096",
    "--set",
    "data.augment.translate=2",
    "--set",
    "data.augment.flip=random",
    "--no-export",
]
STEPS_PER_EPOCH = 4096 // 32


def train_command(*args) -> list[str]:
    """`cifar-train ARGS` as this interpreter runs it from the repository."""
    return [sys.executable, "-m", "scripts.train", *args]


def run_training(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    """`cifar-train ARGS` run to its end, its output captured."""
    return subprocess.run(
        train_command(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def start_training(*args, out: Path, **kw) -> subprocess.Popen:
    """`cifar-train ARGS --out OUT` started in the background, its output piped."""
    return subprocess.Popen(
        train_command(*args, "--out", str(out)),
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Polls `predicate` until it holds; fails on `timeout` seconds or when `proc` ends
    first (with its stderr's tail)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def checkpoint_steps(out: Path) -> list[int]:
    """The steps of the checkpoint files in run folder `out`, ascending."""
    return sorted(int(p.name[5:-6]) for p in (Path(out) / "checkpoints").glob("ckpt-*.index"))


def latest_checkpoint_step(out) -> int:
    """The step a resume of the run in `out` would start from: what the program itself
    reads (the checkpoint state file, via tf.train.latest_checkpoint), not the files' names.
    A kill -9 can land after ckpt-N.index is written and before the state file moves to it;
    the resume then rightly starts from the previous checkpoint. 0 when there is none."""
    import tensorflow as tf  # noqa: PLC0415 - not at collection

    latest = tf.train.latest_checkpoint(str(Path(out) / "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0

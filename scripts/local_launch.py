"""What a `--local-workers` command does before it starts its processes."""

from __future__ import annotations

import subprocess
import sys


def before_local_launch(out: str | None, data) -> None:
    """What a `--local-workers` launcher does before it starts its processes: claims
    `out` for them, and makes tfds CIFAR-10 ready (`cifar-data prepare`) in a child
    process, so that this one stays free of TensorFlow's threads (launch.py needs a single
    thread) and the processes, in a namespace without network, find it."""
    from pipeline.runtime import out_claim  # noqa: PLC0415 - no TensorFlow

    if out:
        out_claim.claim(out)
    _prepare_data_in_child(data)


def _prepare_data_in_child(cfg) -> None:
    if cfg.source != "tfds":
        return
    cmd = [sys.executable, "-m", "scripts.data", "prepare"]
    if cfg.data_dir:
        cmd += ["--data-dir", cfg.data_dir]
    if cfg.local_copy:
        cmd += ["--local-copy", cfg.local_copy]
    if not cfg.download:
        cmd.append("--no-download")
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if done.returncode:
        raise SystemExit(done.returncode)  # its error is on stderr already

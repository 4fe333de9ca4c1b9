"""Runs one command as N multi-worker processes on loopback ports (try multi-worker locally)."""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline.errors import UserError
from pipeline.training.distribute import local_cluster


def strip_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def run_local_workers(n: int, argv: list[str], module: str = "scripts.train") -> int:
    """Starts `python -m module argv --strategy multi_worker` n times with TF_CONFIG set;
    worker 0 is the chief (writes outputs); returns the first non-zero exit code."""
    if n < 1:
        raise UserError(f"--local-workers must be >= 1, got {n}")
    args = strip_flag(strip_flag(argv, "--local-workers"), "--strategy")
    procs = []
    for i, tf_config in enumerate(local_cluster(n)):
        env = {**os.environ, "TF_CONFIG": tf_config}
        extra = ["--quiet"] if i else []
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", module, *args, "--strategy", "multi_worker", *extra],
                env=env,
                stdout=None if i == 0 else subprocess.DEVNULL,
            )
        )
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)

"""keras-tuner's chief and workers as processes of this machine (`cifar-tune
--local-workers N`), watched by the launcher. Imports no TensorFlow: the launcher must
stay single-threaded to enter its private network namespace."""

from __future__ import annotations

import os
import sys

from pipeline.errors import UserError


def local_search(
    workers: int, argv: list[str], allow_exposed: bool = False, module: str = "scripts.tune"
) -> int:
    """keras-tuner's distributed search on this machine: one chief (the oracle) and
    `workers` workers on a loopback port, in a private network namespace; each trial runs
    once, on one worker.

    A worker that dies is started again with its tuner id, and the oracle gives it back
    the trial it was running (at most twice per worker); a lost chief, or a worker that
    keeps dying, stops the search (exit 4), and the same command resumes it.
    """
    from pipeline.runtime import launch  # noqa: PLC0415 - no TensorFlow

    if workers < 1:
        raise UserError(f"--local-workers must be >= 1, got {workers}")
    launch.isolate(allow_exposed)
    args = launch.strip_flag(argv, "--local-workers")
    port = str(launch.free_ports(1)[0])
    base_env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
    command = [sys.executable, "-m", module, *args]
    names = ["chief"] + [f"tuner{i}" for i in range(workers)]
    children = [
        launch.Child(name, command, {**base_env, "KERASTUNER_TUNER_ID": name}) for name in names
    ]
    code, lost = launch.supervise(children, restart=frozenset(names[1:]))
    if lost:
        print(
            f"error: the search lost {lost}. Run the same command again to resume it: "
            "finished trials are kept.",
            file=sys.stderr,
        )
    return code

"""Runs one command as several processes on this machine and watches them: the
multi-worker training of `--local-workers` and keras-tuner's chief and workers.

The processes run in a private network namespace holding only loopback (their servers
cannot be reached from outside this machine; see private_network.py). A process that
dies is named at once; SIGTERM / SIGINT to the launcher reach every process once.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import EXIT_WORKER_LOST, UserError, exit_code_for
from pipeline.runtime import private_network

POLL_SECONDS = 0.2
# After one worker is lost, how long the others get to end by themselves (their
# collectives fail at once when the peer's connection resets) before they are killed.
GRACE_SECONDS = 15.0
PR_SET_PDEATHSIG = 1
EXPOSED_FLAG = "--allow-exposed-workers"  # the flag that accepts servers on every interface


class LaunchError(UserError):
    """The local processes cannot be started as asked; the message says the fix."""


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


def isolate(allow_exposed: bool, log=print) -> None:
    """Enters a private network namespace for the processes about to start, or refuses
    (LaunchError) unless the user accepted servers on every interface."""
    try:
        how = private_network.enter()
    except private_network.NamespaceUnavailable as e:
        if allow_exposed:
            log(
                f"warning: the local processes' servers listen on every interface ({e.strerror}"
                f"); {EXPOSED_FLAG} accepted that"
            )
            return
        raise LaunchError(
            "cannot keep the local processes' servers on loopback: this system refuses a "
            f"private network namespace ({e.strerror}). TensorFlow's servers listen on every "
            "interface and run any graph sent to them, unauthenticated. Allow unprivileged "
            "user namespaces (sysctl user.max_user_namespaces, or kernel."
            f"unprivileged_userns_clone=1), or pass {EXPOSED_FLAG} on a trusted network."
        ) from e
    log(f"local processes run in {how}: their servers are reachable on loopback only")


@dataclass
class Child:
    """One supervised process: what to run, and its current process."""

    name: str
    argv: list[str]
    env: dict
    quiet: bool = False
    proc: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.DEVNULL if self.quiet else None,
            process_group=0,  # a terminal's Ctrl-C reaches the launcher only, which forwards
            preexec_fn=_die_with_parent,
        )


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


# Exit codes a process gives for the run's own reasons (user error, divergence, a stop
# after saving): every process of the run gives the same, nobody was lost.
RUN_CODES = {2, 3, 130, 143}


def _loss_rank(child: Child) -> int:
    """Killed processes first, then crashes, then those that only saw a peer vanish."""
    code = child.proc.returncode
    return 0 if code < 0 else 2 if code == EXIT_WORKER_LOST else 1


def supervise(children: list[Child], restart: frozenset[str] = frozenset(), max_restarts=2):
    """Starts `children` and waits for all of them.

    A child named in `restart` that fails is started again (at most `max_restarts` times);
    any other failure is a loss: the others get GRACE_SECONDS to end, then are killed.
    SIGTERM / SIGINT are forwarded to every child once.

    Returns:
        (exit code, the lost child's description or None).
    """
    stopping: list[int] = []

    def forward(signum, frame):
        if not stopping:
            stopping.append(signum)
            for c in children:
                if c.proc.poll() is None:
                    c.proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    lost, deadline, run_code, seen = None, None, 0, set()
    try:
        for c in children:
            c.start()
        while any(c.proc.poll() is None for c in children):
            time.sleep(POLL_SECONDS)
            failed = [c for c in children if c.proc.poll() and c.proc.pid not in seen]
            for c in sorted(failed, key=_loss_rank):
                seen.add(c.proc.pid)
                code = c.proc.returncode
                if stopping or lost or code in RUN_CODES:
                    run_code = run_code or code
                elif c.name in restart and c.restarts < max_restarts:
                    c.restarts += 1
                    print(
                        f"{c.name} (pid {c.proc.pid}) {describe_exit(code)}; restarting it",
                        file=sys.stderr,
                        flush=True,
                    )
                    c.start()
                elif code == EXIT_WORKER_LOST:  # it saw a peer vanish or hang
                    lost = f"a worker: {c.name} (pid {c.proc.pid}) lost contact with it"
                else:
                    lost = f"{c.name} (pid {c.proc.pid}), which {describe_exit(code)}"
                if lost and deadline is None:
                    print(f"error: lost {lost}; stopping the others", file=sys.stderr, flush=True)
                    deadline = time.monotonic() + GRACE_SECONDS
            if deadline and time.monotonic() > deadline:
                for c in children:
                    if c.proc.poll() is None:
                        c.proc.kill()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if lost:
        return EXIT_WORKER_LOST, lost
    if stopping:
        return exit_code_for(stopping[0]), None
    return run_code or next((c.proc.returncode for c in children if c.proc.returncode), 0), None


def latest_checkpoint_name(out: str | None) -> str | None:
    """The name in OUT/checkpoints/checkpoint (read without TensorFlow), or None."""
    state = Path(out or "", "checkpoints", "checkpoint")
    if not out or not state.is_file():
        return None
    for line in state.read_text().splitlines():
        if line.startswith("model_checkpoint_path:"):
            return line.split(":", 1)[1].strip().strip('"')
    return None


def run_local_workers(
    n: int, argv: list[str], out: str | None, allow_exposed: bool, module: str = "scripts.train"
) -> int:
    """Starts `python -m module argv --strategy multi_worker` n times with TF_CONFIG set,
    worker 0 the chief (it writes the outputs), and watches them.

    Returns:
        0; EXIT_WORKER_LOST when a worker died (the others are stopped, the message says
        how to resume); 143 / 130 after SIGTERM / SIGINT (every worker saved its step);
        else the first non-zero code of a worker.
    """
    if n < 1:
        raise LaunchError(f"--local-workers must be >= 1, got {n}")
    isolate(allow_exposed)
    args = strip_flag(strip_flag(argv, "--local-workers"), "--strategy")
    children = [
        Child(
            f"worker {i}",
            [sys.executable, "-m", module, *args, "--strategy", "multi_worker"]
            + (["--quiet"] if i else []),
            {**os.environ, "TF_CONFIG": tf_config},
            quiet=i > 0,
        )
        for i, tf_config in enumerate(local_cluster(n))
    ]
    code, lost = supervise(children)
    if lost:
        latest = latest_checkpoint_name(out)
        where = f"from {latest} in {out}" if latest else "from the start (no checkpoint yet)"
        print(
            f"error: the run lost {lost}. Run the same command again to resume {where}.",
            file=sys.stderr,
        )
    return code


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def local_cluster(n: int) -> list[str]:
    """TF_CONFIG values for `n` workers on loopback ports of this machine."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(n)]
    return [
        json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        for i in range(n)
    ]


def _die_with_parent() -> None:
    """In the child: SIGKILL it if the launcher dies (no orphaned worker holds a port)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass

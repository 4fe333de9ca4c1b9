"""SIGTERM / SIGINT as a request to stop after the current training step.

A Python signal handler runs only when the main thread returns to Python, and the main
thread spends its time inside compiled calls of many steps. So the C-level handler's
wakeup byte is read by a watcher thread, which sets a `tf.Variable` that the compiled
step loop reads before each step: the step in progress finishes, the next one does not
start, and the loop saves a checkpoint of that step (`loop.fit`).

Why not `tf.distribute.experimental.PreemptionCheckpointHandler`: it serves
MultiWorkerMirroredStrategy and TPUStrategy only (not one process, default or mirrored),
and it aligns workers at its `run()` calls, so with 50 steps per compiled call it would
stop and save up to 50 steps after the signal (or cost a Python round trip per step); here
the flag is read inside the call, before each step, on every strategy, and a second signal
still exits at once.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import tensorflow as tf

from pipeline.errors import Preempted, exit_code_for

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """While active (a `with` block in the main thread), the first SIGTERM or SIGINT sets
    `flag` and `signum`; a second one exits at once, without saving the step in progress.

    Outside the block, and in other threads (where Python cannot install handlers), the
    signals keep their usual effect.
    """

    def __init__(self):
        self.flag = tf.Variable(False, trainable=False, name="stop_requested")
        self.signum: int | None = None
        self._lock = threading.Lock()
        self._saved: dict | None = None

    def request(self, signum: int) -> None:
        with self._lock:
            if self.signum is not None:
                if signum in STOP_SIGNALS:
                    _exit_now(signum)
                return
            self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after the current step to save it "
            f"(send it again to exit at once, without saving)",
            file=sys.stderr,
            flush=True,
        )
        self.flag.assign(True)

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is not threading.main_thread():
            return self
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        watcher = threading.Thread(target=self._watch, args=(reader,), daemon=True)
        watcher.start()
        self._saved = {"handlers": handlers, "wakeup": wakeup, "sockets": (reader, writer)}
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            return
        signal.set_wakeup_fd(self._saved["wakeup"])
        for signum, handler in self._saved["handlers"].items():
            signal.signal(signum, handler)
        reader, writer = self._saved["sockets"]
        writer.close()  # the watcher's recv returns b"" and it ends
        self._saved = None

    def _on_signal(self, signum, frame) -> None:
        """Replaces the default action (exit, KeyboardInterrupt). The watcher acts on
        each signal once, from its wakeup byte, so this does nothing more."""

    def _watch(self, reader: socket.socket) -> None:
        with reader:
            while chunk := reader.recv(64):
                for signum in chunk:
                    if signum in STOP_SIGNALS:
                        self.request(signum)

    def raise_stopped(self, where: str, what_is_kept: str) -> None:
        """Raises `Preempted` naming the signal, where training stopped and what is kept.
        A worker that got no signal itself stopped because another worker did."""
        signum = self.signum or signal.SIGTERM
        cause = signal.Signals(signum).name if self.signum else "a signal to another worker"
        raise Preempted(signum, f"stopped by {cause} {where}; {what_is_kept}")


def _exit_now(signum: int) -> None:
    print(f"{signal.Signals(signum).name} again: exiting without saving", file=sys.stderr)
    sys.stderr.flush()
    os._exit(exit_code_for(signum))

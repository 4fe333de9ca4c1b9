"""The failures every command reports without a traceback.

`UserError`: what the user gave (a flag, a path, a name, a config value) does not work;
the message says what was expected and the fix, and every CLI exits 2. Anything else
that escapes is a bug in the project and keeps its traceback.
`NonFiniteLossError`: training diverged; every CLI exits 3.
`Preempted`: a signal stopped training after saving; exit 128 + the signal number.
`WorkerLostError`: a multi-worker run lost a worker; exit 4.
"""

from __future__ import annotations

import difflib
import signal

# Every command's exit codes, defined here only.
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_WORKER_LOST = 4  # rerunning resumes


def exit_code_for(signum: int) -> int:
    """The shell's code for a process ended by `signum`: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


EXIT_INTERRUPTED = exit_code_for(signal.SIGINT)


class UserError(ValueError):
    """Bad input from the user; the message names the fix (exit code 2)."""


class NonFiniteLossError(RuntimeError):
    """Training loss became NaN or inf; the last good checkpoint is kept (exit code 3)."""


class Preempted(BaseException):
    """SIGTERM / SIGINT stopped training after a step that was saved; the exit code is the
    shell's for that signal (143, 130). A BaseException, like KeyboardInterrupt, so that
    code catching Exception (keras-tuner's trial runner) does not swallow it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code_for(signum)


class WorkerLostError(RuntimeError):
    """A multi-worker run lost contact with another worker; the run's checkpoints are kept
    and rerunning the same command resumes (exit code 4)."""

    exit_code = EXIT_WORKER_LOST


def did_you_mean(name: str, known) -> str:
    """ " Did you mean 'x'?" for the known names closest to a mistyped one, else ""."""
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""

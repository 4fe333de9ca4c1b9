"""How every console script ends: the exit codes (user error 2, diverged 3, worker lost 4,
stopped by a signal 128 + its number; any other exception is a bug and keeps its
traceback), and the environment set before TensorFlow is imported."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from pipeline.errors import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    EXIT_WORKER_LOST,
    NonFiniteLossError,
    Preempted,
    UserError,
    WorkerLostError,
)


def run_cli(main: Callable[[], int | None]) -> Callable[[], int]:
    """Wraps a CLI body: a `UserError` prints one clear line and exits 2, a
    `NonFiniteLossError` exits 3; anything else propagates with its traceback."""

    def wrapped() -> int:
        # Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI,
        # BF16 or AMX; elsewhere they make the step faster too (docs/experiments.md,
        # "Speed"). Read at TensorFlow's import.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        # A line at a time into logs (nohup, SLURM, CI), not a block at the end.
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=True)
        try:
            return main() or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        except NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_DIVERGED
        except WorkerLostError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_WORKER_LOST
        except Preempted as e:
            if sys.stdout.isatty():  # end the progress bar's line: the message gets its own
                print(flush=True)
            print(str(e), file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapped

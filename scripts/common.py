"""Argument parsing shared by the console scripts: data flags, overrides, and the exit codes
(user error 2, diverged 3, worker lost 4, stopped by a signal 128 + its number; any other
exception is a bug and keeps its traceback)."""

from __future__ import annotations

import argparse
import os
import subprocess
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


def command_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A console command's parser; its --help shows the module docstring as written."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", help="tensorflow-datasets data dir (default: tfds's own)")
    g.add_argument(
        "--local-copy",
        metavar="PATH",
        help="CIFAR-10 folder or .tar.gz imported into --data-dir when missing "
        "(for machines without network)",
    )
    g.add_argument(
        "--synthetic",
        action="store_true",
        help="random CIFAR-shaped data instead of CIFAR-10 (tests, throughput)",
    )
    g.add_argument("--train-examples", type=int, help="training examples (default 49000)")
    g.add_argument("--val-examples", type=int, help="validation examples (default 1000)")
    g.add_argument("--test-examples", type=int, help="test examples (default 10000)")


def add_experiment_args(parser: argparse.ArgumentParser):
    """--model NAME (its best-known experiment) or --experiment NAME (alias --preset); returns
    their mutually exclusive group, for other ways to name the recipe."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="a registered model, trained with its best-known recipe")
    which.add_argument(
        "--experiment", "--preset", dest="experiment", help="a named experiment (see --list)"
    )
    return which


def experiment_config(args: argparse.Namespace, default_model: str):
    """The Config that --model / --experiment name (`default_model`'s when neither)."""
    from pipeline import experiments  # noqa: PLC0415

    if args.experiment:
        return experiments.get(args.experiment)
    return experiments.for_model(args.model or default_model)


def add_local_workers_args(parser: argparse.ArgumentParser, help_text: str) -> None:
    from pipeline.runtime.launch import EXPOSED_FLAG  # noqa: PLC0415 - no TensorFlow

    parser.add_argument("--local-workers", type=int, default=0, help=help_text)
    parser.add_argument(
        EXPOSED_FLAG,
        action="store_true",
        help="with --local-workers where no private network namespace can be made: accept "
        "servers listening on every interface (trusted networks only)",
    )


def add_override_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optim.label_smoothing=0.1 "
        "(--list shows the keys)",
    )


DATA_FLAGS = {  # add_data_args's flags (argparse dest) -> config key
    "data_dir": "data.data_dir",
    "local_copy": "data.local_copy",
    "train_examples": "data.train_examples",
    "val_examples": "data.val_examples",
    "test_examples": "data.test_examples",
}


def given_flags(args: argparse.Namespace, flags: dict[str, str]) -> dict:
    """{config key: value} of the flags in `flags` (argparse dest -> key) that were given."""
    return {
        key: getattr(args, dest)
        for dest, key in flags.items()
        if getattr(args, dest, None) is not None
    }


def data_overrides(args: argparse.Namespace) -> dict:
    out = given_flags(args, DATA_FLAGS)
    if getattr(args, "synthetic", False):
        out["data.source"] = "synthetic"
    return out


def apply_flags(cfg, args: argparse.Namespace, flags: dict[str, str], always: dict | None = None):
    """`cfg` with the command line on top, in the one order every CLI uses: what the
    command always sets (`always`), the data flags, the given flags of `flags` (argparse
    dest -> config key), then each `--set` (which therefore wins)."""
    from pipeline.config import override, parse_overrides  # noqa: PLC0415

    updates = {**(always or {}), **data_overrides(args), **given_flags(args, flags)}
    return override(override(cfg, updates), parse_overrides(getattr(args, "set", [])))


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

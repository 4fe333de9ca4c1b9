"""Argument parsing shared by the console scripts: data flags, overrides, errors -> exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from pipeline.cifar_files import DataError
from pipeline.config import ConfigError


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


def add_override_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set optim.label_smoothing=0.1 "
        "(--list shows the keys)",
    )


def data_overrides(args: argparse.Namespace) -> dict:
    out = {}
    for flag, key in (
        ("data_dir", "data.data_dir"),
        ("local_copy", "data.local_copy"),
        ("train_examples", "data.train_examples"),
        ("val_examples", "data.val_examples"),
        ("test_examples", "data.test_examples"),
    ):
        if getattr(args, flag, None) is not None:
            out[key] = getattr(args, flag)
    if getattr(args, "synthetic", False):
        out["data.source"] = "synthetic"
    return out


def run_cli(main: Callable[[], int | None]) -> Callable[[], int]:
    """Wraps a CLI body: user errors print one clear line and exit 2."""

    def wrapped() -> int:
        # Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI,
        # BF16 or AMX; elsewhere they make the step faster too (README, "The loop against
        # PyTorch"). Read at TensorFlow's import.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        try:
            return main() or 0
        except (ConfigError, DataError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapped


def write_json(path: str, payload: dict) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")

"""The console scripts' shared flags: parsers, the data and experiment flags, `--set`, and
the flag tables (flag -> dotted config key) that `apply_flags` applies."""

from __future__ import annotations

import argparse


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

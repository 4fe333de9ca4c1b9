"""cifar-tune: keras-tuner search through the project's one loop, at equal compute.

  cifar-tune --budget-pflops 0.09 --data-dir DIR --out runs/search   # Hyperband, airbench space
  cifar-tune report --out runs/search [--hand RUN ...]  # report.md, frontier and other PNGs
  cifar-tune retrain --out runs/search --seeds 1 2 3    # best vs hand recipe on the test set
  cifar-tune ... --local-workers 2         # keras-tuner chief + 2 workers on loopback
  cifar-tune --list                        # the search spaces and their hyperparameters

Each trial trains for a share of --budget-pflops (training compute: 3x the forward FLOPs
per image, times the images trained on), so a wider net trains fewer steps; Hyperband
gives its trials 1/9, 1/3 and all of it (--max-epochs 9 units). Without a budget, trials
train --max-epochs epochs. Trials are scored on a validation split carved from the
training set (--val-examples, default 5,000); the search never reads the test split.

Rerunning a search on the same --out resumes it (finished trials are not rerun);
--overwrite starts afresh. On a cluster, run the same command on every machine with
KERASTUNER_TUNER_ID ("chief" on one, "tuner0", "tuner1", ... on the others),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (the chief's address) set; --out must
be a shared folder. Under SLURM, run it through srun instead: task 0 becomes the chief
(its oracle on port 8888 of its node; --set train.slurm_port=N to move it) and the other
tasks its workers. Outputs: best.json, best_config.json (cifar-train --config), leaderboard.md,
histories/ (one record per trial), search/ (keras-tuner), tensorboard/.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.config import Config, choices, parse_overrides
from scripts.exits import run_cli
from scripts.flags import (
    add_data_args,
    add_local_workers_args,
    add_override_arg,
    apply_flags,
    command_parser,
    data_overrides,
)
from scripts.local_launch import before_local_launch
from tuning import TUNERS
from tuning.space import DEFAULT_SPACE, SPACES
from tuning.space import get as get_space


def parse(argv=None) -> argparse.Namespace:
    """`cifar-tune [search] ...`, `cifar-tune report ...` or `cifar-tune retrain ...`, each
    with its own flags (and its own --help)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["report"], ["retrain"]):
        action = argv[0]
        parser = (_report_parser if action == "report" else _retrain_parser)()
        return argparse.Namespace(action=action, list=False, **vars(parser.parse_args(argv[1:])))
    if argv[:1] == ["search"]:
        argv = argv[1:]
    return argparse.Namespace(action="search", **vars(_search_parser().parse_args(argv)))


def _search_parser() -> argparse.ArgumentParser:
    p = command_parser("cifar-tune", __doc__)
    p.add_argument("--tuner", default="hyperband", choices=TUNERS)
    p.add_argument("--space", default=DEFAULT_SPACE, choices=sorted(SPACES), help="search space")
    p.add_argument(
        "--budget-pflops",
        type=float,
        default=0.09,
        help="training compute of a full trial, PFLOPs (0: trials train --max-epochs epochs)",
    )
    p.add_argument("--list", action="store_true", help="list the search spaces and exit")
    p.add_argument("--max-trials", type=int, default=10, help="bayesian / random")
    p.add_argument(
        "--max-epochs",
        type=int,
        default=9,
        help="hyperband: budget units (or epochs, without a budget) of its largest trials; "
        "others: epochs per trial without a budget",
    )
    p.add_argument("--precision", choices=choices("train.precision"), default="auto")
    p.add_argument("--batch-size", type=int, help="default: the space's base experiment's")
    p.add_argument("--out", default="runs/search")
    p.add_argument("--overwrite", action="store_true", help="discard a previous search in --out")
    add_local_workers_args(
        p, "distributed search: keras-tuner chief + N workers, reachable on loopback only"
    )
    p.add_argument("--seed", type=int, default=0, help="the search's seed (every trial's)")
    add_data_args(p)
    add_override_arg(p)
    return p


def _on_a_search(action: str, doc: str) -> argparse.ArgumentParser:
    """The parser of an action on a finished search in --out."""
    p = command_parser(f"cifar-tune {action}", doc)
    p.add_argument("--out", default="runs/search", help="the search's folder")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = _on_a_search(
        "report",
        "report.md in --out from a finished search: trials that failed, the splits, the "
        "leaderboard, what each hyperparameter did, and its plots (accuracy_vs_compute.png, "
        "learning curves, accuracy against the most important hyperparameters).",
    )
    p.add_argument(
        "--hand",
        nargs="*",
        default=[],
        metavar="RUN",
        help="run folders of hand recipes (cifar-train --out; LABEL=FOLDER to name one) "
        "marked on the frontier",
    )
    return p


def _retrain_parser() -> argparse.ArgumentParser:
    p = _on_a_search(
        "retrain",
        "The search's best recipe and the hand recipe its space is centred on, trained "
        "side by side at the search's budget on all the training images and scored on the "
        "test set, with seeds the search never used: --out/retrain/BUDGET/retrain.md.",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds, not the search's"
    )
    p.add_argument("--precision", choices=choices("train.precision"), default="auto")
    add_data_args(p)
    add_override_arg(p)
    return p


FLAGS = {  # flag -> config key
    "precision": "train.precision",
    "batch_size": "data.batch_size",
    "seed": "train.seed",
    "budget_pflops": "train.budget_pflops",
}
SEARCH_SPLIT = {"data.train_examples": 45_000, "data.val_examples": 5_000}  # of tfds "train"


def base_config(args) -> Config:
    """The space's base experiment as the search trains it: scored on a validation split
    carved from the training set, without TTA, quietly, never reading the test split.

    Raises:
        ConfigError: when --test-examples is given (the search must not read the test set).
    """
    from pipeline import experiments  # noqa: PLC0415
    from pipeline.config import ConfigError, override  # noqa: PLC0415

    if args.test_examples:
        raise ConfigError(
            "a search never reads the test split: leave out --test-examples (cifar-tune "
            "retrain scores the winner on it)"
        )
    always = {**SEARCH_SPLIT, "train.progress": "none", "train.tta": "none"}
    if not args.budget_pflops:
        always["train.epochs"] = args.max_epochs
    cfg = apply_flags(experiments.get(get_space(args.space).base), args, FLAGS, always)
    return override(cfg, {"data.test_examples": 0})


def list_spaces() -> None:
    import keras_tuner as kt  # noqa: PLC0415

    from pipeline import experiments  # noqa: PLC0415

    for name, s in SPACES.items():
        hp = kt.HyperParameters()
        s.changes(hp, experiments.get(s.base))
        print(f"{name}{' (default)' if name == DEFAULT_SPACE else ''}: around {s.base}")
        print(f"  {s.doc}")
        print(f"  hyperparameters: {', '.join(p.name for p in hp.space)}")


def few_malloc_arenas(argv: list[str]) -> None:
    """Re-executes this search with MALLOC_ARENA_MAX=2 (Linux), unless it is set already.

    glibc gives threads heap arenas of their own; tf.data's threads then strand freed
    batch buffers in many arenas, and resident memory climbed trial after trial (measured
    in docs/experiments.md). Workers started by --local-workers inherit the setting.
    """
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return
    os.environ["MALLOC_ARENA_MAX"] = "2"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "scripts.tune", *argv])


@run_cli
def main() -> int:
    args = parse()
    if args.list:
        list_spaces()
        return 0
    if args.action == "report":
        from tuning.report import write_report  # noqa: PLC0415

        print(f"wrote {write_report(args.out, args.hand)}")
        return 0
    few_malloc_arenas(sys.argv[1:])
    if args.action == "retrain":
        return retrain(args)
    if args.local_workers:
        from tuning.local import local_search  # noqa: PLC0415

        before_local_launch(args.out, base_config(args).data)
        return local_search(args.local_workers, sys.argv[1:], args.allow_exposed_workers)
    from pipeline.runtime.distribute import in_slurm_step  # noqa: PLC0415
    from tuning.search import search, slurm_tuner_env  # noqa: PLC0415

    if in_slurm_step() and "KERASTUNER_TUNER_ID" not in os.environ:
        os.environ.update(slurm_tuner_env(base_config(args).train.slurm_port))
    best = search(
        base_config(args),
        args.tuner,
        args.out,
        args.max_trials,
        args.max_epochs,
        args.overwrite,
        args.space,
    )
    if best:
        print(
            f"best trial {best['trial_id']}: val accuracy {best['val_accuracy']:.4f} "
            f"({best['finished_trials']} trials) -> {args.out}/best.json"
        )
    return 0


def retrain(args) -> int:
    from tuning.retrain import describe, retrain  # noqa: PLC0415 - imports TensorFlow

    updates = {**data_overrides(args), "train.progress": "auto", **parse_overrides(args.set)}
    if args.precision != "auto":
        updates["train.precision"] = args.precision
    print("\n".join(describe(retrain(args.out, args.seeds, updates))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

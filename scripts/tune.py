"""cifar-tune: keras-tuner search of custom_convnet through the project's one loop.

  cifar-tune --max-epochs 9 --train-examples 10000 --data-dir DIR --out runs/search
  cifar-tune report --out runs/search      # report.md + PNGs: the "describe your experiments"
  cifar-tune retrain --out runs/search     # train best.json's config for the full budget
  cifar-tune ... --local-workers 2         # keras-tuner chief + 2 workers on loopback

Rerunning a search on the same --out resumes it (finished trials are not rerun);
--overwrite starts afresh. On a cluster, run the same command on every machine with
KERASTUNER_TUNER_ID ("chief" on one, "tuner0", "tuner1", ... on the others),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (the chief's address) set; --out must
be a shared folder. Under SLURM, run it through srun instead: task 0 becomes the chief
(its oracle on port 8888 of its node; --set train.slurm_port=N to move it) and the other
tasks its workers. Outputs: best.json, leaderboard.md, histories/, search/ (keras-tuner).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline.config import Config, choices, parse_overrides
from scripts.common import (
    add_data_args,
    add_local_workers_args,
    add_override_arg,
    apply_flags,
    before_local_launch,
    command_parser,
    data_overrides,
    run_cli,
)
from tuning import TUNERS


def parse(argv=None) -> argparse.Namespace:
    p = command_parser("cifar-tune", __doc__)
    p.add_argument("action", nargs="?", default="search", choices=["search", "report", "retrain"])
    p.add_argument("--tuner", default="hyperband", choices=TUNERS)
    p.add_argument("--max-trials", type=int, default=10, help="bayesian / random")
    p.add_argument(
        "--max-epochs",
        type=int,
        default=9,
        help="hyperband: most epochs a trial gets; others: epochs per trial",
    )
    p.add_argument("--precision", choices=choices("train.precision"), default="auto")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--out", default="runs/search")
    p.add_argument("--overwrite", action="store_true", help="discard a previous search in --out")
    add_local_workers_args(
        p, "distributed search: keras-tuner chief + N workers, reachable on loopback only"
    )
    p.add_argument("--epochs", type=int, help="retrain: epochs (default: the challenge's 10)")
    p.add_argument("--seed", type=int, default=0)
    add_data_args(p)
    add_override_arg(p)
    return p.parse_args(argv)


FLAGS = {  # flag -> config key
    "precision": "train.precision",
    "max_epochs": "train.epochs",
    "batch_size": "data.batch_size",
    "seed": "train.seed",
}


def base_config(args) -> Config:
    from pipeline import experiments  # noqa: PLC0415

    fixed = {"train.progress": "none", "train.tta": "none"}
    return apply_flags(experiments.get("challenge"), args, FLAGS, fixed)


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
    if args.action == "report":
        from tuning.report import write_report  # noqa: PLC0415

        print(f"wrote {write_report(args.out)}")
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
        base_config(args), args.tuner, args.out, args.max_trials, args.max_epochs, args.overwrite
    )
    if best:
        print(
            f"best trial {best['trial_id']}: val accuracy {best['val_accuracy']:.4f} "
            f"({best['finished_trials']} trials) -> {args.out}/best.json"
        )
    return 0


def retrain(args) -> int:
    from tuning.search import retrain_best  # noqa: PLC0415 - imports TensorFlow

    updates = {**data_overrides(args), **parse_overrides(args.set)}
    if args.epochs:
        updates["train.epochs"] = args.epochs
    metrics = retrain_best(args.out, updates)
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

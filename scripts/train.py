"""cifar-train: train any registered model with the project's one loop.

  cifar-train --model sequential_three_layer_convnet --data-dir DIR --out runs/seq
  cifar-train --experiment challenge --data-dir DIR --out runs/challenge
  cifar-train --model functional_two_layer_fc --strategy mirrored --cpu-replicas 2 --synthetic
  cifar-train --model subclass_two_layer_fc --local-workers 2 --synthetic --out runs/mw

--model NAME trains the model with its best-known experiment (the notebook's settings for
the notebook's models; `challenge` for custom_convnet); --experiment NAME (alias --preset)
picks any named experiment. Flags and `--set key=value` override it; `--list` shows
models, experiments and config keys.
--out DIR gets config.json, metrics.json, history.json, checkpoints/, tensorboard/,
curves.png and at the end export/ (a SavedModel for cifar-predict; --no-export skips it);
rerunning the same command resumes from the last checkpoint.
Exit codes: 0 done, 2 bad input (message says the fix), 3 training diverged (NaN/inf),
4 a worker of a multi-worker run was lost, 143 / 130 stopped by SIGTERM / SIGINT after
saving the step reached (rerunning resumes after 4, 143 and 130).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config import (
    Config,
    ConfigError,
    choices,
    from_dict,
    recipe,
    to_record,
    valid_keys,
)
from scripts.exits import run_cli
from scripts.flags import (
    add_data_args,
    add_experiment_args,
    add_local_workers_args,
    add_override_arg,
    apply_flags,
    command_parser,
    experiment_config,
)
from scripts.local_launch import before_local_launch

FLAGS = {  # flag -> config key
    "epochs": "train.epochs",
    "budget_pflops": "train.budget_pflops",
    "batch_size": "data.batch_size",
    "lr": "optim.lr",
    "precision": "train.precision",
    "strategy": "train.strategy",
    "cpu_replicas": "train.cpu_replicas",
    "out": "train.out_dir",
    "seed": "train.seed",
    "loop": "train.loop",
}


def parse(argv=None) -> argparse.Namespace:
    p = command_parser("cifar-train", __doc__)
    add_experiment_args(p).add_argument(
        "--config", metavar="RUN/config.json", help="rerun the recipe a run recorded"
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the config as it would train; exit"
    )
    p.add_argument("--epochs", type=float, help="may be fractional (9.9: airbench94's 476 steps)")
    p.add_argument(
        "--budget-pflops",
        type=float,
        help="train for this much compute instead of --epochs (PFLOPs: 3x the forward FLOPs "
        "per training image); the recipe's warm-up and freeze scale with the run",
    )
    p.add_argument("--batch-size", type=int, help="global batch, over all replicas")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--precision", choices=choices("train.precision"))
    p.add_argument("--strategy", choices=choices("train.strategy"))
    p.add_argument("--cpu-replicas", type=int, help="mirrored over N logical CPU devices")
    add_local_workers_args(
        p, "launch N multi-worker processes on this machine, reachable on loopback only"
    )
    p.add_argument("--loop", choices=choices("train.loop"))
    p.add_argument("--out", help="output dir (resumes if it holds a checkpoint)")
    p.add_argument("--seed", type=int)
    add_data_args(p)
    add_override_arg(p)
    p.add_argument("--list", action="store_true", help="list models, experiments and config keys")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="end with metrics.json's figures as JSON")
    p.add_argument(
        "--no-export", action="store_true", help="no SavedModel in --out/export at the end"
    )
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    cfg = (
        recorded_config(args.config)
        if args.config
        else experiment_config(args, Config().model.name)
    )
    always = {}
    if args.quiet:
        always["train.progress"] = "none"
    if args.no_export:
        always["train.export"] = False
    cfg = apply_flags(cfg, args, FLAGS, always)
    if not cfg.train.epochs > 0:
        raise ConfigError(f"--epochs must be > 0 (e.g. 10 or 9.9), got {cfg.train.epochs}")
    if cfg.train.budget_pflops < 0:
        raise ConfigError(
            f"--budget-pflops must be > 0 (e.g. 0.09), or 0 to train --epochs; got "
            f"{cfg.train.budget_pflops}"
        )
    return cfg


def recorded_config(path: str) -> Config:
    """The recipe a run's config.json recorded, without its runtime (a rerun writes where
    --out says, not over the run it came from, on the strategy its flags say).

    Raises:
        ConfigError: for a missing or unreadable file, or a field this version rejects.
    """
    try:
        recorded = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"--config {path}: no such file; give a run's config.json (cifar-train --out DIR "
            "writes DIR/config.json)"
        ) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {path} is not a readable JSON config: {e}") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"--config {path} holds no config object (a run's config.json)")
    return recipe(from_dict(recorded))


def list_choices() -> None:
    from models.registry import entry, names  # noqa: PLC0415
    from pipeline import experiments  # noqa: PLC0415

    print("models (--model NAME trains its best-known experiment):")
    for name in names():
        print(f"  {name:34s} {entry(name).doc}")
    print("experiments (--experiment NAME):")
    for name in experiments.names():
        print(f"  {name:34s} {experiments.describe(name)}")
    print("config keys (--set KEY=VALUE): " + ", ".join(valid_keys()))


def launch_local_workers(args: argparse.Namespace, cfg: Config) -> int:
    """Claims --out, prepares the data while the network is at hand, then runs the
    workers in a private network namespace (see pipeline/runtime/launch.py)."""
    from pipeline.runtime import launch  # noqa: PLC0415 - no TensorFlow

    before_local_launch(cfg.train.out_dir, cfg.data)
    return launch.run_local_workers(
        args.local_workers, sys.argv[1:], cfg.train.out_dir, args.allow_exposed_workers
    )


@run_cli
def main() -> int:
    args = parse()
    if args.list:
        list_choices()
        return 0
    cfg = build_config(args)
    if args.print_config:
        print(json.dumps(to_record(cfg), indent=2))
        return 0
    if args.local_workers:
        return launch_local_workers(args, cfg)
    from pipeline.training import run  # noqa: PLC0415 - imports TensorFlow

    metrics = run.train(cfg)
    figures = {k: v for k, v in metrics.items() if k != "history"}
    print(json.dumps(figures, indent=1) if args.json else summary(metrics, cfg))
    return 0


def summary(metrics: dict, cfg: Config) -> str:
    """What a person reads at the end of a run: accuracy, time, speed, where things are."""
    lines = []
    if "test_accuracy" in metrics:
        text = f"test accuracy {metrics['test_accuracy']:.2%}"
        if "test_accuracy_no_tta" in metrics:
            text += f" with TTA ({cfg.train.tta}), {metrics['test_accuracy_no_tta']:.2%} without"
        lines.append(text)
    if "val_accuracy" in metrics:
        lines.append(f"val accuracy {metrics['val_accuracy']:.2%}")
    seconds = sum(row["seconds"] for row in metrics.get("history", ()))
    speed = metrics.get("train_images_per_second")
    text = f"training {seconds / 60:.1f} min ({seconds:,.0f} s"
    text += f", {speed:,.0f} images/s)" if speed else ")"
    lines.append(text + f"; {metrics['wall_seconds'] / 60:.1f} min in all")
    out = cfg.train.out_dir
    if out:
        lines.append(
            f"outputs in {out}: metrics.json, history.json, curves.png, tensorboard/ "
            f"(tensorboard --logdir {out}/tensorboard), checkpoints/"
            + (", export/" if cfg.train.export and cfg.train.strategy != "multi_worker" else "")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""cifar-train: train any registered model with the project's one loop.

  cifar-train --model sequential_three_layer_convnet --data-dir DIR --out runs/seq
  cifar-train --preset challenge --data-dir DIR --out runs/challenge
  cifar-train --model functional_two_layer_fc --strategy mirrored --cpu-replicas 2 --synthetic
  cifar-train --model subclass_two_layer_fc --local-workers 2 --synthetic --out runs/mw

Without --preset a model trains with its own recipe (the notebook's settings for the
notebook's models: batch 64, one epoch, its optimizer and learning rate). Flags and
`--set key=value` override it; `--list` shows models, presets and config keys.
--out DIR gets config.json, metrics.json, history.json, checkpoints/, tensorboard/ and
curves.png; rerunning the same command resumes from the last checkpoint.
Exit codes: 0 done, 2 bad input (message says the fix), 3 training diverged (NaN/inf).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.config import CHOICES, Config, ConfigError, override, parse_overrides, valid_keys
from scripts.common import add_data_args, add_override_arg, data_overrides, run_cli

FLAGS = {  # flag -> config key
    "epochs": "train.epochs",
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
    p = argparse.ArgumentParser(
        prog="cifar-train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="registered model name (see --list)")
    p.add_argument("--preset", help="named preset (see --list)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch, over all replicas")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--precision", choices=CHOICES["train.precision"])
    p.add_argument("--strategy", choices=CHOICES["train.strategy"])
    p.add_argument("--cpu-replicas", type=int, help="mirrored over N logical CPU devices")
    p.add_argument(
        "--local-workers",
        type=int,
        default=0,
        help="launch N multi-worker processes on loopback ports of this machine",
    )
    p.add_argument("--loop", choices=CHOICES["train.loop"])
    p.add_argument("--out", help="output dir (resumes if it holds a checkpoint)")
    p.add_argument("--seed", type=int)
    add_data_args(p)
    add_override_arg(p)
    p.add_argument("--list", action="store_true", help="list models, presets and config keys")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    from pipeline import presets  # noqa: PLC0415

    if args.preset:
        cfg = presets.get(args.preset)
        if args.model and args.model != cfg.model.name:
            raise ConfigError(
                f"preset {args.preset!r} trains {cfg.model.name}, not {args.model}: drop "
                "--model, or drop --preset to train the model with its own recipe"
            )
    else:
        cfg = presets.for_model(args.model or Config().model.name)
    updates = {
        key: getattr(args, flag) for flag, key in FLAGS.items() if getattr(args, flag) is not None
    }
    updates.update(data_overrides(args))
    if args.quiet:
        updates["train.progress"] = "none"
    cfg = override(cfg, updates)
    cfg = override(cfg, parse_overrides(args.set))
    if cfg.train.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {cfg.train.epochs}")
    return cfg


def list_choices() -> None:
    from models.registry import entry, names  # noqa: PLC0415
    from pipeline import presets  # noqa: PLC0415

    print("models:")
    for name in names():
        print(f"  {name:34s} {entry(name).doc}")
    print("presets: " + ", ".join(presets.names()))
    print("config keys (--set KEY=VALUE): " + ", ".join(valid_keys()))


@run_cli
def main() -> int:
    args = parse()
    if args.list:
        list_choices()
        return 0
    if args.local_workers:
        from pipeline.launch import run_local_workers  # noqa: PLC0415

        return run_local_workers(args.local_workers, sys.argv[1:])
    cfg = build_config(args)
    from pipeline import run  # noqa: PLC0415 - imports TensorFlow
    from pipeline.loop import NonFiniteLossError  # noqa: PLC0415

    try:
        metrics = run.train(cfg)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""cifar-eval: score a training run on the test split, with tables and pictures.

  cifar-eval runs/challenge            # writes runs/challenge/eval/
  cifar-eval runs/challenge --out DIR

Reads only the test split (from --data-dir, else from where the run read its data).
Restores the run's latest checkpoint (the weights the run is judged by: the EMA's when
its recipe keeps one) on this machine's default device, whatever strategy trained it,
and writes metrics.json (test accuracy with and without the run's test-time
augmentation), per_class.md / per_class.json (precision and recall per class),
confusion_matrix.png and mistakes.png (the most confidently misclassified test images).
A run stopped early is evaluated at the epoch it reached, and says so.
Exit codes: 0 done, 2 no run in the folder (the message says what is there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.exits import run_cli
from scripts.flags import command_parser


def parse(argv=None) -> argparse.Namespace:
    p = command_parser("cifar-eval", __doc__)
    p.add_argument("run_dir", help="the --out folder of a cifar-train run")
    p.add_argument("--out", help="where to write (default: RUN_DIR/eval)")
    p.add_argument(
        "--data-dir",
        help="tensorflow-datasets data dir holding CIFAR-10 (default: the one the run read)",
    )
    return p.parse_args(argv)


@run_cli
def main() -> None:
    args = parse()
    from pipeline.inference import evaluate, restore  # noqa: PLC0415 - imports TensorFlow

    restored = restore.restore_run(args.run_dir, test_split=True, data_dir=args.data_dir)
    evaluate.evaluate_run(restored, args.out or Path(args.run_dir) / "eval")


if __name__ == "__main__":
    sys.exit(main())

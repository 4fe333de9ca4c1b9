"""cifar-data: prepare CIFAR-10 for tensorflow-datasets offline, and check it.

  cifar-data import ../shared/data/cifar10 --data-dir ~/tensorflow_datasets
  cifar-data prepare --data-dir ~/tensorflow_datasets   # there already, or download it
  cifar-data verify --data-dir ~/tensorflow_datasets

`import` builds the standard tfds `cifar10` (3.0.2: 50,000 train, 10,000 test) from a
local copy in about 20-40 s on a 2-core CPU, with no network; afterwards
`tfds.load("cifar10", data_dir=DIR)` works offline. `verify` prints split sizes,
per-class counts and per-channel mean/std (train: mean 125.307 122.950 113.865,
std 62.993 62.089 66.705 on the 0-255 scale).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pipeline.config import DataConfig
from pipeline.data import sources as data
from scripts.exits import run_cli
from scripts.flags import command_parser


def parse(argv=None) -> argparse.Namespace:
    parser = command_parser("cifar-data", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser(
        "import",
        help="build tfds cifar10 from a local copy, offline",
        description="SRC: a folder holding cifar-10-batches-bin/ (or "
        "cifar-10-batches-py/), or the official cifar-10-binary.tar.gz / "
        "cifar-10-python.tar.gz.",
    )
    imp.add_argument("src", help="local CIFAR-10 copy (folder or .tar.gz)")
    imp.add_argument("--data-dir", help="tfds data dir to prepare (default: tfds's own)")
    imp.add_argument(
        "--no-checksums",
        action="store_true",
        help="accept .bin files whose sha256 differs from the official release",
    )
    prep = sub.add_parser(
        "prepare",
        help="make tfds cifar10 ready: already there, imported from --local-copy, or downloaded",
    )
    prep.add_argument("--data-dir", help="tfds data dir (default: tfds's own)")
    prep.add_argument("--local-copy", metavar="PATH", help="CIFAR-10 folder or .tar.gz")
    prep.add_argument("--no-download", action="store_true", help="fail rather than download")
    ver = sub.add_parser("verify", help="print split sizes, class counts, channel mean/std")
    ver.add_argument("--data-dir", help="tfds data dir (default: tfds's own)")
    return parser.parse_args(argv)


def describe(splits: data.Splits) -> str:
    lines = []
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        counts = np.bincount(split.labels, minlength=10)
        lines.append(
            f"{name:5s} {len(split.labels):6d} images; per class: "
            + " ".join(str(c) for c in counts)
        )
    lines.append("train mean (0-255, R G B): " + " ".join(f"{v:.3f}" for v in splits.mean))
    lines.append("train std  (0-255, R G B): " + " ".join(f"{v:.3f}" for v in splits.std))
    return "\n".join(lines)


@run_cli
def main() -> None:
    args = parse()
    if args.command == "import":
        path = data.import_local_copy(args.src, args.data_dir, check_digests=not args.no_checksums)
        print(f"tfds cifar10 ready in {path}")
        return
    if args.command == "prepare":
        data.ensure_prepared(
            DataConfig(
                data_dir=args.data_dir, local_copy=args.local_copy, download=not args.no_download
            )
        )
        print(f"tfds cifar10 ready in {args.data_dir or 'the default data dir'}")
        return
    b = data.builder(args.data_dir)
    if not b.is_prepared():
        raise data.DataError(
            f"no tfds cifar10 in {args.data_dir or 'the default data dir'}: run "
            f"`cifar-data import /path/to/cifar10 --data-dir {args.data_dir or 'DIR'}` first."
        )
    print(f"{b.info.full_name} in {b.data_dir}")
    for name, info in b.info.splits.items():
        print(f"tfds split {name}: {info.num_examples} examples")
    # The whole training set, then the default notebook split.
    full = data.load_splits(
        DataConfig(data_dir=args.data_dir, train_examples=50_000, val_examples=0)
    )
    print("-- tfds train (all 50,000) / test --")
    print(describe(full))
    print("-- default split (train[:49000] / train[49000:] / test) --")
    print(describe(data.load_splits(DataConfig(data_dir=args.data_dir))))


if __name__ == "__main__":
    sys.exit(main())

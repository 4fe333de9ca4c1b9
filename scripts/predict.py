"""cifar-predict: classify image files with an export.

  cifar-predict runs/challenge/export cat.png truck.jpg [--top 3] [--json]

Any size and mode (grayscale and RGBA become RGB; resized to 32x32). Prints each file's
likeliest classes with probabilities, or one JSON object with --json. A file that cannot
be read (missing, not an image, truncated) is named on stderr and the others are still
classified. Exit codes: 0 all classified, 2 some file (or the export) could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.errors import EXIT_USER_ERROR, UserError
from scripts.exits import run_cli
from scripts.flags import command_parser


def parse(argv=None) -> argparse.Namespace:
    p = command_parser("cifar-predict", __doc__)
    p.add_argument("model_dir", help="an export (cifar-export --to, or RUN_DIR/export)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--top", type=int, default=3, help="classes shown per image")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p.parse_args(argv)


@run_cli
def main() -> int:
    args = parse()
    if not (Path(args.model_dir) / "saved_model.pb").is_file():  # before TensorFlow's import
        raise UserError(
            f"{args.model_dir} holds no export (no saved_model.pb): give a cifar-export --to "
            "folder or a run's RUN_DIR/export"
        )
    from pipeline.inference import predict  # noqa: PLC0415 - imports TensorFlow

    results, errors = predict.predict_files(args.model_dir, args.images, args.top)
    if args.json:
        payload = {
            "predictions": {
                path: [{"class": c, "probability": p} for c, p in top]
                for path, top in results.items()
            },
            "errors": errors,
        }
        print(json.dumps(payload, indent=1))
    else:
        for path, top in results.items():
            print(f"{path}: " + ", ".join(f"{c} {p:.1%}" for c, p in top))
    for message in errors.values():
        print(f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR if errors else 0


if __name__ == "__main__":
    sys.exit(main())

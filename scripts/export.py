"""cifar-export: a training run's model as a SavedModel that serves without this project.

  cifar-export runs/challenge --to exports/challenge [--overwrite]

`serving_default` takes uint8 images [N, 32, 32, 3] (RGB, 0-255), normalises them inside
and returns float32 `probabilities` [N, 10], with the run's test-time augmentation; the
class names are the variable `class_names`. Load it with `tf.saved_model.load(DIR)` alone.
Keras models also get DIR/model.keras; DIR/export.json describes the export. A non-empty
--to is refused without --overwrite; the export is written beside and renamed, so a
failure leaves --to as it was. cifar-train writes RUN_DIR/export at the end of a run.
--tflite float dynamic int8 also writes DIR/model.tflite, model_dynamic.tflite and
model_int8.tflite (same signature: uint8 images in, probabilities out).
Exit codes: 0 done, 2 bad input (the message says the fix).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.files import check_target
from scripts.exits import run_cli
from scripts.flags import command_parser


def parse(argv=None) -> argparse.Namespace:
    p = command_parser("cifar-export", __doc__)
    p.add_argument("run_dir", help="the --out folder of a cifar-train run")
    p.add_argument("--to", required=True, help="folder to write the SavedModel into")
    p.add_argument("--overwrite", action="store_true", help="replace what --to holds")
    p.add_argument(
        "--tflite",
        nargs="+",
        choices=["float", "dynamic", "int8"],
        default=[],
        help="also write TensorFlow Lite models: float (as trained), dynamic (int8 weights), "
        "int8 (weights and activations, calibrated on 200 training images: reads the data)",
    )
    p.add_argument("--data-dir", help="int8: the tfds data dir, when it moved since training")
    return p.parse_args(argv)


@run_cli
def main() -> None:
    args = parse()
    # What needs no TensorFlow is checked before its 10 s import.
    if not (Path(args.run_dir) / "config.json").is_file():
        raise UserError(
            f"{args.run_dir} holds no run (no config.json): give the --out folder of a "
            "cifar-train run"
        )
    check_target(args.to, args.overwrite)
    from pipeline.inference import restore  # noqa: PLC0415 - imports TensorFlow

    restored = restore.restore_run(args.run_dir, test_split=False)  # no data needed
    print(f"wrote {restore.export_restored(restored, args.to, args.overwrite)}")
    if args.tflite:
        from pipeline.inference import tflite  # noqa: PLC0415

        calibration = None
        if "int8" in args.tflite:
            calibration = restore.training_images(restored, args.data_dir)
        for quantization in args.tflite:
            path = tflite.convert(args.to, quantization, calibration)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    sys.exit(main())

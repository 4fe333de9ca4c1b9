"""An export as a TensorFlow Lite model, in float32 or quantised after training: dynamic
range (int8 weights, float activations) or full int8 calibrated on training images."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.files import write_atomic, write_json
from pipeline.training.export import INFO_FILE, SIGNATURE

QUANTIZATIONS = ("float", "dynamic", "int8")
CALIBRATION_IMAGES = 200  # training images int8 calibration reads, one at a time


def tflite_name(quantization: str) -> str:
    return "model.tflite" if quantization == "float" else f"model_{quantization}.tflite"


def convert(
    export_dir: str | Path, quantization: str = "float", calibration: np.ndarray | None = None
) -> Path:
    """Writes EXPORT_DIR/model[_QUANT].tflite from the export's serving signature (uint8
    images in, probabilities out, as the SavedModel).

    Args:
        quantization: "float" (as trained), "dynamic" (int8 weights) or "int8" (weights
            and activations, calibrated on `calibration`: uint8 training images).

    Raises:
        ValueError: for int8 without calibration images (a bug in the caller).
    """
    export_dir = Path(export_dir)
    # From the loaded signature, not the folder: the converter then freezes every variable
    # into the graph (from_saved_model left READ_VARIABLE ops the interpreter runs unset).
    loaded = tf.saved_model.load(str(export_dir))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [loaded.signatures[SIGNATURE]], loaded
    )
    if quantization in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        if calibration is None or not len(calibration):
            raise ValueError("int8 quantisation needs calibration images")

        def representative() -> Iterator[list[np.ndarray]]:
            for image in calibration[:CALIBRATION_IMAGES]:
                yield [image[None].astype(np.uint8)]

        converter.representative_dataset = representative
    model = converter.convert()
    path = export_dir / tflite_name(quantization)
    write_atomic(path, lambda tmp: tmp.write_bytes(model))
    _list_in_description(export_dir, path.name)
    return path


def _list_in_description(export_dir: Path, name: str) -> None:
    """export.json's `files` names every file the export holds, the .tflite ones too."""
    info_path = export_dir / INFO_FILE
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if name not in info.setdefault("files", []):
            info["files"].append(name)
            write_json(info_path, info)


def predict(tflite_path: str | Path, images: np.ndarray, batch: int = 100) -> np.ndarray:
    """Probabilities [N, classes] of uint8 `images` [N, 32, 32, 3] from a .tflite file,
    through the TFLite interpreter, `batch` images a call."""
    interpreter = tf.lite.Interpreter(model_path=str(tflite_path))
    runner = interpreter.get_signature_runner(SIGNATURE)
    out = []
    for start in range(0, len(images), batch):
        out.append(runner(images=images[start : start + batch])["probabilities"])
    return np.concatenate(out)

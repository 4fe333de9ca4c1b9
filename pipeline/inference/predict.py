"""Classify image files with an export: PNG/JPEG/GIF/BMP of any size and mode, read with
`tf.io.decode_image` (grayscale and RGBA become RGB), resized to 32x32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.errors import UserError
from pipeline.training.export import SIGNATURE

# What the formats' files start with: a file is named by its content, not its extension.
_MAGIC = {"PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff", "GIF": b"GIF8", "BMP": b"BM"}


class ImageError(UserError):
    """One input file is not an image the model can read; the message names it."""


def load_export(model_dir: str | Path):
    """(serving function, class names) of an export written by `cifar-export`.

    Raises:
        UserError: when `model_dir` is not such an export.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "saved_model.pb").is_file():
        raise UserError(
            f"{model_dir} is not an export (no saved_model.pb): write one with "
            f"`cifar-export RUN_DIR --to {model_dir}` (cifar-train writes RUN_DIR/export)"
        )
    loaded = tf.saved_model.load(str(model_dir))
    names = [n.decode() for n in loaded.class_names.numpy()]
    return loaded.signatures[SIGNATURE], names


def read_image(path: str | Path) -> np.ndarray:
    """The image at `path` as uint8 RGB (32, 32, 3).

    Raises:
        ImageError: for a missing file or one that does not decode as a whole image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    data = path.read_bytes()
    kind = next((name for name, magic in _MAGIC.items() if data.startswith(magic)), None)
    if kind is None:
        raise ImageError(
            f"{path}: not a PNG, JPEG, GIF or BMP image (its first bytes are none of theirs)"
        )
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        raise ImageError(
            f"{path}: a {kind} file that does not decode whole (truncated or damaged)"
        ) from None
    image = tf.image.resize(image, (32, 32), method="area")  # area: no aliasing when shrinking
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8).numpy()


def top_k(serve, names: list[str], images: np.ndarray, k: int = 3) -> list[list[tuple]]:
    """Per image, the `k` likeliest (class, probability), likeliest first."""
    probs = serve(images=tf.constant(images, tf.uint8))["probabilities"].numpy()
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order, strict=True)]


def predict_files(model_dir, paths: list[str], k: int = 3) -> tuple[dict, dict]:
    """({path: [(class, probability), ...]}, {path: error message}): every readable image
    is classified even when others fail."""
    serve, names = load_export(model_dir)
    images, errors = {}, {}
    for p in paths:
        try:
            images[p] = read_image(p)
        except ImageError as e:
            errors[p] = str(e)
    results = {}
    if images:
        tops = top_k(serve, names, np.stack(list(images.values())), k)
        results = dict(zip(images, tops, strict=True))
    return results, errors

"""Batched, vectorised augmentation in pure tf ops; every random draw is a function of
(seed, image index, epoch), so results do not depend on batch layout, replica count,
where the op runs (tf.data or the compiled step) or whether a run was resumed."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.config import AugmentConfig

_MASK = 0xFFFFFFFF  # hashes live in 32 bits so int64 products never overflow
# Independent draws per image and epoch, told apart by a salt.
_SHIFT_Y, _SHIFT_X, _FLIP, _CUT_Y, _CUT_X = 1, 2, 3, 4, 5


def _hash32(x: tf.Tensor) -> tf.Tensor:
    # A well-mixing 32-bit integer hash (xor-shift-multiply), written in int64 ops.
    x = tf.bitwise.bitwise_and(tf.cast(x, tf.int64), _MASK)
    for _ in range(2):
        x = tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, 16), x)
        x = tf.bitwise.bitwise_and(x * 0x45D9F3B, _MASK)
    return tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, 16), x)


def _mix(x: tf.Tensor, salt: tf.Tensor | int) -> tf.Tensor:
    return _hash32(
        tf.bitwise.bitwise_xor(_hash32(x), _hash32(tf.cast(salt, tf.int64) + 0x9E3779B9))
    )


def image_keys(index: tf.Tensor, seed: int | tf.Tensor) -> tf.Tensor:
    """A per-image random key (int64) from its dataset index and the run's seed."""
    return _mix(index, seed)


def draw(keys: tf.Tensor, epoch: tf.Tensor | int, salt: int, n: int) -> tf.Tensor:
    """Integers in [0, n), one per key, fixed by (key, epoch, salt)."""
    return tf.cast(tf.math.floormod(_mix(_mix(keys, epoch), salt), n), tf.int32)


def shift_flip(
    images: tf.Tensor,
    dy: tf.Tensor,
    dx: tf.Tensor,
    mirror: tf.Tensor,
    pad: int,
    pad_mode: str = "zeros",
) -> tf.Tensor:
    """Shifts each image by (dy - pad, dx - pad) px and mirrors it left-right where `mirror`.

    One gather over flattened pixels does both, which is what makes it fast on CPU.

    Args:
        images: (B, H, W, C) any dtype.
        dy, dx: (B,) int32 in [0, 2 * pad]; `pad` means no shift.
        mirror: (B,) bool.
        pad: largest shift in px; uncovered pixels are zeros or a reflection.
        pad_mode: "zeros" or "reflect".
    """
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    mode = {"zeros": "CONSTANT", "reflect": "REFLECT"}[pad_mode]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode=mode)
    b = tf.shape(images)[0]
    cols = tf.range(w)[None, :]
    cols = tf.where(mirror[:, None], w - 1 - cols, cols) + dx[:, None]  # (B, W)
    rows = tf.range(h)[None, :] + dy[:, None]  # (B, H)
    pixels = tf.reshape(rows[:, :, None] * (w + 2 * pad) + cols[:, None, :], [b, h * w])
    flat = tf.reshape(padded, [b, (h + 2 * pad) * (w + 2 * pad), c])
    return tf.reshape(tf.gather(flat, pixels, batch_dims=1), [b, h, w, c])


def cutout(images: tf.Tensor, cy: tf.Tensor, cx: tf.Tensor, size: int) -> tf.Tensor:
    """Zeroes a size x size square per image with its top-left at (cy - size//2, cx - size//2),
    clipped at the borders."""
    h, w = images.shape[1], images.shape[2]
    top = cy - size // 2
    left = cx - size // 2
    r = tf.range(h)[None, :]
    c = tf.range(w)[None, :]
    in_rows = (r >= top[:, None]) & (r < top[:, None] + size)  # (B, H)
    in_cols = (c >= left[:, None]) & (c < left[:, None] + size)  # (B, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return images * tf.cast(keep, images.dtype)[..., None]


def normalise(images: tf.Tensor, mean, std: np.ndarray) -> tf.Tensor:
    """uint8 (or float 0-255) -> float32 with zero mean and unit std per channel."""
    mean = tf.constant(mean, tf.float32)
    scale = tf.constant(1.0 / np.asarray(std, np.float64), tf.float32)
    return (tf.cast(images, tf.float32) - mean) * scale


def augment(
    images: tf.Tensor, keys: tf.Tensor, epoch: tf.Tensor | int, cfg: AugmentConfig
) -> tf.Tensor:
    """Applies the configured shift and flip to a batch (cutout comes after `normalise`).

    Args:
        images: (B, H, W, C).
        keys: (B,) int64 from `image_keys`.
        epoch: the epoch being trained; with flip "alternate", each image is mirrored on
            every other epoch (airbench), starting at random.
    """
    if not (cfg.translate or cfg.flip != "none"):
        return images
    n = 2 * cfg.translate + 1
    dy = draw(keys, epoch, _SHIFT_Y, n)
    dx = draw(keys, epoch, _SHIFT_X, n)
    if cfg.flip == "random":
        mirror = draw(keys, epoch, _FLIP, 2) == 1
    elif cfg.flip == "alternate":
        first = draw(keys, 0, _FLIP, 2)
        mirror = tf.math.floormod(first + tf.cast(epoch, tf.int32), 2) == 1
    else:
        mirror = tf.zeros_like(dy, tf.bool)
    return shift_flip(images, dy, dx, mirror, cfg.translate, cfg.pad_mode)


def apply_cutout(images: tf.Tensor, keys: tf.Tensor, epoch, cfg: AugmentConfig) -> tf.Tensor:
    if not cfg.cutout:
        return images
    return cutout(
        images,
        draw(keys, epoch, _CUT_Y, images.shape[1]),
        draw(keys, epoch, _CUT_X, images.shape[2]),
        cfg.cutout,
    )


def preprocess(
    images: tf.Tensor, keys: tf.Tensor, epoch, cfg: AugmentConfig, mean, std
) -> tf.Tensor:
    """uint8 batch -> augmented, normalised float32 batch; the same in tf.data or a step."""
    images = augment(images, keys, epoch, cfg)
    return apply_cutout(normalise(images, mean, std), keys, epoch, cfg)

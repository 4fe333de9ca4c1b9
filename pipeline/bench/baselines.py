"""The comparison points of `cifar-bench`: the notebook's numpy iterator and the textbook
per-element tf.data pipeline. Training never uses them."""

from __future__ import annotations

import tensorflow as tf

from pipeline.data.sources import Split, Splits
from pipeline.notebook_api import Dataset as NotebookIterator

__all__ = ["NotebookIterator", "per_element_dataset"]

AUTOTUNE = tf.data.AUTOTUNE


def per_element_dataset(
    split: Split, splits: Splits, batch_size: int, seed: int, pad: int = 4
) -> tf.data.Dataset:
    """The textbook tf.data pipeline: cache, shuffle, per-image map(crop, flip), batch.

    Kept as the comparison point of `cifar-bench pipeline`; training uses `train_dataset`.
    """
    mean, std = tf.constant(splits.mean), tf.constant(splits.std)

    def one_image(image, label):
        image = tf.image.pad_to_bounding_box(image, pad, pad, 32 + 2 * pad, 32 + 2 * pad)
        image = tf.image.random_crop(image, [32, 32, 3])
        image = tf.image.random_flip_left_right(image)
        return (tf.cast(image, tf.float32) - mean) / std, label

    return (
        tf.data.Dataset.from_tensor_slices((split.images, split.labels))
        .cache()
        .shuffle(len(split.labels), seed=seed, reshuffle_each_iteration=True)
        .map(one_image, num_parallel_calls=AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(AUTOTUNE)
    )

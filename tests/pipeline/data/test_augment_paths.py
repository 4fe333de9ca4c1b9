"""The augmentation gives the same images eager, inside tf.data and compiled by XLA (the
three places it runs). Apart from test_augment.py: `make mutate` runs that file against
every mutant of augment.py, and a mutant changes all three paths alike, so this comparison
cannot tell one apart while it costs an XLA compile in every mutant's fresh process."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import AugmentConfig
from pipeline.data import augment


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(translate=4, flip="random", cutout=8),
        AugmentConfig(translate=2, pad_mode="reflect", flip="alternate"),
        AugmentConfig(),
    ],
)
def test_eager_equals_in_pipeline_equals_xla(cfg):
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    idx = tf.range(32, dtype=tf.int64)
    mean, std = np.array([120.0, 121.0, 110.0]), np.array([60.0, 61.0, 65.0])

    def fn(images, index):
        return augment.preprocess(images, augment.image_keys(index, 3), 5, cfg, mean, std)

    eager = fn(tf.constant(x), idx).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors((x, idx)).map(fn))).numpy()
    xla = tf.function(fn, jit_compile=True)(tf.constant(x), idx).numpy()
    np.testing.assert_allclose(eager, mapped, rtol=0, atol=1e-6)
    np.testing.assert_allclose(eager, xla, rtol=0, atol=1e-5)

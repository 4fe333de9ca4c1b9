import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import AugmentConfig
from pipeline.data import augment


def _images(n=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_draws_cover_range_and_are_independent():
    keys = augment.image_keys(tf.range(20_000, dtype=tf.int64), 7)
    dy = augment.draw(keys, 0, 1, 9).numpy()
    dx = augment.draw(keys, 0, 2, 9).numpy()
    assert set(dy) == set(range(9))
    counts = np.bincount(dy, minlength=9)
    assert counts.min() > 0.8 * counts.mean()
    assert abs(np.corrcoef(dy, dx)[0, 1]) < 0.05
    other_epoch = augment.draw(keys, 1, 1, 9).numpy()
    assert (dy != other_epoch).mean() > 0.8


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
def test_shift_takes_the_window_of_the_padded_image(pad_mode):
    x = _images(6)
    dy = tf.constant([0, 8, 4, 1, 7, 3])
    dx = tf.constant([8, 0, 4, 5, 2, 6])
    out = augment.shift_flip(tf.constant(x), dy, dx, tf.zeros(6, tf.bool), 4, pad_mode).numpy()
    mode = {"zeros": "constant", "reflect": "reflect"}[pad_mode]
    padded = np.pad(x, [(0, 0), (4, 4), (4, 4), (0, 0)], mode=mode)
    for i in range(6):
        assert np.array_equal(out[i], padded[i, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32])
    assert out.dtype == np.uint8 and out.shape == x.shape


def test_flip_is_an_exact_mirror_and_centre_shift_is_identity():
    x = _images(4)
    centre = tf.fill([4], 4)
    mirror = tf.constant([True, False, True, False])
    out = augment.shift_flip(tf.constant(x), centre, centre, mirror, 4).numpy()
    assert np.array_equal(out[0], x[0, :, ::-1])
    assert np.array_equal(out[1], x[1])
    assert np.array_equal(out[2], x[2, :, ::-1])


def test_cutout_zeroes_one_clipped_square():
    x = tf.ones([2, 32, 32, 3])
    out = augment.cutout(x, tf.constant([10, 0]), tf.constant([20, 31]), 8).numpy()
    assert (out[0] == 0).all(axis=-1).sum() == 64
    assert (out[0, 6:14, 16:24] == 0).all()
    # Corner: only the part inside the image is cut.
    assert (out[1] == 0).all(axis=-1).sum() == 4 * 5  # rows 0-3, columns 27-31


def test_alternate_flip_mirrors_every_other_epoch():
    x = tf.constant(_images(64))
    keys = augment.image_keys(tf.range(64, dtype=tf.int64), 0)
    cfg = AugmentConfig(flip="alternate")
    e0, e1, e2 = (augment.augment(x, keys, e, cfg).numpy() for e in (0, 1, 2))
    mirrored0 = np.array(
        [np.array_equal(a, b[:, ::-1]) for a, b in zip(e0, x.numpy(), strict=True)]
    )
    assert 0.2 < mirrored0.mean() < 0.8
    assert np.array_equal(e0, e2)
    assert len(e0) == len(e1) == 64
    for a, b in zip(e0, e1, strict=True):
        assert np.array_equal(a[:, ::-1], b), "each epoch mirrors what the last did not"


def test_normalise_uses_mean_and_std():
    x = tf.constant(np.full((1, 2, 2, 3), 100, np.uint8))
    out = augment.normalise(x, [50.0, 100.0, 150.0], np.array([10.0, 20.0, 25.0])).numpy()
    assert np.allclose(out[0, 0, 0], [5.0, 0.0, -2.0])


def test_shifts_draw_every_dy_dx_pair_independently_as_recovered_from_the_images():
    """Each pixel holds its own coordinates, so the shifted image says where it came from:
    the centre pixel of image i is the original's (16 + dy - 4, 16 + dx - 4)."""
    import collections

    from pipeline.config import AugmentConfig
    from pipeline.data import augment as aug

    n, pad = 4000, 4
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    coords = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)
    images = tf.constant(np.broadcast_to(coords, (n, 32, 32, 3)))
    keys = aug.image_keys(tf.range(n, dtype=tf.int64), 0)
    cfg = AugmentConfig(translate=pad, pad_mode="reflect")
    pairs = collections.Counter()
    for epoch in (0, 1):
        centre = aug.augment(images, keys, epoch, cfg).numpy()[:, 16, 16, :2].astype(int)
        pairs.update(map(tuple, centre - 16))
    assert set(pairs) == {(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}
    # 8,000 draws over 81 pairs: about 99 each if independent and uniform.
    assert min(pairs.values()) > 50 and max(pairs.values()) < 160, pairs


def test_preprocess_cuts_one_square_per_image_and_epoch_from_the_normalised_batch():
    x = tf.constant(_images(64))
    keys = augment.image_keys(tf.range(64, dtype=tf.int64), 3)
    shift = AugmentConfig(translate=2, flip="random")
    cut_too = AugmentConfig(translate=2, flip="random", cutout=8)
    mean, std = np.array([120.5, 121.5, 110.5]), np.array([60.0, 61.0, 65.0])
    uncut = augment.normalise(augment.augment(x, keys, 5, shift), mean, std).numpy()
    np.testing.assert_array_equal(augment.preprocess(x, keys, 5, shift, mean, std), uncut)
    out = augment.preprocess(x, keys, 5, cut_too, mean, std).numpy()
    cut = (out == 0).all(-1)  # no pixel normalises to exactly 0 (the means end in .5)
    np.testing.assert_array_equal(out[~cut], uncut[~cut])
    assert all(16 <= n <= 64 for n in cut.sum((1, 2)))  # one square, clipped at a border
    rows, cols = cut.any(2).argmax(1), cut.any(1).argmax(1)  # each square's top and left
    assert len(set(rows.tolist())) > 10 and (rows != cols).mean() > 0.8  # y, x drawn apart
    next_epoch = (augment.preprocess(x, keys, 6, cut_too, mean, std).numpy() == 0).all(-1)
    assert (next_epoch != cut).any((1, 2)).mean() > 0.8  # drawn again each epoch

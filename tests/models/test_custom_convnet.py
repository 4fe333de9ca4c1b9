import keras
import numpy as np
import pytest
import tensorflow as tf

from models import custom_convnet
from models.registry import build_model
from pipeline.config import ModelConfig, OptimConfig
from pipeline.run_length import RunLength
from pipeline.training import optim, steps


def _correlated_images(n=400, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 32, 32, 1))
    smooth = (base + np.roll(base, 1, axis=1) + np.roll(base, 1, axis=2)) / 3
    return np.concatenate(
        [smooth, 0.5 * smooth + 0.1 * rng.normal(size=smooth.shape), rng.normal(size=smooth.shape)],
        axis=-1,
    ).astype(np.float32)


def test_whitening_kernel_whitens_2x2_patches():
    images = _correlated_images()
    kernel = custom_convnet.whitening_kernel(images, eps=1e-8)
    assert kernel.shape == (2, 2, 3, 24)
    out = tf.nn.conv2d(images, kernel, 1, "VALID").numpy().reshape(-1, 24)
    cov = np.cov(out[:, :12], rowvar=False)
    np.testing.assert_allclose(cov, np.eye(12), atol=0.05)
    np.testing.assert_allclose(out[:, 12:], -out[:, :12], atol=1e-4)


def test_whiten_stem_is_set_and_frozen():
    model = build_model(ModelConfig(name="custom_convnet", params={"size": "tiny"}))
    assert custom_convnet.whiten_stem(model, _correlated_images(50))
    kernel = model.get_layer("whiten").kernel
    assert not kernel.trainable
    assert kernel.path not in [v.path for v in model.trainable_variables]
    no_stem = build_model(
        ModelConfig(name="custom_convnet", params={"size": "tiny", "stem": "conv"})
    )
    assert not custom_convnet.whiten_stem(no_stem, _correlated_images(50))


@pytest.mark.parametrize(
    "params",
    [
        {"size": "tiny", "residual": True, "head": "avg", "pool": "avg", "dropout": 0.2},
        {
            "widths": [8, 16],
            "depth": 1,
            "head": "flatten",
            "batch_norm": False,
            "stem": "none",
            "activation": "relu",
            "kernel_size": 5,
        },
    ],
)
def test_family_options_build(params):
    model = build_model(ModelConfig(name="custom_convnet", params=params))
    assert model(tf.zeros((3, 32, 32, 3)), training=True).shape == (3, 10)


def test_ema_weights_are_swapped_in():
    var = tf.Variable([1.0])
    opt = optim.make_optimizer(OptimConfig(lr=0.1, ema_decay=0.5), RunLength(10, 1))
    opt.build([var])
    ema = None  # Keras starts the average at the first step's weights
    for _ in range(3):
        opt.apply([tf.constant([1.0])], [var])
        w = float(var.numpy()[0])
        ema = w if ema is None else 0.5 * ema + 0.5 * w
    assert ema == pytest.approx(0.775)
    opt.finalize_variable_values([var])
    assert float(var.numpy()[0]) == pytest.approx(ema, rel=1e-5)


def test_tta_averages_flips_and_shifts():
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    x = tf.random.normal((4, 32, 32, 3))
    flipped = tf.reverse(x, axis=[2])
    expected = (model(x) + model(flipped)) / 2
    np.testing.assert_allclose(steps.predict_logits(model, x, "flip"), expected, atol=1e-5)
    # flip_translate adds the image moved 1 px down-right and 1 px up-left, the uncovered
    # edge filled by reflection, and the mirror of each; built here by index arithmetic,
    # not the loop's padding. As airbench94: the untranslated pair weighs half.
    six = steps.predict_logits(model, x, "flip_translate")
    n = np.arange(32)
    down_right = np.abs(n - 1)  # output row i shows input row i - 1; row -1 reflects to 1
    up_left = 31 - np.abs(30 - n)  # output row i shows input row i + 1; row 32 reflects to 30
    v = x.numpy()
    views, weights = [v, v[:, :, ::-1]], [1 / 4, 1 / 4]
    for shift in (down_right, up_left):
        moved = v[:, shift][:, :, shift]
        views += [moved, moved[:, :, ::-1]]
        weights += [1 / 8, 1 / 8]
    expected = sum(w * model(v).numpy() for w, v in zip(weights, views, strict=True))
    np.testing.assert_allclose(six, expected, atol=1e-5)


def test_bias_learning_rate_scale_targets_biases_and_bn_shifts():
    model = build_model(ModelConfig(name="custom_convnet", params={"size": "tiny"}))
    biases = [v.path for v in model.trainable_variables if steps._is_bias(v)]
    assert biases and all(p.endswith(("bias", "beta")) for p in biases)
    assert any("bn" in p for p in biases)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"size": "huge"}, "model.params.size must be one of airbench94, medium, small, tiny"),
        ({"size": "tiny", "pool": "min"}, "model.params.pool must be one of max, avg"),
        ({"size": "tiny", "head": "gap"}, "model.params.head must be one of max, avg, flatten"),
    ],
)
def test_bad_choice_names_the_allowed_values(params, message):
    with pytest.raises(ValueError, match=message):
        build_model(ModelConfig(name="custom_convnet", params=params))

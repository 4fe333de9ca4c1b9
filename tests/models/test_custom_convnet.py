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


def test_a_3x3_stem_of_12_channels_whitens_its_6_strongest_patch_directions():
    images = _correlated_images()
    full = custom_convnet.whitening_kernel(images, eps=1e-8, size=3)
    kernel = custom_convnet.whitening_kernel(images, eps=1e-8, size=3, width=12)
    assert full.shape == (3, 3, 3, 54) and kernel.shape == (3, 3, 3, 12)
    np.testing.assert_allclose(kernel[..., :6], full[..., :6])  # the largest eigenvalues first
    out = tf.nn.conv2d(images, kernel, 1, "VALID").numpy().reshape(-1, 12)
    np.testing.assert_allclose(np.cov(out[:, :6], rowvar=False), np.eye(6), atol=0.05)
    np.testing.assert_allclose(out[:, 6:], -out[:, :6], atol=1e-4)
    model = build_model(
        ModelConfig(
            name="custom_convnet",
            params={"size": "tiny", "whiten_size": 3, "whiten_width": 12},
        )
    )
    assert custom_convnet.whiten_stem(model, images[:50])
    assert model.get_layer("whiten").kernel.shape == (3, 3, 3, 12)


@pytest.mark.parametrize("size, width", [(2, 26), (2, 13), (3, 0)])
def test_a_whitening_width_the_patches_cannot_give_is_refused(size, width):
    params = {"size": "tiny", "whiten_size": size, "whiten_width": width}
    with pytest.raises(custom_convnet.ModelError, match="whiten_width must be even and 2.."):
        build_model(ModelConfig(name="custom_convnet", params=params))


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


def test_bias_learning_rate_scale_targets_bn_shifts_only():
    # airbench94 gives its 64x rate to the parameters named "norm...bias" (BN shifts); the
    # whitening conv's bias is among its "other_params", at the base rate.
    model = build_model(ModelConfig(name="custom_convnet", params={"size": "tiny"}))
    scaled = [v.path for v in model.trainable_variables if optim.is_bn_shift(v)]
    assert sorted(scaled) == sorted(f"stage{s}_bn{d}/beta" for s in range(3) for d in range(2))
    assert "whiten/bias" in [v.path for v in model.trainable_variables]


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


def test_whitening_uses_the_uncentred_second_moment_as_airbench94():
    # airbench94: est_patch_covariance = patches.T @ patches / n, no mean removed. Patches
    # with a large mean are whitened in that sense: out.T @ out / n is the identity.
    images = _correlated_images() + 2.0
    kernel = custom_convnet.whitening_kernel(images, eps=1e-8)
    out = tf.nn.conv2d(images, kernel, 1, "VALID").numpy().reshape(-1, 24)[:, :12]
    np.testing.assert_allclose(out.T @ out / len(out), np.eye(12), atol=1e-3)


def test_airbench_initialisation_is_dirac_over_pytorch_default():
    model = build_model(ModelConfig(name="custom_convnet", params={"widths": [8, 16]}))
    # stage0_conv0: 24 (whitening) inputs, 8 outputs: all 8 filters are identities of
    # input channels 0..7, i.e. kernel[1, 1, i, i] = 1 and every other tap 0.
    k = model.get_layer("stage0_conv0").kernel.numpy()
    expected = np.zeros((3, 3, 24, 8))
    expected[1, 1, np.arange(8), np.arange(8)] = 1.0
    np.testing.assert_array_equal(k, expected)
    # stage1_conv0: 8 inputs, 16 outputs: filters 0..7 identities, 8..15 uniform in
    # +-1/sqrt(fan_in) = +-1/sqrt(3 * 3 * 8) (PyTorch's kaiming_uniform(a=sqrt(5))).
    k = model.get_layer("stage1_conv0").kernel.numpy()
    np.testing.assert_array_equal(k[1, 1, :, :8], np.eye(8))
    assert np.count_nonzero(k[..., :8]) == 8
    rest = k[..., 8:]
    bound = 1 / np.sqrt(72)
    assert np.abs(rest).max() <= bound and np.abs(rest).max() > 0.9 * bound
    assert abs(rest.std() - bound / np.sqrt(3)) < 0.1 * bound  # uniform's std: bound/sqrt(3)
    # A conv with as many outputs as inputs starts as the identity map.
    x = tf.random.normal([2, 8, 8, 16])
    conv = model.get_layer("stage1_conv1")
    np.testing.assert_allclose(conv(x).numpy(), x.numpy(), atol=1e-6)
    head = model.get_layer("head").kernel.numpy()  # fan_in 16: +-0.25
    assert np.abs(head).max() <= 0.25 and np.abs(head).max() > 0.2


def test_glorot_initialisation_stays_available_for_comparison():
    params = {"widths": [8, 16], "init": "glorot"}
    k = build_model(ModelConfig(name="custom_convnet", params=params)).get_layer("stage1_conv1")
    assert np.count_nonzero(k.kernel.numpy()) == k.kernel.numpy().size


def test_batch_norm_momentum_follows_airbench94():
    # airbench94's BatchNorm(momentum=0.6) is PyTorch momentum 0.4: running = 0.6 * running
    # + 0.4 * batch. One training pass from running mean 0 leaves 0.4 * the batch mean.
    model = build_model(ModelConfig(name="custom_convnet", params={"widths": [8]}))
    bn = model.get_layer("stage0_bn0")
    x = tf.random.normal([4, 6, 6, 8]) + 3.0
    bn(x, training=True)
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), 0.4 * tf.reduce_mean(x, [0, 1, 2]).numpy(), rtol=1e-5
    )


def test_final_pooling_is_airbench94s_maxpool3_over_the_whole_last_map():
    # airbench94's sizes, worked by hand: the 2x2 whitening conv without padding gives 31x31,
    # then each stage's MaxPool2d(2) floors: 15, 7, 3. So its nn.MaxPool2d(3) sees the whole
    # 3x3 map, and the global max ("max") is the same pooling as "maxpool3".
    params = {"size": "airbench94"}
    glob = build_model(ModelConfig(name="custom_convnet", params=params))
    pool3 = build_model(ModelConfig(name="custom_convnet", params={**params, "head": "maxpool3"}))
    last = glob.get_layer("stage2_conv1").output
    assert tuple(last.shape[1:3]) == (3, 3)
    pool3.set_weights(glob.get_weights())
    x = tf.random.normal([2, 32, 32, 3])
    np.testing.assert_array_equal(glob(x).numpy(), pool3(x).numpy())

"""airbench94_muon's optimizer and recipe, checked against its definitions on numbers worked
out here (numpy, float64), not by calling the code under test."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.registry import build_model
from pipeline import experiments
from pipeline.config import ModelConfig, OptimConfig
from pipeline.run_length import RunLength, run_length
from pipeline.training import muon, optim

A, B, C = 3.4445, -4.7750, 2.0315  # airbench94_muon's zeropower_via_newtonschulz5


def _newton_schulz(g: np.ndarray, steps: int = 3) -> np.ndarray:
    """airbench94_muon's orthogonalisation of an (out, in * kh * kw) matrix, in float64."""
    x = g / (np.linalg.norm(g) + 1e-7)
    wide = x.shape[0] > x.shape[1]
    x = x.T if wide else x
    for _ in range(steps):
        a = x @ x.T
        x = A * x + (B * a + C * a @ a) @ x
    return x.T if wide else x


def _torch_layout(kernel: np.ndarray) -> np.ndarray:
    """Keras (kh, kw, in, out) -> PyTorch's view (out, in * kh * kw)."""
    return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[3], -1)


def _keras_layout(matrix: np.ndarray, shape) -> np.ndarray:
    kh, kw, cin, cout = shape
    return matrix.reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)


def _two_variables(seed=0):
    rng = np.random.default_rng(seed)
    kernel = keras.Variable(rng.standard_normal((3, 3, 2, 4)), dtype="float32", name="kernel")
    bias = keras.Variable(rng.standard_normal(4), dtype="float32", name="bias")
    grads = [rng.standard_normal((3, 3, 2, 4)), rng.standard_normal(4)]
    return kernel, bias, grads


@pytest.mark.parametrize("cin, cout", [(2, 4), (8, 4)])
def test_filter_step_is_airbench94_muons_muon(cin, cout):
    # Muon.step: buf = mu buf + g; g = g + mu buf (Nesterov); w *= sqrt(out) / |w|;
    # w -= lr * NS(g as (out, in*kh*kw)). Two steps from a zero buffer. (2, 4): the matrix
    # is 4 x 18 (wide); (8, 4): 4 x 72, and in Keras's layout 72 x 4 (transposed inside).
    rng = np.random.default_rng(1)
    shape = (3, 3, cin, cout)
    w = rng.standard_normal(shape)
    g1, g2 = rng.standard_normal(shape), rng.standard_normal(shape)
    lr, mu = 0.24, 0.6
    opt = muon.FilterMuon(learning_rate=1.0, muon_lr_scale=lr, momentum=0.85, muon_momentum=mu)
    variable = keras.Variable(w, dtype="float32")
    opt.build([variable])
    expected, buf = w.copy(), np.zeros(shape)
    for g in (g1, g2):
        opt.apply([tf.constant(g, tf.float32)], [variable])
        buf = mu * buf + g
        nesterov = g + mu * buf
        expected = expected * np.sqrt(cout) / np.linalg.norm(expected)
        update = _newton_schulz(_torch_layout(nesterov))
        expected = expected - lr * _keras_layout(update, shape)
    np.testing.assert_allclose(variable.numpy(), expected, atol=2e-5)
    # The update is near-orthogonal: singular values around 1 (0.5-1.5 after 3 steps).
    s = np.linalg.svd(update, compute_uv=False)
    assert 0.3 < s.min() and s.max() < 1.6


def test_other_variables_take_nesterov_sgd_with_decoupled_decay_and_filters_none():
    # Keras SGD, Nesterov: m = mu m - lr g; w += mu m - lr g; decoupled decay w -= lr wd w
    # (applied before the step). Filters take Muon and no decay.
    kernel, bias, (gk, gb) = _two_variables()
    lr, mu, wd = 0.5, 0.85, 0.01
    opt = muon.FilterMuon(
        learning_rate=lr, muon_lr_scale=0.1, momentum=mu, muon_momentum=0.6, weight_decay=wd
    )
    opt.build([kernel, bias])
    b, m = bias.numpy().astype(np.float64), np.zeros(4)
    k0 = kernel.numpy().astype(np.float64)
    for _ in range(2):
        opt.apply([tf.constant(gk, tf.float32), tf.constant(gb, tf.float32)], [kernel, bias])
        b = b - lr * wd * b
        m = mu * m - lr * gb
        b = b + mu * m - lr * gb
    np.testing.assert_allclose(bias.numpy(), b, rtol=1e-5)
    # Without decay the kernel's first step is Muon's alone (|w| rescaled to sqrt(4) = 2).
    fresh = keras.Variable(k0, dtype="float32")
    plain = muon.FilterMuon(learning_rate=lr, muon_lr_scale=0.1, momentum=mu, muon_momentum=0.6)
    plain.build([fresh])
    plain.apply([tf.constant(gk, tf.float32)], [fresh])
    update = _keras_layout(_newton_schulz(_torch_layout(1.6 * gk)), k0.shape)
    np.testing.assert_allclose(
        fresh.numpy(), k0 * 2 / np.linalg.norm(k0) - 0.05 * update, atol=2e-5
    )


def test_muon_needs_both_rates():
    cfg = OptimConfig(optimizer="muon", lr=1.0, muon_lr=0.0)
    with pytest.raises(ValueError, match="optim.muon_lr"):
        optim.make_optimizer(cfg, RunLength(10, 10))


def test_rate_multipliers_head_and_whitening_bias_ramp_to_zero():
    # airbench94_muon: head at 0.67 / 0.053 of the biases' rate; the whitening bias's rate
    # is lr * (1 - step / 75) while the schedule gives lr * (1 - step / 200), so its
    # multiplier at step 30 is 0.6 / 0.85 and 0 from step 75.
    model = build_model(ModelConfig(name="custom_convnet", params={"size": "tiny"}))
    cfg = experiments.get("challenge_airbench94_muon").optim
    length = RunLength(25, 200)
    variables = model.trainable_variables
    multipliers = optim.rate_multipliers(variables, cfg, length)
    by_path = lambda step: dict(zip([v.path for v in variables], multipliers(step), strict=True))  # noqa: E731
    at30 = by_path(30)
    assert float(at30["head/kernel"]) == pytest.approx(0.67 / 0.053)
    assert float(at30["whiten/bias"]) == pytest.approx(0.6 / 0.85, rel=1e-5)
    assert float(at30["stage0_bn0/beta"]) == 1.0 and float(at30["stage0_conv0/kernel"]) == 1.0
    assert float(by_path(0)["whiten/bias"]) == pytest.approx(1.0)
    assert float(by_path(75)["whiten/bias"]) == 0.0
    # airbench94's recipe scales BN shifts only, and nothing at all leaves None.
    plain = optim.rate_multipliers(variables, OptimConfig(), length)
    assert plain is None


def test_airbench94_muon_experiment_is_its_hyperparameters():
    cfg = experiments.get("challenge_airbench94_muon")
    length = run_length(cfg.data.train_examples, cfg.data.batch_size, cfg.train.epochs)
    assert (length.steps_per_epoch, length.total_steps) == (25, 200)  # 50,000 / 2000, 8 epochs
    # Its rates act on a summed loss at batch 2000: 0.053 * 2000 = 106 on a mean loss,
    # falling linearly to 0 (1 - step / 200) with no warm-up; Muon's 0.24 on the same ramp.
    for step, factor in {0: 1.0, 50: 0.75, 199: 1 / 200}.items():
        assert float(optim.lr_at(step, cfg.optim, length)) == pytest.approx(106 * factor, rel=1e-5)
    assert cfg.optim.muon_lr / cfg.optim.lr == pytest.approx(0.24 / 106)
    # Coupled decay 0.004 / lr through momentum 0.85: 0.004 / 0.15 of a weight per step
    # at the peak, as decoupled lr * wd.
    assert cfg.optim.lr * cfg.optim.weight_decay == pytest.approx(0.004 / 0.15)
    assert (cfg.optim.momentum, cfg.optim.muon_momentum, cfg.optim.label_smoothing) == (
        0.85,
        0.6,
        0.2,
    )
    assert length.steps_for(cfg.optim.whiten_bias_epochs) == 75  # ceil(3 * 25)


def test_airbench94_muon_model_head_and_init():
    params = {"size": "airbench94", "head": "maxpool3", "init": "airbench_muon"}
    model = build_model(ModelConfig(name="custom_convnet", params={**params, "logit_scale": 1}))
    # The head's weights are PyTorch's default rescaled to standard deviation 1.
    head = model.get_layer("head").kernel.numpy()
    assert head.std() == pytest.approx(1.0, rel=1e-5)
    # The whitening bias keeps PyTorch's default: U(+-1/sqrt(2 * 2 * 3)).
    bias = model.get_layer("whiten").bias.numpy()
    assert 0 < np.abs(bias).max() <= 1 / np.sqrt(12)
    # MaxPool2d(3) on the last 4x4 map: the max over its top-left 3x3, the rest unseen.
    pool = model.get_layer("head_pool")
    x = np.zeros((1, 4, 4, 256), np.float32)
    x[0, 3, 3, 0], x[0, 2, 2, 0], x[0, 0, 3, 1] = 9.0, 5.0, 7.0
    pooled = pool(tf.constant(x)).numpy()
    assert pooled.shape == (1, 1, 1, 256)
    assert (pooled[0, 0, 0, 0], pooled[0, 0, 0, 1]) == (5.0, 0.0)

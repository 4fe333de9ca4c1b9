import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from models import fast_layers
from models.native import library
from models.registry import build_model
from pipeline.config import ModelConfig
from pipeline.runtime import hardware
from pipeline.training import precision


def _x(shape=(8, 5, 5, 6), seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.standard_normal(shape).astype(np.float32) * 3 + 1)


def _bn_pair(x, policy, **kwargs):
    with precision.policy_scope(policy):
        stock = keras.layers.BatchNormalization(**kwargs)
        fused = fast_layers.BatchNorm(**kwargs)
    for layer in (stock, fused):
        layer.build(x.shape)
        if layer.beta is not None:
            layer.beta.assign(tf.linspace(-1.0, 1.0, x.shape[-1]))
        if layer.gamma is not None:
            layer.gamma.assign(tf.linspace(0.5, 2.0, x.shape[-1]))
    return stock, fused


def _run(layer, x, training, compiled):
    # Random weights: a sum of squares of normalised values would be constant in x.
    weights = tf.constant(np.random.default_rng(1).standard_normal(x.shape), tf.float32)

    def forward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x, training=training), tf.float32)
            loss = tf.reduce_sum(tf.square(y) * weights)
        return y, tape.gradient(loss, [x, *layer.trainable_variables])

    fn = tf.function(forward) if compiled else forward
    y, grads = fn(x)
    return y.numpy(), [g.numpy() for g in grads]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize(
    "policy,kwargs",
    [
        ("float32", {"momentum": 0.4, "epsilon": 1e-12, "scale": False}),
        ("float32", {"momentum": 0.9, "epsilon": 1e-3}),
        ("mixed_bfloat16", {"momentum": 0.4, "epsilon": 1e-12, "scale": False}),
    ],
)
def test_fused_batch_norm_matches_keras(policy, kwargs, compiled):
    x = _x()
    stock, fused = _bn_pair(x, policy, **kwargs)
    tol = 1e-5 if policy == "float32" else 2e-2
    for training in (True, False):
        y_stock, g_stock = _run(stock, x, training, compiled)
        y_fused, g_fused = _run(fused, x, training, compiled)
        assert y_fused.dtype == y_stock.dtype
        np.testing.assert_allclose(y_fused, y_stock, rtol=tol, atol=tol * 10)
        assert len(g_fused) == len(g_stock)
        for a, b in zip(g_fused, g_stock, strict=True):
            scale = np.abs(b).max()
            np.testing.assert_allclose(a / scale, b / scale, atol=tol * 10)
        # Same moving-average rule (biased batch variance), so the same running statistics.
        np.testing.assert_allclose(fused.moving_mean.numpy(), stock.moving_mean.numpy(), rtol=1e-5)
        np.testing.assert_allclose(
            fused.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-5
        )
    with precision.policy_scope(policy):
        out = fused(x, training=False)
    assert out.dtype == keras.mixed_precision.Policy(policy).compute_dtype


def test_fused_batch_norm_normalises_2d_input():
    x = _x((64, 7))
    stock, fused = _bn_pair(x, "float32", momentum=0.5)
    np.testing.assert_allclose(
        fused(x, training=True).numpy(), stock(x, training=True).numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        fused.moving_variance.numpy(), stock.moving_variance.numpy(), rtol=1e-5
    )


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_fused_gelu_is_exact_gelu_with_its_gradient(compiled):
    x = tf.constant(np.linspace(-8, 8, 4001, dtype=np.float32))

    def value_and_grad(fn):
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = fn(x)
            return y, tape.gradient(y, x)

        return (tf.function(run) if compiled else run)(x)

    y, dy = value_and_grad(fast_layers.gelu)
    y_ref, dy_ref = value_and_grad(lambda x: keras.activations.gelu(x, approximate=False))
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(dy.numpy(), dy_ref.numpy(), atol=1e-5)
    # The tanh approximation would differ by up to ~5e-4 here: this is the exact one.
    assert np.abs(y.numpy() - keras.activations.gelu(x, approximate=True).numpy()).max() > 1e-4


def _native_gelu_ops():
    ops = library.gelu_bf16()
    if ops is None:
        pytest.skip("this CPU does not take the native ops (AVX512-BF16 without AMX)")
    return ops


def _every_bfloat16():
    return tf.bitcast(tf.constant(np.arange(2**16, dtype=np.uint16)), tf.bfloat16)


def _exact_gelu_and_slope(x: np.ndarray):
    """GELU and its slope in double precision, at the infinities their limits."""
    erfc = np.vectorize(math.erfc)
    with np.errstate(invalid="ignore", over="ignore"):
        cdf = 0.5 * erfc(-x / math.sqrt(2))
        y = np.where(np.isinf(x), np.where(x > 0, x, -0.0), x * cdf)
        slope = cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        slope = np.where(np.isinf(x), (x > 0).astype(np.float64), slope)
    return y, slope


def _same_bits(ours, reference):
    """Equal bfloat16 bit patterns, any NaN matching any NaN. Below float32's smallest
    normal number, TensorFlow's CPU threads flush to zero (MXCSR's FTZ and DAZ bits) where
    numpy does not, so there the two need only agree within it."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    wide = reference.astype(np.float32)
    nan, tiny = np.isnan(wide), np.abs(wide) < np.finfo(np.float32).tiny
    assert np.isnan(ours.astype(np.float32)[nan]).all()
    assert (np.abs(ours.astype(np.float32)[tiny]) < np.finfo(np.float32).tiny).all()
    exact = ~nan & ~tiny
    np.testing.assert_array_equal(ours[exact].view(np.uint16), reference[exact].view(np.uint16))


def test_native_gelu_is_exact_gelu_rounded_once_for_every_bfloat16():
    forward, backward = _native_gelu_ops()
    x = _every_bfloat16()
    y, slope = _exact_gelu_and_slope(tf.cast(x, tf.float64).numpy())
    # The value, and upstream times the float32 slope, each rounded once as tf.cast rounds.
    _same_bits(forward(x).numpy(), tf.cast(y.astype(np.float32), tf.bfloat16).numpy())
    rng = np.random.default_rng(0)
    upstream = tf.cast(rng.standard_normal(x.shape).astype(np.float32), tf.bfloat16)
    product = tf.cast(upstream, tf.float32).numpy() * slope.astype(np.float32)
    _same_bits(backward(x, upstream).numpy(), tf.cast(product, tf.bfloat16).numpy())


def test_native_gelu_names_what_it_expected():
    _, backward = _native_gelu_ops()
    with pytest.raises(tf.errors.InvalidArgumentError, match="x and upstream must have one"):
        backward(tf.zeros([2, 3], tf.bfloat16), tf.zeros([3, 2], tf.bfloat16))


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_gelu_takes_the_native_ops_in_bfloat16_outside_xla(jit):
    x = tf.cast(_x((4, 6, 6, 32)), tf.bfloat16)

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fast_layers.gelu(x)
        return y, tape.gradient(y, x, output_gradients=tf.ones_like(y) * 0.5)

    compiled = tf.function(step, jit_compile=jit)
    ops = {op.type for op in compiled.get_concrete_function(x).graph.get_operations()}
    native = library.gelu_bf16() is not None and not jit
    assert ({"Bf16Gelu", "Bf16GeluGrad"} <= ops) == native
    y, dx = compiled(x)
    x64 = tf.cast(x, tf.float64).numpy()
    y_ref, slope = _exact_gelu_and_slope(x64)
    assert y.dtype == dx.dtype == tf.bfloat16
    # Within a bfloat16 rounding of the exact values, either way.
    np.testing.assert_allclose(tf.cast(y, tf.float64), y_ref, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(tf.cast(dx, tf.float64), 0.5 * slope, rtol=2**-8, atol=1e-6)


def test_bfloat16_widens_and_rounds_in_integers_exactly_as_a_cast():
    # Every bfloat16 bit pattern widens to the float32 tf.cast gives.
    every = tf.bitcast(tf.constant(np.arange(2**16, dtype=np.uint16)), tf.bfloat16)
    widen = tf.function(fast_layers._to_float32, jit_compile=True)
    np.testing.assert_array_equal(widen(every).numpy(), tf.cast(every, tf.float32).numpy())
    # float32 rounds to nearest even as tf.cast rounds: halfway cases both ways, the largest
    # floats (to inf), subnormals, signed zeros; NaN stays NaN, even one whose mantissa
    # rounding would carry into the sign bit.
    rng = np.random.default_rng(0)
    bits = np.concatenate(
        [
            rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
            np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7FFFFF, 0x00000001], np.uint32),
            np.array([0x80000000, 0x7F800000, 0xFF800000, 0x7FFFFFFF, 0xFFFFFFFF], np.uint32),
        ]
    )
    z = tf.constant(bits.view(np.float32))
    narrow = tf.function(lambda t: fast_layers._from_float32(t, tf.bfloat16), jit_compile=True)
    ours, cast = narrow(z).numpy(), tf.cast(z, tf.bfloat16).numpy()
    nan = np.isnan(cast.astype(np.float32))
    assert np.isnan(ours.astype(np.float32)[nan]).all()
    np.testing.assert_array_equal(ours[~nan].view(np.uint16), cast[~nan].view(np.uint16))


def test_fused_and_stock_custom_convnet_compute_the_same():
    def model(fused):
        cfg = ModelConfig(name="custom_convnet", params={"size": "tiny", "fused": fused})
        return build_model(cfg)

    fast, stock = model(True), model(False)
    assert [v.shape for v in fast.weights] == [v.shape for v in stock.weights]
    fast.set_weights(stock.get_weights())
    x = _x((4, 32, 32, 3))
    y = tf.constant([0, 1, 2, 3])

    def step(m):
        with tf.GradientTape() as tape:
            logits = m(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        return logits.numpy(), [g.numpy() for g in tape.gradient(loss, m.trainable_variables)]

    (l_fast, g_fast), (l_stock, g_stock) = step(fast), step(stock)
    np.testing.assert_allclose(l_fast, l_stock, atol=1e-4)
    for a, b in zip(g_fast, g_stock, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, np.abs(b).max()))
    for a, b in zip(fast.non_trainable_weights, stock.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)  # BN running statistics


def _conv_case(size, in_channels, out_channels, kernel, seed=0, batch=6):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, size, size, in_channels)).astype(np.float32)
    upstream = rng.standard_normal((batch, size, size, out_channels)).astype(np.float32)
    return tf.constant(x), tf.constant(upstream)


def _stock_weight_gradient(x, upstream, kernel):
    shape = [kernel, kernel, x.shape[-1], upstream.shape[-1]]
    return tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=shape, out_backprop=upstream, strides=[1, 1, 1, 1], padding="SAME"
    )


@pytest.mark.parametrize(
    "size,in_channels,out_channels,kernel",
    # airbench94's small maps (7 and 3 px, 256 channels) at a test's batch, a 5x5 kernel,
    # and odd channel counts
    [(7, 256, 256, 3), (3, 256, 256, 3), (4, 24, 40, 5), (2, 3, 5, 3)],
)
def test_shifted_products_are_the_convolution_weight_gradient(
    size, in_channels, out_channels, kernel
):
    x, upstream = _conv_case(size, in_channels, out_channels, kernel)
    exact = _stock_weight_gradient(x, upstream, kernel).numpy()  # float32
    scale = np.abs(exact).max()
    np.testing.assert_allclose(
        fast_layers.shifted_products(x, upstream, kernel).numpy(), exact, atol=1e-5 * scale
    )
    # In bfloat16, as close to the exact gradient as the stock bfloat16 kernel is.
    xb, ub = tf.cast(x, tf.bfloat16), tf.cast(upstream, tf.bfloat16)
    exact_of_rounded = _stock_weight_gradient(
        tf.cast(xb, tf.float32), tf.cast(ub, tf.float32), kernel
    )
    stock_error = np.abs(
        _stock_weight_gradient(xb, ub, kernel).numpy().astype(np.float32) - exact_of_rounded
    ).max()
    ours = fast_layers.shifted_products(xb, ub, kernel).numpy().astype(np.float32)
    assert np.abs(ours - exact_of_rounded).max() <= max(stock_error, 2**-8 * scale)


def test_shifted_products_only_where_measured_faster():
    pay = fast_layers.shifted_products_pay
    assert pay(3, 3, 48, 128) and pay(7, 7, 256, 256) and pay(8, 8, 256, 256)
    assert not pay(7, 7, 128, 128)  # a tie measured: the stock kernel stays
    assert not pay(15, 15, 256, 256) and not pay(31, 31, 24, 64)


def _conv_pair(policy, kernel=3, filters=256):
    with precision.policy_scope(policy):
        stock = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False)
        fast = fast_layers.Conv2D(filters, kernel, padding="same", use_bias=False)
    return stock, fast


def _conv_step(layer, x, upstream, jit=False):
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x), tf.float32)
            loss = tf.reduce_sum(y * upstream)
        return tape.gradient(loss, [x, layer.kernel])

    return [g.numpy().astype(np.float32) for g in tf.function(step, jit_compile=jit)(x)]


def _weight_gradient_ops(layer, x, jit=False):
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(x), tf.float32))
        return tape.gradient(loss, layer.kernel)

    graph = tf.function(step, jit_compile=jit).get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


# The op each weight gradient adds to the graph; the stock kernel adds neither.
_TAKEN_OPS = {"native": "Bf16ConvFilterGrad", "shifted": "MatMul"}


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_fast_conv_trains_like_keras_conv_in_bfloat16(jit):
    x, upstream = _conv_case(3, 256, 256, 3)
    stock, fast = _conv_pair("mixed_bfloat16")
    stock.build(x.shape)
    fast.build(x.shape)
    fast.kernel.assign(stock.kernel)
    # Where this CPU runs the native op the layer takes it, except under XLA, which
    # cannot compile it: the shifted products run there.
    native = library.conv_filter_grad_bf16() is not None and not jit
    taken = "native" if native else "shifted"
    ops = _weight_gradient_ops(fast, x, jit)
    assert {_TAKEN_OPS[taken]} == set(_TAKEN_OPS.values()) & ops
    assert not set(_TAKEN_OPS.values()) & _weight_gradient_ops(stock, x, jit)
    for ours, theirs in zip(
        _conv_step(fast, x, upstream, jit), _conv_step(stock, x, upstream, jit), strict=True
    ):
        np.testing.assert_allclose(ours, theirs, atol=2**-7 * np.abs(theirs).max())
    assert fast.get_config() == {**stock.get_config(), "name": fast.name}


def _native_op():
    op = library.conv_filter_grad_bf16()
    if op is None:
        pytest.skip("this CPU does not take the native op (AVX512-BF16 without AMX)")
    return op


@pytest.mark.parametrize(
    "batch,size,in_channels,out_channels,kernel",
    # airbench94's maps and widths at a test's batch; an odd batch (its last image has
    # no pair), channels and filters that fill no register block, 1x1 and 5x5 kernels,
    # and kernels wider than the map (taps that read only padding are skipped)
    [
        (4, 7, 256, 256, 3),
        (6, 3, 256, 256, 3),
        (2, 31, 24, 64, 3),
        (5, 15, 64, 64, 3),
        (3, 5, 7, 10, 3),
        (4, 6, 13, 70, 5),
        (3, 4, 6, 17, 1),
        (3, 2, 5, 9, 5),
        (2, 1, 4, 4, 3),
    ],
)
def test_native_weight_gradient_is_the_convolution_weight_gradient(
    batch, size, in_channels, out_channels, kernel
):
    op = _native_op()
    x, upstream = _conv_case(size, in_channels, out_channels, kernel, batch=batch)
    xb, ub = tf.cast(x, tf.bfloat16), tf.cast(upstream, tf.bfloat16)
    # Products of bfloat16 are exact in float32, and the op sums in float32: it matches
    # the float32 kernel on the rounded inputs to float32's accuracy.
    exact = _stock_weight_gradient(tf.cast(xb, tf.float32), tf.cast(ub, tf.float32), kernel)
    ours = op(xb, ub, kernel_size=kernel)
    assert ours.dtype == tf.float32 and ours.shape == exact.shape
    np.testing.assert_allclose(ours.numpy(), exact.numpy(), atol=1e-5 * np.abs(exact).max())


def test_native_op_names_what_it_expected():
    op = _native_op()
    x = tf.zeros([2, 4, 4, 8], tf.bfloat16)
    with pytest.raises(tf.errors.InvalidArgumentError, match="keeps N, H and W"):
        op(x, tf.zeros([2, 5, 4, 8], tf.bfloat16), kernel_size=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be odd"):
        op(x, x, kernel_size=2)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="rank"):
        op(tf.zeros([2, 4, 8], tf.bfloat16), x, kernel_size=3)


def test_native_only_where_measured_faster():
    assert fast_layers.native_pays(24, 48) and fast_layers.native_pays(256, 256)
    assert not fast_layers.native_pays(3, 64) and not fast_layers.native_pays(16, 32)
    assert not fast_layers.native_pays(64, 16)


def test_fast_conv_without_the_native_op_takes_the_shifted_products(monkeypatch):
    monkeypatch.setattr(library, "conv_filter_grad_bf16", lambda: None)
    x, _ = _conv_case(3, 256, 256, 3)
    _, fast = _conv_pair("mixed_bfloat16")
    fast.build(x.shape)
    assert fast.weight_gradient(tf.cast(x, tf.bfloat16), fast.kernel) == "shifted"
    assert "Bf16ConvFilterGrad" not in _weight_gradient_ops(fast, x)


def test_fast_conv_leaves_float32_and_large_maps_to_the_stock_kernel():
    x, _ = _conv_case(3, 256, 256, 3)
    _, fast32 = _conv_pair("float32")
    fast32.build(x.shape)
    assert not set(_TAKEN_OPS.values()) & _weight_gradient_ops(fast32, x)
    # A large map with 8 channels: neither the shifted products nor the native op pays.
    large, _ = _conv_case(16, 8, 8, 3)
    _, fast_large = _conv_pair("mixed_bfloat16", filters=8)
    fast_large.build(large.shape)
    assert not set(_TAKEN_OPS.values()) & _weight_gradient_ops(fast_large, large)


def test_fast_conv_under_two_replicas_matches_one():
    x, upstream = _conv_case(3, 256, 256, 3)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        _, fast = _conv_pair("mixed_bfloat16")
        fast.build(x.shape)
    one = _conv_step(fast, x, upstream)[1]
    summed = _two_replicas_gradient(strategy, fast, fast.kernel, x, upstream)
    np.testing.assert_allclose(summed, one, atol=2**-7 * np.abs(one).max())


def _two_replicas_gradient(strategy, layer, variable, x, upstream):
    """The gradient of sum(layer(x) * upstream) for `variable`, each replica taking half
    the batch, summed over the replicas."""

    def replica_grad(x, upstream):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(x), tf.float32) * upstream)
        return tape.gradient(loss, variable)

    half = x.shape[0] // 2
    halves = [(x[:half], upstream[:half]), (x[half:], upstream[half:])]
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: halves[ctx.replica_id_in_sync_group]
    )
    grads = strategy.run(tf.function(replica_grad), args=per_replica)
    return strategy.reduce("SUM", grads, axis=None).numpy().astype(np.float32)


def _bias_gradient(layer, x, upstream, jit=False):
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(layer(x), tf.float32) * upstream)
        return tape.gradient(loss, layer.bias)

    return tf.function(step, jit_compile=jit)(x).numpy()


def _biased_conv_pair(policy, filters, frozen_kernel=True):
    """A Keras and a fast_layers conv with biases; by default their kernels frozen, as
    the whitening stem's: then only the bias gradient is taken."""
    with precision.policy_scope(policy):
        stock = keras.layers.Conv2D(filters, 2, padding="valid", name="stock")
        fast = fast_layers.Conv2D(filters, 2, padding="valid", name="fast")
    for layer in (stock, fast):
        layer.build((None, None, None, 3))
        layer.kernel.trainable = not frozen_kernel
    return stock, fast


def _offset_upstream(shape, seed=2):
    """A gradient of standard deviation 0.01 with a mean away from zero, as real gradients
    have: a bfloat16 running sum of it stalls."""
    rng = np.random.default_rng(seed)
    return tf.constant(rng.standard_normal(shape).astype(np.float32) * 0.01 + 0.003)


def _exact_bias_gradient(upstream):
    """The sum the layer's bfloat16 output gradient should give, in float64."""
    rounded = tf.cast(tf.cast(upstream, tf.bfloat16), tf.float64)
    return tf.reduce_sum(rounded, list(range(upstream.shape.rank - 1))).numpy()


def _assert_summed_once(ours, exact):
    # Rounded once to bfloat16 (8 significant bits) at the end, not per term.
    np.testing.assert_allclose(ours, exact, rtol=2**-8, atol=2**-8 * np.abs(exact).max())


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("size,filters", [(31, 24), (15, 64), (3, 5)])  # the whitening stem's
def test_bfloat16_bias_gradient_is_summed_in_float32(size, filters, jit):
    x = tf.constant(np.random.default_rng(1).standard_normal((64, size + 1, size + 1, 3)))
    x = tf.cast(x, tf.float32)
    upstream = _offset_upstream((64, size, size, filters))
    stock, fast = _biased_conv_pair("mixed_bfloat16", filters)
    fast.set_weights(stock.get_weights())
    np.testing.assert_array_equal(fast(x).numpy(), stock(x).numpy())
    exact = _exact_bias_gradient(upstream)
    ours = _bias_gradient(fast, x, upstream, jit)
    assert ours.dtype == np.float32  # the variable's dtype
    _assert_summed_once(ours, exact)
    if size == 31 and not jit:  # TensorFlow's own kernel, which this replaces, is far off
        stock_error = np.abs(_bias_gradient(stock, x, upstream) - exact).max()
        assert stock_error > 0.1 * np.abs(exact).max()


def test_a_trained_kernel_keeps_keras_bias_and_its_fused_gradient():
    """With the kernel trained, the layer is Keras's own; where oneDNN runs bfloat16,
    grappler fuses the filter and bias gradients into one kernel that sums in float32."""
    x = tf.cast(tf.constant(np.random.default_rng(1).standard_normal((64, 32, 32, 3))), tf.float32)
    upstream = _offset_upstream((64, 31, 31, 24))
    stock, fast = _biased_conv_pair("mixed_bfloat16", 24, frozen_kernel=False)
    fast.set_weights(stock.get_weights())

    def both_gradients(layer):
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.cast(layer(x), tf.float32) * upstream)
            return tape.gradient(loss, [layer.kernel, layer.bias])

        compiled = tf.function(step)
        graph = compiled.get_concrete_function(x).graph
        assert "BiasAddGrad" in {op.type for op in graph.get_operations()}  # Keras's path
        return [g.numpy() for g in compiled(x)]

    ours, theirs = both_gradients(fast), both_gradients(stock)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    flags = hardware.cpu_flags() or frozenset()
    if not (hardware.bf16_units(flags) and _pywrap_util_port.IsMklEnabled()):
        pytest.skip("oneDNN runs no bfloat16 here: the fused kernel's sum is not checked")
    _assert_summed_once(ours[1], _exact_bias_gradient(upstream))


def test_float32_bias_gradient_is_keras_own():
    x, _ = _conv_case(8, 3, 5, 3)
    upstream = tf.constant(np.random.default_rng(3).standard_normal((6, 7, 7, 5)), tf.float32)
    stock, fast = _biased_conv_pair("float32", 5)
    fast.set_weights(stock.get_weights())
    np.testing.assert_array_equal(
        _bias_gradient(fast, x, upstream), _bias_gradient(stock, x, upstream)
    )


def test_bias_gradient_under_two_replicas_matches_one():
    x, _ = _conv_case(16, 3, 5, 3)
    upstream = tf.constant(np.random.default_rng(4).standard_normal((6, 15, 15, 24)), tf.float32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        _, fast = _biased_conv_pair("mixed_bfloat16", 24)
    one = _bias_gradient(fast, x, upstream)
    summed = _two_replicas_gradient(strategy, fast, fast.bias, x, upstream)
    np.testing.assert_allclose(summed, one, rtol=2**-7, atol=2**-7 * np.abs(one).max())


def _dense_pair(policy, units, input_shape):
    with precision.policy_scope(policy):
        stock = keras.layers.Dense(units, name="stock")
        fast = fast_layers.Dense(units, name="fast")
    stock.build(input_shape)
    fast.build(input_shape)
    return stock, fast


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
def test_bfloat16_dense_bias_gradient_is_summed_in_float32(jit):
    x = tf.constant(np.random.default_rng(5).standard_normal((512, 48)).astype(np.float32))
    upstream = _offset_upstream((512, 40))
    stock, fast = _dense_pair("mixed_bfloat16", 40, x.shape)
    stock.bias.assign(tf.linspace(-0.5, 0.5, 40))
    fast.set_weights(stock.get_weights())
    np.testing.assert_array_equal(fast(x).numpy(), stock(x).numpy())
    assert fast.get_config() == {**stock.get_config(), "name": fast.name}
    _assert_summed_once(_bias_gradient(fast, x, upstream, jit), _exact_bias_gradient(upstream))


def test_float32_dense_is_keras_own():
    x = tf.constant(np.random.default_rng(6).standard_normal((16, 12)), tf.float32)
    upstream = tf.constant(np.random.default_rng(7).standard_normal((16, 5)), tf.float32)
    stock, fast = _dense_pair("float32", 5, x.shape)
    fast.set_weights(stock.get_weights())
    np.testing.assert_array_equal(fast(x).numpy(), stock(x).numpy())
    np.testing.assert_array_equal(
        _bias_gradient(fast, x, upstream), _bias_gradient(stock, x, upstream)
    )

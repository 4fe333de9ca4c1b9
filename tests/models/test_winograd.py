"""The Winograd convs (models/native/winograd_conv.cc): each op against TensorFlow's own
kernel per layer shape, their errors, and which layers take them, in float32 and
bfloat16."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import fast_layers
from models.native import library
from pipeline.training import precision

_WINOGRAD_OPS = {"WinogradConv3x3", "WinogradConv3x3FilterGrad"}
# bfloat16: the conv and the input gradient; the weight gradient is the native op.
_BF16_WINOGRAD_OPS = {"Bf16WinogradConv3x3", "Bf16ConvFilterGrad"}


def _ops():
    ops = library.winograd_conv_f32()
    if ops is None:
        pytest.skip("this CPU does not take the Winograd ops (AVX-512 without AMX)")
    return ops


def _bf16_op():
    op = library.winograd_conv_bf16()
    if op is None:
        pytest.skip("this CPU does not take the bfloat16 Winograd op (AVX512-BF16, no AMX)")
    return op


def _case(batch, height, width, in_channels, out_channels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, height, width, in_channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, in_channels, out_channels)).astype(np.float32)
    upstream = rng.standard_normal((batch, height, width, out_channels)).astype(np.float32)
    return tf.constant(x), tf.constant(kernel), tf.constant(upstream)


def _close(ours, reference):
    # The transforms add and halve: float32 rounding of the same sums, in another order.
    reference = reference.numpy()
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize(
    "batch,height,width,in_channels,out_channels",
    # airbench94's layers at a test's batch; odd and unequal sides (tiles past the edge),
    # channels that fill no vector, register block or tile block; a 1x1 map (every tap
    # but the centre is padding)
    [
        (2, 7, 7, 256, 256),
        (2, 31, 31, 24, 64),
        (3, 15, 15, 64, 64),
        (2, 8, 7, 13, 70),
        (5, 6, 9, 20, 40),
        (130, 4, 4, 7, 3),
        (1, 1, 1, 3, 5),
    ],
)
def test_winograd_ops_are_the_convolution_and_its_gradients(
    batch, height, width, in_channels, out_channels
):
    conv, filter_gradient = _ops()
    x, kernel, upstream = _case(batch, height, width, in_channels, out_channels)
    _close(conv(x, kernel), tf.nn.conv2d(x, kernel, 1, "SAME"))
    stock_input_gradient = tf.raw_ops.Conv2DBackpropInput(
        input_sizes=tf.shape(x),
        filter=kernel,
        out_backprop=upstream,
        strides=[1] * 4,
        padding="SAME",
    )
    _close(conv(upstream, kernel, input_gradient=True), stock_input_gradient)
    stock_filter_gradient = tf.raw_ops.Conv2DBackpropFilter(
        input=x,
        filter_sizes=tf.shape(kernel),
        out_backprop=upstream,
        strides=[1] * 4,
        padding="SAME",
    )
    _close(filter_gradient(x, upstream), stock_filter_gradient)


@pytest.mark.parametrize(
    "batch,height,width,in_channels,out_channels",
    [(2, 7, 7, 256, 256), (2, 15, 15, 64, 256), (3, 6, 9, 13, 70), (1, 1, 1, 3, 5)],
)
def test_bfloat16_winograd_conv_is_the_convolution_to_bfloat16_precision(
    batch, height, width, in_channels, out_channels
):
    op = _bf16_op()
    x, kernel, _ = _case(batch, height, width, in_channels, out_channels)
    xb, kb = tf.cast(x, tf.bfloat16), tf.cast(kernel, tf.bfloat16)
    exact = tf.nn.conv2d(tf.cast(xb, tf.float32), tf.cast(kb, tf.float32), 1, "SAME").numpy()
    ours = op(xb, kb)
    assert ours.dtype == tf.bfloat16 and ours.shape == exact.shape
    error = tf.cast(ours, tf.float32).numpy() - exact
    # The transformed tiles and filters are rounded to bfloat16 as well as the output:
    # about 2.5 times the stock conv's error (the output's rounding alone, 0.16% rms),
    # within 2^-7 of the output's scale everywhere and of its rms on average.
    assert np.abs(error).max() <= 2**-7 * np.abs(exact).max()
    assert np.sqrt(np.mean(error**2)) <= 2**-7 * np.sqrt(np.mean(exact**2))


def test_winograd_ops_name_what_they_expected():
    conv, filter_gradient = _ops()
    x = tf.zeros([2, 5, 5, 8])
    with pytest.raises(tf.errors.InvalidArgumentError, match="3x3 filter whose input channels"):
        conv(x, tf.zeros([5, 5, 8, 4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input channels match the input's 8"):
        conv(x, tf.zeros([3, 3, 6, 4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="output channels match"):
        conv(x, tf.zeros([3, 3, 8, 4]), input_gradient=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="keeps N, H and W"):
        filter_gradient(x, tf.zeros([2, 4, 5, 8]))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="rank"):
        filter_gradient(tf.zeros([2, 5, 8]), x)


def _conv_pair(policy, filters):
    with precision.policy_scope(policy):
        stock = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)
        fast = fast_layers.Conv2D(filters, 3, padding="same", use_bias=False)
    return stock, fast


def _step(layer, x, upstream, jit=False):
    """The layer's output and the gradients of sum(output * upstream) for x and the kernel,
    and the op types of its graph."""

    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x), tf.float32)
            loss = tf.reduce_sum(y * upstream)
        return [y, *tape.gradient(loss, [x, layer.kernel])]

    fn = tf.function(step, jit_compile=jit)
    ops = {op.type for op in fn.get_concrete_function(x).graph.get_operations()}
    return fn(x), ops


# Per policy: the ops a layer adds to the graph, whether this CPU takes them, and how close
# its output and gradients come to Keras's (bfloat16's extra rounding: the op's test above).
_TAKEN = {
    "float32": (_WINOGRAD_OPS, _ops, 1e-5),
    "mixed_bfloat16": (_BF16_WINOGRAD_OPS, _bf16_op, 2**-7),
}


@pytest.mark.parametrize("jit", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fast_conv_trains_like_keras_conv_through_winograd(policy, jit):
    expected_ops, available, tolerance = _TAKEN[policy]
    available()
    x, _, upstream = _case(4, 7, 7, 64, 128)
    stock, fast = _conv_pair(policy, 128)
    stock.build(x.shape)
    fast.build(x.shape)
    fast.kernel.assign(stock.kernel)
    x = tf.cast(x, fast.compute_dtype)
    ours, ops = _step(fast, x, upstream, jit)
    theirs, stock_ops = _step(stock, x, upstream, jit)
    # XLA cannot call a native op: the stock kernels run there.
    assert (ops & expected_ops == expected_ops) is not jit
    assert not stock_ops & (_WINOGRAD_OPS | _BF16_WINOGRAD_OPS)
    for a, b in zip(ours, theirs, strict=True):
        a, b = tf.cast(a, tf.float32).numpy(), tf.cast(b, tf.float32).numpy()
        np.testing.assert_allclose(a, b, atol=tolerance * np.abs(b).max())


def test_winograd_only_where_measured_faster():
    _ops()
    assert fast_layers.winograd_pays(31, 31, 24, 64) and fast_layers.winograd_pays(7, 7, 256, 256)
    assert not fast_layers.winograd_pays(3, 3, 256, 256)  # oneDNN wins on 3x3 maps
    assert not fast_layers.winograd_pays(32, 32, 3, 64)  # too few channels: not measured
    seven, three = _case(2, 7, 7, 32, 32)[0], _case(2, 3, 3, 32, 32)[0]
    _, fast32 = _conv_pair("float32", 32)
    _, fast16 = _conv_pair("mixed_bfloat16", 32)
    with precision.policy_scope("float32"):
        five_by_five = fast_layers.Conv2D(32, 5, padding="same")
    assert fast32.takes_winograd(seven) and not fast32.takes_winograd(three)
    assert not five_by_five.takes_winograd(seven)
    # bfloat16: only wide layers (oneDNN's direct conv runs at twice float32's rate there)
    assert not fast16.takes_winograd(tf.cast(seven, tf.bfloat16))
    assert fast_layers.winograd_pays(15, 15, 64, 256, tf.bfloat16)
    assert not fast_layers.winograd_pays(31, 31, 24, 64, tf.bfloat16)
    assert not fast_layers.winograd_pays(3, 3, 256, 256, tf.bfloat16)


def test_fast_conv_without_the_winograd_ops_takes_the_stock_kernels(monkeypatch):
    monkeypatch.setattr(library, "winograd_conv_f32", lambda: None)
    x, _, upstream = _case(2, 7, 7, 32, 32)
    _, fast = _conv_pair("float32", 32)
    fast.build(x.shape)
    assert not fast.takes_winograd(x)
    assert not _step(fast, x, upstream)[1] & _WINOGRAD_OPS


def test_winograd_conv_under_two_replicas_matches_one():
    _ops()
    x, _, upstream = _case(4, 7, 7, 32, 32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        _, fast = _conv_pair("float32", 32)
        fast.build(x.shape)

    def replica_grad(x, upstream):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fast(x) * upstream)
        return tape.gradient(loss, fast.kernel)

    halves = [(x[:2], upstream[:2]), (x[2:], upstream[2:])]
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: halves[ctx.replica_id_in_sync_group]
    )
    summed = strategy.reduce("SUM", strategy.run(tf.function(replica_grad), args=per_replica), None)
    _close(summed, _step(fast, x, upstream)[0][2])

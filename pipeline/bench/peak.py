"""The CPU's convolution peak, as TensorFlow reaches it: a large NHWC 3x3 convolution and
its two gradients timed alone, in GFLOP/s, the yardstick for a training step's GFLOP/s."""

from __future__ import annotations

import tensorflow as tf

from pipeline.bench.timing import median_seconds

# A large 3x3 layer (airbench94's middle block at batch 256): big enough that oneDNN's
# best kernel runs at full speed on every core.
SHAPE = {"batch": 256, "size": 16, "channels": 256}


def op_seconds(op, repeats: int, calls: int) -> float:
    """Seconds of one `op()`: `calls` of it in one tf.function call, the median of `repeats`
    calls. Only one element of each result leaves the function, so the timing holds the op
    and not the copy of its output."""

    @tf.function
    def run():
        total = tf.zeros([], tf.float32)
        for _ in tf.range(calls):
            total += tf.cast(tf.reshape(op(), [-1])[0], tf.float32)
        return total

    return median_seconds(lambda: run().numpy(), repeats) / calls


def conv_ops(x, w, dy, strides: int, padding: str) -> dict:
    """The forward conv of `x` by `w` and its two gradients (upstream `dy`), as callables."""
    stride = [1, strides, strides, 1]
    return {
        "forward": lambda: tf.nn.conv2d(x, w, stride, padding),
        "input_gradient": lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=stride, padding=padding
        ),
        "weight_gradient": lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(w), out_backprop=dy, strides=stride, padding=padding
        ),
    }


def conv_peak(
    dtype: str = "float32", repeats: int = 5, calls: int = 4, shape: dict | None = None
) -> dict:
    """GFLOP/s of the forward conv, the input gradient and the weight gradient of one 3x3
    NHWC layer (SHAPE) in `dtype` ("float32" or "bfloat16"), each timed apart: `calls`
    in one tf.function call, the median of `repeats` calls.

    Each of the three does 2 x batch x size^2 x 9 x channels^2 FLOPs.
    """
    shape = shape or SHAPE
    b, s, c = shape["batch"], shape["size"], shape["channels"]
    dt = tf.as_dtype(dtype)
    x = tf.cast(tf.random.stateless_normal([b, s, s, c], seed=[0, 1]), dt)
    w = tf.cast(tf.random.stateless_normal([3, 3, c, c], seed=[0, 2]) * 0.05, dt)
    dy = tf.cast(tf.random.stateless_normal([b, s, s, c], seed=[0, 3]), dt)
    flops = 2 * b * s * s * 9 * c * c
    ops = conv_ops(x, w, dy, strides=1, padding="SAME")
    result = {"dtype": dtype, "shape": dict(shape), "flops_per_op": flops}
    for name, op in ops.items():
        result[name] = flops / op_seconds(op, repeats, calls) / 1e9
    return result

"""The CPU's convolution peak, as TensorFlow reaches it: a large NHWC 3x3 convolution and
its two gradients timed alone, in GFLOP/s, the yardstick for a training step's GFLOP/s."""

from __future__ import annotations

import statistics
import time

import tensorflow as tf

# A large 3x3 layer (airbench94's middle block at batch 256): big enough that oneDNN's
# best kernel runs at full speed on every core.
SHAPE = {"batch": 256, "size": 16, "channels": 256}


def _timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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

    def repeated(op):
        @tf.function
        def run():
            total = tf.zeros([], tf.float32)
            for _ in tf.range(calls):
                total += tf.cast(tf.reduce_sum(op()[:1, :1, :1, :1]), tf.float32)
            return total

        return lambda: run().numpy()

    ops = {
        "forward": lambda: tf.nn.conv2d(x, w, 1, "SAME"),
        "input_gradient": lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"
        ),
        "weight_gradient": lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(w), out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"
        ),
    }
    result = {"dtype": dtype, "shape": dict(shape), "flops_per_op": flops}
    for name, op in ops.items():
        seconds = _timed(repeated(op), repeats) / calls
        result[name] = flops / seconds / 1e9
    return result

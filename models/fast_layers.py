"""Fast equivalents of two Keras layers that dominate a small convnet's step on CPU.

Profiled on the challenge net (README, "Where the step's time goes"): Keras 3's
BatchNormalization computes moments and normalises in many separate elementwise ops
(plus float32 casts under mixed precision), and exact GELU's gradient is a dozen more.
These give the same numbers in far fewer passes over memory:

- `BatchNorm`: TensorFlow's `FusedBatchNormV3` kernel (oneDNN runs it natively, in
  bfloat16 too); same variables, defaults and moving-average rule as Keras's layer.
  Under a strategy with more than one replica it normalises with the statistics of the
  global batch (synchronized, as Keras's `synchronized=True`), so N replicas train as one.
- `gelu`: exact (erf) GELU whose forward and backward are each one XLA-fused loop.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@tf.function(jit_compile=True)
def _gelu_forward(x):
    return x * (0.5 * tf.math.erfc(-x * _SQRT_HALF))


@tf.function(jit_compile=True)
def _gelu_backward(x, upstream):
    # d/dx [x * Phi(x)] = Phi(x) + x * phi(x)
    cdf = 0.5 * tf.math.erfc(-x * _SQRT_HALF)
    pdf = tf.exp(-0.5 * tf.square(x)) * _INV_SQRT_2PI
    return upstream * (cdf + x * pdf)


@tf.custom_gradient
def gelu(x):
    """Exact GELU, x * Phi(x), as `keras.activations.gelu(x, approximate=False)`."""
    return _gelu_forward(x), lambda upstream: _gelu_backward(x, upstream)


# Registered so a saved `.keras` file of a model using them loads (with this package).
@keras.saving.register_keras_serializable(package="cifar_pipeline")
class GELU(keras.layers.Layer):
    """`keras.layers.Activation("gelu")` with the fused kernels of `gelu`."""

    def call(self, x):
        return gelu(x)


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class BatchNorm(keras.layers.Layer):
    """Batch normalization over the last axis through `FusedBatchNormV3`.

    Drop-in for `keras.layers.BatchNormalization(axis=-1, momentum, epsilon, center,
    scale)`: the same weights (gamma, beta, moving_mean, moving_variance, so checkpoints
    are interchangeable), the same moving-average rule
    `moving = momentum * moving + (1 - momentum) * batch` with the biased batch variance,
    and normalisation in float32 whatever the input dtype.
    """

    def __init__(
        self,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        synchronized: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = center, scale
        self.synchronized = synchronized

    def build(self, input_shape):
        shape = (input_shape[-1],)
        # cuDNN's batch norm refuses epsilon < 1e-5 (CUDNN_BN_MIN_EPSILON); TensorFlow's
        # own wrapper clamps it the same way. The CPU kernels take any epsilon.
        gpu = bool(tf.config.list_logical_devices("GPU"))
        self._kernel_epsilon = max(self.epsilon, 1.001e-5) if gpu else self.epsilon

        def weight(name, init, trainable=True):
            return self.add_weight(
                shape=shape, name=name, initializer=init, trainable=trainable, autocast=False
            )

        self.gamma = weight("gamma", "ones") if self.scale else None
        self.beta = weight("beta", "zeros") if self.center else None
        self.moving_mean = weight("moving_mean", "zeros", trainable=False)
        self.moving_variance = weight("moving_variance", "ones", trainable=False)

    def call(self, x, training=False):
        channels = x.shape[-1]
        ones, zeros = tf.ones([channels]), tf.zeros([channels])
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else ones
        beta = tf.convert_to_tensor(self.beta) if self.center else zeros
        if not (training and self.trainable):
            y, _, _ = _fused_batch_norm(
                x,
                gamma,
                beta,
                tf.convert_to_tensor(self.moving_mean),
                tf.convert_to_tensor(self.moving_variance),
                self._kernel_epsilon,
                False,
            )
            return y
        replica = tf.distribute.get_replica_context()
        if self.synchronized and _replicas(replica) > 1:
            y, mean, variance = _synchronized_batch_norm(
                x, gamma, beta, self._kernel_epsilon, replica
            )
        else:
            y, mean, variance = _fused_batch_norm(
                x, gamma, beta, zeros, ones, self._kernel_epsilon, True
            )
            # The kernel's variance is Bessel-corrected; Keras's moving average uses the
            # biased one, so undo the correction to stay interchangeable.
            n = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + tf.stop_gradient(mean) * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + tf.stop_gradient(variance) * (1.0 - m)
        )
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "synchronized": self.synchronized,
        }


def _replicas(replica_context) -> int:
    return replica_context.num_replicas_in_sync if replica_context is not None else 1


def _synchronized_batch_norm(x, scale, offset, epsilon: float, replica_context):
    """Batch norm over the GLOBAL batch: per-channel sums all-reduced across replicas, so
    N replicas normalise as one replica would on their concatenated batches. Unfused (the
    statistics must be differentiable through the all-reduce), in float32."""
    x32 = tf.cast(x, tf.float32)
    axes = list(range(x.shape.rank - 1))
    count = replica_context.all_reduce("SUM", tf.cast(tf.size(x32) // x.shape[-1], tf.float32))
    mean = replica_context.all_reduce("SUM", tf.reduce_sum(x32, axes)) / count
    # Two passes, as the fused kernel: E[x^2] - E[x]^2 loses digits when |mean| >> std.
    centred = tf.reduce_sum(tf.square(x32 - mean), axes)
    variance = replica_context.all_reduce("SUM", centred) / count  # biased, as Keras's
    y = tf.nn.batch_normalization(x32, mean, variance, offset, scale, epsilon)
    return tf.cast(y, x.dtype), mean, variance


def _fused_batch_norm(x, scale, offset, mean, variance, epsilon: float, training: bool):
    """FusedBatchNormV3 on NHWC (or 2-D, as NHWC with H = W = 1); x keeps its dtype."""
    shape = tf.shape(x)
    four_d = x.shape.rank == 4
    if not four_d:
        x = tf.reshape(x, [-1, 1, 1, x.shape[-1]])
    y, batch_mean, batch_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x,
        scale=scale,
        offset=offset,
        mean=mean,
        variance=variance,
        epsilon=epsilon,
        data_format="NHWC",
        is_training=training,
    )
    return (y if four_d else tf.reshape(y, shape)), batch_mean, batch_variance

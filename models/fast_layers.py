"""Fast equivalents of Keras layers that dominate a small convnet's step on CPU.

Profiled on the challenge net (docs/performance.md): Keras 3's
BatchNormalization computes moments and normalises in many separate elementwise ops
(plus float32 casts under mixed precision), and exact GELU's gradient is a dozen more.
These give the same numbers in far fewer passes over memory:

- `BatchNorm`: TensorFlow's `FusedBatchNormV3` kernel (oneDNN runs it natively, in
  bfloat16 too); same variables, defaults and moving-average rule as Keras's layer.
  Under a strategy with more than one replica it normalises with the statistics of the
  global batch (synchronized, as Keras's `synchronized=True`), so N replicas train as one.
- `gelu`: exact (erf) GELU whose forward and backward are each one XLA-fused loop, or in
  bfloat16 on CPUs that take the native ops, two table lookups (models/native).
- `Conv2D`: Keras's Conv2D whose bfloat16 weight gradient skips oneDNN's backward-weights
  convolution where that is slow: on CPUs with AVX512-BF16 and no AMX, a native op
  (models/native, docs/performance.md "A native weight gradient"); elsewhere, on small
  maps, nine matrix products, one per kernel offset (docs/performance.md, "The bfloat16
  weight gradient"). In float32, on CPUs with AVX-512 and no AMX, its 3x3 convs and both
  their gradients are Winograd's F(2x2, 3x3); in bfloat16, on the CPUs that take the
  native ops, the wide layers' forward conv and input gradient are (models/native,
  docs/performance.md "Winograd convolutions"). Its bfloat16 bias gradient under a frozen
  kernel is summed in float32 (`bias_add`).
- `Dense`: Keras's Dense whose bfloat16 bias gradient is summed in float32 too.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from models.native import library

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _to_float32(x):
    """x in float32. bfloat16 is the top half of a float32, so it widens by an integer
    shift, which XLA's CPU code vectorizes; its own conversion is slower (docs/performance.md,
    "Exact GELU")."""
    if x.dtype != tf.bfloat16:
        return tf.cast(x, tf.float32)
    bits = tf.cast(tf.bitcast(x, tf.uint16), tf.uint32)
    return tf.bitcast(tf.bitwise.left_shift(bits, 16), tf.float32)


def _from_float32(z, dtype):
    """z (float32) as `dtype`; to bfloat16 rounded to nearest even, as `tf.cast` rounds,
    in integer operations. NaN stays NaN (the rounding could carry a NaN's mantissa into
    its sign): found and replaced in integers too, as a float test and a bfloat16 select
    here cost what the shifts save."""
    if dtype != tf.bfloat16:
        return tf.cast(z, dtype)
    bits = tf.bitcast(z, tf.uint32)
    lsb = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 16), 1)
    nan = tf.bitwise.bitwise_and(bits, 0x7FFFFFFF) > 0x7F800000
    rounded = tf.where(nan, tf.constant(0x7FC00000, tf.uint32), bits + 0x7FFF + lsb)
    return tf.bitcast(tf.cast(tf.bitwise.right_shift(rounded, 16), tf.uint16), tf.bfloat16)


# Computed in float32 whatever the input dtype, through erf: XLA's CPU code converts around
# every bfloat16 operation, so this is faster (docs/performance.md, "Exact GELU") and
# rounds once instead of per op.
@tf.function(jit_compile=True)
def _gelu_forward(x):
    z = _to_float32(x)
    return _from_float32(z * (0.5 + 0.5 * tf.math.erf(z * _SQRT_HALF)), x.dtype)


@tf.function(jit_compile=True)
def _gelu_backward(x, upstream):
    # d/dx [x * Phi(x)] = Phi(x) + x * phi(x)
    z = _to_float32(x)
    cdf = 0.5 + 0.5 * tf.math.erf(z * _SQRT_HALF)
    pdf = tf.exp(-0.5 * tf.square(z)) * _INV_SQRT_2PI
    return _from_float32(_to_float32(upstream) * (cdf + z * pdf), x.dtype)


@tf.custom_gradient
def _xla_gelu(x):
    return _gelu_forward(x), lambda upstream: _gelu_backward(x, upstream)


@tf.custom_gradient
def _native_gelu(x):
    forward, backward = library.gelu_bf16()
    return forward(x), lambda upstream: backward(x, tf.cast(upstream, x.dtype))


def gelu(x):
    """Exact GELU, x * Phi(x), as `keras.activations.gelu(x, approximate=False)`. In
    bfloat16 on a CPU that takes the native ops, outside XLA, its value and slope are
    looked up per bfloat16 value (`Bf16Gelu`, `Bf16GeluGrad`: computed once in double
    precision, rounded once); everywhere else the XLA-fused loops run."""
    if _on_cpu_in_bfloat16(x) and not _in_xla() and library.gelu_bf16() is not None:
        return _native_gelu(x)
    return _xla_gelu(x)


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


# Where nine matrix products beat oneDNN's bfloat16 backward-weights convolution, measured
# per layer on an Intel Xeon with AMX (docs/performance.md): every map of at most 4x4 px,
# and maps of at most 8x8 px with at least 256x256 channel pairs. Elsewhere, and in
# float32 (where it loses everywhere measured), the stock kernel runs.
_SMALL_MAP_PIXELS = 16
_MEDIUM_MAP_PIXELS = 64
_MEDIUM_MAP_CHANNEL_PAIRS = 256 * 256


def shifted_products_pay(height: int, width: int, in_channels: int, out_channels: int) -> bool:
    """Whether a bfloat16 weight gradient of this layer is faster as `shifted_products`."""
    pixels = height * width
    return pixels <= _SMALL_MAP_PIXELS or (
        pixels <= _MEDIUM_MAP_PIXELS and in_channels * out_channels >= _MEDIUM_MAP_CHANNEL_PAIRS
    )


# Where the native op beats TensorFlow's bfloat16 weight gradient (on the CPUs it runs on,
# models/native/library.py): at least 24 input and 32 output channels; fewer leave its
# register blocks part empty, and the stock kernel ties or wins (docs/performance.md, "A
# native weight gradient"). Every trained conv of the challenge nets qualifies.
_NATIVE_MIN_IN_CHANNELS = 24
_NATIVE_MIN_OUT_CHANNELS = 32


def native_pays(in_channels: int, out_channels: int) -> bool:
    """Whether a bfloat16 weight gradient with these channels is faster as the native op,
    where this CPU takes it."""
    return in_channels >= _NATIVE_MIN_IN_CHANNELS and out_channels >= _NATIVE_MIN_OUT_CHANNELS


# Where the float32 Winograd convs beat oneDNN's (forward, input and weight gradient, each
# alone, on a Zen 4; docs/performance.md "Winograd convolutions"): maps of 7x7 px and more,
# with the airbench94 and medium nets' channels (24 -> 48 at the fewest). On 3x3 maps a 2x2
# tile covers 4x4 px for 9 real ones, and oneDNN wins.
_WINOGRAD_MIN_MAP = 7
_WINOGRAD_MIN_IN_CHANNELS = 24
_WINOGRAD_MIN_OUT_CHANNELS = 32
# In bfloat16 (the forward conv and input gradient; the weight gradient stays the native
# op) oneDNN's direct convs run twice float32's rate and the transforms' memory traffic
# weighs more: the Winograd ops won on airbench94's 15x15 (64 -> 256) and 7x7 (256) layers
# and medium's 15x15 (48 -> 128), tied at 64 x 64 channels and on medium's 7x7, and lost on
# the 31x31 layers after the stem.
_BF16_WINOGRAD_MIN_CHANNEL_PAIRS = 48 * 128


def winograd_pays(
    height: int, width: int, in_channels: int, out_channels: int, dtype=tf.float32
) -> bool:
    """Whether a 3x3 conv of this shape in `dtype` is faster as the Winograd ops, where this
    CPU takes them."""
    if dtype == tf.bfloat16:
        return (
            min(height, width) >= _WINOGRAD_MIN_MAP
            and in_channels * out_channels >= _BF16_WINOGRAD_MIN_CHANNEL_PAIRS
        )
    return (
        min(height, width) >= _WINOGRAD_MIN_MAP
        and in_channels >= _WINOGRAD_MIN_IN_CHANNELS
        and out_channels >= _WINOGRAD_MIN_OUT_CHANNELS
    )


def shifted_products(x, upstream, kernel_size: int):
    """The weight gradient of a stride-1 "same" convolution with an odd square kernel, as
    one matrix product per kernel offset: dW[i, j] = sum over pixels of
    x_padded[:, h + i, w + j, :]^T upstream[:, h, w, :]. Contracting over the whole batch's
    pixels at once is the shape oneDNN's matmul handles at speed."""
    height, width, in_channels = x.shape[1:]
    out_channels = upstream.shape[-1]
    pad = kernel_size // 2
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    upstream = tf.reshape(upstream, [-1, out_channels])
    offsets = [
        tf.matmul(
            tf.reshape(padded[:, i : i + height, j : j + width, :], [-1, in_channels]),
            upstream,
            transpose_a=True,
        )
        for i in range(kernel_size)
        for j in range(kernel_size)
    ]
    return tf.reshape(tf.stack(offsets), [kernel_size, kernel_size, in_channels, out_channels])


def _conv_with(x, kernel, weight_gradient):
    """tf.nn.conv2d, stride 1, "same", and its gradient function (for `tf.custom_gradient`)
    whose weight gradient is `weight_gradient(upstream)`."""

    def grad(upstream):
        dx = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(x),
            filter=kernel,
            out_backprop=upstream,
            strides=[1, 1, 1, 1],
            padding="SAME",
        )
        return dx, weight_gradient(upstream)

    return tf.nn.conv2d(x, kernel, 1, "SAME"), grad


@tf.custom_gradient
def _conv_with_shifted_weight_gradient(x, kernel):
    """tf.nn.conv2d, stride 1, "same"; its weight gradient is `shifted_products`."""
    return _conv_with(x, kernel, lambda upstream: shifted_products(x, upstream, kernel.shape[0]))


@tf.custom_gradient
def _conv_with_native_weight_gradient(x, kernel):
    """tf.nn.conv2d, stride 1, "same", in bfloat16; its weight gradient is the native
    `Bf16ConvFilterGrad` op (models/native), summed in float32 and rounded once."""
    native = library.conv_filter_grad_bf16()

    def weight_gradient(upstream):
        return tf.cast(native(x, upstream, kernel_size=kernel.shape[0]), kernel.dtype)

    return _conv_with(x, kernel, weight_gradient)


def _rotated(kernel):
    """A 3x3 HWIO kernel turned by 180 degrees with its channel axes swapped: the kernel of
    the "same" conv of the output's gradient that gives the input gradient."""
    return tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])


def winograd_passes(dtype):
    """A 3x3 stride-1 "same" conv's three passes through the Winograd ops in `dtype`, as
    callables forward(x, kernel), input_gradient(upstream, kernel) and
    weight_gradient(x, upstream) (float32 sums), or None where this CPU does not take them.
    In bfloat16 the weight gradient is the native `Bf16ConvFilterGrad`."""
    if dtype == tf.float32 and (ops := library.winograd_conv_f32()) is not None:
        conv, filter_gradient = ops
        return conv, lambda dy, kernel: conv(dy, kernel, input_gradient=True), filter_gradient
    conv, native = library.winograd_conv_bf16(), library.conv_filter_grad_bf16()
    if dtype != tf.bfloat16 or conv is None or native is None:
        return None
    return (
        conv,
        lambda dy, kernel: conv(dy, _rotated(kernel)),
        lambda x, dy: native(x, dy, kernel_size=3),
    )


@tf.custom_gradient
def winograd_conv(x, kernel):
    """tf.nn.conv2d(x, kernel, 1, "SAME") for NHWC x and a 3x3 kernel, and both its
    gradients, through `winograd_passes` (models/native). float32 matches TensorFlow's to
    float32's accuracy; bfloat16 rounds the transformed tiles and filters to bfloat16 too
    (a few times the stock conv's rounding error, docs/performance.md)."""
    forward, input_gradient, weight_gradient = winograd_passes(x.dtype)

    def grad(upstream):
        dw = tf.cast(weight_gradient(x, upstream), kernel.dtype)
        return input_gradient(upstream, kernel), dw

    return forward(x, kernel), grad


@tf.custom_gradient
def bias_add(x, bias):
    """tf.nn.bias_add, channels last, whose bias gradient is summed with a float32
    accumulator. TensorFlow's CPU `BiasAddGrad` (the gradient of Keras's bias) sums
    bfloat16 in bfloat16: once a channel's running sum is large, further terms round away,
    and over a conv layer's batch of pixels the gradient is far off (measured in
    docs/performance.md, "The bias gradient"). `tf.reduce_sum` of bfloat16 accumulates in
    float32, and is faster."""

    def grad(upstream):
        return upstream, tf.reduce_sum(upstream, list(range(upstream.shape.rank - 1)))

    return tf.nn.bias_add(x, bias), grad


def _on_cpu_in_bfloat16(x) -> bool:
    return x.dtype == tf.bfloat16 and not tf.config.list_logical_devices("GPU")


def _in_xla() -> bool:
    """Whether the graph being traced compiles with XLA, which cannot run a native op."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _sums_bias_in_float32(layer, x) -> bool:
    """Whether `layer` adds its bias to `x` with `bias_add`: bfloat16 on a CPU, channels
    last. Everything else takes Keras's own path, bit for bit."""
    channels_last = getattr(layer, "data_format", "channels_last") == "channels_last"
    return layer.bias is not None and channels_last and _on_cpu_in_bfloat16(x)


def _biased(layer, outputs):
    """`outputs` plus `layer`'s bias through `bias_add`, then its activation."""
    outputs = bias_add(outputs, tf.cast(layer.bias, outputs.dtype))
    return outputs if layer.activation is None else layer.activation(outputs)


def fits_shifted_products(layer: keras.layers.Conv2D) -> bool:
    """Whether `shifted_products` computes this conv's weight gradient at all: channels
    last, stride 1, "same", no dilation or groups, an odd square kernel."""
    k = tuple(layer.kernel_size)
    return (
        layer.data_format == "channels_last"
        and layer.padding == "same"
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and k[0] == k[1]
        and k[0] % 2 == 1
    )


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (same weights, config and forward pass) whose weight gradient,
    in bfloat16 on a CPU for a stride-1 "same" layer with an odd square kernel, is the
    native op where this CPU takes it and `native_pays`, else `shifted_products` where
    `shifted_products_pay` (`weight_gradient` names the choice). On a CPU that takes the
    Winograd ops, a 3x3 layer where `winograd_pays` runs through them (`takes_winograd`,
    `winograd_passes`): in float32 its conv and both gradients (the same values to
    float32's rounding), in bfloat16 its conv and input gradient.
    Everything else, the GPU and XLA included, takes the stock kernels. Its bias, in
    bfloat16 on a CPU under a frozen kernel (the whitening stem), is added by `bias_add`,
    whose gradient is summed in float32. A trained kernel needs no such help: grappler
    fuses its filter gradient and the bias gradient into one oneDNN kernel
    (`_MklNativeConv2DBackpropFilterWithBias`), which sums in float32 and costs less than
    the filter gradient and a separate sum (docs/performance.md, "The bias gradient")."""

    def call(self, inputs):
        if self.kernel.trainable or not _sums_bias_in_float32(self, inputs):
            return super().call(inputs)
        return _biased(self, self.convolution_op(inputs, self.kernel))

    def takes_winograd(self, inputs) -> bool:
        """Whether this layer convolves `inputs` with the Winograd ops: float32 or bfloat16
        on a CPU that takes them in that dtype, outside XLA, a stride-1 "same" 3x3 conv
        where `winograd_pays`."""
        return (
            inputs.dtype in (tf.float32, tf.bfloat16)
            and not tf.config.list_logical_devices("GPU")
            and inputs.shape.rank == 4
            and None not in inputs.shape[1:]
            and fits_shifted_products(self)
            and tuple(self.kernel_size) == (3, 3)
            and winograd_pays(*inputs.shape[1:3], inputs.shape[-1], self.filters, inputs.dtype)
            and not _in_xla()
            and winograd_passes(inputs.dtype) is not None
        )

    def weight_gradient(self, inputs, kernel) -> str:
        """Which weight gradient this layer takes for `inputs` in training: "native" (the
        `Bf16ConvFilterGrad` op, where this CPU takes it), "shifted" (`shifted_products`,
        where they pay) or "stock" (TensorFlow's kernel)."""
        if not (
            _on_cpu_in_bfloat16(inputs)
            and inputs.shape.rank == 4
            and None not in inputs.shape[1:]
            and fits_shifted_products(self)
        ):
            return "stock"
        native = library.conv_filter_grad_bf16() is not None and not _in_xla()
        if native and native_pays(inputs.shape[-1], kernel.shape[-1]):
            return "native"
        if shifted_products_pay(*inputs.shape[1:3], inputs.shape[-1], kernel.shape[-1]):
            return "shifted"
        return "stock"

    def convolution_op(self, inputs, kernel):
        if self.takes_winograd(inputs):
            return winograd_conv(inputs, tf.convert_to_tensor(kernel))
        taken = self.weight_gradient(inputs, kernel)
        if taken == "stock":
            return super().convolution_op(inputs, kernel)
        fused = {
            "native": _conv_with_native_weight_gradient,
            "shifted": _conv_with_shifted_weight_gradient,
        }[taken]
        return fused(inputs, tf.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class Dense(keras.layers.Dense):
    """`keras.layers.Dense` (same weights, config and forward pass) whose bias, in bfloat16
    on a CPU, is added by `bias_add`, so its gradient is summed in float32. Everything
    else (float32, the GPU, LoRA and quantized layers) takes Keras's own `call`."""

    def call(self, inputs, training=None):
        if not _sums_bias_in_float32(self, inputs) or self.lora_enabled or self.quantization_mode:
            return super().call(inputs, training=training)
        return _biased(self, keras.ops.matmul(inputs, self.kernel))

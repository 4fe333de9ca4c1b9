"""The notebook's Part II: explicit `tf.Variable` parameters and functional forward passes."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.notebook_layers import CONVNET_LAYERS, FC_HIDDEN
from models.registry import ModelError, check_positive_ints, register


def kaiming_normal(shape) -> tf.Tensor:
    """He et al. 2015 initial weights of `shape`: normal with std sqrt(2 / fan_in), fan_in
    being the inputs of one unit (rows of a dense kernel, KH * KW * C_in of a conv kernel).

    Raises:
        ModelError: for a shape that is neither a dense (2-D) nor a conv (4-D) kernel.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) not in (2, 4) or min(shape) < 1:
        raise ModelError(
            f"kaiming_normal: shape must be a dense (fan_in, fan_out) or conv "
            f"(KH, KW, C_in, C_out) kernel shape of positive sizes, got {shape}"
        )
    fan_in = int(np.prod(shape[:-1]))
    return keras.random.normal(shape, stddev=np.sqrt(2.0 / fan_in))


def flatten(x) -> tf.Tensor:
    """(N, D1, ..., DM) -> (N, D1 * ... * DM): the notebook's `flatten`."""
    return tf.reshape(x, (tf.shape(x)[0], -1))


def two_layer_fc(x: tf.Tensor, params: list[tf.Tensor]) -> tf.Tensor:
    """flatten -> matmul -> relu -> matmul, no biases (the notebook's `two_layer_fc`)."""
    w1, w2 = params
    x = flatten(x)
    return tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2)


def three_layer_convnet(x: tf.Tensor, params: list[tf.Tensor]) -> tf.Tensor:
    """conv-relu, conv-relu, dense, each with a bias; 'same' padding keeps 32x32."""
    conv_w1, conv_b1, conv_w2, conv_b2, fc_w, fc_b = params
    x = tf.nn.relu(tf.nn.conv2d(x, conv_w1, 1, "SAME") + conv_b1)
    x = tf.nn.relu(tf.nn.conv2d(x, conv_w2, 1, "SAME") + conv_b2)
    x = flatten(x)
    return tf.matmul(x, fc_w) + fc_b


class FunctionalModule(tf.Module):
    """Holds a parameter list and a forward function `fn(x, params)`, in the notebook's style.

    Parameters stay float32; under a mixed policy (read at construction, as Keras layers
    do) the forward pass casts inputs and parameters to the compute dtype.
    """

    def __init__(self, fn, params: list[tf.Variable], name: str):
        super().__init__(name=name)
        self.fn = fn
        self.params = params
        self.compute_dtype = keras.config.dtype_policy().compute_dtype

    def __call__(self, x, training: bool = False):
        dtype = self.compute_dtype
        return self.fn(tf.cast(x, dtype), [tf.cast(p, dtype) for p in self.params])


def two_layer_fc_params(hidden: int = FC_HIDDEN, num_classes: int = 10) -> list[tf.Variable]:
    """[w1 (3072, hidden), w2 (hidden, num_classes)], Kaiming-initialised."""
    check_positive_ints(hidden=hidden, num_classes=num_classes)
    d = 32 * 32 * 3
    return [
        tf.Variable(kaiming_normal((d, hidden))),
        tf.Variable(kaiming_normal((hidden, num_classes))),
    ]


def three_layer_convnet_params(layers=CONVNET_LAYERS["lowlevel"], num_classes: int = 10) -> list:
    """[conv_w1, conv_b1, conv_w2, conv_b2, fc_w, fc_b] for ((channel_1, k1), (channel_2, k2))
    convs with 'same' padding on 32x32 images: Kaiming weights, zero biases."""
    (c1, k1), (c2, k2) = layers
    check_positive_ints(channel_1=c1, channel_2=c2, num_classes=num_classes)
    return [
        tf.Variable(kaiming_normal((k1, k1, 3, c1))),
        tf.Variable(tf.zeros(c1)),
        tf.Variable(kaiming_normal((k2, k2, c1, c2))),
        tf.Variable(tf.zeros(c2)),
        tf.Variable(kaiming_normal((32 * 32 * c2, num_classes))),
        tf.Variable(tf.zeros(num_classes)),
    ]


@register("lowlevel_two_layer_fc", "tf.Variable two-layer FC, hidden 4000")
def lowlevel_two_layer_fc(num_classes: int = 10, hidden: int = FC_HIDDEN):
    return FunctionalModule(
        two_layer_fc, two_layer_fc_params(hidden, num_classes), "lowlevel_two_layer_fc"
    )


@register(
    "lowlevel_three_layer_convnet",
    "tf.Variable convnet: conv 32 5x5, conv 16 3x3, dense",
)
def lowlevel_three_layer_convnet(num_classes: int = 10, layers=CONVNET_LAYERS["lowlevel"]):
    return FunctionalModule(
        three_layer_convnet,
        three_layer_convnet_params(layers, num_classes),
        "lowlevel_three_layer_convnet",
    )

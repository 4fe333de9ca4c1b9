"""The notebook's Part II: explicit `tf.Variable` parameters and functional forward passes."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from models.notebook import CONVNET_LAYERS, FC_HIDDEN
from models.registry import register


def kaiming_normal(shape, fan_in: int, seed: int | None = None) -> tf.Variable:
    std = np.sqrt(2.0 / fan_in)
    return tf.Variable(keras.random.normal(shape, stddev=std, seed=seed), trainable=True)


def two_layer_fc(x: tf.Tensor, params: list[tf.Tensor]) -> tf.Tensor:
    """flatten -> matmul -> relu -> matmul, no biases (the notebook's `two_layer_fc`)."""
    w1, w2 = params
    x = tf.reshape(x, [tf.shape(x)[0], -1])
    return tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2)


def three_layer_convnet(x: tf.Tensor, params: list[tf.Tensor]) -> tf.Tensor:
    """conv-relu, conv-relu, dense, each with a bias; 'same' padding keeps 32x32."""
    conv_w1, conv_b1, conv_w2, conv_b2, fc_w, fc_b = params
    x = tf.nn.relu(tf.nn.conv2d(x, conv_w1, 1, "SAME") + conv_b1)
    x = tf.nn.relu(tf.nn.conv2d(x, conv_w2, 1, "SAME") + conv_b2)
    x = tf.reshape(x, [tf.shape(x)[0], -1])
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


@register("lowlevel_two_layer_fc", "tf.Variable two-layer FC, hidden 4000")
def lowlevel_two_layer_fc(num_classes: int = 10, hidden: int = FC_HIDDEN):
    d = 32 * 32 * 3
    params = [kaiming_normal((d, hidden), d), kaiming_normal((hidden, num_classes), hidden)]
    return FunctionalModule(two_layer_fc, params, "lowlevel_two_layer_fc")


@register(
    "lowlevel_three_layer_convnet",
    "tf.Variable convnet: conv 32 5x5, conv 16 3x3, dense",
)
def lowlevel_three_layer_convnet(num_classes: int = 10, layers=CONVNET_LAYERS["lowlevel"]):
    (c1, k1), (c2, k2) = layers
    params = [
        kaiming_normal((k1, k1, 3, c1), k1 * k1 * 3),
        tf.Variable(tf.zeros(c1)),
        kaiming_normal((k2, k2, c1, c2), k2 * k2 * c1),
        tf.Variable(tf.zeros(c2)),
        kaiming_normal((32 * 32 * c2, num_classes), 32 * 32 * c2),
        tf.Variable(tf.zeros(num_classes)),
    ]
    return FunctionalModule(three_layer_convnet, params, "lowlevel_three_layer_convnet")

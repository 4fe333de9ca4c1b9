"""The notebook's Part IV: the Keras functional API."""

from __future__ import annotations

import keras

from models.notebook_layers import CONVNET_LAYERS, FC_HIDDEN, convnet_layers, fc_layers
from models.registry import register


def functional(stack: list, name: str, input_shape=(32, 32, 3)) -> keras.Model:
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, x, name=name)


@register("functional_two_layer_fc", "functional API two-layer FC")
def functional_two_layer_fc(num_classes: int = 10, hidden: int = FC_HIDDEN, fused: bool = True):
    return functional(fc_layers(hidden, num_classes, fused), "functional_two_layer_fc")


@register(
    "functional_three_layer_convnet",
    "functional API: conv 16 5x5, conv 32 3x3, dense 10",
)
def functional_three_layer_convnet(
    num_classes: int = 10, layers=CONVNET_LAYERS["functional"], fused: bool = True
):
    return functional(convnet_layers(layers, num_classes, fused), "functional_three_layer_convnet")

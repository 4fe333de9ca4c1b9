"""The notebook's Part IV: `keras.Sequential` models."""

from __future__ import annotations

import keras

from models.notebook_layers import CONVNET_LAYERS, FC_HIDDEN, convnet_layers, fc_layers
from models.registry import register


def sequential(stack: list, name: str, input_shape=(32, 32, 3)) -> keras.Sequential:
    return keras.Sequential([keras.Input(input_shape), *stack], name=name)


@register("sequential_two_layer_fc", "keras.Sequential two-layer FC")
def sequential_two_layer_fc(num_classes: int = 10, hidden: int = FC_HIDDEN, fused: bool = True):
    return sequential(fc_layers(hidden, num_classes, fused), "sequential_two_layer_fc")


@register(
    "sequential_three_layer_convnet",
    "keras.Sequential: conv 16 5x5, conv 32 3x3, dense 10",
)
def sequential_three_layer_convnet(
    num_classes: int = 10, layers=CONVNET_LAYERS["sequential"], fused: bool = True
):
    return sequential(convnet_layers(layers, num_classes, fused), "sequential_three_layer_convnet")

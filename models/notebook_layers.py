"""The notebook's layer sizes, shared by its four API levels, and the layer stacks its Keras
variants (subclass, Sequential, functional) share (recipes and bars live with the
experiments, in pipeline/experiments.py)."""

from __future__ import annotations

import keras

from models import fast_layers

FC_HIDDEN = 4000
# (filters, kernel) per conv layer: Parts II/III use 32-5x5 then 16-3x3; Parts IV's
# Sequential and functional convnets use 16-5x5 then 32-3x3.
CONVNET_LAYERS = {
    "lowlevel": ((32, 5), (16, 3)),
    "subclass": ((32, 5), (16, 3)),
    "sequential": ((16, 5), (32, 3)),
    "functional": ((16, 5), (32, 3)),
}


def init():
    return keras.initializers.VarianceScaling(scale=2.0)


def _dense(fused: bool):
    """`fused` takes fast_layers.Dense (same weights and forward pass; in bfloat16 on a CPU
    its bias gradient is summed in float32, where TensorFlow's `BiasAddGrad` sums in
    bfloat16), else Keras's own, as exports and the notebook API use. The conv layers
    stay Keras's: a trained kernel's bias gradient is already summed in float32
    (fast_layers.Conv2D says why)."""
    return fast_layers.Dense if fused else keras.layers.Dense


def fc_layers(hidden: int, num_classes: int, fused: bool = False) -> list:
    dense = _dense(fused)
    return [
        keras.layers.Flatten(),
        dense(hidden, activation="relu", kernel_initializer=init()),
        dense(num_classes, kernel_initializer=init()),
    ]


def convnet_layers(layers, num_classes: int, fused: bool = False) -> list:
    convs = [
        keras.layers.Conv2D(c, k, padding="same", activation="relu", kernel_initializer=init())
        for c, k in layers
    ]
    return [*convs, keras.layers.Flatten(), _dense(fused)(num_classes, kernel_initializer=init())]

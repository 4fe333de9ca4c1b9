"""Layer stacks shared by the notebook's Keras variants (subclass, Sequential, functional)."""

from __future__ import annotations

import keras


def init():
    return keras.initializers.VarianceScaling(scale=2.0)


def fc_layers(hidden: int, num_classes: int) -> list:
    return [
        keras.layers.Flatten(),
        keras.layers.Dense(hidden, activation="relu", kernel_initializer=init()),
        keras.layers.Dense(num_classes, kernel_initializer=init()),
    ]


def convnet_layers(layers, num_classes: int) -> list:
    convs = [
        keras.layers.Conv2D(c, k, padding="same", activation="relu", kernel_initializer=init())
        for c, k in layers
    ]
    return [
        *convs,
        keras.layers.Flatten(),
        keras.layers.Dense(num_classes, kernel_initializer=init()),
    ]

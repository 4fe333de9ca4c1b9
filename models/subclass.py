"""The notebook's Part III: `keras.Model` subclasses."""

from __future__ import annotations

import keras

from models.notebook_layers import CONVNET_LAYERS, FC_HIDDEN, convnet_layers, fc_layers
from models.registry import register


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class Stack(keras.Model):
    """A subclassed model calling its layers in order, as the notebook's TwoLayerFC does."""

    def __init__(self, stack: list, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.stack = stack

    def get_config(self):
        layers = [keras.saving.serialize_keras_object(layer) for layer in self.stack]
        return {"stack": layers, "name": self.name}

    @classmethod
    def from_config(cls, config):
        layers = [keras.saving.deserialize_keras_object(c) for c in config["stack"]]
        return cls(layers, config["name"])

    def call(self, x, training=False):
        for layer in self.stack:
            x = layer(x)
        return x


def _built(model: keras.Model) -> keras.Model:
    model(keras.ops.zeros((1, 32, 32, 3)))  # create the weights now, not at the first step
    return model


@register("subclass_two_layer_fc", "keras.Model subclass, Dense 4000 relu, Dense 10")
def subclass_two_layer_fc(num_classes: int = 10, hidden: int = FC_HIDDEN, fused: bool = True):
    return _built(Stack(fc_layers(hidden, num_classes, fused), "subclass_two_layer_fc"))


@register(
    "subclass_three_layer_convnet",
    "keras.Model subclass: conv 32 5x5, conv 16 3x3, dense 10",
)
def subclass_three_layer_convnet(
    num_classes: int = 10, layers=CONVNET_LAYERS["subclass"], fused: bool = True
):
    return _built(Stack(convnet_layers(layers, num_classes, fused), "subclass_three_layer_convnet"))

"""The course notebook's own API, by its names and signatures, on the project's models.

A user who comes with the notebook imports its functions and classes from here:

- Part I: `load_cifar10` (CIFAR-10 from tfds through the project, normalised per channel)
  and `Dataset` (the notebook's numpy batch iterator).
- Part II: `flatten`, `two_layer_fc(x, params)`, `three_layer_convnet(x, params)`,
  `kaiming_normal(shape)`, `two_layer_fc_init()`, `three_layer_convnet_init()`; forward
  passes return class scores (logits), as the notebook's do.
- Part III: `TwoLayerFC(hidden_size, num_classes)`, `ThreeLayerConvNet(channel_1, channel_2,
  num_classes)`: `keras.Model` subclasses ending in softmax, built on their first call.
- Part IV: `two_layer_fc_functional(input_shape, hidden_size, num_classes)`, and each
  training cell's `model_init_fn` / `optimizer_init_fn` from `init_fns(cell)`.

One implementation underneath: the notebook's models are the registry's layer stacks and
parameter lists (models/), with the softmax the notebook puts on top; the optimizers are
the notebook experiments' settings (pipeline/experiments.py). The registry's logit models
are what the project's loop trains.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from models import lowlevel
from models.functional import functional
from models.lowlevel import flatten, kaiming_normal, three_layer_convnet, two_layer_fc
from models.notebook_layers import CONVNET_LAYERS, FC_HIDDEN, convnet_layers, fc_layers
from models.registry import ModelError, check_positive_ints
from models.sequential import sequential
from models.subclass import Stack
from pipeline import experiments
from pipeline.config import DataConfig
from pipeline.data import sources

__all__ = [
    "Dataset",
    "ThreeLayerConvNet",
    "TwoLayerFC",
    "flatten",
    "init_fns",
    "kaiming_normal",
    "load_cifar10",
    "three_layer_convnet",
    "three_layer_convnet_init",
    "two_layer_fc",
    "two_layer_fc_functional",
    "two_layer_fc_init",
]


def load_cifar10(
    num_training: int = 49_000,
    num_validation: int = 1_000,
    num_test: int = 10_000,
    data_dir: str | None = None,
    local_copy: str | None = None,
) -> tuple[np.ndarray, ...]:
    """X_train, y_train, X_val, y_val, X_test, y_test as the notebook's cell returns them:
    float32 images normalised by the training split's per-channel mean and std, int32
    labels; val is the `num_validation` training images after the first `num_training`.

    The data comes from tfds `cifar10` in `data_dir` (imported from `local_copy` when
    missing, as `cifar-data import` does); see pipeline/data/sources.py.
    """
    cfg = DataConfig(
        data_dir=data_dir,
        local_copy=local_copy,
        train_examples=num_training,
        val_examples=num_validation,
        test_examples=num_test,
    )
    splits = sources.load_splits(cfg)
    out = []
    for split in (splits.train, splits.val, splits.test):
        out += [sources.normalised(split.images, splits.mean, splits.std), split.labels]
    return tuple(out)


class Dataset:
    """The notebook's `Dataset`: numpy batches of (X, y), reshuffled each pass if `shuffle`.

    Also the naive baseline of `cifar-bench` (no augmentation, no prefetching).
    """

    def __init__(self, X, y, batch_size: int, shuffle: bool = False, seed: int | None = None):  # noqa: N803
        if X.shape[0] != y.shape[0]:
            raise ModelError(f"X has {X.shape[0]} examples but y has {y.shape[0]}")
        check_positive_ints(batch_size=batch_size)
        self.X, self.y = X, y
        self.batch_size, self.shuffle = batch_size, shuffle
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        n, b = self.X.shape[0], self.batch_size
        idxs = np.arange(n)
        if self.shuffle:
            self.rng.shuffle(idxs)
        return iter((self.X[idxs[i : i + b]], self.y[idxs[i : i + b]]) for i in range(0, n, b))


def two_layer_fc_init() -> list:
    """[w1 (3072, 4000), w2 (4000, 10)] as tf.Variables, Kaiming-initialised."""
    return lowlevel.two_layer_fc_params(FC_HIDDEN, 10)


def three_layer_convnet_init() -> list:
    """[conv_w1 (5, 5, 3, 32), conv_b1, conv_w2 (3, 3, 32, 16), conv_b2, fc_w (16384, 10),
    fc_b] as tf.Variables: Kaiming weights, zero biases."""
    return lowlevel.three_layer_convnet_params(CONVNET_LAYERS["lowlevel"], 10)


class _SoftmaxStack(Stack):
    """The registry's subclassed layer stack with the notebook's softmax on top."""

    def call(self, x, training=False):
        return keras.ops.softmax(super().call(x, training=training))


class TwoLayerFC(_SoftmaxStack):
    """Flatten, Dense(hidden_size, relu), Dense(num_classes, softmax); VarianceScaling(2.0)."""

    def __init__(self, hidden_size: int, num_classes: int):
        check_positive_ints(hidden_size=hidden_size, num_classes=num_classes)
        super().__init__(fc_layers(hidden_size, num_classes), name="two_layer_fc")


class ThreeLayerConvNet(_SoftmaxStack):
    """Conv(channel_1, 5x5, same) relu, Conv(channel_2, 3x3, same) relu, Dense softmax."""

    def __init__(self, channel_1: int, channel_2: int, num_classes: int):
        check_positive_ints(channel_1=channel_1, channel_2=channel_2, num_classes=num_classes)
        layers = ((channel_1, 5), (channel_2, 3))
        super().__init__(convnet_layers(layers, num_classes), name="three_layer_convnet")


def two_layer_fc_functional(input_shape, hidden_size: int, num_classes: int) -> keras.Model:
    """The functional two-layer net of Part IV on inputs of `input_shape`, softmax out."""
    if not input_shape or not all(isinstance(d, int) and d > 0 for d in input_shape):
        raise ModelError(f"input_shape must be a tuple of positive ints, got {input_shape!r}")
    check_positive_ints(hidden_size=hidden_size, num_classes=num_classes)
    stack = [*fc_layers(hidden_size, num_classes), keras.layers.Softmax()]
    return functional(stack, "two_layer_fc_functional", tuple(input_shape))


def _sequential_softmax(stack: list, name: str) -> keras.Sequential:
    return sequential([*stack, keras.layers.Softmax()], name)


# The Part III and IV training cells: model_init_fn for each, by its experiment's name.
_MODEL_INIT_FNS: dict[str, Callable[[], keras.Model]] = {
    "subclass_two_layer_fc": lambda: TwoLayerFC(FC_HIDDEN, 10),
    "subclass_three_layer_convnet": lambda: ThreeLayerConvNet(32, 16, 10),
    "sequential_two_layer_fc": lambda: _sequential_softmax(
        fc_layers(FC_HIDDEN, 10), "sequential_two_layer_fc"
    ),
    "sequential_three_layer_convnet": lambda: _sequential_softmax(
        convnet_layers(CONVNET_LAYERS["sequential"], 10), "sequential_three_layer_convnet"
    ),
    "functional_two_layer_fc": lambda: two_layer_fc_functional((32, 32, 3), FC_HIDDEN, 10),
}


def optimizer_for(cell: str) -> keras.optimizers.Optimizer:
    """The notebook's optimizer for a training cell: its experiment's SGD or Nesterov
    settings, with a constant learning rate as the notebook has."""
    optim_cfg = experiments.get(cell).optim
    nesterov = optim_cfg.optimizer == "nesterov"
    return keras.optimizers.SGD(
        learning_rate=optim_cfg.lr, momentum=optim_cfg.momentum, nesterov=nesterov
    )


def init_fns(cell: str) -> tuple[Callable, Callable]:
    """(model_init_fn, optimizer_init_fn) of a Part III / IV training cell, e.g.
    init_fns("sequential_three_layer_convnet").

    Raises:
        ModelError: for a cell the notebook does not have, naming the ones it has.
    """
    if cell not in _MODEL_INIT_FNS:
        raise ModelError(f"no notebook cell {cell!r}; cells: {', '.join(_MODEL_INIT_FNS)}")
    return _MODEL_INIT_FNS[cell], lambda: optimizer_for(cell)

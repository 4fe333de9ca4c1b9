"""Search spaces, one registry: each turns keras-tuner hyperparameters into the dotted
config changes they stand for, on top of the experiment the space is centred on.

`airbench` (the default) holds the project's own recipes: its defaults are
`challenge_airbench94` exactly, and it ranges over the architecture (each block's width,
convs per block, residual, kernel, the whitening stem's size and width, BN momentum,
activation) and the recipe (learning rate, momentum, weight decay, label smoothing, batch,
warm-up, Lookahead and its cadence, the whitening-bias freeze, flips, shifts, cutout).
`notebook` is the course notebook's open questions (filters, depth, pooling, head, ...).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import Config, override
from pipeline.errors import UserError

if TYPE_CHECKING:  # the registry stays importable without TensorFlow (the local launcher's
    # process must stay single-threaded): spaces only call the hyperparameters they get
    import keras_tuner as kt


@dataclass(frozen=True)
class Space:
    name: str
    base: str  # the experiment it is centred on (its defaults, for `airbench`)
    changes: Callable[[kt.HyperParameters, Config], dict]  # (hp, base) -> dotted updates
    doc: str


def _builder_params(base: Config) -> dict:
    """custom_convnet's keyword arguments as `base` builds it: defaults, then its params,
    with `size` read as widths."""
    from models.custom_convnet import SIZES, custom_convnet  # noqa: PLC0415 - imports Keras

    defaults = {
        name: p.default
        for name, p in inspect.signature(custom_convnet).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    params = {**defaults, **base.model.params}
    params["widths"] = list(params["widths"] or SIZES[params["size"]])
    return params


class _Changes:
    """Collects the config updates hyperparameters ask for, leaving out a value equal to
    the base's: the defaults then give the base config itself, not an equal-looking one."""

    def __init__(self, base: Config):
        self.base, self.updates, self.params = base, {}, {}
        self.built = _builder_params(base)

    def param(self, name: str, value) -> None:
        if value != self.built[name]:
            self.params[name] = value

    def set(self, key: str, value, default) -> None:
        if value != default:
            self.updates[key] = value

    def fraction(self, key: str, fraction: float, default: float, epochs: float) -> None:
        """A duration searched as a fraction of the run, set in epochs of `epochs`."""
        if fraction != default:
            self.updates[key] = fraction * epochs

    def result(self) -> dict:
        if self.params:
            self.updates["model.params"] = {**self.base.model.params, **self.params}
        return self.updates


def _with(choices, default) -> list:
    """The space's choices and the base's own value (a base outside them stays reachable:
    its defaults must be valid choices)."""
    return sorted({*choices, default})


WIDTHS = ((32, 48, 64, 96, 128), (64, 96, 128, 192, 256, 384), (64, 96, 128, 192, 256, 384))
WHITEN_WIDTHS = {2: (12, 24), 3: (24, 36, 54)}  # channels: +/- up to all k*k*3 eigenvectors


def airbench_changes(hp: kt.HyperParameters, base: Config) -> dict:
    """The airbench family around `base` (challenge_airbench94: its values are the
    defaults). Learning rate is searched per 1,024 images, so it follows the batch;
    durations as fractions of the run, so they follow the budget."""
    c = _Changes(base)
    o, built, epochs = base.optim, c.built, base.train.epochs
    widths = [
        hp.Choice(f"width{i}", _with(choices, built["widths"][i]), default=built["widths"][i])
        for i, choices in enumerate(WIDTHS)
    ]
    c.param("widths", widths)
    c.param("depth", hp.Int("depth", 1, 3, default=built["depth"]))
    c.param("residual", hp.Boolean("residual", default=built["residual"]))
    c.param(
        "kernel_size",
        hp.Choice("kernel_size", _with([3, 5], built["kernel_size"]), default=built["kernel_size"]),
    )
    whiten_size = hp.Choice("whiten_size", sorted(WHITEN_WIDTHS), default=built["whiten_size"])
    c.param("whiten_size", whiten_size)
    for size, choices in WHITEN_WIDTHS.items():
        with hp.conditional_scope("whiten_size", [size]):
            if whiten_size == size:
                default = built["whiten_width"] if built["whiten_size"] == size else choices[-1]
                width = hp.Choice(f"whiten_width_k{size}", choices, default=default)
                c.param("whiten_width", width)
    momentums = _with([0.5, 0.6, 0.7, 0.8, 0.9], built["bn_momentum"])
    c.param("bn_momentum", hp.Choice("bn_momentum", momentums, default=built["bn_momentum"]))
    c.param("activation", hp.Choice("activation", ["gelu", "relu"], default=built["activation"]))

    batches = _with([256, 512, 1024], base.data.batch_size)
    batch = hp.Choice("batch_size", batches, default=base.data.batch_size)
    c.set("data.batch_size", batch, base.data.batch_size)
    lr_1024 = hp.Float(
        "lr_per_1024", 0.3, 6.0, sampling="log", default=o.lr * 1024 / base.data.batch_size
    )
    c.set("optim.lr", lr_1024 * batch / 1024, o.lr)
    c.set("optim.momentum", hp.Float("momentum", 0.7, 0.95, default=o.momentum), o.momentum)
    decay = hp.Float("weight_decay", 1e-3, 5e-2, sampling="log", default=o.weight_decay)
    c.set("optim.weight_decay", decay, o.weight_decay)
    smoothing = hp.Float("label_smoothing", 0.0, 0.4, default=o.label_smoothing)
    c.set("optim.label_smoothing", smoothing, o.label_smoothing)
    default = o.warmup_epochs / epochs
    warmup = hp.Float("warmup_fraction", 0.0, 0.5, default=default)
    c.fraction("optim.warmup_epochs", warmup, default, epochs)
    lookahead = hp.Boolean("lookahead", default=o.lookahead_every_steps > 0)
    every = 0
    with hp.conditional_scope("lookahead", [True]):
        if lookahead:
            default = o.lookahead_every_steps or 5
            cadences = _with([2, 3, 5, 10, 20], default)
            every = hp.Choice("lookahead_every_steps", cadences, default=default)
    c.set("optim.lookahead_every_steps", every, o.lookahead_every_steps)
    freeze = hp.Boolean("whiten_bias_freeze", default=o.whiten_bias_epochs > 0)
    with hp.conditional_scope("whiten_bias_freeze", [True]):
        if freeze:
            default = o.whiten_bias_epochs / epochs if o.whiten_bias_epochs else 0.3
            fraction = hp.Float("whiten_bias_fraction", 0.05, 0.8, default=default)
            c.fraction("optim.whiten_bias_epochs", fraction, o.whiten_bias_epochs / epochs, epochs)
    if not freeze:
        c.set("optim.whiten_bias_epochs", 0.0, o.whiten_bias_epochs)
    a = base.data.augment
    flip = hp.Choice("flip", ["none", "random", "alternate"], default=a.flip)
    c.set("data.augment.flip", flip, a.flip)
    translate = hp.Choice("translate", _with(range(5), a.translate), default=a.translate)
    c.set("data.augment.translate", translate, a.translate)
    cutout = hp.Choice("cutout", _with([0, 4, 8, 12], a.cutout), default=a.cutout)
    c.set("data.augment.cutout", cutout, a.cutout)
    return c.result()


def notebook_changes(hp: kt.HyperParameters, base: Config) -> dict:
    """The notebook's questions: filter counts and sizes, depth, pooling, normalisation,
    global pooling vs flatten, dropout, activation, residuals, stem; optimiser, learning
    rate, weight decay and augmentation strength."""
    b = hp.Choice("base_width", [16, 32, 48])
    params = {
        "widths": [b, 2 * b, 4 * b],
        "depth": hp.Int("depth", 1, 2),
        "kernel_size": hp.Choice("kernel_size", [3, 5]),
        "pool": hp.Choice("pool", ["max", "avg"]),
        "batch_norm": hp.Boolean("batch_norm", default=True),
        "head": hp.Choice("head", ["max", "avg", "flatten"]),
        "residual": hp.Boolean("residual", default=False),
        "dropout": hp.Float("dropout", 0.0, 0.3, step=0.1),
        "activation": hp.Choice("activation", ["gelu", "relu"]),
        "stem": hp.Choice("stem", ["whiten", "conv"]),
    }
    optimizer = hp.Choice("optimizer", ["nesterov", "adamw"])
    with hp.conditional_scope("optimizer", ["nesterov"]):
        sgd_lr = hp.Float("sgd_lr", 0.05, 2.0, sampling="log") if optimizer == "nesterov" else 0
    with hp.conditional_scope("optimizer", ["adamw"]):
        adam_lr = hp.Float("adam_lr", 3e-4, 1e-2, sampling="log") if optimizer == "adamw" else 0
    return {
        "model.name": "custom_convnet",
        "model.params": {**base.model.params, **params},
        # The recipe's whitening-bias freeze needs the whitening stem the trial may not have.
        "optim.whiten_bias_epochs": base.optim.whiten_bias_epochs
        if params["stem"] == "whiten"
        else 0.0,
        "optim.optimizer": optimizer,
        "optim.lr": sgd_lr or adam_lr,
        # BN shifts at 64x suit SGD with momentum, not Adam's per-weight step sizes.
        "optim.bias_lr_scale": 64.0 if optimizer == "nesterov" else 1.0,
        "optim.weight_decay": hp.Float("weight_decay", 1e-6, 1e-3, sampling="log"),
        "data.augment.translate": hp.Choice("translate", [0, 2, 4]),
        "data.augment.flip": hp.Choice("flip", ["none", "random", "alternate"]),
        "data.augment.cutout": hp.Choice("cutout", [0, 8]),
    }


SPACES = {
    s.name: s
    for s in (
        Space(
            "airbench",
            "challenge_airbench94",
            airbench_changes,
            "airbench94's architecture and recipe; its defaults are challenge_airbench94",
        ),
        Space(
            "notebook",
            "challenge",
            notebook_changes,
            "the course notebook's questions (pooling, head, dropout, stem, optimiser)",
        ),
    )
}
DEFAULT_SPACE = "airbench"


def get(name: str) -> Space:
    """Raises UserError naming the spaces."""
    if name not in SPACES:
        raise UserError(f"unknown search space {name!r}; spaces: {', '.join(SPACES)}")
    return SPACES[name]


def config_for(space: Space, base: Config, hp: kt.HyperParameters) -> Config:
    """The full run config that a set of hyperparameter values stands for."""
    return override(base, space.changes(hp, base))

"""Model registry: `register(name)` on a builder, `build_model(cfg)` by name.

Builders return an uncompiled `keras.Model` (or a `tf.Module` for the low-level variants)
that maps normalised (B, 32, 32, 3) images to (B, num_classes) logits. A model family is
one file in this package; it is found by importing the package's modules. A model whose
weights are partly set from data (custom_convnet's whitening stem) registers that
initialiser with itself. How a model is trained is not here: see pipeline/experiments.py.
This package imports nothing from the rest of the project.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class ModelError(ValueError):
    """An unknown model name or params its builder does not take; the message says the fix."""


def check_positive_ints(**named) -> None:
    """Raises ModelError naming the first argument that is not a positive int."""
    for name, value in named.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class Entry:
    builder: Callable
    doc: str = ""
    # `init_from_data(model, images)` sets data-dependent weights from `init_images`
    # normalised training images (float32 NHWC); None: the model has none.
    init_from_data: Callable[[object, np.ndarray], None] | None = None
    init_images: int = 0


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str,
    doc: str = "",
    init_from_data: Callable | None = None,
    init_images: int = 0,
) -> Callable:
    """Registers `builder(num_classes, **params)` as `name`.

    Raises:
        ValueError: when `name` is taken (a bug in the model files, not user input).
    """

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = Entry(builder, doc, init_from_data, init_images)
        return builder

    return wrap


def _load_families() -> None:
    import models  # noqa: PLC0415 - the package itself, to list its modules

    for info in pkgutil.iter_modules(models.__path__):
        if info.name != "registry":
            importlib.import_module(f"models.{info.name}")


def names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def entry(name: str) -> Entry:
    """Raises ModelError naming the known models when `name` is not one."""
    _load_families()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, names(), n=2, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}.{hint} Known models: {', '.join(names())}")
    return _REGISTRY[name]


def build_model(cfg):
    """Builds the model `cfg.name` with `cfg.params` (a ModelConfig); weights created here.

    Raises:
        ModelError: for an unknown name (naming the known ones) or params the builder
            does not take.
    """
    e = entry(cfg.name)
    try:  # checked against the signature, so a TypeError inside a builder stays a bug
        inspect.signature(e.builder).bind(num_classes=cfg.num_classes, **cfg.params)
    except TypeError as err:
        raise ModelError(f"bad model.params for {cfg.name}: {err}") from err
    return e.builder(num_classes=cfg.num_classes, **cfg.params)

"""Model registry: `register(name)` on a builder, `build_model(cfg)` by name.

Builders return an uncompiled `keras.Model` (or a `tf.Module` for the low-level variants)
that maps normalised (B, 32, 32, 3) images to (B, num_classes) logits. A model family is
one file in this package; it is found by importing the package's modules.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.config import ModelConfig


@dataclass(frozen=True)
class Entry:
    builder: Callable
    recipe: dict = field(default_factory=dict)  # config overrides this model trains with
    doc: str = ""


_REGISTRY: dict[str, Entry] = {}


class UnknownModelError(ValueError):
    pass


def register(name: str, recipe: dict | None = None, doc: str = "") -> Callable:
    """Registers `builder(num_classes, **params)` as `name`, with its default recipe.

    Raises:
        ValueError: when `name` is taken.
    """

    def wrap(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = Entry(builder, dict(recipe or {}), doc)
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
    _load_families()
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[name]


def build_model(cfg: ModelConfig):
    """Builds the model `cfg.name` with `cfg.params`; its weights are created here.

    Raises:
        UnknownModelError: naming the known models.
    """
    e = entry(cfg.name)
    try:
        return e.builder(num_classes=cfg.num_classes, **cfg.params)
    except TypeError as err:
        raise UnknownModelError(f"bad model.params for {cfg.name}: {err}") from err

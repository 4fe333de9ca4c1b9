"""Named presets: functions returning a Config. A model's own recipe is its default preset."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.config import Config, ConfigError, override

_PRESETS: dict[str, Callable[[], Config]] = {}


def preset(fn: Callable[[], Config]) -> Callable[[], Config]:
    _PRESETS[fn.__name__] = fn
    return fn


def for_model(name: str) -> Config:
    """The model's registered recipe (the notebook's settings for the notebook's models)."""
    from models.registry import entry  # noqa: PLC0415 - scripts -> pipeline -> models registry

    return override(Config(), {**entry(name).recipe, "model.name": name})


def get(name: str) -> Config:
    _load()
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(names())}")
    return _PRESETS[name]()


def names() -> list[str]:
    _load()
    return sorted(_PRESETS)


def _load() -> None:
    # Presets of a model family live beside it (models/custom_convnet.py registers its own).
    from models.registry import names as model_names  # noqa: PLC0415

    model_names()

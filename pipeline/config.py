"""Frozen config tree, named presets and `key=value` overrides, parsed once in scripts/."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AugmentConfig:
    translate: int = 0  # px; random shift in [-translate, translate], the pad-and-crop of CIFAR
    pad_mode: str = "zeros"  # "zeros" | "reflect": what fills the pixels a shift uncovers
    flip: str = "none"  # "none" | "random" | "alternate" (airbench: mirror every other epoch)
    cutout: int = 0  # px; side of a zeroed square at a random place, 0 = off


@dataclass(frozen=True)
class DataConfig:
    source: str = "tfds"  # "tfds" (CIFAR-10 via tensorflow-datasets) | "synthetic"
    data_dir: str | None = None  # tfds data dir; None = tfds's default (~/tensorflow_datasets)
    local_copy: str | None = None  # CIFAR-10 folder/archive imported into data_dir when missing
    download: bool = True  # let tfds download when data_dir lacks CIFAR-10
    train_examples: int = 49_000  # first N of tfds "train"; the notebook's split
    val_examples: int = 1_000  # the next N of tfds "train", after the training examples
    test_examples: int = 10_000  # first N of tfds "test"
    batch_size: int = 64  # global batch, summed over replicas
    eval_batch_size: int = 1_000  # global batch for val/test; no gradients, so larger
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    augment_on_device: bool = False  # ship uint8, normalise + augment inside the compiled step
    synthetic_examples: int = 2_048  # size of each synthetic split


@dataclass(frozen=True)
class ModelConfig:
    name: str = "functional_three_layer_convnet"  # a name in models.registry
    num_classes: int = 10
    params: dict = field(default_factory=dict)  # builder keyword arguments (see the model file)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "sgd"  # "sgd" | "nesterov" | "adam" | "adamw"
    lr: float = 1e-2  # peak learning rate, per global batch
    momentum: float = 0.0  # SGD momentum; "nesterov" uses it as Nesterov momentum
    weight_decay: float = 0.0  # decoupled, multiplied by the learning rate each step
    schedule: str = "constant"  # "constant" | "cosine" | "onecycle" (linear up, linear down)
    warmup_epochs: float = 0.0  # linear ramp from 0 to lr, then the schedule's decay
    final_lr_fraction: float = 0.0  # lr at the last step, as a fraction of the peak
    label_smoothing: float = 0.0  # probability mass spread evenly over all classes
    bias_lr_scale: float = 1.0  # lr multiplier for biases and BN shifts (airbench uses 64)
    ema_decay: float = 0.0  # weight EMA evaluated instead of the raw weights; 0 = off


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    seed: int = 0  # seeds init, data order and augmentation: same seed, same run
    precision: str = "auto"  # "auto" (by hardware, see precision.choose) | "float32" |
    # "mixed_bfloat16" | "mixed_float16"
    jit_compile: bool = False  # XLA-compile each replica's forward + backward (GPUs; "auto"
    # precision turns it on there); on CPU oneDNN's kernels beat XLA's, measured
    strategy: str = "default"  # "default" | "mirrored" | "multi_worker"
    cpu_replicas: int = 0  # >0: split the CPU into N logical devices for "mirrored"
    loop: str = "custom"  # "custom" (the project's loop) | "fit" (keras model.fit)
    out_dir: str | None = None  # outputs; None = nothing written
    checkpoint_every: int = 1  # epochs between checkpoints; at most this many are redone
    keep_checkpoints: int = 2
    tta: str = "none"  # "none" | "flip" | "flip_translate": test-time augmentation
    bn_recalibration_batches: int = 0  # eval batches of training images that refresh BN
    # statistics before each evaluation; 0 = use the running averages as trained
    progress: str = "auto"  # "auto" (bar on a TTY) | "bar" | "none"
    steps_per_epoch: int = 0  # >0: cut epochs short (benchmarks, tests)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    """A config key or value the user gave is not valid."""


CHOICES = {
    "data.source": ("tfds", "synthetic"),
    "data.augment.pad_mode": ("zeros", "reflect"),
    "data.augment.flip": ("none", "random", "alternate"),
    "optim.optimizer": ("sgd", "nesterov", "adam", "adamw"),
    "optim.schedule": ("constant", "cosine", "onecycle"),
    "train.precision": ("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    "train.strategy": ("default", "mirrored", "multi_worker"),
    "train.loop": ("custom", "fit"),
    "train.tta": ("none", "flip", "flip_translate"),
    "train.progress": ("auto", "bar", "none"),
}


def to_dict(cfg: Any) -> dict:
    """The config as plain JSON-ready dicts."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Inverse of `to_dict` (a run's config.json too); unknown keys raise.

    config.json's "resolved" section (what "auto" became on the machine) is a record,
    not a setting, and is skipped.
    """
    return override(Config(), flatten({k: v for k, v in d.items() if k != "resolved"}))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "params":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def valid_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key an override may set."""
    cfg = Config() if cfg is None else cfg
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += valid_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _coerce(key: str, current: Any, value: Any, annotation: str) -> Any:
    if isinstance(value, str) and not annotation.startswith("str"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            if value.lower() in ("true", "false"):
                value = value.lower() == "true"
            elif value.lower() in ("none", "null"):
                value = None
            else:
                raise ConfigError(f"{key}: cannot parse {value!r} as {annotation}") from e
    if value is None and "None" in annotation:
        return None
    if isinstance(value, str) and value.lower() in ("none", "null") and "None" in annotation:
        return None
    kind = annotation.split("|")[0].strip()
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "dict": isinstance(value, dict),
    }.get(kind, True)
    if not ok:
        raise ConfigError(f"{key} expects {annotation}, got {value!r} (was {current!r})")
    if kind == "float":
        value = float(value)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key} must be one of {', '.join(CHOICES[key])}; got {value!r}")
    return value


def _parse_param(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _params_dict(key: str, value: Any) -> dict:
    """A whole `params` value: a dict, or its JSON text (as `--set` gives it)."""
    parsed = _parse_param(value)
    if not isinstance(parsed, dict):
        raise ConfigError(
            f'{key} must be a JSON object, e.g. {key}=\'{{"size": "small"}}\', or set one '
            f"entry with {key}.NAME=VALUE; got {value!r}"
        )
    return dict(parsed)


def override(cfg: Any, updates: dict, prefix: str = "") -> Any:
    """Returns `cfg` with dotted `updates` applied ("optim.lr": 0.1); checks keys and types.

    Raises:
        ConfigError: for an unknown key (listing the valid ones) or a value of the wrong type.
    """
    known = set(valid_keys(cfg))
    for key in updates:
        head = re.sub(r"(^|\.)params\..*$", r"\1params", key)
        if head not in known:
            raise ConfigError(
                f"unknown config key {prefix}{key!r}; valid keys: {', '.join(sorted(known))}"
            )
    changes = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        sub = {k[len(f.name) + 1 :]: v for k, v in updates.items() if k.startswith(f.name + ".")}
        if dataclasses.is_dataclass(value):
            if sub:
                changes[f.name] = override(value, sub, f"{prefix}{f.name}.")
        elif f.name == "params" and (sub or f.name in updates):
            params = _params_dict(prefix + f.name, updates.get(f.name, value))
            params.update({k: _parse_param(v) for k, v in sub.items()})
            changes[f.name] = params
        elif f.name in updates:
            changes[f.name] = _coerce(prefix + f.name, value, updates[f.name], str(f.type))
    return dataclasses.replace(cfg, **changes)


def parse_overrides(pairs: list[str]) -> dict:
    """["optim.lr=0.1", ...] -> {"optim.lr": "0.1", ...}; values are parsed by `override`."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value, e.g. optim.lr=0.1")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out

"""Frozen config tree and `key=value` overrides, parsed once in scripts/.

Each field's type says what it accepts: `Literal[...]` fields list their allowed values,
and CLI choices, `--set` coercion and error messages are read from those types.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.errors import UserError, did_you_mean


@dataclass(frozen=True)
class AugmentConfig:
    translate: int = 0  # px; random shift in [-translate, translate], the pad-and-crop of CIFAR
    pad_mode: Literal["zeros", "reflect"] = "zeros"  # what fills the pixels a shift uncovers
    # alternate: airbench, mirror every other epoch
    flip: Literal["none", "random", "alternate"] = "none"
    cutout: int = 0  # px; side of a zeroed square at a random place, 0 = off


@dataclass(frozen=True)
class DataConfig:
    source: Literal["tfds", "synthetic"] = "tfds"  # tfds: CIFAR-10 via tensorflow-datasets
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
    # muon: conv filters by Muon (training/muon.py), everything else by Nesterov SGD with
    # `momentum`
    optimizer: Literal["sgd", "nesterov", "adam", "adamw", "muon"] = "sgd"
    lr: float = 1e-2  # peak learning rate, per global batch
    momentum: float = 0.0  # SGD momentum; "nesterov" uses it as Nesterov momentum
    weight_decay: float = 0.0  # decoupled, multiplied by the learning rate each step
    # onecycle: linear up, linear down
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_epochs: float = 0.0  # linear ramp up to lr, then the schedule's decay
    # where the ramp starts, as a fraction of lr (airbench94: 0.2)
    warmup_start_fraction: float = 0.0
    final_lr_fraction: float = 0.0  # lr at the last step, as a fraction of the peak
    label_smoothing: float = 0.0  # probability mass spread evenly over all classes
    bias_lr_scale: float = 1.0  # lr multiplier for BN shifts (airbench94: 64; its decay not)
    head_lr_scale: float = 1.0  # lr multiplier for the head's weights (airbench94_muon: 12.6)
    # optimizer=muon: the filters' peak rate, on the same schedule (airbench94_muon: 0.24;
    # Muon's step has a fixed size, so no batch scaling)
    muon_lr: float = 0.0
    muon_momentum: float = 0.6  # optimizer=muon: the filters' Nesterov momentum
    ema_decay: float = 0.0  # weight EMA evaluated instead of the raw weights; 0 = off
    # steps between Lookahead syncs (airbench94: 5): the slow copy of every weight and BN
    # statistic moves toward the weights, which are then set to it; the weights end as the slow
    # copy. 0 = off
    lookahead_every_steps: int = 0
    # >0: the whitening stem's bias trains this many epochs, then is frozen: no update, no decay
    # (airbench94: 3). 0 = trained throughout
    whiten_bias_epochs: float = 0.0
    # to_zero: the whitening bias's rate falls linearly from the peak to 0 at its freeze
    # (airbench94_muon)
    whiten_bias_lr: Literal["schedule", "to_zero"] = "schedule"


@dataclass(frozen=True)
class TrainConfig:
    # may be fractional: ceil(steps per epoch * epochs) steps (9.9 -> 476 at batch 1024 on
    # 50,000 images, airbench94's count)
    epochs: float = 1.0
    # >0: the run's length as training compute, in PFLOPs (pipeline/compute.py: 3x the
    # forward FLOPs per training image); replaces `epochs` and scales the recipe's other
    # durations in epochs with it
    budget_pflops: float = 0.0
    seed: int = 0  # seeds init, data order and augmentation: same seed, same run
    # auto: by hardware, see training/precision.choose
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "auto"
    # XLA-compile each replica's forward + backward (GPUs; "auto" precision turns it on there);
    # on CPU oneDNN's kernels beat XLA's, measured
    jit_compile: bool = False
    # without GPUs: TensorFlow's pool running independent ops at once; 0 = its default (one per
    # core). 1: one op at a time on every core, faster for wide convs (challenge_airbench94)
    cpu_inter_op_threads: int = 0
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    cpu_replicas: int = 0  # >0: split the CPU into N logical devices for "mirrored"
    # multi_worker under srun: the port of each node's first task; its other tasks take the next
    # ones
    slurm_port: int = 8888
    loop: Literal["custom", "fit"] = "custom"  # custom: the project's loop; fit: model.fit
    out_dir: str | None = None  # outputs; None = nothing written
    # every duration names its unit (_epochs, _steps); the run's RunLength converts epochs to
    # steps in one place (pipeline/run_length.py)
    checkpoint_every_epochs: int = 1  # at most this many epochs are redone after a crash
    # >0: also a checkpoint every N steps inside an epoch, so a crash (kill -9, a lost worker)
    # redoes at most N steps; SIGTERM saves anyway
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    export: bool = True  # write out_dir/export (a SavedModel serving uint8 images) at the end
    tta: Literal["none", "flip", "flip_translate"] = "none"  # test-time augmentation
    # eval batches of training images that refresh BN statistics before each evaluation; 0 = use
    # the running averages as trained
    bn_recalibration_batches: int = 0
    # auto: a bar on a TTY, else a line every `progress_every_seconds` (logs, nohup, SLURM)
    progress: Literal["auto", "bar", "none"] = "auto"
    progress_every_seconds: float = 30.0
    max_steps_per_epoch: int = 0  # >0: cut each epoch to this many steps (benchmarks, tests)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Where and how a run executes, not what it trains (Model Garden's runtime config beside its
# task config): a recorded run's config reruns or restores with these at their defaults, so
# no caller scrubs them by hand.
RUNTIME_KEYS = (
    "train.strategy",
    "train.cpu_replicas",
    "train.slurm_port",
    "train.out_dir",
    "train.progress",
    "train.progress_every_seconds",
    "train.checkpoint_every_epochs",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.export",
)


def get_dotted(tree: Any, key: str) -> Any:
    """The value of a dotted key ("optim.lr") in a config tree: the dataclasses, or the
    dicts of a config.json (where a key an older version did not write is None)."""
    for part in key.split("."):
        if isinstance(tree, dict):
            tree = tree.get(part)
        elif tree is None:
            return None
        else:
            tree = getattr(tree, part)
    return tree


def recipe(cfg: Config) -> Config:
    """`cfg`'s recipe alone: every runtime field (RUNTIME_KEYS) at its default."""
    return override(cfg, {key: get_dotted(Config(), key) for key in RUNTIME_KEYS})


class ConfigError(UserError):
    """A config key or value the user gave is not valid."""


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _field_type(key: str):
    """The declared type of a dotted key ("train.precision")."""
    cls, *path, last = [Config, *key.split(".")]
    for part in path:
        cls = _hints(cls)[part]
    return _hints(cls)[last]


def choices(key: str) -> tuple:
    """The allowed values of a `Literal` field, e.g. choices("train.precision"); () for
    any other field."""
    hint = _field_type(key)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def _unwrap_optional(hint) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _describe(hint) -> str:
    """A non-Literal type hint in words ("float", "str or None"): Literal values are
    checked, and named, before this is needed."""
    base, optional = _unwrap_optional(hint)
    return getattr(base, "__name__", str(base)) + (" or None" if optional else "")


def to_dict(cfg: Any) -> dict:
    """The config as plain JSON-ready dicts."""
    return dataclasses.asdict(cfg)


# config.json's format. Raise it when a field changes meaning or goes away (a new field
# whose default keeps the old behaviour needs no new version), and say in RENAMED how an
# older file's keys read now; from_dict refuses versions it cannot read.
CONFIG_VERSION = 2

# version -> {old key: new key}: what changed on the way to the next version. Version 2
# names every duration's unit.
RENAMED = {
    1: {
        "train.steps_per_epoch": "train.max_steps_per_epoch",
        "train.checkpoint_every": "train.checkpoint_every_epochs",
        "optim.lookahead_every": "optim.lookahead_every_steps",
    },
}
# Every key that was ever renamed -> its name now.
_NEW_NAME = {old: new for names in RENAMED.values() for old, new in names.items()}


def to_record(cfg: Config, **records) -> dict:
    """What a run's config.json holds: the config, its format's version and `records`
    (e.g. what "auto" resolved to), which `from_dict` skips."""
    return {**to_dict(cfg), "version": CONFIG_VERSION, **records}


def from_dict(d: dict) -> Config:
    """Inverse of `to_dict` and `to_record` (a run's config.json too); unknown keys raise.

    config.json's "resolved" section (what "auto" became on the machine) is a record,
    not a setting, and is skipped. Files written before versions existed read as version 1;
    an older version's keys are renamed as RENAMED says.

    Raises:
        ConfigError: for another version, an unknown key or a value of the wrong type,
            naming the field.
    """
    version = d.get("version", 1)
    if version not in (*RENAMED, CONFIG_VERSION):
        raise ConfigError(
            f"config field version is {version!r}, and this cifar-pipeline reads versions "
            f"1 to {CONFIG_VERSION}: use the cifar-pipeline that wrote it, or start from an "
            "experiment (--experiment NAME) with --set for the fields you need"
        )
    settings = flatten({k: v for k, v in d.items() if k not in ("resolved", "version")})
    for older in range(version, CONFIG_VERSION):
        settings = {RENAMED[older].get(k, k): v for k, v in settings.items()}
    return override(Config(), settings)


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


def _coerce(key: str, current: Any, value: Any, hint) -> Any:
    """`value` (as given, or as text from `--set`) checked against the field's type."""
    base, optional = _unwrap_optional(hint)
    if isinstance(value, str) and value.lower() in ("none", "null") and optional:
        return None
    if value is None and optional:
        return None
    if typing.get_origin(base) is Literal:
        allowed = typing.get_args(base)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
        return value
    if isinstance(value, str) and base is not str:
        if value.lower() in ("true", "false"):
            value = value.lower() == "true"
        else:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{key}: cannot parse {value!r} as {_describe(hint)}") from e
    ok = {
        str: isinstance(value, str),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        dict: isinstance(value, dict),
    }[base]
    if not ok:
        raise ConfigError(f"{key} expects {_describe(hint)}, got {value!r} (was {current!r})")
    return float(value) if base is float else value


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
        if prefix + key in _NEW_NAME:
            raise ConfigError(
                f"config key {prefix}{key!r} is now {_NEW_NAME[prefix + key]!r}: set that instead"
            )
        if head not in known:
            raise ConfigError(
                f"unknown config key {prefix}{key!r}.{did_you_mean(prefix + key, known)} "
                f"Valid keys: {', '.join(sorted(known))}"
            )
    changes = {}
    hints = _hints(type(cfg))
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
            changes[f.name] = _coerce(prefix + f.name, value, updates[f.name], hints[f.name])
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

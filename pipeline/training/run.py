"""One training run from a Config: data, strategy, model, the loop, and the run's outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import tensorflow as tf

from models import registry
from pipeline import compute
from pipeline.config import Config, ConfigError, get_dotted, to_dict, to_record
from pipeline.data import sources
from pipeline.data.datasets import Inputs, make_inputs
from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.runtime import distribute, out_claim, threads
from pipeline.training import data_record, export, loop, precision
from pipeline.training.keras_fit import fit_with_keras


class RunError(UserError):
    """A run's settings do not fit together; the message says which and how to fix it."""


def build(cfg: Config, strategy: tf.distribute.Strategy, inputs: Inputs | None = None):
    """The model under the strategy and precision scopes; when `inputs` is given, its
    data-dependent weights (if its registry entry has any) set from the training split.

    Raises:
        ConfigError: for an unknown model or params its builder does not take.
    """
    try:
        entry = registry.entry(cfg.model.name)
        with strategy.scope(), precision.policy_scope(cfg.train.precision):
            model = registry.build_model(cfg.model)
    except registry.ModelError as e:
        raise ConfigError(str(e)) from e
    if inputs is not None and entry.init_from_data:
        splits = inputs.splits
        images = splits.train.images[: entry.init_images]
        with strategy.scope():
            entry.init_from_data(model, sources.normalised(images, splits.mean, splits.std))
    return model


def prepare(cfg: Config, log=print) -> tuple[tf.distribute.Strategy, Inputs]:
    """Threads and strategy first (sizing the pool and splitting the CPU must precede any TF
    op), then data."""
    threads.size_inter_op_pool(cfg.train.cpu_inter_op_threads, log)
    strategy = distribute.make_strategy(cfg.train)
    splits = sources.load_splits(cfg.data, seed=cfg.train.seed)  # seeded explicitly
    # After loading: tfds draws from Python's random while it prepares a data dir, and Keras
    # seeds unseeded initialisers from it, so a first run (which prepares) would otherwise
    # start from other weights than its reruns.
    keras.utils.set_random_seed(cfg.train.seed)
    return strategy, make_inputs(splits, cfg.data, cfg.train.seed)


# What a checkpoint's variables depend on: a resume must keep these as they were.
_CHECKPOINT_SHAPING = ("model", "optim.optimizer", "train.precision")


def check_resumable(out: Path, cfg: Config) -> None:
    """Raises RunError, before anything in `out` is touched, when `out` holds a checkpoint
    that `cfg` could not restore (another model, optimizer or precision)."""
    saved_path = out / "config.json"
    if not (saved_path.is_file() and tf.train.latest_checkpoint(str(out / "checkpoints"))):
        return
    saved, now = json.loads(saved_path.read_text()), to_dict(cfg)
    for key in _CHECKPOINT_SHAPING:
        was, wants = get_dotted(saved, key), get_dotted(now, key)
        if was != wants:
            raise RunError(
                f"{out} holds a checkpoint trained with {key} = {json.dumps(was)}, but this run "
                f"asks for {json.dumps(wants)}, which cannot resume it. Give a new --out, or "
                f"delete {out} to start afresh."
            )


def train(cfg: Config, log=print, callbacks=None) -> dict:
    """Trains `cfg.model.name` as configured; writes config/metrics under `cfg.train.out_dir`.

    Returns:
        metrics.json's content.
    """
    wall = time.perf_counter()
    resolved = {"requested": cfg.train.precision}
    cfg, choice = precision.resolve(cfg, log)
    resolved.update(
        chosen=choice.policy,
        reason=choice.reason,
        device=choice.device,
        augment_on_device=choice.augment_on_device,
        jit_compile=choice.jit_compile,
    )
    out = Path(cfg.train.out_dir) if cfg.train.out_dir else None
    if out and distribute.is_chief_task(cfg.train):
        # Before the data is loaded: a refusal costs nothing.
        out_claim.claim(out, log)
        check_resumable(out, cfg)
    strategy, inputs = prepare(cfg, log)
    chief = distribute.is_chief(strategy)
    model = build(cfg, strategy, inputs)
    # A budget becomes epochs here; config.json holds the run as trained, the budget beside it.
    cfg, cost = compute.resolve(cfg, model, inputs.length_for_config)
    if out and chief:
        out.mkdir(parents=True, exist_ok=True)
        # What "auto" and the budget became on this machine: records beside the settings
        # (from_dict skips them).
        records = {"train.precision": resolved, "train.budget_pflops": cost.record()}
        write_json(out / "config.json", to_record(cfg, resolved=records))
        data_record.write_data_record(out, inputs.splits)
    length = inputs.length_for_config(cfg.train)
    log(
        f"{cfg.model.name}: {count_params(model):,} parameters, {strategy.num_replicas_in_sync}"
        f" replica(s), {cfg.train.precision}, {cfg.train.epochs:g} epoch(s): "
        f"{length.total_steps} steps of {cfg.data.batch_size} ({length.steps_per_epoch} an epoch), "
        f"{cost.train_pflops:.3g} PFLOPs ({cost.forward_flops_per_image / 1e9:.3g} GFLOP forward "
        "per image)"
    )
    if cfg.train.loop == "fit":
        result = fit_with_keras(model, inputs, cfg, strategy, log, length)
    else:
        result = loop.fit(model, inputs, cfg, strategy, callbacks=callbacks, log=log, length=length)
    if out and chief and cfg.train.export:
        _export_at_end(model, inputs, cfg, out, log)
    metrics = {
        "model": cfg.model.name,
        "loop": cfg.train.loop,
        "precision": cfg.train.precision,
        "precision_choice": resolved,
        "replicas": strategy.num_replicas_in_sync,
        "seed": cfg.train.seed,
        "compute": cost.record(),
        **result,
        "wall_seconds": time.perf_counter() - wall,
    }
    if out and chief:
        write_json(out / "metrics.json", metrics)
    return metrics


def _export_at_end(model, inputs: Inputs, cfg: Config, out: Path, log) -> None:
    """The final model (EMA weights when kept) as out/export, for cifar-predict or serving."""
    if cfg.train.strategy == "multi_worker":
        # Saving is not collective: the chief alone would trace the model outside the
        # cluster's step. Restoring on one process is what cifar-export does.
        log(f"no export from a multi-worker run: run `cifar-export {out} --to {out}/export`")
        return
    path = export.export_run(
        model, inputs.splits, cfg, out / "export", cfg.train.epochs, overwrite=True
    )
    log(f"exported the model to {path} (cifar-predict {path} IMAGE...)")


def count_params(model) -> int:
    return int(
        sum(
            v.shape.num_elements() if hasattr(v.shape, "num_elements") else int(tf.size(v))
            for v in model.trainable_variables
        )
    )

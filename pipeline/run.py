"""One training run from a Config: data, strategy, model, the loop, and the run's outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import tensorflow as tf

from pipeline import data, distribute, loop, optim, precision
from pipeline.config import Config, to_dict
from pipeline.data import Split
from pipeline.input import Inputs, make_inputs, notebook_preprocess


class RunError(ValueError):
    """A run's settings do not fit together; the message says which and how to fix it."""


WHITENING_IMAGES = 5_000  # training images whose 2x2 patches set a whitening stem


def build(cfg: Config, strategy: tf.distribute.Strategy, inputs: Inputs | None = None):
    """The model under the strategy and precision scopes; data-initialised parts set from
    the training split when `inputs` is given (a patch-whitening stem)."""
    from models.custom_convnet import whiten_stem  # noqa: PLC0415 - models import keras
    from models.registry import build_model  # noqa: PLC0415

    with strategy.scope(), precision.policy_scope(cfg.train.precision):
        model = build_model(cfg.model)
        if inputs is not None and isinstance(model, keras.Model):
            train = inputs.splits.train
            sample = Split(train.images[:WHITENING_IMAGES], train.labels[:WHITENING_IMAGES])
            whiten_stem(model, notebook_preprocess(sample, inputs.splits.mean, inputs.splits.std))
        return model


def prepare(cfg: Config) -> tuple[tf.distribute.Strategy, Inputs]:
    """Strategy first (it may split the CPU, which must precede any TF op), then data."""
    strategy = distribute.make_strategy(cfg.train)
    keras.utils.set_random_seed(cfg.train.seed)
    splits = data.load_splits(cfg.data, seed=cfg.train.seed)
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
        was, wants = _get_dotted(saved, key), _get_dotted(now, key)
        if was != wants:
            raise RunError(
                f"{out} holds a checkpoint trained with {key} = {json.dumps(was)}, but this run "
                f"asks for {json.dumps(wants)}, which cannot resume it. Give a new --out, or "
                f"delete {out} to start afresh."
            )


def _get_dotted(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def train(cfg: Config, log=print, callbacks=None) -> dict:
    """Trains `cfg.model.name` as configured; writes config/metrics under `cfg.train.out_dir`.

    Returns:
        metrics.json's content.
    """
    wall = time.perf_counter()
    resolved = {"requested": cfg.train.precision}
    cfg, choice = precision.resolve(cfg, log)
    resolved.update(chosen=choice.policy, reason=choice.reason, device=choice.device)
    out = Path(cfg.train.out_dir) if cfg.train.out_dir else None
    if out:
        check_resumable(out, cfg)  # before the data is loaded: a refusal costs nothing
    strategy, inputs = prepare(cfg)
    chief = distribute.is_chief(strategy)
    if out and chief:
        out.mkdir(parents=True, exist_ok=True)
        # What "auto" became on this machine: a record beside the settings (from_dict skips it).
        saved = {**to_dict(cfg), "resolved": {"train.precision": resolved}}
        (out / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
    model = build(cfg, strategy, inputs)
    log(
        f"{cfg.model.name}: {count_params(model):,} parameters, {strategy.num_replicas_in_sync}"
        f" replica(s), {cfg.train.precision}, {inputs.steps_per_epoch} steps/epoch of "
        f"{cfg.data.batch_size}"
    )
    if cfg.train.loop == "fit":
        result = fit_with_keras(model, inputs, cfg, strategy, log)
    else:
        result = loop.fit(model, inputs, cfg, strategy, callbacks=callbacks, log=log)
    metrics = {
        "model": cfg.model.name,
        "loop": cfg.train.loop,
        "precision": cfg.train.precision,
        "precision_choice": resolved,
        "replicas": strategy.num_replicas_in_sync,
        "seed": cfg.train.seed,
        **result,
        "wall_seconds": time.perf_counter() - wall,
    }
    if out and chief:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def count_params(model) -> int:
    return int(
        sum(
            v.shape.num_elements() if hasattr(v.shape, "num_elements") else int(tf.size(v))
            for v in model.trainable_variables
        )
    )


def fit_with_keras(model, inputs: Inputs, cfg: Config, strategy, log=print) -> dict:
    """The same model, data and optimizer through `model.compile` + `model.fit`, for comparison
    with the project's loop (the notebook does both). Keras's loop, not a second one of ours."""
    if not isinstance(model, keras.Model):
        raise RunError(
            f"--loop fit needs a keras.Model; {cfg.model.name} is a tf.Module "
            "(a low-level variant): use --loop custom."
        )
    ignored = {
        "data.augment_on_device": cfg.data.augment_on_device,
        "train.tta": cfg.train.tta != "none",
        "optim.bias_lr_scale": cfg.optim.bias_lr_scale != 1.0,
        "optim.ema_decay": cfg.optim.ema_decay != 0.0,
        "train.bn_recalibration_batches": cfg.train.bn_recalibration_batches != 0,
    }
    asked = [key for key, on in ignored.items() if on]
    if asked:
        raise RunError(
            f"--loop fit (Keras's model.fit) cannot apply {', '.join(asked)}: use --loop "
            "custom, or reset them (e.g. --set optim.bias_lr_scale=1)"
        )
    steps = loop.steps_per_epoch(inputs, cfg.train)
    with strategy.scope():
        optimizer = loop.build_optimizer(cfg, steps * cfg.train.epochs, steps)
        model.compile(
            optimizer=optimizer,
            loss=loss_fn(cfg),
            metrics=["accuracy"],
        )
    train_ds = inputs.train_dataset_fn(0, cfg.train.epochs)(None)
    has_val = len(inputs.splits.val.labels) > 0
    t0 = time.perf_counter()
    keras_history = model.fit(
        train_ds,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps,
        validation_data=inputs.eval_dataset("val") if has_val else None,
        verbose=2 if cfg.train.progress != "none" else 0,
    )
    seconds = time.perf_counter() - t0
    h = keras_history.history
    history = [
        {
            "epoch": e + 1,
            "train_loss": h["loss"][e],
            "train_accuracy": h["accuracy"][e],
            **(
                {"val_loss": h["val_loss"][e], "val_accuracy": h["val_accuracy"][e]}
                if has_val
                else {}
            ),
            "seconds": seconds / cfg.train.epochs,
        }
        for e in range(cfg.train.epochs)
    ]
    result = {
        "history": history,
        "train_images_per_second": steps * cfg.train.epochs * cfg.data.batch_size / seconds,
    }
    if has_val:
        result["val_accuracy"] = history[-1]["val_accuracy"]
    if len(inputs.splits.test.labels):
        test_loss, test_acc = model.evaluate(inputs.eval_dataset("test"), verbose=0)
        result.update(test_loss=test_loss, test_accuracy=test_acc)
    return result


def loss_fn(cfg: Config):
    # The loop's own loss function, so both loops optimise the same objective.
    def loss(y, logits):
        return optim.cross_entropy(
            tf.cast(tf.reshape(y, [-1]), tf.int32),
            logits,
            cfg.model.num_classes,
            cfg.optim.label_smoothing,
        )

    return loss

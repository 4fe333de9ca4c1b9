"""keras-tuner HyperModel for `custom_convnet`: build(hp) -> model, fit() -> the one loop."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import keras
import keras_tuner as kt

from pipeline.config import Config, override
from pipeline.data.datasets import Inputs
from pipeline.files import write_json
from pipeline.training import loop, run
from tuning import hparams_board

MEMORY_LOG = "memory.jsonl"  # in the search's --out: one row per trial (and process)


def model_params(hp: kt.HyperParameters) -> dict:
    """The notebook's questions: filter counts and sizes, depth, pooling, normalisation,
    global pooling vs flatten, dropout, activation, residuals, stem."""
    base = hp.Choice("base_width", [16, 32, 48])
    return {
        "widths": [base, 2 * base, 4 * base],
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


def training_overrides(hp: kt.HyperParameters) -> dict:
    """Optimiser, learning rate, weight decay and augmentation strength."""
    optimizer = hp.Choice("optimizer", ["nesterov", "adamw"])
    with hp.conditional_scope("optimizer", ["nesterov"]):
        sgd_lr = hp.Float("sgd_lr", 0.05, 2.0, sampling="log") if optimizer == "nesterov" else 0
    with hp.conditional_scope("optimizer", ["adamw"]):
        adam_lr = hp.Float("adam_lr", 3e-4, 1e-2, sampling="log") if optimizer == "adamw" else 0
    return {
        "optim.optimizer": optimizer,
        "optim.lr": sgd_lr or adam_lr,
        # BN shifts at 64x suit SGD with momentum, not Adam's per-weight step sizes.
        "optim.bias_lr_scale": 64.0 if optimizer == "nesterov" else 1.0,
        "optim.weight_decay": hp.Float("weight_decay", 1e-6, 1e-3, sampling="log"),
        "data.augment.translate": hp.Choice("translate", [0, 2, 4]),
        "data.augment.flip": hp.Choice("flip", ["none", "random", "alternate"]),
        "data.augment.cutout": hp.Choice("cutout", [0, 8]),
    }


def config_for(base: Config, hp: kt.HyperParameters) -> Config:
    """The full run config that a set of hyperparameter values stands for."""
    params = {**base.model.params, **model_params(hp)}
    # The recipe's whitening-bias freeze needs the whitening stem the trial may not have.
    freeze = base.optim.whiten_bias_epochs if params["stem"] == "whiten" else 0.0
    return override(
        base,
        {
            "model.name": "custom_convnet",
            "model.params": params,
            "optim.whiten_bias_epochs": freeze,
            **training_overrides(hp),
        },
    )


class CustomConvNetHyperModel(kt.HyperModel):
    """Builds `custom_convnet` from hyperparameters and trains it with `pipeline.loop.fit`.

    The data is loaded once and shared by every trial; per-epoch `val_accuracy` goes to
    the tuner's callbacks and back as a History, so the tuner keeps each trial's best epoch.
    """

    def __init__(self, base: Config, inputs: Inputs, strategy=None, history_dir=None):
        super().__init__(name="custom_convnet")
        self.base, self.inputs, self.strategy = base, inputs, strategy
        self.history_dir = Path(history_dir) if history_dir else None

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        # keras-tuner clears the Keras session and collects garbage before each build.
        import tensorflow as tf  # noqa: PLC0415

        return run.build(
            config_for(self.base, hp), self.strategy or tf.distribute.get_strategy(), self.inputs
        )

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, **kwargs):
        cfg = config_for(self.base, hp)
        cfg = override(
            cfg, {"train.epochs": int(epochs or cfg.train.epochs), "train.out_dir": None}
        )
        trial_id = next((cb.trial.trial_id for cb in callbacks or [] if hasattr(cb, "trial")), None)
        result = loop.fit(
            model,
            self.inputs,
            cfg,
            self.strategy,
            callbacks=callbacks,
            initial_epoch=initial_epoch,
            log=lambda s: print(f"[trial {trial_id}] {s}", flush=True),
        )
        if self.history_dir and trial_id is not None:
            self.history_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.history_dir / f"{trial_id}.json", result["history"], indent=None)
            hparams_board.write_trial(
                self.history_dir.parent, trial_id, hp.values, result["history"]
            )
            self._record_memory(trial_id)
        history = keras.callbacks.History()
        keys = [k for k in result["history"][0] if k not in ("epoch", "seconds", "step_losses")]
        history.history = {k: [row[k] for row in result["history"]] for k in keys}
        return history

    def _record_memory(self, trial_id: str) -> None:
        """Appends this process's resident memory after the trial to memory.jsonl (read by
        the report): trial after trial, it should stay flat, not climb."""
        gc.collect()
        mib = resident_memory_mib()
        if mib is None:
            return
        print(f"[trial {trial_id}] resident memory {mib:,.0f} MiB", flush=True)
        row = {"trial_id": trial_id, "pid": os.getpid(), "resident_mib": mib}
        with open(self.history_dir.parent / MEMORY_LOG, "a") as log:
            log.write(json.dumps(row) + "\n")


def resident_memory_mib() -> float | None:
    """This process's resident memory now (Linux /proc), in MiB; None where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None

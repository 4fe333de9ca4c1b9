"""keras-tuner HyperModel for a search space: build(hp) -> model, fit() -> the one loop, for
a share of the compute budget (or a number of epochs without one)."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import keras
import keras_tuner as kt

from pipeline import compute
from pipeline.config import Config, override, to_dict
from pipeline.data.datasets import Inputs
from pipeline.errors import NonFiniteLossError
from pipeline.files import write_json
from pipeline.training import loop, run
from tuning import hparams_board, space

MEMORY_LOG = "memory.jsonl"  # in the search's --out: one row per trial (and process)


class SearchHyperModel(kt.HyperModel):
    """Builds a space's model from hyperparameters and trains it with `pipeline.loop.fit`.

    With a budget (`base.train.budget_pflops` > 0) a trial trains for its share of it:
    all of it, or under Hyperband `epochs / resource_max` of it (Hyperband's "epochs" are
    budget units). A trial promoted to a larger share starts afresh rather than continuing
    its parent: the one-cycle schedule, warm-up and freeze are laid over the whole run, so
    the parent's weights ended a decayed schedule a longer run would not have passed
    through. Without a budget, trials train `epochs` epochs and a promoted trial continues
    from its parent's weights at `initial_epoch`.

    The data is loaded once and shared by every trial; per-epoch `val_accuracy` goes to
    the tuner's callbacks and back as a History, so the tuner keeps each trial's best epoch.
    """

    def __init__(
        self,
        search_space: space.Space,
        base: Config,
        inputs: Inputs,
        strategy=None,
        history_dir=None,
        resource_max: int = 1,
    ):
        super().__init__(name=search_space.name)
        self.space, self.base, self.inputs, self.strategy = search_space, base, inputs, strategy
        self.history_dir = Path(history_dir) if history_dir else None
        self.resource_max = resource_max

    @property
    def restarts_promoted(self) -> bool:
        """A promoted trial starts afresh (budget) or continues its parent (epochs)."""
        return self.base.train.budget_pflops > 0

    def config(self, hp: kt.HyperParameters) -> Config:
        return space.config_for(self.space, self.base, hp)

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        # keras-tuner clears the Keras session and collects garbage before each build.
        import tensorflow as tf  # noqa: PLC0415

        return run.build(
            self.config(hp), self.strategy or tf.distribute.get_strategy(), self.inputs
        )

    def budget_fraction(self, hp: kt.HyperParameters) -> float:
        """The trial's share of the budget: Hyperband's units over its most, else all."""
        return hp.values.get("tuner/epochs", self.resource_max) / self.resource_max

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, **kwargs):
        cfg = override(self.config(hp), {"train.out_dir": None})
        fraction = 1.0
        if self.restarts_promoted:
            fraction = self.budget_fraction(hp)
            cfg = override(cfg, {"train.budget_pflops": cfg.train.budget_pflops * fraction})
            initial_epoch = 0
        else:
            cfg = override(cfg, {"train.epochs": int(epochs or cfg.train.epochs)})
        # The trial's own batch size and augmentations over the data loaded once.
        inputs = self.inputs.with_data(cfg.data)
        cfg, cost = compute.resolve(cfg, model, inputs.length_for_config)
        trial_id = next((cb.trial.trial_id for cb in callbacks or [] if hasattr(cb, "trial")), None)
        log = lambda s: print(f"[trial {trial_id}] {s}", flush=True)  # noqa: E731
        try:
            result = loop.fit(
                model,
                inputs,
                cfg,
                self.strategy,
                callbacks=callbacks,
                initial_epoch=initial_epoch,
                log=log,
            )
        except NonFiniteLossError as e:
            # A diverged recipe is a result, not a crash: it scores 0, the report names it,
            # and the search goes on (keras-tuner stops after 3 failed trials in a row).
            log(f"diverged: {e}")
            result = {"history": [{"epoch": 1, "val_accuracy": 0.0, "diverged": True}]}
        if self.history_dir and trial_id is not None:
            self.history_dir.mkdir(parents=True, exist_ok=True)
            record = {
                "trial_id": trial_id,
                "history": result["history"],
                "compute": cost.record(),
                "budget_fraction": fraction,
                "train_seconds": sum(row.get("seconds", 0.0) for row in result["history"]),
                "diverged": "diverged" in result["history"][0],
                "config": to_dict(cfg),
            }
            write_json(self.history_dir / f"{trial_id}.json", record, indent=None)
            hparams_board.write_trial(
                self.history_dir.parent,
                trial_id,
                hp.values,
                result["history"],
                failed=record["diverged"],
            )
            self._record_memory(trial_id)
        history = keras.callbacks.History()
        skip = ("epoch", "seconds", "step_losses", "diverged")
        keys = [k for k in result["history"][0] if k not in skip]
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

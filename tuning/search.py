"""Architecture search with keras-tuner: tuners, resume, best.json, leaderboard, and
keras-tuner's own chief/worker distribution (locally on loopback with `local_search`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import keras_tuner as kt

from pipeline.config import Config, to_dict, to_record
from pipeline.errors import UserError
from pipeline.files import write_json, write_text
from tuning import TUNERS, hparams_board, space
from tuning.hypermodel import SearchHyperModel

PROJECT = "search"  # keras-tuner's project folder inside --out
OBJECTIVE = kt.Objective("val_accuracy", direction="max")
BEST_CONFIG = "best_config.json"  # in --out: the best trial's run config


class SearchError(UserError):
    """The search cannot run or report as asked; the message says the fix."""


class BudgetHyperband(kt.Hyperband):
    """keras-tuner's Hyperband, whose promoted trials restart when the hypermodel says so
    (`SearchHyperModel.restarts_promoted`: trials measured in budget, whose schedules span
    the whole run) instead of loading their parent's weights."""

    def _build_hypermodel(self, hp):
        if getattr(self.hypermodel, "restarts_promoted", False):
            return super(kt.Hyperband, self)._build_hypermodel(hp)  # no parent's weights
        return super()._build_hypermodel(hp)


def make_tuner(
    kind: str, hypermodel, out: Path, max_trials: int, max_epochs: int, overwrite: bool, seed: int
):
    common = {
        "objective": OBJECTIVE,
        "directory": str(out),
        "project_name": PROJECT,
        "overwrite": overwrite,
        "seed": seed,
    }
    if kind == "hyperband":
        # Hyperband's budget is epochs (or budget units), not trials: it starts many short
        # trials and promotes the best third (factor 3), so bad trials stop early.
        return BudgetHyperband(
            hypermodel, max_epochs=max_epochs, factor=3, hyperband_iterations=1, **common
        )
    if kind == "bayesian":
        return kt.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    if kind == "random":
        return kt.RandomSearch(hypermodel, max_trials=max_trials, **common)
    raise SearchError(f"unknown tuner {kind!r}; use one of {', '.join(TUNERS)}")


def is_worker() -> bool:
    """A keras-tuner worker process (KERASTUNER_TUNER_ID set, not "chief")."""
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
    return tuner_id is not None and tuner_id != "chief"


def slurm_tuner_env(port: int) -> dict:
    """keras-tuner's variables for this srun task, from SLURM's through TensorFlow's
    SlurmClusterResolver: task 0 is the chief (its oracle serves on its node at `port`),
    task i the worker "tuner{i-1}". Every task then runs the same command line."""
    from pipeline.runtime import distribute  # noqa: PLC0415 - imports TensorFlow

    resolver = distribute.slurm_resolver(port)
    chief = resolver.cluster_spec().as_dict()["worker"][0]
    _, rank = resolver.get_task_info()
    host, chief_port = chief.rsplit(":", 1)
    return {
        "KERASTUNER_TUNER_ID": "chief" if rank == 0 else f"tuner{rank - 1}",
        "KERASTUNER_ORACLE_IP": host,
        "KERASTUNER_ORACLE_PORT": chief_port,
    }


def search(
    base: Config,
    kind: str,
    out: str,
    max_trials: int,
    max_epochs: int,
    overwrite: bool = False,
    space_name: str = space.DEFAULT_SPACE,
) -> dict | None:
    """Runs (or resumes) a search of `space_name` around `base` in `out`; the chief writes
    best.json and leaderboard.md. With `base.train.budget_pflops`, each trial trains for
    compute, not epochs; under Hyperband `max_epochs` is then the number of budget units
    the largest trial gets (9: trials at 1/9, 1/3 and all of the budget).

    The search reads the training and validation splits only: `base` must ask for no test
    images.

    Returns:
        best.json's content on the chief / single process, None on a worker.
    """
    from pipeline.runtime import out_claim  # noqa: PLC0415 - imports TF
    from pipeline.training import precision, run  # noqa: PLC0415 - imports TF

    if base.data.test_examples:
        raise SearchError(
            f"a search must not read the test split, but the config asks for "
            f"{base.data.test_examples} test images: leave out --test-examples"
        )
    search_space = space.get(space_name)
    out_path = Path(out)
    if not is_worker():  # the chief (or the only process) owns --out; workers share it
        out_claim.claim(out_path)
    out_path.mkdir(parents=True, exist_ok=True)
    base, _ = precision.resolve(base)  # once, so every trial trains in the same precision
    strategy, inputs = run.prepare(base)  # data is loaded once for every trial
    hypermodel = SearchHyperModel(
        search_space, base, inputs, strategy, out_path / "histories", resource_max=max_epochs
    )
    tuner = make_tuner(
        kind, hypermodel, out_path, max_trials, max_epochs, overwrite, base.train.seed
    )
    if os.environ.get("KERASTUNER_TUNER_ID") != "chief":
        tuner.search_space_summary()
    if not is_worker():
        hparams_board.write_search_space(out_path, tuner.oracle.get_space())
    tuner.search(epochs=base.train.epochs)
    if is_worker():
        return None
    return write_results(tuner, hypermodel, out_path)


def write_results(tuner, hypermodel: SearchHyperModel, out: Path) -> dict:
    trials = [t for t in tuner.oracle.trials.values() if t.score is not None]
    if not trials:
        raise SearchError(f"no trial in {out} has finished; run the search first")
    ranked = sorted(trials, key=lambda t: t.score, reverse=True)
    best = ranked[0]
    result = {
        "trial_id": best.trial_id,
        "val_accuracy": best.score,
        "hyperparameters": best.hyperparameters.values,
        "space": hypermodel.space.name,
        # The winning recipe as a run config (`cifar-train --config best.json`): its length
        # is the search's budget, or the trial's epochs.
        "config": to_dict(hypermodel.config(best.hyperparameters)),
        "finished_trials": len(trials),
    }
    write_json(out / "best.json", result)
    # The winner alone, as `cifar-train --config` reads a run's config.json.
    write_json(out / BEST_CONFIG, to_record(hypermodel.config(best.hyperparameters)))
    rows = leaderboard((t.trial_id, t.score, t.hyperparameters.values) for t in ranked)
    write_text(out / "leaderboard.md", "\n".join(rows) + "\n")
    return result


def fmt(value) -> str:
    """A hyperparameter value as a person writes it: floats to 3 significant digits."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def leaderboard(ranked: Iterable[tuple[str, float, dict]]) -> list[str]:
    """Markdown lines for (trial id, val accuracy, hyperparameter values), best first: one
    column per hyperparameter that varied among them, the ones that did not in a line
    above; keras-tuner's own bookkeeping values (tuner/...) are left out."""
    ranked = [
        (trial_id, score, {k: v for k, v in values.items() if not k.startswith("tuner/")})
        for trial_id, score, values in ranked
    ]
    names = list(dict.fromkeys(k for _, _, values in ranked for k in values))
    seen = {n: {fmt(values.get(n, "-")) for _, _, values in ranked} for n in names}
    varied = [n for n in names if len(seen[n]) > 1]
    fixed = [n for n in names if len(seen[n]) == 1]
    rows = []
    if fixed:
        same = ", ".join(f"{n}={next(iter(seen[n]))}" for n in fixed)
        rows += [f"Same in every trial listed: {same}.", ""]
    rows += [
        "| rank | trial | val accuracy | " + " | ".join(varied) + " |",
        "|---:|---|---:|" + "---|" * len(varied),
    ]
    for i, (trial_id, score, values) in enumerate(ranked, 1):
        cells = " | ".join(fmt(values[n]) if n in values else "-" for n in varied)
        rows.append(f"| {i} | {trial_id} | {score:.3f} | {cells} |")
    return rows

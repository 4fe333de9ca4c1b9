"""The search's verdict on the test set: its best recipe and the hand recipe it was
centred on, trained side by side at the same compute on all the training images, over
seeds the search never used; summarised in retrain.json and retrain.md."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev

from pipeline import experiments
from pipeline.config import Config, from_dict, get_dotted, override
from pipeline.files import write_json, write_text
from tuning import space
from tuning.search import SearchError

FOLDER = "retrain"  # inside the search's --out
# How the hand recipe is scored, which the searched one is scored by too: its data split
# (all training images, the test set) and its test-time augmentation. The search scored
# trials on a validation split without TTA, for speed.
SCORING = (
    "data.train_examples",
    "data.val_examples",
    "data.test_examples",
    "train.tta",
    "train.bn_recalibration_batches",
)


def contenders(out: Path) -> dict[str, Config]:
    """{"searched": best.json's recipe, "hand": the experiment its space is centred on},
    scored alike and trained for the same compute (or epochs, for a search without one).

    Raises:
        SearchError: when `out` holds no finished search.
    """
    best_path = out / "best.json"
    if not best_path.is_file():
        raise SearchError(f"{best_path} does not exist: run `cifar-tune --out {out}` first")
    best = json.loads(best_path.read_text())
    searched = from_dict(best["config"])
    hand = experiments.get(space.get(best.get("space", "notebook")).base)
    length = {"train.budget_pflops": searched.train.budget_pflops}
    if not searched.train.budget_pflops:
        length["train.epochs"] = searched.train.epochs
    searched = override(searched, {key: get_dotted(hand, key) for key in SCORING})
    return {"searched": searched, "hand": override(hand, length)}


def retrain(out: str | Path, seeds: list[int], updates: dict) -> dict:
    """Trains both contenders with each seed (seed by seed, so a cut-short retrain stays
    balanced) into `out`/retrain/LENGTH/NAME-seedS (LENGTH: "0.09pflops"); a run already
    finished there is read, not trained again. `updates` (dotted config keys, e.g. another
    budget) go on top of both.

    Raises:
        SearchError: for a seed the search itself trained with.
    """
    from pipeline.training import run  # noqa: PLC0415 - imports TensorFlow

    out = Path(out)
    pair = {name: override(cfg, updates) for name, cfg in contenders(out).items()}
    search_seed = pair["searched"].train.seed
    if search_seed in seeds:
        raise SearchError(
            f"seed {search_seed} is the one the search trained its trials with; retrain with "
            f"others, e.g. --seeds {' '.join(str(search_seed + i) for i in (1, 2, 3))}"
        )
    here = out / FOLDER / length_label(pair["searched"])
    runs: dict[str, list[dict]] = {name: [] for name in pair}
    for seed in seeds:
        for name, cfg in pair.items():
            folder = here / f"{name}-seed{seed}"
            metrics_path = folder / "metrics.json"
            if metrics_path.is_file():
                metrics = json.loads(metrics_path.read_text())
            else:
                where = {"train.seed": seed, "train.out_dir": str(folder)}
                metrics = run.train(override(cfg, where))
            runs[name].append(_summary(metrics))
    result = {"seeds": seeds, "runs": runs, "means": _means(runs)}
    write_json(here / "retrain.json", result)
    write_text(here / "retrain.md", "\n".join(describe(result)) + "\n")
    return result


def length_label(cfg: Config) -> str:
    """The folder of one comparison's runs: its budget ("0.09pflops") or epochs."""
    if cfg.train.budget_pflops:
        return f"{cfg.train.budget_pflops:g}pflops"
    return f"{cfg.train.epochs:g}epochs"


def _summary(metrics: dict) -> dict:
    return {
        "seed": metrics["seed"],
        "test_accuracy": metrics["test_accuracy"],
        "test_accuracy_no_tta": metrics.get("test_accuracy_no_tta"),
        "train_pflops": metrics["compute"]["train_pflops"],
        "forward_gflops_per_image": metrics["compute"]["forward_flops_per_image"] / 1e9,
        "train_images_per_second": metrics.get("train_images_per_second"),
        "precision": metrics["precision"],
    }


def _means(runs: dict[str, list[dict]]) -> dict:
    means = {}
    for name, rows in runs.items():
        acc = [r["test_accuracy"] for r in rows]
        means[name] = {
            "test_accuracy": mean(acc),
            "std": stdev(acc) if len(acc) > 1 else 0.0,
            "train_pflops": mean(r["train_pflops"] for r in rows),
            "runs": len(rows),
        }
    if {"searched", "hand"} <= set(means):
        means["gain_points"] = 100 * (
            means["searched"]["test_accuracy"] - means["hand"]["test_accuracy"]
        )
    return means


def describe(result: dict) -> list[str]:
    """retrain.md: each run's test accuracy, and the means."""
    lines = [
        "# The searched recipe against the hand recipe, on the test set",
        "",
        "| recipe | seed | test accuracy (TTA) | without TTA | PFLOPs | GFLOP fwd/image | "
        "images/s | precision |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in result["runs"].items():
        for r in rows:
            no_tta = r["test_accuracy_no_tta"]
            lines.append(
                f"| {name} | {r['seed']} | {r['test_accuracy']:.4f} | "
                f"{'-' if no_tta is None else f'{no_tta:.4f}'} | {r['train_pflops']:.4f} | "
                f"{r['forward_gflops_per_image']:.4f} | {r['train_images_per_second'] or 0:.0f} | "
                f"{r['precision']} |"
            )
    lines.append("")
    for name, m in result["means"].items():
        if name == "gain_points":
            continue
        lines.append(
            f"- {name}: mean {m['test_accuracy']:.4f} (std {m['std']:.4f}, {m['runs']} seeds) "
            f"at {m['train_pflops']:.4f} PFLOPs"
        )
    if "gain_points" in result["means"]:
        lines.append(f"- searched - hand: {result['means']['gain_points']:+.2f} points")
    return lines

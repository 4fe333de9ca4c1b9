"""Accuracy against compute: every trial's score at the PFLOPs (and seconds) it trained
for, the hand recipes' measured runs beside them, and which trials learned nothing."""

from __future__ import annotations

import json
from pathlib import Path

CHANCE_MARGIN = 0.05  # a score within this of 1 / classes is "at chance"


def at_chance(score: float, num_classes: int = 10) -> bool:
    return score < 1 / num_classes + CHANCE_MARGIN


def failed_trials(trials: list[dict]) -> dict[str, list[dict]]:
    """{"diverged": [...], "at chance": [...]}: trials whose loss became NaN or inf, and
    trials that ended no better than guessing."""
    diverged = [t for t in trials if t.get("diverged")]
    chance = [t for t in trials if not t.get("diverged") and at_chance(t["score"])]
    return {"diverged": diverged, "at chance": chance}


def failure_lines(trials: list[dict]) -> list[str]:
    """The report's plain statement of trials that diverged or stayed at chance."""
    failed = failed_trials(trials)
    if not any(failed.values()):
        return [
            f"Every one of the {len(trials)} trials learned: none diverged or stayed at chance."
        ]
    lines = []
    for what, group in failed.items():
        if group:
            ids = ", ".join(t["trial_id"] for t in group)
            lines.append(
                f"**{len(group)} of {len(trials)} trials {what}** "
                f"(val accuracy under {0.1 + CHANCE_MARGIN:.2f}): {ids}."
            )
    if len(failed["at chance"]) + len(failed["diverged"]) == len(trials):
        lines.append(
            "No trial learned anything: the budget (or epochs) is too small for these "
            "models, or the learning rates too high. Raise --budget-pflops."
        )
    return lines


def split_lines(trials: list[dict]) -> list[str]:
    """Which images trained and scored the trials (from their recorded configs)."""
    cfg = next((t["config"] for t in trials if t.get("config")), None)
    if cfg is None:
        return []
    data = cfg["data"]
    return [
        f"Trials trained on {data['train_examples']:,} training images and were scored on a "
        f"validation split of the next {data['val_examples']:,} of the training set; the "
        f"search read {data['test_examples']:,} test images. The test set scores only "
        "`cifar-tune retrain`, with seeds the search never used."
    ]


def hand_runs(folders: list[str]) -> list[dict]:
    """The hand recipes' measured runs (cifar-train --out folders, or LABEL=FOLDER): name,
    accuracy (test, else validation), PFLOPs and training seconds.

    Raises:
        FileNotFoundError: naming a folder without metrics.json.
    """
    runs = []
    for entry in folders:
        label, _, folder = entry.rpartition("=")  # "LABEL=FOLDER" names the star
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist: give finished cifar-train --out folders"
            )
        m = json.loads(path.read_text())
        if "compute" not in m:
            continue  # a run from before compute was recorded
        test = m.get("test_accuracy")
        runs.append(
            {
                "name": label or Path(folder).name,
                "accuracy": test if test is not None else m.get("val_accuracy"),
                "split": "test" if test is not None else "val",
                "pflops": m["compute"]["train_pflops"],
                "seconds": sum(row.get("seconds", 0.0) for row in m.get("history", [])),
            }
        )
    return runs


def plot(trials: list[dict], hand: list[dict], path: Path) -> None:
    """Val accuracy against training PFLOPs and seconds, one point per trial, the best
    so far as a line, the hand recipes as stars. The accuracy axis spans chance to 1, so
    noise between trials does not look like a trend."""
    from matplotlib import ticker  # noqa: PLC0415

    from pipeline.training.curves import pyplot, save_figure  # noqa: PLC0415

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    costed = [t for t in trials if t.get("compute")]
    for ax, key, label in (
        (axes[0], "pflops", "training compute (PFLOPs)"),
        (axes[1], "seconds", "training seconds on this machine"),
    ):
        xs = [
            t["compute"]["train_pflops"] if key == "pflops" else t.get("train_seconds") or 0.0
            for t in costed
        ]
        ys = [t["score"] for t in costed]
        colours = [
            "tab:red" if t.get("diverged") or at_chance(t["score"]) else "tab:blue" for t in costed
        ]
        ax.scatter(xs, ys, c=colours, s=18, alpha=0.7, label="trials (red: diverged or at chance)")
        front = sorted(zip(xs, ys, strict=True))
        best, line = 0.0, []
        for x, y in front:
            best = max(best, y)
            line.append((x, best))
        if line:
            ax.step(
                *zip(*line, strict=True), where="post", color="tab:blue", lw=1, label="best so far"
            )
        for h in hand:  # named in the legend: labels beside crowded stars overlap
            ax.scatter([h[key]], [h["accuracy"]], marker="*", s=160, zorder=3,
                       label=f"{h['name']} ({h['split']})")  # fmt: skip
        ax.axhline(0.1, color="grey", ls=":", lw=1)
        ax.set_ylim(0.0, 1.0)
        if any(x > 0 for x in xs):
            ax.set_xscale("log")
            # Plain numbers at 1, 2 and 5 per decade, not 9.9x10^-3 on every minor tick.
            ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set(xlabel=label, ylabel="val accuracy (trials)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    axes[0].set_title("accuracy against compute", fontsize=10)
    axes[1].set_title("accuracy against time", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)

"""The notebook's "describe your experiments", written from a finished search."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from tuning.hypermodel import MEMORY_LOG
from tuning.search import PROJECT, leaderboard


def load_trials(out: Path) -> list[dict]:
    """Finished trials from keras-tuner's trial.json files, with our per-epoch histories."""
    trials = []
    for path in sorted((out / PROJECT).glob("trial_*/trial.json")):
        t = json.loads(path.read_text())
        if t.get("score") is None:
            continue
        values = {
            k: v for k, v in t["hyperparameters"]["values"].items() if not k.startswith("tuner/")
        }
        history_path = out / "histories" / f"{t['trial_id']}.json"
        history = json.loads(history_path.read_text()) if history_path.is_file() else []
        trials.append(
            {"trial_id": t["trial_id"], "score": t["score"], "values": values, "history": history}
        )
    return sorted(trials, key=lambda t: t["score"], reverse=True)


def hyperparameter_effects(trials: list[dict]) -> dict[str, dict]:
    """Per hyperparameter: mean/best score per value (categorical) or the rank correlation
    of value and score (numeric), and a spread used to rank importance."""
    effects = {}
    names = sorted({k for t in trials for k in t["values"]})
    for name in names:
        pairs = [(t["values"][name], t["score"]) for t in trials if name in t["values"]]
        values = [v for v, _ in pairs]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and len(set(values)) > 3:
            ranks_v = np.argsort(np.argsort(values))
            ranks_s = np.argsort(np.argsort([s for _, s in pairs]))
            corr = float(np.corrcoef(ranks_v, ranks_s)[0, 1]) if len(pairs) > 2 else 0.0
            effects[name] = {
                "kind": "numeric",
                "spearman": corr,
                "importance": abs(corr) if np.isfinite(corr) else 0.0,
            }
        else:
            groups = defaultdict(list)
            for v, s in pairs:
                groups[str(v)].append(s)
            table = {
                v: {"trials": len(s), "mean": float(np.mean(s)), "best": float(max(s))}
                for v, s in groups.items()
            }
            means = [g["mean"] for g in table.values()]
            effects[name] = {
                "kind": "categorical",
                "by_value": table,
                "importance": float(max(means) - min(means)),
            }
    return effects


def _plot(trials, effects, out: Path) -> list[str]:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in trials[:5]:
        if t["history"] and "val_accuracy" in t["history"][0]:
            ax.plot(
                [r["epoch"] for r in t["history"]],
                [r["val_accuracy"] for r in t["history"]],
                "-o",
                label=f"trial {t['trial_id']} ({t['score']:.3f})",
            )
    ax.set(xlabel="epoch", ylabel="val accuracy", title="learning curves of the best trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves_best_trials.png", dpi=90)
    plt.close(fig)
    files.append("curves_best_trials.png")

    top = sorted(effects, key=lambda k: effects[k]["importance"], reverse=True)[:2]
    fig, axes = plt.subplots(1, len(top), figsize=(5 * len(top), 4), squeeze=False)
    for ax, name in zip(axes[0], top, strict=True):
        xs = [t["values"][name] for t in trials if name in t["values"]]
        ys = [t["score"] for t in trials if name in t["values"]]
        if effects[name]["kind"] == "numeric":
            ax.scatter(xs, ys)
            if min(xs) > 0 and max(xs) / min(xs) > 20:
                ax.set_xscale("log")
        else:
            labels = sorted({str(x) for x in xs})
            ax.scatter([labels.index(str(x)) for x in xs], ys)
            ax.set_xticks(range(len(labels)), labels)
        ax.set(xlabel=name, ylabel="val accuracy", title=f"accuracy vs {name}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_hyperparameters.png", dpi=90)
    plt.close(fig)
    files.append("accuracy_vs_hyperparameters.png")
    return files


def memory_lines(out: Path) -> list[str]:
    """The report's memory section from memory.jsonl: per process, resident memory after
    its first trial, its last and its highest (a search should stay flat)."""
    path = out / MEMORY_LOG
    if not path.is_file():
        return []
    by_pid = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        by_pid[row["pid"]].append(row["resident_mib"])
    lines = ["## Memory", "", "Resident memory after each trial, per search process:", ""]
    for pid, mib in by_pid.items():
        lines.append(
            f"- process {pid}: {len(mib)} trials, first {mib[0]:,.0f} MiB, last "
            f"{mib[-1]:,.0f} MiB, highest {max(mib):,.0f} MiB"
        )
    return lines + [""]


def write_report(out: str) -> Path:
    """Writes `report.md` (+ PNGs) in `out`: leaderboard, per-hyperparameter findings,
    learning curves of the best trials and accuracy against the most important ones."""
    out = Path(out)
    trials = load_trials(out)
    if not trials:
        raise ValueError(f"no finished trial in {out / PROJECT}: run `cifar-tune --out {out}`")
    effects = hyperparameter_effects(trials)
    files = _plot(trials, effects, out)
    lines = [
        f"# Architecture search: {len(trials)} finished trials",
        "",
        f"Best: trial {trials[0]['trial_id']}, val accuracy {trials[0]['score']:.4f}.",
        "",
        "## Leaderboard",
        "",
        *leaderboard(
            (t["trial_id"], t["score"], dict(sorted(t["values"].items()))) for t in trials[:20]
        ),
    ]
    lines += [
        "",
        "## What the search found, per hyperparameter",
        "",
        "Ordered by importance (spread of mean accuracy across values, or |rank "
        "correlation| for numbers). Few trials make these hints, not proofs.",
        "",
    ]
    for name in sorted(effects, key=lambda k: effects[k]["importance"], reverse=True):
        e = effects[name]
        if e["kind"] == "numeric":
            direction = "higher" if e["spearman"] > 0 else "lower"
            lines.append(
                f"- **{name}**: rank correlation with accuracy {e['spearman']:+.2f} "
                f"({direction} tended to do better)."
            )
        else:
            parts = sorted(e["by_value"].items(), key=lambda kv: -kv[1]["mean"])
            desc = "; ".join(
                f"{v}: mean {g['mean']:.3f}, best {g['best']:.3f} ({g['trials']} trials)"
                for v, g in parts
            )
            lines.append(f"- **{name}**: {desc}.")
    lines += [""] + memory_lines(out) + ["## Plots", ""] + [f"![{f}]({f})" for f in files] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

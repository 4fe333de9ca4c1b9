"""The notebook's "describe your experiments", written from a finished search."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from tuning import frontier
from tuning.hypermodel import MEMORY_LOG
from tuning.search import PROJECT, SearchError, fmt, leaderboard


def load_trials(out: Path) -> list[dict]:
    """Finished trials, read with keras-tuner's own `Trial.load` from its trial.json files,
    with our per-trial records (history, compute) and the search space each was drawn
    from."""
    from keras_tuner.engine.trial import Trial  # noqa: PLC0415 - only when reporting

    trials = []
    for path in sorted((out / PROJECT).glob("trial_*/trial.json")):
        t = Trial.load(str(path))
        if t.score is None:
            continue
        hp = t.hyperparameters
        values = {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}
        record = _trial_record(out / "histories" / f"{t.trial_id}.json")
        trials.append(
            {
                "trial_id": t.trial_id,
                "score": t.score,
                "values": values,
                "history": record.get("history", []),
                "compute": record.get("compute"),
                "train_seconds": record.get("train_seconds"),
                "budget_fraction": record.get("budget_fraction"),
                "diverged": record.get("diverged", False),
                "config": record.get("config"),
                "space": hp.get_config()["space"],
            }
        )
    return sorted(trials, key=lambda t: t["score"], reverse=True)


def _trial_record(path: Path) -> dict:
    """A trial's record (history, compute, seconds); older searches kept the history alone."""
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    return {"history": record} if isinstance(record, list) else record


FRONTIER = "accuracy_vs_compute.png"
CATEGORICAL_INT_VALUES = 5  # an Int range with at most this many values reads as categories


def scales(trials: list[dict]) -> dict[str, str]:
    """Per hyperparameter: "log" or "linear" (a continuous range, as the search sampled it)
    or "categorical" (Choice, Boolean, a short Int range). Without the search space (old
    searches), numbers with more than 3 distinct values count as linear."""
    out = {}
    for t in trials:
        for hp in t.get("space", []):
            cfg, kind = hp["config"], hp["class_name"]
            short_int = kind == "Int" and (
                (cfg["max_value"] - cfg["min_value"]) / (cfg.get("step") or 1) + 1
                <= CATEGORICAL_INT_VALUES
            )
            if kind in ("Float", "Int") and not short_int:
                out[cfg["name"]] = "log" if cfg.get("sampling") == "log" else "linear"
            else:
                out[cfg["name"]] = "categorical"
    for name in {k for t in trials for k in t["values"]} - set(out):
        values = {t["values"][name] for t in trials if name in t["values"]}
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        out[name] = "linear" if numeric and len(values) > 3 else "categorical"
    return out


def hyperparameter_effects(trials: list[dict]) -> dict[str, dict]:
    """Per hyperparameter: the rank correlation of value and score (continuous ones) or the
    mean and best score per value (categorical ones), and a spread used to rank importance."""
    effects = {}
    kinds = scales(trials)
    for name in sorted(kinds):
        pairs = [(t["values"][name], t["score"]) for t in trials if name in t["values"]]
        if not pairs:  # a conditional hyperparameter no trial used
            continue
        if kinds[name] != "categorical":
            ranks_v = np.argsort(np.argsort([v for v, _ in pairs]))
            ranks_s = np.argsort(np.argsort([s for _, s in pairs]))
            corr = float(np.corrcoef(ranks_v, ranks_s)[0, 1]) if len(pairs) > 2 else 0.0
            corr = corr if np.isfinite(corr) else 0.0
            effects[name] = {
                "kind": "continuous",
                "scale": kinds[name],
                "spearman": corr,
                "range": (min(v for v, _ in pairs), max(v for v, _ in pairs)),
                "trials": len(pairs),
                "importance": abs(corr),
            }
        else:
            groups = defaultdict(list)
            for v, s in pairs:
                groups[fmt(v)].append(s)
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
    from matplotlib import ticker  # noqa: PLC0415

    from pipeline.training.curves import pyplot, save_figure  # noqa: PLC0415

    plt = pyplot()

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
    ax.set_ylim(0.0, 1.0)  # chance to perfect: noise must not look like a trend
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "curves_best_trials.png")
    files.append("curves_best_trials.png")

    top = sorted(effects, key=lambda k: effects[k]["importance"], reverse=True)[:4]
    fig, axes = plt.subplots(1, len(top), figsize=(4.2 * len(top), 4), squeeze=False)
    for ax, name in zip(axes[0], top, strict=True):
        xs = [t["values"][name] for t in trials if name in t["values"]]
        ys = [t["score"] for t in trials if name in t["values"]]
        e = effects[name]
        if e["kind"] == "continuous":
            ax.scatter(xs, ys)
            if e["scale"] == "log":
                ax.set_xscale("log")
                # Labels at 1, 2 and 5 per decade in plain numbers; no crowded minor labels.
                ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
                ax.xaxis.set_minor_formatter(ticker.NullFormatter())
                ax.tick_params(axis="x", labelrotation=30)
            ax.set_title(f"{name}: rank correlation {e['spearman']:+.2f}", fontsize=9)
        else:
            labels = list(e["by_value"])
            ax.scatter([labels.index(fmt(x)) for x in xs], ys, alpha=0.6)
            ax.plot(range(len(labels)), [e["by_value"][v]["mean"] for v in labels], "r_", ms=20)
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.set_title(f"{name}: mean per value (red)", fontsize=9)
        ax.set(xlabel=name, ylabel="val accuracy")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "accuracy_vs_hyperparameters.png")
    files.append("accuracy_vs_hyperparameters.png")
    return files


def _trials(n: int) -> str:
    return f"{n} trial" + ("" if n == 1 else "s")


def _finding(name: str, e: dict) -> list[str]:
    """The report's line on one hyperparameter; none for one that never varied."""
    if e["kind"] == "continuous":
        low, high = (fmt(v) for v in e["range"])
        if low == high:
            return []
        if e["trials"] < 3:
            return [f"- **{name}** ({e['scale']} range): {_trials(e['trials'])}, too few to tell."]
        direction = "higher" if e["spearman"] > 0 else "lower"
        return [
            f"- **{name}** ({e['scale']} range, tried {low} to {high}): rank correlation "
            f"with accuracy {e['spearman']:+.2f} ({direction} tended to do better)."
        ]
    if len(e["by_value"]) < 2:
        return []
    parts = sorted(e["by_value"].items(), key=lambda kv: -kv[1]["mean"])
    desc = "; ".join(
        f"{v}: mean {g['mean']:.3f}, best {g['best']:.3f} ({_trials(g['trials'])})"
        for v, g in parts
    )
    return [f"- **{name}**: {desc}."]


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


def write_report(out: str, hand: list[str] = ()) -> Path:
    """Writes `report.md` (+ PNGs) in `out`: what failed, the splits, the accuracy-vs-
    compute frontier (with the hand recipes' runs in `hand` marked), leaderboard,
    per-hyperparameter findings, learning curves of the best trials and accuracy against
    the most important hyperparameters."""
    out = Path(out)
    trials = load_trials(out)
    if not trials:
        raise SearchError(f"no finished trial in {out / PROJECT}: run `cifar-tune --out {out}`")
    try:
        hand_runs = frontier.hand_runs(list(hand))
    except FileNotFoundError as e:
        raise SearchError(str(e)) from None
    effects = hyperparameter_effects(trials)
    frontier.plot(trials, hand_runs, out / FRONTIER)
    files = [FRONTIER, *_plot(trials, effects, out)]
    lines = [
        f"# Architecture search: {len(trials)} finished trials",
        "",
        f"Best: trial {trials[0]['trial_id']}, val accuracy {trials[0]['score']:.3f}.",
        "",
        *frontier.failure_lines(trials),
        "",
        *frontier.split_lines(trials),
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
        "Ordered by importance (spread of mean accuracy across values for categories, "
        "|rank correlation| for continuous ranges). Few trials make these hints, not proofs.",
        "",
    ]
    shares = sorted({t["budget_fraction"] for t in trials if t.get("budget_fraction")})
    if len(shares) > 1:
        lines += [
            "Trials at every share of the budget are pooled here ("
            + ", ".join(f"{s:.3g}" for s in shares)
            + "): Hyperband's short trials score lower whatever their values, so a value "
            "tried mostly in short trials looks worse than it is.",
            "",
        ]
    for name in sorted(effects, key=lambda k: effects[k]["importance"], reverse=True):
        lines += _finding(name, effects[name])
    lines += [""] + memory_lines(out) + ["## Plots", ""] + [f"![{f}]({f})" for f in files] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

"""Plots of a run's history (loss and accuracy per epoch), and the two helpers every
picture the project writes goes through."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.files import write_atomic


def pyplot():
    """matplotlib.pyplot on the file-only backend; imported when a picture is written."""
    import matplotlib  # noqa: PLC0415 - heavy, and only needed when writing outputs

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save_figure(fig, path: Path) -> None:
    """Writes the PNG whole or not at all (a reader never sees half of one); closes the
    figure."""
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90))
    finally:
        pyplot().close(fig)


SMOOTHED_POINTS = 40  # the per-step loss is averaged over about 1/40 of the run


def smoothed(values: list[float], weight: float) -> list[float]:
    """TensorBoard's exponential smoothing, debiased so the curve starts at the first value."""
    out, average = [], 0.0
    for i, value in enumerate(values, 1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss: every training step (faint) and its smoothed curve, val at each epoch's end;
    accuracy per epoch. The x axis is epochs, ticks at whole epochs (a fractional run's
    last epoch ends where its steps do)."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    steps = [loss for row in history for loss in row.get("step_losses", ())]
    per_epoch = max(len(row.get("step_losses", ())) for row in history)
    if steps:
        counts = np.cumsum([len(row["step_losses"]) for row in history])
        ends = list(counts / per_epoch)
    else:
        ends = [float(row["epoch"]) for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    train, val = {"color": "tab:blue"}, {"color": "tab:orange"}
    if steps:
        x = np.arange(1, len(steps) + 1) / per_epoch
        weight = max(0.0, 1.0 - SMOOTHED_POINTS / len(steps))
        ax_loss.plot(x, steps, alpha=0.25, linewidth=0.8, **train)
        ax_loss.plot(x, smoothed(steps, weight), label="train (per step, smoothed)", **train)
    else:
        ax_loss.plot(ends, [r["train_loss"] for r in history], "-o", label="train", **train)
    ax_acc.plot(ends, [r["train_accuracy"] for r in history], "-o", label="train", **train)
    if "val_loss" in history[-1]:
        ax_loss.plot(ends, [r["val_loss"] for r in history], "-s", label="val", **val)
        ax_acc.plot(ends, [r["val_accuracy"] for r in history], "-s", label="val", **val)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)

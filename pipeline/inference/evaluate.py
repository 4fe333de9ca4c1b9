"""A restored run scored on the test split: accuracy with and without its test-time
augmentation, precision and recall per class, the confusion matrix and the most confident
mistakes, written to `<run>/eval/`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.files import write_json
from pipeline.inference.restore import Restored, RunDirError
from pipeline.training import steps
from pipeline.training.curves import pyplot, save_figure

MISTAKES_SHOWN = 24  # images in mistakes.png


def test_probabilities(restored: Restored, tta: str) -> np.ndarray:
    """Softmax probabilities (N, classes) for the test split, in its order."""
    model = restored.model

    @tf.function
    def probabilities(x):
        return tf.nn.softmax(steps.predict_logits(model, x, tta))

    batches = [probabilities(x).numpy() for x, _ in restored.inputs.eval_dataset("test")]
    return np.concatenate(batches) if batches else np.zeros((0, restored.cfg.model.num_classes))


def per_class_table(labels: np.ndarray, predicted: np.ndarray, class_names) -> list[dict]:
    """Precision, recall and support per class (precision of a never-predicted class: 0)."""
    rows = []
    for k, name in enumerate(class_names):
        true_k, pred_k = labels == k, predicted == k
        hits = int(np.sum(true_k & pred_k))
        rows.append(
            {
                "class": name,
                "precision": hits / int(pred_k.sum()) if pred_k.any() else 0.0,
                "recall": hits / int(true_k.sum()) if true_k.any() else 0.0,
                "support": int(true_k.sum()),
            }
        )
    return rows


def confusion(labels: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    """Counts (n, n): row = true class, column = predicted class."""
    return np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n)


def evaluate_run(restored: Restored, out: str | Path, log=print) -> dict:
    """Writes metrics.json, per_class.md/.json, confusion_matrix.png and mistakes.png into
    `out`; returns metrics.json's content.

    Raises:
        RunDirError: when the run has no test images (data.test_examples = 0).
    """
    cfg, splits = restored.cfg, restored.inputs.splits
    labels = splits.test.labels
    if not len(labels):
        raise RunDirError("the run's config has no test images (data.test_examples = 0)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = "the end of training" if restored.finished else "a run stopped early"
    log(
        f"evaluating {cfg.model.name} at epoch {restored.epochs_done} of {cfg.train.epochs:g} "
        f"({stage}; {Path(restored.checkpoint).name}) on {len(labels):,} test images"
    )
    probs = test_probabilities(restored, cfg.train.tta)
    plain = probs if cfg.train.tta == "none" else test_probabilities(restored, "none")
    predicted = probs.argmax(1)
    names = list(splits.class_names)
    table = per_class_table(labels, predicted, names)
    metrics = {
        "model": cfg.model.name,
        "epochs_trained": restored.epochs_done,
        "epochs": cfg.train.epochs,
        "finished": restored.finished,
        "checkpoint": Path(restored.checkpoint).name,
        "test_images": len(labels),
        "tta": cfg.train.tta,
        "test_accuracy": float(np.mean(predicted == labels)),
        "test_accuracy_no_tta": float(np.mean(plain.argmax(1) == labels)),
        "per_class": table,
    }
    write_json(out / "metrics.json", metrics)
    write_json(out / "per_class.json", table)
    (out / "per_class.md").write_text(_markdown(table, metrics))
    matrix = confusion(labels, predicted, len(names))
    plot_confusion(matrix, names, out / "confusion_matrix.png")
    plot_mistakes(splits.test.images, labels, probs, names, out / "mistakes.png")
    log(
        f"test accuracy {metrics['test_accuracy']:.2%} (TTA {cfg.train.tta}), "
        f"{metrics['test_accuracy_no_tta']:.2%} without; wrote {out}"
    )
    return metrics


def _markdown(table: list[dict], metrics: dict) -> str:
    lines = [
        f"Test accuracy {metrics['test_accuracy']:.2%} (TTA: {metrics['tta']}), "
        f"{metrics['test_accuracy_no_tta']:.2%} without; epoch {metrics['epochs_trained']} "
        f"of {metrics['epochs']}.",
        "",
        "| class | precision | recall | support |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['support']} |"
        for r in table
    ]
    return "\n".join(lines) + "\n"


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix: each row (true class) sums to 1."""
    plt = pyplot()
    rates = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if rates[i, j] >= 0.01:
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, f"{rates[i, j]:.2f}", ha="center", va="center", color=color, size=7)
    ax.set(xlabel="predicted class", ylabel="true class", title="confusion matrix (rows sum to 1)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path)


def plot_mistakes(images, labels, probs, names: list[str], path: Path) -> None:
    """The test images misclassified with the highest confidence, true and predicted class."""
    plt = pyplot()
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:MISTAKES_SHOWN]
    cols = 6
    rows = max(1, -(-len(worst) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst, strict=False):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(
            f"true {names[labels[i]]}\npred {names[predicted[i]]} {probs[i, predicted[i]]:.0%}",
            fontsize=7,
        )
    fig.suptitle("most confident mistakes" if len(worst) else "no mistakes", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)

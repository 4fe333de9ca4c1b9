"""Throughput measurements shared by `cifar-bench`: images per second, medians of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable


def images_per_second(
    make_batches: Callable[[], Iterable],
    repeats: int = 3,
    warmup: int = 1,
    max_batches: int | None = None,
) -> dict:
    """Runs `make_batches()` to the end `warmup + repeats` times; times each timed pass.

    Returns:
        {"median": images/s, "runs": [images/s, ...], "images": per pass}.
    """
    runs, images = [], 0
    for i in range(warmup + repeats):
        start, images = time.perf_counter(), 0
        for k, batch in enumerate(make_batches()):
            if max_batches is not None and k >= max_batches:
                break
            labels = batch[1]
            images += int(labels.shape[0])
            _ = labels.numpy() if hasattr(labels, "numpy") else labels  # wait for the batch
        if i >= warmup:
            runs.append(images / (time.perf_counter() - start))
    return {"median": statistics.median(runs), "runs": runs, "images": images}

"""Timing shared by the benchmark and the PyTorch twin: repeated passes, and the schedule
every contender follows (one module both import, so neither imports the other)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from pipeline.run_length import RunLength


def time_passes(one_pass: Callable[[], int], repeats: int, warmup: int = 1) -> dict:
    """Calls `one_pass() -> images` `warmup + repeats` times; images/s of the timed passes."""
    runs, images = [], 0
    for i in range(warmup + repeats):
        start = time.perf_counter()
        images = one_pass()
        if i >= warmup:
            runs.append(images / (time.perf_counter() - start))
    return {"median": statistics.median(runs), "runs": runs, "images": images}


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def schedule_length(steps: int) -> RunLength:
    """The learning-rate schedule every contender follows: 10 epochs of `steps` steps."""
    return RunLength(steps, 10 * steps)

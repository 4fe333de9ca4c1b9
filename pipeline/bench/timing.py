"""Timing shared by the benchmark and the PyTorch twin: repeated passes, and the schedule
every contender follows (one module both import, so neither imports the other)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from pipeline.run_length import RunLength


def time_passes(one_pass: Callable[[], int], repeats: int, warmup: int = 1) -> dict:
    """Calls `one_pass() -> images` `warmup + repeats` times; images/s of the timed passes."""
    return time_in_turn({"": one_pass}, repeats, warmup)[""]


def time_in_turn(
    passes: dict[str, Callable[[], int]], repeats: int, warmup: int = 1
) -> dict[str, dict]:
    """`time_passes` for several contenders at once, their passes taken in turn: `warmup`
    rounds, then `repeats` timed rounds of one pass each. A machine whose speed drifts
    during the run then slows every contender alike, where timing one contender's passes
    after the other's would credit the drift to one of them."""
    runs = {name: [] for name in passes}
    images = dict.fromkeys(passes, 0)
    for i in range(warmup + repeats):
        for name, one_pass in passes.items():
            start = time.perf_counter()
            images[name] = one_pass()
            if i >= warmup:
                runs[name].append(images[name] / (time.perf_counter() - start))
    return {
        name: {"median": statistics.median(r), "runs": r, "images": images[name]}
        for name, r in runs.items()
    }


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

"""How long a run is, in steps: computed once and handed to the dataset, the schedule and
the loop alike (big_vision's `u.steps`), so none of them can disagree."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RunLength:
    steps_per_epoch: int  # batches per epoch, after any cut
    total_steps: int  # the run's steps; the last epoch is partial when epochs are fractional

    @property
    def epochs(self) -> int:
        """Epochs begun, the last of them possibly partial (9.9 epochs: 10)."""
        return -(-self.total_steps // self.steps_per_epoch)

    def steps_in_epoch(self, epoch: int) -> int:
        """Steps of 0-based `epoch`: a full epoch's, or what is left of the run."""
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))

    def steps_for(self, epochs: float, at_least: int = 1) -> int:
        """A duration given in epochs (a warm-up of 0.3 epochs, a freeze after 3) as steps,
        rounded, and at least `at_least`: every `*_epochs` setting becomes steps here."""
        return max(at_least, round(epochs * self.steps_per_epoch))


def is_due(count: int, every: int) -> bool:
    """A cadence of `every` steps (or epochs) falls on `count`; `every` <= 0: never."""
    return every > 0 and count % every == 0


def steps_until_due(count: int, every: int) -> int | None:
    """From `count`, how many more until a cadence of `every` falls (1..every); None when
    there is no cadence."""
    return every - count % every if every > 0 else None


def run_length(train_examples: int, batch_size: int, epochs: float, cut: int = 0) -> RunLength:
    """Full batches per epoch (the remainder is dropped), cut to `cut` steps when > 0;
    `epochs` may be fractional: ceil(steps_per_epoch * epochs) steps in all, as airbench94
    counts its 9.9 epochs (48 * 9.9 -> 476 steps).

    A cut epoch is still a fresh shuffle of the whole split: its first `cut` batches.
    """
    steps = train_examples // batch_size
    steps = min(steps, cut) if cut else steps
    # round() first: 48 * 10.0 must not become 481 through a float's last digit.
    return RunLength(steps, math.ceil(round(steps * epochs, 6)))

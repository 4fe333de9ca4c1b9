"""How long a run is, in steps: computed once and handed to the dataset, the schedule and
the loop alike (big_vision's `u.steps`), so none of them can disagree."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunLength:
    steps_per_epoch: int  # batches per epoch, after any cut
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def run_length(train_examples: int, batch_size: int, epochs: int, cut: int = 0) -> RunLength:
    """Full batches per epoch (the remainder is dropped), cut to `cut` steps when > 0.

    A cut epoch is still a fresh shuffle of the whole split: its first `cut` batches.
    """
    steps = train_examples // batch_size
    return RunLength(min(steps, cut) if cut else steps, epochs)

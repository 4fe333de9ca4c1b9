"""Run lengths: fractional durations round to the nearest step, on values that do not
come out whole (int() would pass whole ones)."""

import pytest

from pipeline.config import OptimConfig
from pipeline.run_length import RunLength, run_length


@pytest.mark.parametrize(
    "epochs, steps",
    [(0.3, 115), (0.7, 267), (2.277, 870), (0.001, 1)],  # 114.6, 267.4, 869.8, 0.38 (at least 1)
)
def test_durations_in_epochs_round_to_the_nearest_step(epochs, steps):
    assert RunLength(382, 3820).steps_for(epochs) == steps


def test_the_warm_up_ends_at_its_rounded_step():
    """0.3 epochs of 382 steps is 114.6: the ramp reaches the peak at step 115, not 114."""
    from pipeline.training.optim import lr_at

    length = run_length(382 * 64, 64, 2)
    cfg = OptimConfig(lr=1.0, schedule="constant", warmup_epochs=0.3, warmup_start_fraction=0.0)
    assert float(lr_at(114, cfg, length)) == pytest.approx(114 / 115)
    assert float(lr_at(115, cfg, length)) == pytest.approx(1.0)


def test_fractional_epochs_make_ceil_steps_and_a_short_last_epoch():
    length = run_length(50_000, 1024, 9.9)  # airbench94's 476 steps
    assert (length.steps_per_epoch, length.total_steps, length.epochs) == (48, 476, 10)
    assert length.steps_in_epoch(9) == 44

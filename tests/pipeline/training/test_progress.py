"""Progress off a terminal is a timed line with rate and time left; the epoch's summary
line and the scalars Keras callbacks get."""

import keras
import pytest

from pipeline.training import progress
from tests.conftest import tiny_config


def test_progress_lines_wait_their_interval():
    printed = []
    lines = progress.ProgressLines(100, "2/5", 64, every_seconds=3600, log=printed.append)
    for step in range(1, 100):
        lines.update(step, [("loss", 1.0)])
    assert printed == []  # an hour between lines: none in a fast epoch


class _Clock:
    """A time.monotonic that moves only when told."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def test_progress_lines_time_from_the_first_step_seen_and_say_rate_and_time_left(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    printed = []
    lines = progress.ProgressLines(100, "3/10", 64, every_seconds=30, log=printed.append)
    # A resume at step 40: the steps before it are not timed.
    lines.update(40, [("loss", 1.23456), ("acc", 0.5)])
    clock.now += 29.9
    lines.update(50, [("loss", 1.0)])
    assert printed == []  # 29.9 s after the start: not yet
    clock.now += 0.1  # 30 s, 20 steps past the resume: 2/3 step/s, 42.7 images/s, 60 s left
    lines.update(60, [("loss", 1.0), ("acc", 0.25)])
    assert printed == [
        "epoch 3/10 step 60/100  loss 1.0000  acc 0.2500  43 images/s  epoch ends in 60 s"
    ]
    clock.now += 29
    lines.update(70, [("loss", 0.5)])  # 29 s after the last line: not yet
    clock.now += 30
    lines.update(100, [("loss", 0.5)])  # the epoch's end: its summary line closes it
    assert len(printed) == 1


def test_progress_lines_rate_from_one_step_in_half_a_second_and_none_in_no_time(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    printed = []
    lines = progress.ProgressLines(10, "1/1", 32, every_seconds=0, log=printed.append)
    lines.update(2, [])  # the first step seen: timing starts here
    lines.update(3, [])  # one step in no time: no rate rather than a division by zero
    clock.now += 0.5
    lines.update(4, [])  # two steps in 0.5 s: 4 steps/s, 128 images/s, 6 steps left
    assert printed == [
        "epoch 1/1 step 2/10    0 images/s  epoch ends in ?",
        "epoch 1/1 step 3/10    0 images/s  epoch ends in ?",
        "epoch 1/1 step 4/10    128 images/s  epoch ends in 2 s",
    ]


def test_progress_lines_without_steps_done_give_no_rate(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    printed = []
    lines = progress.ProgressLines(10, "1/1", 32, every_seconds=0, log=printed.append)
    clock.now += 1
    lines.update(4, [])
    assert printed == ["epoch 1/1 step 4/10    0 images/s  epoch ends in ?"]


def test_the_epoch_summary_line_and_the_callbacks_scalars():
    row = {
        "epoch": 2,
        "train_loss": 1.5,
        "train_accuracy": 0.25,
        "seconds": 12.34,
        "step_losses": [1.0],
    }
    assert progress.summary(row, 5) == "epoch 2/5  train loss 1.5000 acc 0.2500  12.3s"
    row.update(val_loss=0.75, val_accuracy=0.125)
    assert progress.summary(row, 5) == (
        "epoch 2/5  train loss 1.5000 acc 0.2500  val loss 0.7500 acc 0.1250  12.3s"
    )
    assert progress.epoch_logs(row) == {
        "train_loss": 1.5,
        "train_accuracy": 0.25,
        "seconds": 12.34,
        "val_loss": 0.75,
        "val_accuracy": 0.125,
    }


@pytest.mark.parametrize("tty", [False, True])
def test_progress_is_a_bar_on_a_terminal_or_when_asked_lines_otherwise_or_none(
    monkeypatch, capsys, tty
):
    monkeypatch.setattr(progress.sys.stdout, "isatty", lambda: tty, raising=False)
    made = {
        mode: progress.progress_bar(
            tiny_config(**{"train.progress": mode, "train.progress_every_seconds": 7.0}).train,
            64,
            4,
        )(10, 2)
        for mode in ("none", "bar", "auto")
    }
    assert made["none"] is None
    bar = made["bar"]
    assert isinstance(bar, keras.utils.Progbar)
    assert (bar.target, bar.verbose, bar.stateful_metrics) == (10, 1, {"loss", "acc"})
    if tty:
        assert isinstance(made["auto"], keras.utils.Progbar)
    else:
        lines = made["auto"]
        assert isinstance(lines, progress.ProgressLines)
        assert (lines.n_steps, lines.epoch, lines.batch_size, lines.every_seconds) == (
            10,
            "2/4",
            64,
            7.0,
        )
        lines.log("a line")
        assert capsys.readouterr().out == "a line\n"

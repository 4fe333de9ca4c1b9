"""The controller runs its run actions at their named points, in list order, and saves at
the checkpoint cadence, the last epoch and a stop."""

import keras
import pytest

from pipeline.errors import Preempted
from pipeline.runtime import preemption
from pipeline.training import controller, loop, run
from tests.conftest import tiny_config


class Spy(controller.RunAction):
    def __init__(self, seen: list, name: str):
        self.seen, self.name = seen, name

    def begin(self, trainer):
        self.seen.append((self.name, "begin", trainer.global_step))

    def epoch_begin(self, trainer, epoch):
        self.seen.append((self.name, "epoch_begin", epoch))

    def after_call(self, trainer):
        self.seen.append((self.name, "after_call", trainer.global_step))

    def epoch_end(self, trainer, history):
        self.seen.append((self.name, "epoch_end", history[-1]["epoch"]))

    def between_epochs(self, trainer, history, stopping):
        self.seen.append((self.name, "between_epochs", history[-1]["epoch"], stopping))

    def stopped(self, trainer):
        self.seen.append((self.name, "stopped", trainer.global_step))

    def end(self, trainer, history):
        self.seen.append((self.name, "end", len(history)))


class SavesRecorded:
    """A run directory that records the steps it is asked to save at."""

    def __init__(self):
        self.saved = []

    def save(self, global_step, position):
        self.saved.append((global_step, position))


def _trainer(epochs, flag=None, **updates):
    cfg = tiny_config(**{"train.epochs": epochs, **updates})
    strategy, inputs = run.prepare(cfg)
    model = run.build(cfg, strategy)
    length = inputs.run_length(epochs)
    trainer = loop.Trainer(model, inputs, cfg, strategy, length, flag)
    trainer.start(0)
    return trainer, cfg


def test_run_actions_are_called_at_named_points_in_list_order():
    # 8 steps an epoch, 2 epochs, calls of at most 3 steps: calls end at 3, 6, 8 | 11, 14, 16.
    trainer, cfg = _trainer(2)
    seen = []
    actions = [Spy(seen, "a"), Spy(seen, "b")]
    run_loop = controller.Controller(trainer, actions, preemption.StopRequests(), str, 3)
    history = []
    run_loop.run(0, history)
    points = [e for e in seen if e[0] == "a"]
    assert points == [
        ("a", "begin", 0),
        ("a", "epoch_begin", 0),
        ("a", "after_call", 3),
        ("a", "after_call", 6),
        ("a", "epoch_end", 1),
        ("a", "between_epochs", 1, False),
        ("a", "epoch_begin", 1),
        ("a", "after_call", 11),
        ("a", "after_call", 14),
        ("a", "epoch_end", 2),
        ("a", "between_epochs", 2, False),
        ("a", "end", 2),
    ]
    # Each point reaches every action before the next point: "b" right after "a".
    assert [e[1:] for e in seen[1::2]] == [e[1:] for e in points]
    assert [row["epoch"] for row in history] == [1, 2]


def test_checkpoints_follow_the_cadence_the_last_epoch_and_steps_inside_epochs():
    # 3 epochs of 8 steps; every 2 epochs counted from the start (after epoch 2, step 16),
    # the last (step 24), and every 5 steps inside an epoch (steps 5, 13, 21).
    trainer, cfg = _trainer(
        3, **{"train.checkpoint_every_epochs": 2, "train.checkpoint_every_steps": 5}
    )
    run_dir = SavesRecorded()
    saves = controller.Checkpoints(run_dir, cfg.train, start=0)
    controller.Controller(trainer, [saves], preemption.StopRequests(), str, 50).run(0, [])
    assert [step for step, _ in run_dir.saved] == [5, 13, 16, 21, 24]
    assert run_dir.saved[0][1] == "epoch 1, step 5/8"
    assert run_dir.saved[2][1] == "end of epoch 2"


def test_a_stop_inside_an_epoch_saves_the_step_reached_and_raises():
    stops = preemption.StopRequests()
    trainer, cfg = _trainer(2, stops.flag)
    run_dir = SavesRecorded()
    seen = []

    class StopAtFour(controller.RunAction):
        def after_call(self, trainer):
            if trainer.global_step == 4:
                stops.flag.assign(True)  # as the signal watcher does

    run_actions = [StopAtFour(), controller.Checkpoints(run_dir, cfg.train, 0), Spy(seen, "s")]
    run_loop = controller.Controller(trainer, run_actions, stops, lambda: "kept", 4)
    with pytest.raises(Preempted, match="at epoch 1, step 4/8; kept"):
        run_loop.run(0, [])
    assert run_dir.saved == [(4, "epoch 1, step 4/8")]
    assert ("s", "stopped", 4) in seen and not [e for e in seen if e[1] == "epoch_end"]


def test_fit_hands_the_run_to_the_controller_with_its_four_actions(monkeypatch):
    made = []
    original = controller.Controller.__init__

    def spy_init(self, trainer, run_actions, *args):
        made.append([type(a).__name__ for a in run_actions])
        original(self, trainer, run_actions, *args)

    monkeypatch.setattr(controller.Controller, "__init__", spy_init)
    run.train(tiny_config(), log=lambda s: None)
    assert made == [["Validate", "Record", "Checkpoints", "Report"]]


def test_a_stop_agreed_during_an_epochs_validation_is_saved_off_the_cadence():
    # Checkpoints every 2 epochs: epoch 1's end is off the cadence, but a stop agreed while
    # it validates (after its last step) must still leave a checkpoint of epoch 1.
    stops = preemption.StopRequests()
    trainer, cfg = _trainer(3, stops.flag, **{"train.checkpoint_every_epochs": 2})
    run_dir = SavesRecorded()

    class StopWhileValidating(controller.RunAction):
        def epoch_end(self, trainer, history):
            if history[-1]["epoch"] == 1:
                stops.flag.assign(True)  # as the signal watcher does

    run_actions = [StopWhileValidating(), controller.Checkpoints(run_dir, cfg.train, 0)]
    run_loop = controller.Controller(trainer, run_actions, stops, lambda: "kept", 50)
    with pytest.raises(Preempted, match="after epoch 1; kept"):
        run_loop.run(0, [])
    assert run_dir.saved == [(8, "end of epoch 1")]


def test_without_a_terminal_progress_is_a_timed_line_with_rate_and_time_left(capsys):
    # 8 steps an epoch in calls of 3 (a checkpoint every 3 steps): lines after steps 3
    # and 6; the epoch's own summary closes it (no line at step 8).
    import pathlib
    import tempfile

    cfg = tiny_config(
        **{
            "train.progress": "auto",
            "train.progress_every_seconds": 0.0,
            "train.checkpoint_every_steps": 3,
            "train.out_dir": tempfile.mkdtemp(),
        }
    )
    run.train(cfg, log=lambda s: None)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1 ")]
    assert [line.split()[3] for line in lines] == ["3/8", "6/8"], lines
    assert all("loss" in line and "images/s" in line and "epoch ends in" in line for line in lines)
    assert pathlib.Path(cfg.train.out_dir).is_dir()


def test_progress_lines_wait_their_interval():
    printed = []
    lines = controller.ProgressLines(100, "2/5", 64, every_seconds=3600, log=printed.append)
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
    monkeypatch.setattr(controller.time, "monotonic", clock)
    printed = []
    lines = controller.ProgressLines(100, "3/10", 64, every_seconds=30, log=printed.append)
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


def test_progress_lines_without_steps_done_give_no_rate(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(controller.time, "monotonic", clock)
    printed = []
    lines = controller.ProgressLines(10, "1/1", 32, every_seconds=0, log=printed.append)
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
    assert controller.summary(row, 5) == "epoch 2/5  train loss 1.5000 acc 0.2500  12.3s"
    row.update(val_loss=0.75, val_accuracy=0.125)
    assert controller.summary(row, 5) == (
        "epoch 2/5  train loss 1.5000 acc 0.2500  val loss 0.7500 acc 0.1250  12.3s"
    )
    assert controller.epoch_logs(row) == {
        "train_loss": 1.5,
        "train_accuracy": 0.25,
        "seconds": 12.34,
        "val_loss": 0.75,
        "val_accuracy": 0.125,
    }


@pytest.mark.parametrize("tty", [False, True])
def test_progress_is_a_bar_on_a_terminal_or_when_asked_lines_otherwise_or_none(monkeypatch, tty):
    monkeypatch.setattr(controller.sys.stdout, "isatty", lambda: tty, raising=False)
    made = {
        progress: controller.progress_bar(
            tiny_config(**{"train.progress": progress, "train.progress_every_seconds": 7.0}).train,
            64,
            4,
        )(10, 2)
        for progress in ("none", "bar", "auto")
    }
    assert made["none"] is None
    assert isinstance(made["bar"], keras.utils.Progbar)
    if tty:
        assert isinstance(made["auto"], keras.utils.Progbar)
    else:
        lines = made["auto"]
        assert isinstance(lines, controller.ProgressLines)
        assert (lines.n_steps, lines.epoch, lines.batch_size, lines.every_seconds) == (
            10,
            "2/4",
            64,
            7.0,
        )

"""The Controller is the one loop: it trains in calls that end where an action is due, runs
the actions due at each point in list order, and saves at the checkpoint cadence, the last
epoch and a stop."""

import pytest
import tensorflow as tf

from pipeline.errors import Preempted
from pipeline.run_length import RunLength
from pipeline.runtime import preemption
from pipeline.training import actions, controller
from pipeline.training.actions import POINTS, Action, When
from tests.conftest import tiny_config

STEPS_PER_EPOCH = 8


class StepTrainer:
    """The Trainer's side of the loop without a model, so these tests time the Controller
    and not tracing: `train(n, data)` does n steps, none once the stop flag is set (as the
    compiled step checks it), and the running metrics count the steps since the last
    reset. Runs with the real Trainer: test_actions_in_runs.py."""

    def __init__(self, length, stop_flag):
        self.length, self.strategy = length, tf.distribute.get_strategy()
        self._stop_flag, self.steps_recorded = stop_flag, 0

    def train(self, n, data):
        if self.stop_agreed():
            return 0
        self.steps_recorded += n
        return n

    def stop_agreed(self):
        return self._stop_flag is not None and bool(self._stop_flag.numpy())

    def running_loss_and_accuracy(self):
        return 2.0 / (1 + self.steps_recorded), 0.5

    def metrics(self):
        loss, accuracy = self.running_loss_and_accuracy()
        return {
            "train_loss": loss,
            "train_accuracy": accuracy,
            "step_losses": [loss] * self.steps_recorded,
        }

    def reset_metrics(self):
        self.steps_recorded = 0


def test_the_step_trainer_takes_what_the_trainer_takes():
    import inspect

    from pipeline.training.trainer import Trainer

    for name in ("train", "running_loss_and_accuracy", "metrics", "reset_metrics"):
        ours, theirs = getattr(StepTrainer, name), getattr(Trainer, name)
        assert list(inspect.signature(ours).parameters) == list(
            inspect.signature(theirs).parameters
        ), name
    assert isinstance(Trainer.steps_recorded, property)


class AskedData:
    """Inputs whose training data records the (epoch, step) each run asks it to start at."""

    def __init__(self):
        self.asked = []

    def train_dataset_fn(self, length, epoch=0, step=0):
        self.asked.append((epoch, step))
        return lambda context: tf.data.Dataset.range(length.total_steps)


class Spy(Action):
    """Due at every point; records (name, point, global step, epoch)."""

    when = When(points=POINTS)

    def __init__(self, seen: list, name: str):
        self.seen, self.name = seen, name

    def __call__(self, at):
        self.seen.append((self.name, at.point, at.global_step, at.epoch))
        self.rows = len(at.history)  # every point sees the run's history
        self.flags = getattr(self, "flags", [])
        if at.point == "steps":
            self.flags.append((at.global_step, at.epoch_complete, at.last_step))


class SavesRecorded:
    """A run directory that records the steps it is asked to save at."""

    def __init__(self):
        self.saved = []

    def save(self, global_step, position):
        self.saved.append((global_step, position))


class StopAt(Action):
    """Sets the stop flag, as the signal watcher does, at `point` where `reached(at)`."""

    def __init__(self, stops, point, reached):
        self.stops, self.reached, self.when = stops, reached, When(points=(point,))

    def __call__(self, at):
        if self.reached(at):
            self.stops.flag.assign(True)


def _controller(epochs, run_actions, steps_per_call, stops=None, **updates):
    cfg = tiny_config(**{"train.epochs": epochs, **updates})
    length = RunLength(STEPS_PER_EPOCH, STEPS_PER_EPOCH * epochs)
    fitted = StepTrainer(length, stops.flag if stops else None)
    stops = stops or preemption.StopRequests()
    made = [a(cfg) if callable(a) and not isinstance(a, Action) else a for a in run_actions]
    return controller.Controller(fitted, AskedData(), made, stops, steps_per_call, lambda: "kept")


def test_actions_are_called_at_their_points_in_list_order():
    # 8 steps an epoch, 2 epochs, calls of at most 3 steps: calls end at 3, 6, 8 | 11, 14, 16.
    seen = []
    run_loop = _controller(2, [Spy(seen, "a"), Spy(seen, "b")], 3)
    history = []
    run_loop.run(0, history)
    points = [e[1:] for e in seen if e[0] == "a"]
    assert points == [
        ("begin", 0, 0),
        ("epoch_begin", 0, 0),
        ("steps", 3, 0),
        ("steps", 6, 0),
        ("steps", 8, 0),
        ("epoch_end", 8, 1),
        ("after_epoch", 8, 1),
        ("epoch_begin", 8, 1),
        ("steps", 11, 1),
        ("steps", 14, 1),
        ("steps", 16, 1),
        ("epoch_end", 16, 2),
        ("after_epoch", 16, 2),
        ("end", 16, 2),
    ]
    # Each point reaches every action before the next point: "b" right after "a".
    assert [e[1:] for e in seen[1::2]] == points
    assert [row["epoch"] for row in history] == [1, 2]
    spy = run_loop.actions[0]
    assert spy.rows == 2
    assert spy.flags == [
        (3, False, False),
        (6, False, False),
        (8, True, False),
        (11, False, False),
        (14, False, False),
        (16, True, True),
    ]


class _Progress:
    """A progress factory recording the bars it makes and their updates."""

    def __init__(self):
        self.made, self.updates = [], []

    def __call__(self, n_steps, epoch):
        self.made.append((n_steps, epoch))
        return self

    def update(self, step, values):
        self.updates.append((step, [name for name, _ in values], [v for _, v in values]))


def test_each_epoch_gets_a_bar_updated_after_each_call_with_loss_and_accuracy():
    bars = _Progress()
    run_loop = _controller(2, [], 5)
    run_loop.run(0, [], bars)
    assert bars.made == [(8, 1), (8, 2)]
    assert [(step, names) for step, names, _ in bars.updates] == [
        (5, ["loss", "acc"]),
        (8, ["loss", "acc"]),
    ] * 2
    assert all(v[0] > 0 and 0 <= v[1] <= 1 for _, _, v in bars.updates)


def test_a_diverged_loss_names_the_epoch_and_step_and_what_is_kept(monkeypatch):
    from pipeline.errors import NonFiniteLossError

    run_loop = _controller(2, [], 3)
    real = run_loop.trainer.train
    calls = []

    def diverges_on_the_second_call(n, data):
        calls.append(n)
        done = real(n, data)
        if len(calls) == 2:
            raise NonFiniteLossError("training loss became nan")
        return done

    monkeypatch.setattr(run_loop.trainer, "train", diverges_on_the_second_call)
    with pytest.raises(NonFiniteLossError) as raised:
        run_loop.run(0, [])
    assert str(raised.value) == (
        "training loss became nan at epoch 1, step 6: lower the learning rate (--lr) or "
        "use float32; kept"
    )


def test_a_resume_reads_the_data_from_its_epoch_and_step():
    run_loop = _controller(3, [], 50)
    run_loop._epoch_step.assign(3)  # as a checkpoint of epoch 2, step 3 restores
    history = []
    run_loop.run(1, history)
    assert run_loop.inputs.asked == [(1, 3)]
    assert [row["epoch"] for row in history] == [2, 3]
    assert len(history[0]["step_losses"]) == 5 and run_loop.global_step == 24


def test_checkpoints_follow_the_cadence_the_last_epoch_and_steps_inside_epochs():
    # 3 epochs of 8 steps; every 2 epochs counted from the start (after epoch 2, step 16),
    # the last (step 24), and every 5 steps inside an epoch (steps 5, 13, 21).
    run_dir = SavesRecorded()
    run_loop = _controller(
        3,
        [lambda cfg: actions.Checkpoints(run_dir, cfg.train)],
        50,
        **{"train.checkpoint_every_epochs": 2, "train.checkpoint_every_steps": 5},
    )
    run_loop.run(0, [])
    assert [step for step, _ in run_dir.saved] == [5, 13, 16, 21, 24]
    assert run_dir.saved[0][1] == "epoch 1, step 5/8"
    assert run_dir.saved[2][1] == "end of epoch 2"


def test_the_epoch_cadence_counts_from_the_epoch_a_resume_starts_at():
    run_dir = SavesRecorded()
    run_loop = _controller(
        4,
        [lambda cfg: actions.Checkpoints(run_dir, cfg.train)],
        50,
        **{"train.checkpoint_every_epochs": 2},
    )
    run_loop.run(1, [])  # epochs 2-4: saves after epoch 3 (2 from the start) and 4 (last)
    assert [step for step, _ in run_dir.saved] == [24, 32]


def test_a_stop_inside_an_epoch_saves_the_step_reached_and_raises():
    stops = preemption.StopRequests()
    run_dir = SavesRecorded()
    seen = []
    run_actions = [
        StopAt(stops, "steps", lambda at: at.global_step == 4),
        lambda cfg: actions.Checkpoints(run_dir, cfg.train),
        Spy(seen, "s"),
    ]
    run_loop = _controller(2, run_actions, 4, stops)
    with pytest.raises(Preempted, match="at epoch 1, step 4/8; kept"):
        run_loop.run(0, [])
    assert run_dir.saved == [(4, "epoch 1, step 4/8")]
    assert ("s", "stopped", 4, 0) in seen and not [e for e in seen if e[1] == "epoch_end"]


def test_a_stop_on_a_cadence_step_is_saved_once():
    stops = preemption.StopRequests()
    run_dir = SavesRecorded()
    saves = lambda cfg: actions.Checkpoints(run_dir, cfg.train)  # noqa: E731
    run_loop = _controller(
        2,
        [StopAt(stops, "steps", lambda at: at.global_step == 3), saves],
        3,
        stops,
        **{"train.checkpoint_every_steps": 3},
    )
    with pytest.raises(Preempted):
        run_loop.run(0, [])
    assert run_dir.saved == [(3, "epoch 1, step 3/8")]


def test_a_stop_agreed_during_an_epochs_validation_is_saved_off_the_cadence():
    # Checkpoints every 2 epochs: epoch 1's end is off the cadence, but a stop agreed while
    # it validates (after its last step) must still leave a checkpoint of epoch 1.
    stops = preemption.StopRequests()
    run_dir = SavesRecorded()
    run_actions = [
        StopAt(stops, "epoch_end", lambda at: at.history[-1]["epoch"] == 1),
        lambda cfg: actions.Checkpoints(run_dir, cfg.train),
    ]
    run_loop = _controller(3, run_actions, 50, stops, **{"train.checkpoint_every_epochs": 2})
    with pytest.raises(Preempted, match="after epoch 1; kept"):
        run_loop.run(0, [])
    assert run_dir.saved == [(8, "end of epoch 1")]


def test_the_run_state_names_the_position_and_each_actions_state():
    class Holds(Action):
        def __init__(self, **state):
            self._state = state

        def state(self):
            return self._state

    run_loop = _controller(1, [Holds(a=1), Action(), Holds(b=2, c=3)], 50)
    state = run_loop.state()
    assert sorted(state) == ["action_a", "action_b", "action_c", "epoch", "epoch_step"]
    assert (state["action_a"], state["action_b"], state["action_c"]) == (1, 2, 3)

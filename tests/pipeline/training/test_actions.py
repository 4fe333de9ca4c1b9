import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError
from pipeline.run_length import RunLength, is_due, steps_until_due
from pipeline.training import actions
from pipeline.training.actions import POINTS
from tests.conftest import tiny_config


def _bn_model():
    """Dense (kernel, bias) + BN (beta, moving stats) + a seed generator's int state."""
    inputs = keras.Input((3,))
    x = keras.layers.Dense(2, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.Dropout(0.5)(x))


def test_lookahead_moves_the_slow_copy_as_airbench94_and_ends_on_it():
    model = _bn_model()
    strategy = tf.distribute.get_strategy()
    look = actions.Lookahead(model, every=5, total_steps=10, strategy=strategy)
    assert all(not slow.trainable and "lookahead_slow" in slow.name for slow in look.slow)
    names = sorted(v.path for v in look.variables)
    # Every float variable, BN statistics included (airbench94's state_dict); no int state.
    assert names == ["bn/beta", "bn/gamma", "bn/moving_mean", "bn/moving_variance"] + [
        "dense/bias",
        "dense/kernel",
    ]
    kernel = model.get_layer("dense").kernel
    mean = model.get_layer("bn").moving_mean
    w0, m0 = kernel.numpy().copy(), mean.numpy().copy()
    w1, m1 = w0 + 1.0, m0 + 2.0
    kernel.assign(w1)
    mean.assign(m1)
    # Step 5 of 10: decay = 0.95**5 * (5/10)**3 = 0.7737809 * 0.125 = 0.0967226;
    # slow = slow + (1 - decay) * (w - slow); w = slow.
    decay = 0.95**5 * 0.5**3
    assert look.decay(5) == pytest.approx(0.0967226, abs=1e-7)
    look(types.SimpleNamespace(global_step=5, last_step=False))
    np.testing.assert_allclose(kernel.numpy(), w0 + (1 - decay) * 1.0, rtol=1e-6)
    np.testing.assert_allclose(mean.numpy(), m0 + (1 - decay) * 2.0, rtol=1e-6)
    slow_kernel = kernel.numpy().copy()
    # After the last step the weights become the slow copy, which does not move.
    kernel.assign(w1 + 10.0)
    look(types.SimpleNamespace(global_step=11, last_step=True))  # off its cadence
    np.testing.assert_allclose(kernel.numpy(), slow_kernel, rtol=1e-6)
    assert look.decay(10) == pytest.approx(0.95**5)


def _at(point="steps", **where):
    base = dict(
        trainer=None,
        history=[],
        global_step=0,
        epoch=0,
        epoch_step=0,
        epoch_complete=False,
        start_epoch=0,
        last_step=False,
        last_epoch=False,
        stopping=False,
    )
    return types.SimpleNamespace(point=point, **{**base, **where})


def test_steps_to_next_is_the_nearest_step_cadence():
    when = actions.When(every_steps=5, every_epoch_steps=144)
    assert [when.steps_to_next(_at(global_step=s, epoch_step=s)) for s in (0, 3, 140, 143)] == [
        5,
        2,
        4,
        1,
    ]
    assert when.steps_to_next(_at(global_step=474, epoch_step=2)) == 1
    assert actions.When(points=POINTS).steps_to_next(_at(global_step=470)) is None


def test_one_cadence_helper_for_steps_and_epochs():
    # every 5: due at 0, 5, 10; from 3 the next is 2 away, from 5 a whole 5.
    assert [n for n in range(12) if is_due(n, 5)] == [0, 5, 10]
    assert [steps_until_due(n, 5) for n in (0, 3, 4, 5)] == [5, 2, 1, 5]
    assert not any(is_due(n, 0) for n in range(3)) and steps_until_due(7, 0) is None


def test_when_is_due_at_its_points_its_step_cadences_and_the_last_step():
    every_3 = actions.When(every_steps=3, last_step=True)
    due = [s for s in range(1, 8) if every_3.due(_at(global_step=s, last_step=s == 7))]
    assert due == [3, 6, 7]
    assert not actions.When().due(_at(global_step=6, last_step=True))
    assert actions.When(points=("epoch_end",)).due(_at("epoch_end"))
    assert not actions.When(points=("epoch_end",)).due(_at("after_epoch"))
    # Inside an epoch only: its end has its own cadence.
    inside = actions.When(every_epoch_steps=4)
    assert inside.due(_at(global_step=12, epoch_step=4))
    assert not inside.due(_at(global_step=16, epoch_step=8, epoch_complete=True))
    assert not inside.due(_at("after_epoch", global_step=16, epoch_step=8))


def test_the_epoch_cadence_counts_from_the_start_and_takes_the_last_epoch_and_a_stop():
    when = actions.When(every_epochs=2, last_epoch=True, stopping=True)
    after = lambda epoch, **kw: _at("after_epoch", epoch=epoch, start_epoch=1, **kw)  # noqa: E731
    assert [e for e in range(2, 7) if when.due(after(e))] == [3, 5]
    assert when.due(after(4, last_epoch=True)) and when.due(after(4, stopping=True))
    plain = actions.When(every_epochs=2)
    assert not plain.due(after(4, last_epoch=True)) and not plain.due(after(4, stopping=True))
    assert not actions.When(last_epoch=True).due(_at("steps", last_epoch=True))


def test_a_freeze_holds_at_every_point_including_a_resume_past_it():
    bias = keras.Variable([0.0])
    freeze = actions.FreezeAfter([bias], freeze_step=6)
    for point, step, trained in [
        ("begin", 0, True),
        ("steps", 5, True),
        ("steps", 6, False),
        ("begin", 9, False),
    ]:
        bias.trainable = not trained  # whatever it was before
        at = _at(point, global_step=step)
        assert freeze.when.due(at) is (point == "begin" or step == 6), (point, step)
        freeze(at)
        assert bias.trainable is trained, (point, step)
    assert freeze.freeze_step == 6 and freeze.state() == {}


def _whitening_model(use_bias=True):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 2, use_bias=use_bias, name="whiten")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))


def test_the_freeze_comes_first_then_lookahead_on_the_runs_steps():
    model = _whitening_model()
    cfg = tiny_config(**{"optim.whiten_bias_epochs": 0.5, "optim.lookahead_every_steps": 5})
    length = RunLength(48, 476)
    freeze, look = actions.state_actions(cfg, model, length, tf.distribute.get_strategy())
    assert isinstance(freeze, actions.FreezeAfter) and freeze.freeze_step == 24  # 0.5 x 48
    assert freeze.variables == [model.get_layer("whiten").bias]
    assert isinstance(look, actions.Lookahead) and (look.every, look.total) == (5, 476)
    assert look.when == actions.When(every_steps=5, last_step=True)
    assert actions.state_actions(tiny_config(), model, length, None) == []


# Built in the test, not at collection: mutmut forks its workers from a process that
# collected the tests, and TensorFlow hangs in a fork of a process that ran ops.
def _flatten_named_whiten():
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Flatten(name="whiten")(inputs))


@pytest.mark.parametrize(
    "make_model",
    [lambda: _whitening_model(use_bias=False), _flatten_named_whiten, object, _bn_model],
)
def test_a_freeze_without_a_whitening_bias_says_how_to_fix_it(make_model):
    cfg = tiny_config(**{"optim.whiten_bias_epochs": 1.0})
    wanted = (
        "^optim.whiten_bias_epochs freezes the whitening stem's bias, and this model has "
        "none: use custom_convnet with model.params.stem=whiten, or set "
        "optim.whiten_bias_epochs=0$"
    )
    with pytest.raises(ConfigError, match=wanted):
        actions.state_actions(cfg, make_model(), RunLength(8, 8), None)


class _Hooks:
    """A keras CallbackList that records its calls."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


def test_report_logs_each_epochs_line_and_calls_the_keras_hooks():
    hooks, lines = _Hooks(), []
    report = actions.Report(hooks, lines.append)
    row = {"epoch": 2, "train_loss": 1.5, "train_accuracy": 0.25, "seconds": 3.0}
    trainer = types.SimpleNamespace(length=RunLength(8, 40))  # 5 epochs
    for point, epoch in [("begin", 0), ("epoch_begin", 1), ("after_epoch", 2), ("end", 5)]:
        at = _at(point, epoch=epoch, trainer=trainer, history=[row])
        assert report.when.due(at)
        report(at)
    assert not report.when.due(_at("epoch_end")) and not report.when.due(_at("steps"))
    assert lines == ["epoch 2/5  train loss 1.5000 acc 0.2500  3.0s"]
    assert hooks.calls == [
        ("on_train_begin",),
        ("on_epoch_begin", 1),
        ("on_epoch_end", 1, {"train_loss": 1.5, "train_accuracy": 0.25, "seconds": 3.0}),
        ("on_train_end",),
    ]


def test_validate_refreshes_bn_then_scores_the_val_split_into_the_row():
    done = []

    def evaluate(split):
        done.append(split)
        return {"loss": 0.5, "accuracy": 0.75} if split == "val" else {}

    trainer = types.SimpleNamespace(recalibrate=lambda: done.append("bn"), evaluate=evaluate)
    row = {"epoch": 1}
    actions.Validate()(_at("epoch_end", trainer=trainer, history=[row]))
    assert done == ["bn", "val"] and row == {"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.75}
    no_val = types.SimpleNamespace(recalibrate=lambda: None, evaluate=lambda split: {})
    actions.Validate()(_at("epoch_end", trainer=no_val, history=[row := {"epoch": 1}]))
    assert row == {"epoch": 1}


def test_the_runs_list_changes_the_state_first_then_validates_records_saves_reports():
    model = _whitening_model()
    cfg = tiny_config(**{"optim.whiten_bias_epochs": 0.5, "optim.lookahead_every_steps": 5})
    length = RunLength(48, 476)
    made = actions.for_run(
        cfg, model, length, tf.distribute.get_strategy(), "RUN_DIR", "HOOKS", print
    )
    assert [type(a).__name__ for a in made] == [
        "FreezeAfter",
        "Lookahead",
        "Validate",
        "Record",
        "Checkpoints",
        "Report",
    ]
    freeze, look, _, record, saves, report = made
    assert freeze.variables == [model.get_layer("whiten").bias] and look.total == 476
    assert record.run_dir == saves.run_dir == "RUN_DIR" and report.hooks == "HOOKS"

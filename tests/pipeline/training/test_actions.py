import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError
from pipeline.run_length import RunLength, is_due, steps_until_due
from pipeline.training import actions, loop, run
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


class _Spy(actions.Action):
    """Records the point and global step at each call: at the start, every `every` steps
    and after the last step, as Lookahead and the freeze are called."""

    def __init__(self, every):
        self.when, self.seen = actions.When(("begin",), every_steps=every, last_step=True), []

    def __call__(self, at):
        self.seen.append((at.point, at.global_step))


def _with_spy(monkeypatch, every):
    spy = _Spy(every)
    made = actions.state_actions

    def state_actions(cfg, model, length, strategy):
        return [*made(cfg, model, length, strategy), spy]

    monkeypatch.setattr(actions, "state_actions", state_actions)
    return spy


def test_the_controller_runs_actions_at_their_steps_across_epochs_and_calls(monkeypatch):
    # 256 examples / batch 32 = 8 steps an epoch, 1.5 epochs = 12 steps; calls of at most
    # 5 steps; the action every 3: calls must end at 3, 6, 9, 12 whatever else ends them.
    monkeypatch.setattr(loop, "STEPS_PER_CALL", 5)
    spy = _with_spy(monkeypatch, every=3)
    result = run.train(tiny_config(**{"train.epochs": 1.5}), log=lambda s: None)
    assert spy.seen == [("begin", 0), *[("steps", s) for s in (3, 6, 9, 12)]]
    assert [r["epoch"] for r in result["history"]] == [1, 2]


def test_fractional_epochs_train_ceil_of_their_steps(tmp_path):
    # 8 steps an epoch: 1.3 epochs = ceil(10.4) = 11 steps, the second epoch 3 of them;
    # a resume inside it keeps the count.
    out = tmp_path / "run"
    cfg = tiny_config(**{"train.epochs": 1.3, "train.out_dir": str(out)})
    result = run.train(cfg, log=lambda s: None)
    reader = tf.train.load_checkpoint(str(out / "checkpoints"))
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 11
    assert len(result["history"]) == 2
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-11")
    # The data agrees: 11 batches from the start, 2 from step 1 of the second epoch.
    strategy, inputs = run.prepare(cfg)
    length = inputs.run_length(cfg.train.epochs)
    assert sum(1 for _ in inputs.train_dataset_fn(length)(None)) == 11
    assert sum(1 for _ in inputs.train_dataset_fn(length, 1, 1)(None)) == 2


def test_whitening_bias_trains_then_freezes_without_update_or_decay():
    cfg = tiny_config(
        **{
            "model.name": "custom_convnet",
            "model.params": {"widths": [8, 16]},
            "optim.optimizer": "nesterov",
            "optim.momentum": 0.85,
            "optim.lr": 0.05,
            "optim.weight_decay": 0.5,  # strong: a decayed frozen bias would move
            "optim.whiten_bias_epochs": 1.0,
            "train.epochs": 2,
        }
    )
    seen = {}

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            layers = self.model.get_layer("whiten"), self.model.get_layer("stage1_conv1")
            seen[epoch] = [layer.variables[-1].numpy().copy() for layer in layers]

    strategy, inputs = run.prepare(cfg)
    model = run.build(cfg, strategy, inputs)
    bias = model.get_layer("whiten").bias
    loop.fit(model, inputs, cfg, strategy, callbacks=[Watch()], log=lambda s: None)
    assert np.abs(seen[0][0]).max() > 0, "trained in epoch 1"
    np.testing.assert_array_equal(seen[1][0], seen[0][0])  # no step, no decay in epoch 2
    assert np.abs(seen[1][1] - seen[0][1]).max() > 0, "the rest still trains"
    assert not bias.trainable


def test_a_freeze_needs_a_whitening_stem():
    cfg = tiny_config(**{"optim.whiten_bias_epochs": 1.0})
    with pytest.raises(ConfigError, match="whiten_bias_epochs.*stem=whiten"):
        run.train(cfg, log=lambda s: None)


def _at(point="steps", **where):
    base = dict(
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


def test_no_validation_images_train_and_score_on_test(tmp_path):
    # airbench94 trains on all 50,000 images and reads only the test set.
    cfg = tiny_config(**{"data.val_examples": 0, "train.out_dir": str(tmp_path / "r")})
    result = run.train(cfg, log=lambda s: None)
    assert "val_accuracy" not in result and "val_accuracy" not in result["history"][0]
    assert 0 <= result["test_accuracy"] <= 1


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
@pytest.mark.parametrize("make_model", [lambda: _whitening_model(use_bias=False), object])
def test_a_freeze_without_a_whitening_bias_says_how_to_fix_it(make_model):
    cfg = tiny_config(**{"optim.whiten_bias_epochs": 1.0})
    with pytest.raises(ConfigError, match="stem=whiten, or set optim.whiten_bias_epochs=0"):
        actions.state_actions(cfg, make_model(), RunLength(8, 8), None)

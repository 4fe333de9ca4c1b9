import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError
from pipeline.run_length import RunLength, is_due, steps_until_due
from pipeline.training import actions, loop, run
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
    look.after_steps(types.SimpleNamespace(global_step=5))
    np.testing.assert_allclose(kernel.numpy(), w0 + (1 - decay) * 1.0, rtol=1e-6)
    np.testing.assert_allclose(mean.numpy(), m0 + (1 - decay) * 2.0, rtol=1e-6)
    slow_kernel = kernel.numpy().copy()
    # After the last step the weights become the slow copy, which does not move.
    kernel.assign(w1 + 10.0)
    look.end(types.SimpleNamespace(global_step=10))
    np.testing.assert_allclose(kernel.numpy(), slow_kernel, rtol=1e-6)
    assert look.decay(10) == pytest.approx(0.95**5)


class _Spy(actions.Action):
    """Records the global step at each point it is called at."""

    def __init__(self, every):
        self.every, self.seen = every, []

    def begin(self, trainer):
        self.seen.append(("begin", trainer.global_step))

    def after_steps(self, trainer):
        self.seen.append(("after", trainer.global_step))

    def end(self, trainer):
        self.seen.append(("end", trainer.global_step))


def _with_spy(monkeypatch, every):
    spy = _Spy(every)
    made = actions.from_config

    def from_config(cfg, model, length, strategy):
        found = made(cfg, model, length, strategy)
        return actions.Actions([*found.actions, spy], length)

    monkeypatch.setattr(actions, "from_config", from_config)
    return spy


def test_the_controller_runs_actions_at_their_steps_across_epochs_and_calls(monkeypatch):
    # 256 examples / batch 32 = 8 steps an epoch, 1.5 epochs = 12 steps; calls of at most
    # 5 steps; the action every 3: calls must end at 3, 6, 9, 12 whatever else ends them.
    monkeypatch.setattr(loop, "STEPS_PER_CALL", 5)
    spy = _with_spy(monkeypatch, every=3)
    result = run.train(tiny_config(**{"train.epochs": 1.5}), log=lambda s: None)
    assert spy.seen == [("begin", 0), *[("after", s) for s in (3, 6, 9, 12)], ("end", 12)]
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


def test_steps_to_next_action():
    length = RunLength(48, 476)
    both = actions.Actions([_Spy(5), _Spy(144)], length)
    assert [both.steps_to_next(s) for s in (0, 3, 140, 143, 474)] == [5, 2, 4, 1, 1]
    assert actions.Actions([], length).steps_to_next(470) == 6


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


def test_after_call_runs_each_action_when_due_and_ends_them_at_the_last_step():
    length = RunLength(4, 7)
    every_3, never = _Spy(3), _Spy(0)
    both = actions.Actions([every_3, never], length)
    for step in range(1, 8):
        both.after_call(types.SimpleNamespace(global_step=step))
    assert every_3.seen == [("after", 3), ("after", 6), ("end", 7)]
    assert never.seen == [("end", 7)]


def test_the_actions_state_is_named_by_action_and_key():
    class Holds(actions.Action):
        def __init__(self, **state):
            self._state = state

        def state(self):
            return self._state

    held = actions.Actions([Holds(a=1), actions.Action(), Holds(b=2, c=3)], RunLength(1, 1))
    assert held.state() == {"action_a": 1, "action_b": 2, "action_c": 3}


def test_a_freeze_holds_at_every_point_including_a_resume_past_it():
    bias = keras.Variable([0.0])
    freeze = actions.FreezeAfter([bias], freeze_step=6)
    for point, step, trained in [
        ("begin", 0, True),
        ("after_steps", 5, True),
        ("after_steps", 6, False),
        ("begin", 9, False),
    ]:
        bias.trainable = not trained  # whatever it was before
        getattr(freeze, point)(types.SimpleNamespace(global_step=step))
        assert bias.trainable is trained, (point, step)
    assert freeze.freeze_step == freeze.every == 6 and freeze.state() == {}


def _whitening_model(use_bias=True):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 2, use_bias=use_bias, name="whiten")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))


def test_from_config_freezes_first_then_looks_ahead_on_the_runs_steps():
    model = _whitening_model()
    cfg = tiny_config(**{"optim.whiten_bias_epochs": 0.5, "optim.lookahead_every_steps": 5})
    length = RunLength(48, 476)
    made = actions.from_config(cfg, model, length, tf.distribute.get_strategy())
    freeze, look = made.actions
    assert isinstance(freeze, actions.FreezeAfter) and freeze.freeze_step == 24  # 0.5 x 48
    assert freeze.variables == [model.get_layer("whiten").bias]
    assert isinstance(look, actions.Lookahead) and (look.every, look.total) == (5, 476)
    assert made.length is length
    assert actions.from_config(tiny_config(), model, length, None).actions == []


# Built in the test, not at collection: mutmut forks its workers from a process that
# collected the tests, and TensorFlow hangs in a fork of a process that ran ops.
@pytest.mark.parametrize("make_model", [lambda: _whitening_model(use_bias=False), object])
def test_a_freeze_without_a_whitening_bias_says_how_to_fix_it(make_model):
    cfg = tiny_config(**{"optim.whiten_bias_epochs": 1.0})
    with pytest.raises(ConfigError, match="stem=whiten, or set optim.whiten_bias_epochs=0"):
        actions.from_config(cfg, make_model(), RunLength(8, 8), None)

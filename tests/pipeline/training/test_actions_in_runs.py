"""The actions and the Controller in whole runs (`run.train`, `loop.fit`): fit hands the run
to the Controller with its actions, they act at their steps, a freeze and fractional epochs
hold end to end, progress off a terminal. Kept apart from the actions' and the Controller's
own fast tests, which `make mutate` runs for every mutant."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import ConfigError
from pipeline.training import actions, controller, loop, run
from tests.conftest import tiny_config


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


def test_no_validation_images_train_and_score_on_test(tmp_path):
    # airbench94 trains on all 50,000 images and reads only the test set.
    cfg = tiny_config(**{"data.val_examples": 0, "train.out_dir": str(tmp_path / "r")})
    result = run.train(cfg, log=lambda s: None)
    assert "val_accuracy" not in result and "val_accuracy" not in result["history"][0]
    assert 0 <= result["test_accuracy"] <= 1


def test_fit_hands_the_run_to_the_controller_with_its_actions_in_order(monkeypatch):
    made = []
    original = controller.Controller.__init__

    def spy_init(self, fitted, inputs, run_actions, *args):
        made.append([type(a).__name__ for a in run_actions])
        original(self, fitted, inputs, run_actions, *args)

    monkeypatch.setattr(controller.Controller, "__init__", spy_init)
    run.train(tiny_config(), log=lambda s: None)
    assert made == [["Validate", "Record", "Checkpoints", "Report"]]


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

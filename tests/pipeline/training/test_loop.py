import collections
import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import experiments
from pipeline.config import OptimConfig
from pipeline.errors import NonFiniteLossError
from pipeline.run_length import RunLength, run_length
from pipeline.training import keras_fit, loop, optim, precision, run, steps, trainer
from tests.conftest import TINY, tiny_config
from tests.processes import latest_checkpoint_step, run_training, start_training, wait_for


def _weights(cfg, strategy_name="default", replicas=0):
    cfg = tiny_config(**{**cfg, "train.strategy": strategy_name, "train.cpu_replicas": replicas})
    strategy, inputs = run.prepare(cfg)
    model = run.build(cfg, strategy)
    result = loop.fit(model, inputs, cfg, strategy, log=lambda s: None)
    return [v.numpy() for v in model.trainable_variables], result


def test_two_replicas_match_one_on_the_same_global_batch():
    cfg = {
        "train.epochs": 2,
        "optim.optimizer": "nesterov",
        "optim.momentum": 0.9,
        "optim.weight_decay": 1e-3,
        "optim.label_smoothing": 0.1,
        "data.augment.translate": 2,
        "data.augment.flip": "random",
    }
    one, r1 = _weights(cfg)
    two, r2 = _weights(cfg, "mirrored", 2)
    assert r2["history"][0]["train_loss"] == pytest.approx(r1["history"][0]["train_loss"], rel=1e-5)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_same_seed_same_metrics_other_seed_other_initialisation():
    _, a = _weights({"train.epochs": 2})
    _, b = _weights({"train.epochs": 2})
    assert a["history"] == [
        dict(r, seconds=a["history"][i]["seconds"]) for i, r in enumerate(b["history"])
    ]
    assert a["test_accuracy"] == b["test_accuracy"]

    # Synthetic data is drawn from the seed too, so compare what the seed alone sets:
    # the initial weights, on one and the same data.
    def initial(seed):
        cfg = tiny_config(**{"train.seed": seed})
        strategy, _ = run.prepare(cfg)
        return run.build(cfg, strategy).trainable_variables[0].numpy()

    np.testing.assert_array_equal(initial(0), initial(0))
    assert not np.allclose(initial(0), initial(1))


def test_initial_weights_do_not_depend_on_what_loading_the_data_draws(monkeypatch):
    """A first run prepares the tfds dir, which draws from Python's and NumPy's global
    generators; its reruns find the data ready. Both must start from the same weights."""
    import random

    from pipeline.data import sources

    def initial(cfg):
        strategy, _ = run.prepare(cfg)
        return [v.numpy() for v in run.build(cfg, strategy).trainable_variables]

    load = sources.load_splits

    def preparing(*args, **kwargs):
        random.random(), np.random.random(), tf.random.uniform([1])  # as tfds may
        return load(*args, **kwargs)

    for name in ("functional_two_layer_fc", "lowlevel_two_layer_fc"):
        cfg = tiny_config(**{"model.name": name, "model.params": {"hidden": 16}})
        ready = initial(cfg)
        with monkeypatch.context() as m:
            m.setattr(sources, "load_splits", preparing)
            first = initial(cfg)
        for a, b in zip(ready, first, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains(policy):
    _, result = _weights(
        {
            "train.precision": policy,
            "train.epochs": 2,
            "model.name": "lowlevel_three_layer_convnet",
            "model.params": {},
        }
    )
    losses = [r["train_loss"] for r in result["history"]]
    assert np.isfinite(losses).all() and losses[1] < losses[0]


def test_float16_train_step_skips_a_non_finite_batch_and_scales_the_loss():
    cfg = tiny_config(**{"train.precision": "mixed_float16", "optim.lr": 0.05})
    strategy, inputs = run.prepare(cfg)
    model = run.build(cfg, strategy)
    opt = precision.wrap_optimizer(
        optim.make_optimizer(cfg.optim, RunLength(10, 10)), "mixed_float16"
    )
    opt.build(model.trainable_variables)
    step = steps.make_train_step(model, opt, inputs, cfg, strategy, RunLength(10, 10))
    x = tf.constant(np.random.default_rng(0).standard_normal((32, 32, 32, 3)), tf.float32)
    y = tf.constant(np.arange(32) % 10, tf.int32)
    poisoned = tf.tensor_scatter_nd_update(x, [[0, 0, 0, 0]], [np.inf])
    batches = iter(tf.data.Dataset.from_tensor_slices((tf.stack([poisoned, x]), tf.stack([y, y]))))
    weights = [v.numpy() for v in model.trainable_variables]
    scale = float(opt.dynamic_scale.numpy())

    step(batches, tf.constant(1))  # inf input -> non-finite gradients: no update
    for v, w in zip(model.trainable_variables, weights, strict=True):
        np.testing.assert_array_equal(v.numpy(), w)
    assert float(opt.dynamic_scale.numpy()) == scale / 2

    # The next, finite step updates by -lr * gradient of the unscaled mean loss: the loss
    # was scaled inside the step and the gradients unscaled by the optimizer.
    with tf.GradientTape() as tape:
        logits = tf.cast(model(x, training=True), tf.float32)
        loss = tf.reduce_mean(optim.cross_entropy(y, logits, 10))
    grads = tape.gradient(loss, model.trainable_variables)
    step(batches, tf.constant(1))
    for v, w, g in zip(model.trainable_variables, weights, grads, strict=True):
        update = v.numpy() - w
        expected = -0.05 * g.numpy()
        assert np.linalg.norm(update - expected) <= 0.05 * np.linalg.norm(expected), v.path


def test_schedules():
    length = RunLength(10, 100)  # 10 epochs of 10 steps
    cos = OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=1)
    one = OptimConfig(lr=1.0, schedule="onecycle", warmup_epochs=2, final_lr_fraction=0.1)
    # The ramp reaches the peak at step `warmup` (10 here), from 0 at step 0.
    assert float(optim.lr_at(0, cos, length)) == pytest.approx(0.0)
    assert float(optim.lr_at(4, cos, length)) == pytest.approx(0.4)
    assert float(optim.lr_at(10, cos, length)) == pytest.approx(1.0)
    assert float(optim.lr_at(55, cos, length)) == pytest.approx(0.5, abs=1e-6)
    assert float(optim.lr_at(100, cos, length)) == pytest.approx(0.0, abs=1e-6)
    assert float(optim.lr_at(60, one, length)) == pytest.approx(0.55)
    assert float(optim.lr_at(5, OptimConfig(lr=0.3), length)) == pytest.approx(0.3)
    # airbench94's warm-up starts at 0.2 of the peak: step 9 of 20 is 0.2 + 0.8 * 9/20;
    # after the warm-up the schedule is the same.
    from_fifth = dataclasses.replace(one, warmup_start_fraction=0.2)
    assert float(optim.lr_at(9, from_fifth, length)) == pytest.approx(0.56)
    assert float(optim.lr_at(60, from_fifth, length)) == pytest.approx(0.55)


def test_airbench94_run_length_and_schedule_match_its_get_lr():
    # airbench94: 48 full batches of 1024 per epoch, ceil(48 * 9.9) = 476 steps, warm-up
    # int(0.23 * 476) = 109 steps; get_lr(step) = 0.2 + 0.8 * step / 109 during it, then
    # 1 - 0.93 * (step - 109) / 367, times lr 1.5 (mean-loss units).
    cfg = experiments.get("challenge_airbench94")
    length = run_length(cfg.data.train_examples, cfg.data.batch_size, cfg.train.epochs)
    assert (length.steps_per_epoch, length.total_steps, length.epochs) == (48, 476, 10)
    assert [length.steps_in_epoch(e) for e in (0, 8, 9, 10)] == [48, 48, 44, 0]
    expected = {0: 0.2, 54: 0.2 + 0.8 * 54 / 109, 109: 1.0, 300: 1 - 0.93 * 191 / 367}
    expected[475] = 1 - 0.93 * 366 / 367
    for step, factor in expected.items():
        assert float(optim.lr_at(step, cfg.optim, length)) == pytest.approx(1.5 * factor), step
    # Whole epochs stay whole (no float's last digit adds a step).
    assert run_length(50_000, 1024, 10.0).total_steps == 480


def test_label_smoothing_loss():
    logits = tf.constant([[2.0, 0.0, -1.0]])
    plain = optim.cross_entropy(tf.constant([0]), logits, 3)
    smooth = optim.cross_entropy(tf.constant([0]), logits, 3, smoothing=0.3)
    logp = tf.nn.log_softmax(logits)[0].numpy()
    assert float(plain[0]) == pytest.approx(-logp[0], rel=1e-6)
    expected = -(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2])
    assert float(smooth[0]) == pytest.approx(expected, rel=1e-6)


# The challenge recipe in miniature: every piece of state a resume must carry over.
RECIPE = {
    "model.name": "custom_convnet",
    "model.params": {"size": "tiny"},
    "data.synthetic_examples": 512,
    "data.batch_size": 64,
    "data.augment.translate": 2,
    "data.augment.pad_mode": "reflect",
    "data.augment.flip": "alternate",
    "optim.optimizer": "nesterov",
    "optim.lr": 0.2,
    "optim.momentum": 0.85,
    "optim.weight_decay": 5e-3,
    "optim.schedule": "onecycle",
    "optim.warmup_epochs": 1.0,
    "optim.final_lr_fraction": 0.1,
    "optim.label_smoothing": 0.2,
    "optim.bias_lr_scale": 8.0,
    "optim.ema_decay": 0.9,
    "optim.lookahead_every_steps": 5,
    "optim.whiten_bias_epochs": 1.0,
    "train.bn_recalibration_batches": 1,
    "train.epochs": 3,
}


def checkpoint_values(out) -> dict:
    """Every variable of the run's latest checkpoint, by its checkpoint key."""
    reader = tf.train.load_checkpoint(str(Path(out) / "checkpoints"))
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def assert_same_state(resumed: dict, uninterrupted: dict) -> None:
    assert resumed.keys() == uninterrupted.keys()
    # What a resume could silently lose must be in the comparison. Keras checkpoints
    # the optimizer's slots by position: one momentum and one EMA average per weight.
    count = collections.Counter(key.rsplit("/", 3)[0].rstrip("0123456789/") for key in resumed)
    weights = count["optimizer/_trainable_variables"]
    assert weights > 0 and count["optimizer/_variables"] == 2 * weights, count
    for key in ("optimizer/_iterations", "epoch"):
        assert f"{key}/.ATTRIBUTES/VARIABLE_VALUE" in resumed
    assert sum("moving_mean" in k or "moving_variance" in k for k in resumed) >= 2 * 6
    # Lookahead's slow copy of every float variable (weights and BN statistics).
    assert sum(k.startswith("action_lookahead/") for k in resumed) >= weights + 2 * 6
    for key, value in uninterrupted.items():
        np.testing.assert_allclose(resumed[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


class _StopAfterEpoch(keras.callbacks.Callback):
    """Ends the run like a crash, right after the checkpoint of `epoch` is written."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def test_each_steps_loss_survives_a_resume_from_the_middle_of_an_epoch(tmp_path, monkeypatch):
    # 8 steps an epoch, a checkpoint every 3 steps inside it; the run dies entering the
    # call after epoch 2's step 3 was saved (global step 11), so it resumes mid-epoch and
    # epoch 2's first 3 step losses must come from the checkpoint.
    recipe = {**RECIPE, "train.epochs": 3, "train.checkpoint_every_steps": 3}
    full = run.train(
        tiny_config(**recipe, **{"train.out_dir": str(tmp_path / "full")}), log=lambda s: None
    )
    cfg = tiny_config(**recipe, **{"train.out_dir": str(tmp_path / "resumed")})
    original = trainer.Trainer.train

    def dies_at_step_11(self, n, data):
        if int(self.optimizer.iterations) == 11:
            raise KeyboardInterrupt  # a crash: nothing more is saved
        return original(self, n, data)

    monkeypatch.setattr(trainer.Trainer, "train", dies_at_step_11)
    with pytest.raises(KeyboardInterrupt):
        run.train(cfg, log=lambda s: None)
    monkeypatch.setattr(trainer.Trainer, "train", original)
    latest = tf.train.latest_checkpoint(str(tmp_path / "resumed" / "checkpoints"))
    assert latest.endswith("ckpt-11"), latest
    logs = []
    resumed = run.train(cfg, log=logs.append)
    assert any("epoch 2, step 3/8" in line for line in logs), logs
    for a, b in zip(full["history"], resumed["history"], strict=True):
        assert len(b["step_losses"]) == 8
        np.testing.assert_allclose(b["step_losses"], a["step_losses"], rtol=1e-5)


def test_resume_with_cut_epochs_restores_every_variable(tmp_path):
    # Epochs cut to 5 of their 8 steps, 2.6 of them: 13 steps, the last epoch 3 of 5; the
    # run length the data, schedule, actions and loop share. (Full epochs: the kill -9
    # test below.)
    full_out, out = tmp_path / "uninterrupted", tmp_path / "resumed"
    recipe = {**RECIPE, "train.max_steps_per_epoch": 5, "train.epochs": 2.6}
    full = run.train(tiny_config(**recipe, **{"train.out_dir": str(full_out)}), log=lambda s: None)
    cfg = tiny_config(**recipe, **{"train.out_dir": str(out)})
    with pytest.raises(KeyboardInterrupt):
        run.train(cfg, log=lambda s: None, callbacks=[_StopAfterEpoch(1)])
    logs = []
    resumed = run.train(cfg, log=logs.append)
    assert any("resuming from the checkpoint of epoch 1" in line for line in logs)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-13")
    for a, b in zip(full["history"], resumed["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-6)
        # Each step's loss, kept across the resume (the checkpoint holds the epoch's).
        np.testing.assert_allclose(b["step_losses"], a["step_losses"], rtol=1e-5)
        assert np.mean(b["step_losses"]) == pytest.approx(b["train_loss"], rel=1e-5)
    assert [len(r["step_losses"]) for r in resumed["history"]] == [5, 5, 3]
    assert resumed["test_accuracy"] == pytest.approx(full["test_accuracy"])
    assert_same_state(checkpoint_values(out), checkpoint_values(full_out))
    for name in ("config.json", "metrics.json", "history.json", "curves.png"):
        assert (out / name).is_file()
    assert list((out / "tensorboard").iterdir())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    run.train(tiny_config(**{"train.epochs": 1, "train.out_dir": str(out)}), log=lambda s: None)
    before = tf.train.latest_checkpoint(str(out / "checkpoints"))
    kept = "lower the learning rate.*ckpt-8 \\(end of epoch 1\\)"
    with pytest.raises(NonFiniteLossError, match=kept):
        run.train(
            tiny_config(**{"train.epochs": 2, "train.out_dir": str(out), "optim.lr": 1e12}),
            log=lambda s: None,
        )
    assert tf.train.latest_checkpoint(str(out / "checkpoints")) == before
    assert len(json.loads((out / "history.json").read_text())) == 1


def test_keras_fit_trains_as_the_custom_loop_where_their_features_overlap():
    common = {
        "model.name": "sequential_two_layer_fc",
        "train.epochs": 2,
        "optim.optimizer": "nesterov",
        "optim.momentum": 0.9,
        "optim.label_smoothing": 0.1,
        "data.augment.translate": 2,
        "data.augment.flip": "random",
    }
    fit = run.train(tiny_config(**common, **{"train.loop": "fit"}), log=lambda s: None)
    custom = run.train(tiny_config(**common), log=lambda s: None)
    assert fit["loop"] == "fit" and len(fit["history"]) == 2
    for a, b in zip(fit["history"], custom["history"], strict=True):
        # model.fit XLA-compiles its step on CPU, so the last digits differ.
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        # (its val_loss includes label smoothing, the custom loop's does not)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=2 / 256)
    with pytest.raises(keras_fit.KerasFitError, match="use --loop custom"):
        run.train(tiny_config(**{"train.loop": "fit", "model.name": "lowlevel_two_layer_fc"}))


@pytest.mark.parametrize(
    "key,value",
    [
        ("optim.bias_lr_scale", 64.0),
        ("optim.ema_decay", 0.9),
        ("train.bn_recalibration_batches", 2),
        ("train.tta", "flip"),
    ],
)
def test_keras_fit_refuses_what_it_would_ignore(key, value):
    cfg = tiny_config(**{"train.loop": "fit", "model.name": "sequential_two_layer_fc", key: value})
    with pytest.raises(keras_fit.KerasFitError, match=f"cannot apply {key}.*--loop custom"):
        run.train(cfg, log=lambda s: None)


def test_resume_into_a_run_of_another_model_is_refused_and_keeps_its_files(tmp_path):
    out = tmp_path / "run"
    run.train(tiny_config(**{"train.out_dir": str(out)}), log=lambda s: None)
    saved = (out / "config.json").read_text()
    other = tiny_config(**{"train.out_dir": str(out), "model.params": {"hidden": 32}})
    with pytest.raises(run.RunError, match="model = .*hidden.*64.*new --out"):
        run.train(other, log=lambda s: None)
    assert (out / "config.json").read_text() == saved


def _recipe_flags(epochs: int, examples: int = 512) -> list[str]:
    flags = ["--synthetic", "--quiet", "--no-export", "--epochs", str(epochs)]
    recipe = {**RECIPE, "data.synthetic_examples": examples}
    for key, value in recipe.items():
        if key != "train.epochs":
            flags += ["--set", f"{key}={json.dumps(value) if isinstance(value, dict) else value}"]
    return flags


@pytest.mark.slow
def test_kill_9_then_sigterm_mid_epoch_then_the_run_ends_as_an_uninterrupted_one(tmp_path):
    """kill -9 after a mid-epoch checkpoint, resume; SIGTERM mid-epoch (saves that step,
    exits 143), resume; the final state equals an uninterrupted run's: weights, BN
    statistics, momentum, EMA, Lookahead's slow copy, step; the whitening bias frozen after
    epoch 1 stays frozen across the resume. 64 steps per epoch, a checkpoint every 8."""
    out, full_out = tmp_path / "run", tmp_path / "uninterrupted"
    steps_per_epoch, epochs = 64, 2
    flags = [*_recipe_flags(epochs, examples=64 * 64), "--set", "train.checkpoint_every_steps=8"]

    def start(folder):
        return start_training(*flags, out=folder)

    proc = start(out)
    wait_for(lambda: latest_checkpoint_step(out) > 8, 240, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = latest_checkpoint_step(out)
    assert killed_at < steps_per_epoch, "killed inside the first epoch"

    proc = start(out)
    wait_for(lambda: latest_checkpoint_step(out) > steps_per_epoch + 8, 240, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 30
    assert proc.returncode == 143, stderr[-3000:]
    assert f"resuming from the checkpoint of epoch 1, step {killed_at}/64" in stdout
    saved = latest_checkpoint_step(out)
    assert steps_per_epoch + 8 < saved < 2 * steps_per_epoch, "saved where it stopped"
    assert f"stopped by SIGTERM at epoch 2, step {saved - steps_per_epoch}/64" in stderr
    assert "run the same command again to resume" in stderr

    proc = start(out)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert f"resuming from the checkpoint of epoch 2, step {saved - steps_per_epoch}/64" in stdout
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1, 2]
    full = start(full_out)
    _, stderr = full.communicate(timeout=300)
    assert full.returncode == 0, stderr[-3000:]
    resumed, uninterrupted = checkpoint_values(out), checkpoint_values(full_out)
    for state in (resumed, uninterrupted):
        del state["save_counter/.ATTRIBUTES/VARIABLE_VALUE"]  # the interrupted run saved more
    assert_same_state(resumed, uninterrupted)
    histories = [json.loads((d / "history.json").read_text()) for d in (out, full_out)]
    for a, b in zip(*histories, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["val_accuracy"] == b["val_accuracy"]


@pytest.mark.slow
def test_cli_exit_codes(tmp_path):
    bad = run_training("--model", "nope")
    assert bad.returncode == 2 and "Known models:" in bad.stderr
    bad = run_training(*TINY, "--set", "optim.lr=fast")
    assert bad.returncode == 2 and "optim.lr" in bad.stderr
    nan = run_training(*TINY, "--lr", "1e12")
    assert nan.returncode == 3 and "training loss became" in nan.stderr
    strategy = run_training(*TINY, "--cpu-replicas", "2")
    assert strategy.returncode == 2, strategy.stderr
    assert "--cpu-replicas needs --strategy mirrored" in strategy.stderr
    assert "Traceback" not in strategy.stderr


def test_bn_recalibration_refreshes_running_statistics():
    cfg = tiny_config(
        **{
            "model.name": "custom_convnet",
            "model.params": {"size": "tiny"},
            "train.bn_recalibration_batches": 2,
            "data.eval_batch_size": 64,
        }
    )
    strategy, inputs = run.prepare(cfg)
    model = run.build(cfg, strategy, inputs)
    bn = model.get_layer("stage0_bn0")
    bn.moving_mean.assign(tf.fill(bn.moving_mean.shape, 100.0))
    steps.make_bn_recalibration(model, inputs, cfg, strategy)()
    assert np.abs(bn.moving_mean.numpy()).max() < 50, "stale statistics were replaced"
    off = tiny_config(**{"model.name": "custom_convnet", "model.params": {"size": "tiny"}})
    bn.moving_mean.assign(tf.fill(bn.moving_mean.shape, 100.0))
    steps.make_bn_recalibration(model, inputs, off, strategy)()
    assert np.allclose(bn.moving_mean.numpy(), 100.0), "0 batches leaves them alone"


def _checkpointed(cfg, out, strategy_name="default", replicas=0) -> dict:
    cfg = {**cfg, "train.strategy": strategy_name, "train.cpu_replicas": replicas}
    run.train(tiny_config(**cfg, **{"train.out_dir": str(out)}), log=lambda s: None)
    return checkpoint_values(out)


@pytest.mark.parametrize("fused", [True, False])
def test_two_replicas_match_one_in_every_checkpointed_variable(tmp_path, fused):
    # Trainable or not: BN running statistics (what evaluation and export use), momentum,
    # Lookahead's slow copy. A low rate keeps training from amplifying the kernels'
    # rounding; one replica on the unfused kernel is the reference (see the test above).
    cfg = {
        **RECIPE,
        "optim.lr": 0.05,
        "optim.bias_lr_scale": 1.0,
        "optim.ema_decay": 0.0,
        "optim.lookahead_every_steps": 2,
        "data.augment_on_device": True,
        "train.max_steps_per_epoch": 4,
        "train.epochs": 1,
        "train.bn_recalibration_batches": 0,
    }
    tiny = {"size": "tiny"}
    one = _checkpointed({**cfg, "model.params": {**tiny, "fused": False}}, tmp_path / "one")
    two = _checkpointed(
        {**cfg, "model.params": {**tiny, "fused": fused}}, tmp_path / "two", "mirrored", 2
    )
    stats = [k for k in one if "moving_" in k and k.startswith("model/")]
    assert len(stats) >= 2 * 6
    # Weights and BN statistics agree to a few 1e-6 of their magnitude; momentum sums
    # gradients that nearly cancel (an identity-initialised conv's), whose rounding
    # reaches about 1% of the slot's magnitude. A BN updated from one replica's half
    # batch is off by a large fraction of the batch's spread.
    _assert_close_to_magnitude(two, one, weights=1e-4, slots=5e-2)


XLA_NET = {  # the XLA step's tests: a small custom_convnet with Nesterov
    "model.name": "custom_convnet",
    "model.params": {"size": "tiny"},
    "optim.optimizer": "nesterov",
    "optim.momentum": 0.9,
    "optim.bias_lr_scale": 4.0,
    "data.batch_size": 64,
    "train.epochs": 1,
}


def test_xla_compiled_step_trains_as_the_plain_one():
    cfg = XLA_NET
    initial_cfg = tiny_config(**cfg)
    strategy, _ = run.prepare(initial_cfg)  # seeds as `_weights` does: the same start
    initial = [v.numpy() for v in run.build(initial_cfg, strategy).trainable_variables]
    plain, plain_result = _weights(cfg)
    xla, xla_result = _weights({**cfg, "train.jit_compile": True})
    # XLA:CPU's kernels round differently from oneDNN's, so compare each variable's
    # difference with how far training moved it: a dropped or mis-scaled update is ~100%.
    for a, b, start in zip(xla, plain, initial, strict=True):
        assert np.linalg.norm(a - b) <= 0.1 * np.linalg.norm(b - start)
    assert xla_result["history"][0]["train_loss"] == pytest.approx(
        plain_result["history"][0]["train_loss"], rel=1e-4
    )


def _assert_close_to_magnitude(actual: dict, expected: dict, weights: float, slots: float):
    """Each variable within `weights` (momentum slots: `slots`) of its largest magnitude."""
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if key == "epoch_totals/.ATTRIBUTES/VARIABLE_VALUE":
            continue  # its seconds are a timing
        slot = key.startswith("optimizer/_variables/")
        scale = float(np.abs(value).max()) if np.size(value) else 0.0
        tolerance = (slots if slot else weights) * scale
        np.testing.assert_allclose(actual[key], value, rtol=0, atol=tolerance, err_msg=key)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_xla_step_with_augmentation_inside_matches_the_plain_step(tmp_path, precision):
    # What --precision auto turns on for a GPU: augmentation inside the XLA-compiled step,
    # here on the CPU. A few steps at a low rate, so rounding is not amplified: float32
    # weights and BN statistics agree to 1e-4 of their magnitude (measured: a few 1e-5);
    # bfloat16 rounds each product to 3 digits, so its weights to 1e-2 (measured: 1e-3).
    cfg = {
        **XLA_NET,
        "optim.lr": 0.01,
        "data.augment.translate": 2,
        "data.augment.pad_mode": "reflect",
        "data.augment.flip": "alternate",
        "data.augment_on_device": True,
        "train.max_steps_per_epoch": 3,
        "train.epochs": 1,
        "train.precision": precision,
    }
    plain = _checkpointed(cfg, tmp_path / "plain")
    xla = _checkpointed({**cfg, "train.jit_compile": True}, tmp_path / "xla")
    if precision == "float32":
        _assert_close_to_magnitude(xla, plain, weights=1e-4, slots=5e-2)
    else:
        model = lambda state: {k: v for k, v in state.items() if k.startswith("model/")}  # noqa: E731
        _assert_close_to_magnitude(model(xla), model(plain), weights=1e-2, slots=1.0)


def test_two_replicas_match_one_for_a_batch_norm_net():
    cfg = {
        **RECIPE,
        "optim.ema_decay": 0.0,
        "data.augment_on_device": True,
        "train.epochs": 1,
    }
    tiny = {"size": "tiny"}
    # One replica runs the fused kernel, whose last digits differ from the unfused math
    # that synchronized BN needs, and this recipe's high learning rates magnify that over
    # the epoch; so the reference is one replica on the same (unfused, Keras) kernel.
    one, r1 = _weights({**cfg, "model.params": {**tiny, "fused": False}})

    def worst(weights):  # the largest difference, as a share of each tensor's magnitude
        return max(
            float(np.abs(a - b).max() / (np.abs(a).max() or 1.0))
            for a, b in zip(one, weights, strict=True)
        )

    # Measured on an Intel Xeon with AMX: our BatchNorm 9e-6 of the magnitude, Keras's
    # synchronized one 1.3e-3 (its all-reduced statistics round otherwise), unsynchronized
    # 0.38; an absolute 1e-4 failed Keras's on a few near-zero weights there.
    for fused in (True, False):  # our fused BatchNorm, and Keras's synchronized one
        two, r2 = _weights({**cfg, "model.params": {**tiny, "fused": fused}}, "mirrored", 2)
        loss = r2["history"][0]["train_loss"]
        assert loss == pytest.approx(r1["history"][0]["train_loss"], rel=1e-4), fused
        assert worst(two) < 1e-2, f"fused={fused}"
    # Without synchronized BN each replica normalises its half-batch alone: not the same.
    unsynced = {**cfg, "model.params": {**tiny, "sync_bn": False}}
    two_unsynced, _ = _weights(unsynced, "mirrored", 2)
    assert worst(two_unsynced) > 0.1


def test_tensorboard_holds_the_final_test_accuracy_with_and_without_tta(tmp_path):
    cfg = tiny_config(**{"train.tta": "flip", "train.out_dir": str(tmp_path)})
    metrics = run.train(cfg, log=lambda s: None)
    scalars = {}
    for path in (tmp_path / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                scalars[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
    assert scalars["test_accuracy"] == (1, pytest.approx(metrics["test_accuracy"]))
    assert scalars["test_accuracy_no_tta"] == (1, pytest.approx(metrics["test_accuracy_no_tta"]))


def test_a_finished_run_rerun_says_so_and_trains_nothing(tmp_path):
    cfg = tiny_config(**{"train.epochs": 2, "train.out_dir": str(tmp_path)})
    first = run.train(cfg, log=lambda s: None)
    logs = []
    again = run.train(cfg, log=logs.append)
    assert any("holds this run fully trained (2 epochs): evaluating it again" in s for s in logs)
    assert not any("resuming" in s for s in logs)
    assert [r["epoch"] for r in again["history"]] == [1, 2]
    assert again["test_accuracy"] == pytest.approx(first["test_accuracy"])


def test_a_signal_during_the_final_evaluation_stops_with_a_message(tmp_path, monkeypatch):
    from pipeline.errors import Preempted

    original = trainer.Trainer.finish

    def signalled_while_evaluating(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler is installed: no exit here
        result = original(self)
        time.sleep(0.5)  # the watcher thread reads the signal
        return result

    monkeypatch.setattr(trainer.Trainer, "finish", signalled_while_evaluating)
    cfg = tiny_config(**{"train.out_dir": str(tmp_path)})
    with pytest.raises(Preempted, match="during the final evaluation; training had finished"):
        run.train(cfg, log=lambda s: None)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import loop, optim, precision, run
from pipeline.config import OptimConfig
from tests.conftest import REPO, tiny_config


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


def test_same_seed_same_metrics_other_seed_differs():
    _, a = _weights({"train.epochs": 2})
    _, b = _weights({"train.epochs": 2})
    _, c = _weights({"train.epochs": 2, "train.seed": 1})
    assert a["history"] == [
        dict(r, seconds=a["history"][i]["seconds"]) for i, r in enumerate(b["history"])
    ]
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["history"][-1]["train_loss"] != c["history"][-1]["train_loss"]


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


def test_loss_scaling_skips_a_non_finite_step():
    var = tf.Variable([1.0, 2.0])
    opt = precision.wrap_optimizer(keras.optimizers.SGD(0.1), "mixed_float16")
    opt.build([var])
    scale = float(opt.dynamic_scale.numpy())
    opt.apply([tf.constant([np.inf, 1.0])], [var])
    np.testing.assert_array_equal(var.numpy(), [1.0, 2.0])
    assert float(opt.dynamic_scale.numpy()) == scale / 2
    assert opt.scale_loss(tf.constant(1.0)).numpy() == scale / 2
    opt.apply([opt.scale_loss(tf.constant([1.0, 1.0]))], [var])
    np.testing.assert_allclose(var.numpy(), [0.9, 1.9], rtol=1e-6)


def test_schedules():
    total, per_epoch = 100, 10
    cos = OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=1)
    one = OptimConfig(lr=1.0, schedule="onecycle", warmup_epochs=2, final_lr_fraction=0.1)
    assert float(optim.lr_at(0, cos, total, per_epoch)) == pytest.approx(0.1)
    assert float(optim.lr_at(10, cos, total, per_epoch)) == pytest.approx(1.0)
    assert float(optim.lr_at(55, cos, total, per_epoch)) == pytest.approx(0.5, abs=1e-6)
    assert float(optim.lr_at(100, cos, total, per_epoch)) == pytest.approx(0.0, abs=1e-6)
    assert float(optim.lr_at(60, one, total, per_epoch)) == pytest.approx(0.55)
    assert float(optim.lr_at(5, OptimConfig(lr=0.3), total, per_epoch)) == pytest.approx(0.3)


def test_label_smoothing_loss():
    logits = tf.constant([[2.0, 0.0, -1.0]])
    plain = optim.cross_entropy(tf.constant([0]), logits, 3)
    smooth = optim.cross_entropy(tf.constant([0]), logits, 3, smoothing=0.3)
    logp = tf.nn.log_softmax(logits)[0].numpy()
    assert float(plain[0]) == pytest.approx(-logp[0], rel=1e-6)
    expected = -(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2])
    assert float(smooth[0]) == pytest.approx(expected, rel=1e-6)


def test_resume_continues_where_it_stopped(tmp_path):
    full = run.train(
        tiny_config(**{"train.epochs": 3, "train.out_dir": str(tmp_path / "a")}), log=lambda s: None
    )
    logs = []
    out = str(tmp_path / "b")
    run.train(tiny_config(**{"train.epochs": 1, "train.out_dir": out}), log=logs.append)
    resumed = run.train(tiny_config(**{"train.epochs": 3, "train.out_dir": out}), log=logs.append)
    assert any("resuming from the checkpoint of epoch 1" in line for line in logs)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    for a, b in zip(full["history"], resumed["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert resumed["test_accuracy"] == pytest.approx(full["test_accuracy"])
    for name in ("config.json", "metrics.json", "history.json", "curves.png"):
        assert (Path(out) / name).is_file()
    assert list((Path(out) / "tensorboard").iterdir())


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    run.train(tiny_config(**{"train.epochs": 1, "train.out_dir": str(out)}), log=lambda s: None)
    before = tf.train.latest_checkpoint(str(out / "checkpoints"))
    with pytest.raises(loop.NonFiniteLossError, match="lower the learning rate.*epoch 1"):
        run.train(
            tiny_config(**{"train.epochs": 2, "train.out_dir": str(out), "optim.lr": 1e12}),
            log=lambda s: None,
        )
    assert tf.train.latest_checkpoint(str(out / "checkpoints")) == before
    assert len(json.loads((out / "history.json").read_text())) == 1


def test_keras_fit_loop_runs():
    cfg = tiny_config(**{"train.loop": "fit", "model.name": "sequential_two_layer_fc"})
    metrics = run.train(cfg, log=lambda s: None)
    assert metrics["loop"] == "fit" and 0 <= metrics["val_accuracy"] <= 1
    with pytest.raises(run.RunError, match="use --loop custom"):
        run.train(tiny_config(**{"train.loop": "fit", "model.name": "lowlevel_two_layer_fc"}))


def _cli(*args, **kw):
    return [sys.executable, "-m", "scripts.train", *args]


TINY = [
    "--synthetic",
    "--model",
    "functional_two_layer_fc",
    "--set",
    "model.params.hidden=64",
    "--set",
    "data.synthetic_examples=512",
    "--batch-size",
    "32",
    "--quiet",
]


@pytest.mark.slow
def test_resume_into_a_run_of_another_model_is_refused_and_keeps_its_files(tmp_path):
    out = tmp_path / "run"
    run.train(tiny_config(**{"train.out_dir": str(out)}), log=lambda s: None)
    saved = (out / "config.json").read_text()
    other = tiny_config(**{"train.out_dir": str(out), "model.params": {"hidden": 32}})
    with pytest.raises(run.RunError, match="model = .*hidden.*64.*new --out"):
        run.train(other, log=lambda s: None)
    assert (out / "config.json").read_text() == saved


def test_kill_9_then_the_same_command_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = _cli(*TINY, "--epochs", "8", "--out", str(out))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "ckpt-2.index").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from the checkpoint of epoch" in done.stdout
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, 9))


@pytest.mark.slow
def test_cli_exit_codes(tmp_path):
    bad = subprocess.run(_cli("--model", "nope"), cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "known models:" in bad.stderr
    bad = subprocess.run(
        _cli(*TINY, "--set", "optim.lr=fast"), cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "optim.lr" in bad.stderr
    nan = subprocess.run(_cli(*TINY, "--lr", "1e12"), cwd=REPO, capture_output=True, text=True)
    assert nan.returncode == 3 and "training loss became" in nan.stderr


@pytest.mark.slow
def test_two_local_workers_complete_an_epoch(tmp_path):
    out = tmp_path / "mw"
    done = subprocess.run(
        _cli(*TINY, "--local-workers", "2", "--out", str(out)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and len(metrics["history"]) == 1


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
    loop.make_bn_recalibration(model, inputs, cfg, strategy)()
    assert np.abs(bn.moving_mean.numpy()).max() < 50, "stale statistics were replaced"
    off = tiny_config(**{"model.name": "custom_convnet", "model.params": {"size": "tiny"}})
    bn.moving_mean.assign(tf.fill(bn.moving_mean.shape, 100.0))
    loop.make_bn_recalibration(model, inputs, off, strategy)()
    assert np.allclose(bn.moving_mean.numpy(), 100.0), "0 batches leaves them alone"


def test_xla_compiled_step_trains_as_the_plain_one():
    cfg = {
        "model.name": "custom_convnet",
        "model.params": {"size": "tiny"},
        "optim.optimizer": "nesterov",
        "optim.momentum": 0.9,
        "optim.bias_lr_scale": 4.0,
        "data.batch_size": 64,
        "train.epochs": 1,
    }
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

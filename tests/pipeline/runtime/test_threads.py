"""The inter-op pool takes its size from config before TensorFlow starts, and says so when
it starts too late."""

import pytest
import tensorflow as tf

from pipeline.config import ConfigError
from pipeline.runtime import threads
from tests.conftest import TINY
from tests.processes import run_training


def test_a_fresh_run_starts_tensorflow_with_the_configured_pool():
    # precision.resolve reads the devices before prepare sizes the pool: neither may start
    # TensorFlow's runtime first.
    done = run_training(*TINY, "--epochs", "1", "--set", "train.cpu_inter_op_threads=1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "inter-op threads: 1 (train.cpu_inter_op_threads)" in done.stdout
    assert "not applied" not in done.stdout


def test_a_pool_sized_after_tensorflow_started_is_reported_and_left():
    tf.zeros(1).numpy()  # this process's runtime has started, whatever ran before
    before = tf.config.threading.get_inter_op_parallelism_threads()
    lines = []
    threads.size_inter_op_pool(before + 3, lines.append)
    assert len(lines) == 1 and "not applied" in lines[0] and "fresh process" in lines[0]
    assert tf.config.threading.get_inter_op_parallelism_threads() == before


def test_a_negative_pool_size_is_refused_with_the_valid_values():
    with pytest.raises(ConfigError, match=r"0 \(TensorFlow's default\) or a thread count"):
        threads.size_inter_op_pool(-1, print)


def test_a_machine_with_gpus_keeps_the_default_pool(monkeypatch):
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu])
    calls, lines = [], []
    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", calls.append)
    threads.size_inter_op_pool(1, lines.append)
    assert calls == [] and len(lines) == 1 and "has GPUs" in lines[0]

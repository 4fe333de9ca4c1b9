"""Shared fixtures: seeding, synthetic splits, and the real CIFAR-10 imported once per session."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

# Tests run the kernels the console scripts run (scripts/exits.run_cli); this must precede
# TensorFlow's import.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

REPO = Path(__file__).resolve().parents[1]
# CI lays shared/ beside the clone; CIFAR10_LOCAL points elsewhere if needed.
LOCAL_CIFAR = Path(os.environ.get("CIFAR10_LOCAL", REPO.parent / "shared" / "data" / "cifar10"))


@pytest.fixture(autouse=True)
def seed_everything():
    random.seed(0)
    np.random.seed(0)
    try:
        import tensorflow as tf

        tf.random.set_seed(0)
        import keras

        keras.utils.set_random_seed(0)
    except ImportError:
        pass


def pytest_addoption(parser):
    parser.addoption(
        "--require-real-data",
        action="store_true",
        help="fail (not skip) the real_data tests when the CIFAR-10 copy is missing; "
        "on whenever CI=true",
    )


def _real_data_required(config) -> bool:
    return config.getoption("--require-real-data") or os.environ.get("CI", "").lower() in (
        "true",
        "1",
    )


@pytest.fixture(scope="session")
def local_cifar(request) -> Path:
    if not (LOCAL_CIFAR / "cifar-10-batches-bin").is_dir():
        message = (
            f"no local CIFAR-10 copy at {LOCAL_CIFAR} (the official binary release, holding "
            "cifar-10-batches-bin/); lay shared/ beside the repo or set CIFAR10_LOCAL"
        )
        if _real_data_required(request.config):
            pytest.fail(message + " -- required here (CI=true or --require-real-data)")
        pytest.skip(message)
    return LOCAL_CIFAR


@pytest.fixture(scope="session")
def cifar_data_dir(local_cifar, tmp_path_factory) -> str:
    """A tfds data dir with cifar10 imported from the local copy (about 40 s, once per
    test run: with pytest-xdist the workers share one, the first imports it under a lock)."""
    import fcntl

    from pipeline.data import sources

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's base folder, above each worker's own
    data_dir, done = shared / "tfds-cifar10", shared / "tfds-cifar10.done"
    with open(shared / "tfds-cifar10.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            data_dir.mkdir(exist_ok=True)
            sources.import_local_copy(str(local_cifar), str(data_dir))
            done.touch()
    return str(data_dir)


@pytest.fixture(scope="session")
def synthetic_splits():
    from pipeline.config import DataConfig
    from pipeline.data import sources

    return sources.synthetic_splits(DataConfig(source="synthetic", synthetic_examples=512), seed=0)


def pytest_configure(config):
    # Two logical CPU devices give MirroredStrategy two replicas; this must happen before
    # TensorFlow initialises, so it runs before any test.
    from pipeline.runtime.distribute import split_cpu

    split_cpu(2)


# tiny_config's run as cifar-train flags (later `--set`s override these).
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


def tiny_config(**updates):
    """A config that trains in seconds: synthetic data, a narrow FC, small batches."""
    from pipeline.config import Config, override

    base = {
        "data.source": "synthetic",
        "data.synthetic_examples": 256,
        "data.batch_size": 32,
        "data.eval_batch_size": 128,
        "model.name": "functional_two_layer_fc",
        "model.params": {"hidden": 64},
        "optim.lr": 0.01,
        # Not "auto": on a CPU with bfloat16 units that trains in bfloat16, and tests that
        # compare runs to float tolerance would measure the CPU, not the code.
        "train.precision": "float32",
        "train.progress": "none",
        "train.export": False,  # tests of the export turn it on
    }
    return override(Config(), {**base, **updates})

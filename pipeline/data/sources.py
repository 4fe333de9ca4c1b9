"""Data sources: CIFAR-10 through tfds (downloaded or imported offline) and synthetic data."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig
from pipeline.data.cifar_files import DataError, binary_release, check_bin_folder
from pipeline.files import write_json

__all__ = ["DataError", "Split", "Splits", "import_local_copy", "load_splits", "normalised"]

DATASET = "cifar10"
DOWNLOAD_HOST = "www.cs.toronto.edu"  # where tfds's cifar10 builder downloads from
STATS_FILE = "cifar_pipeline_stats.json"


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 32, 32, 3) uint8
    labels: np.ndarray  # (N,) int32


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    mean: np.ndarray  # (3,) float32, per channel, 0-255 scale, from the training split
    std: np.ndarray  # (3,) float32
    class_names: tuple[str, ...]


def _tfds():
    import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy import, only when used

    return tfds


@contextlib.contextmanager
def _quiet_tfds():
    """Without tfds's chatter that misleads here: "Variant folder ... has no
    dataset_info.json" (absl, every time a builder looks at a data dir not prepared yet) and
    "Downloading and preparing dataset" (stdout) during an import that downloads nothing.
    Its progress bars (stderr) stay on a terminal; in a log file they are lines of cursor
    codes. Errors stay."""
    from absl import logging as absl_logging  # noqa: PLC0415 - comes with TensorFlow
    from tensorflow_datasets.core.utils import tqdm_utils  # noqa: PLC0415

    previous, bars = absl_logging.get_verbosity(), tqdm_utils._active
    absl_logging.set_verbosity(absl_logging.ERROR)
    tqdm_utils.display_progress_bar(bars and sys.stderr.isatty())
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logging.set_verbosity(previous)
        tqdm_utils.display_progress_bar(bars)


def builder(data_dir: str | None):
    with _quiet_tfds():
        return _tfds().builder(DATASET, data_dir=data_dir)


def is_prepared(data_dir: str | None) -> bool:
    b = builder(data_dir)
    with _quiet_tfds():
        return b.is_prepared()


def import_local_copy(src: str, data_dir: str | None, check_digests: bool = True) -> Path:
    """Builds the standard tfds `cifar10` in `data_dir` from a local copy, with no network.

    tfds's own cifar10 builder runs unchanged; only its download step is pointed at the
    local folder, so features, splits and counts are what a download would give.
    Everything is checked before tfds writes, and tfds writes into a temporary folder
    that it renames when done, so a failure leaves nothing half-made.

    Returns:
        The prepared dataset folder (`<data_dir>/cifar10/<version>`).

    Raises:
        DataError: for a missing, truncated or corrupt copy.
    """
    tfds = _tfds()
    b = builder(data_dir)
    if is_prepared(data_dir):
        return Path(b.data_dir)
    with binary_release(src) as root:
        folder, _ = root
        check_bin_folder(folder / "cifar-10-batches-bin", check_digests=check_digests)
        make_manager = b._make_download_manager

        def local_manager(**kwargs):
            manager = make_manager(**kwargs)
            manager.download_and_extract = lambda url: os.fspath(folder)
            return manager

        b._make_download_manager = local_manager
        with _quiet_tfds():
            b.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
    return Path(b.data_dir)


def _online(host: str = DOWNLOAD_HOST, timeout: float = 5.0) -> bool:
    # tfds retries a failed download for minutes; a quick look first gives a fast, clear error.
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def ensure_prepared(cfg: DataConfig) -> None:
    """Makes tfds `cifar10` available in `cfg.data_dir`: already there, imported, or downloaded.

    Raises:
        DataError: when it is not there, no local copy is given and no download is possible.
    """
    if is_prepared(cfg.data_dir):
        return
    if cfg.local_copy:
        import_local_copy(cfg.local_copy, cfg.data_dir)
        return
    where = cfg.data_dir or "tfds's default data dir"
    fix = (
        f"run `cifar-data import /path/to/cifar10 --data-dir {cfg.data_dir or 'DIR'}` with a "
        "folder holding cifar-10-batches-bin/ (or the official .tar.gz), or pass "
        "--local-copy PATH, or use --synthetic for a dry run"
    )
    if not cfg.download:
        raise DataError(f"CIFAR-10 is not prepared in {where} and downloads are off: {fix}.")
    if not _online():
        raise DataError(
            f"CIFAR-10 is not prepared in {where} and {DOWNLOAD_HOST} is "
            f"unreachable (no network?): {fix}."
        )
    builder(cfg.data_dir).download_and_prepare()


def _split_specs(cfg: DataConfig) -> dict[str, str]:
    n_train, n_val = cfg.train_examples, cfg.val_examples
    for name, n, most in (
        ("train", n_train, 50_000),
        ("val", n_val, 50_000 - n_train),
        ("test", cfg.test_examples, 10_000),
    ):
        if not 0 <= n <= most or (name == "train" and n == 0):
            raise DataError(
                f"{name}_examples={n} is out of range: CIFAR-10 has 50,000 training images "
                f"(shared by train and val) and 10,000 test images; use 1..{most}."
            )
    return {
        "train": f"train[:{n_train}]",
        "val": f"train[{n_train}:{n_train + n_val}]",
        "test": f"test[:{cfg.test_examples}]",
    }


def _load_tfds_split(spec: str, data_dir: str | None) -> Split:
    tfds = _tfds()
    images, labels = tfds.as_numpy(
        tfds.load(
            DATASET,
            split=spec,
            data_dir=data_dir,
            batch_size=-1,
            as_supervised=True,
            download=False,
        )
    )
    return Split(images, labels.astype(np.int32))


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 NHWC images on the 0-255 scale (float64 sums)."""
    flat = images.reshape(-1, images.shape[-1])
    mean = np.zeros(flat.shape[1])
    sq = np.zeros(flat.shape[1])
    for chunk in np.array_split(flat, max(1, len(flat) // 1_000_000)):
        c = chunk.astype(np.float64)
        mean += c.sum(0)
        sq += (c * c).sum(0)
    mean /= len(flat)
    std = np.sqrt(sq / len(flat) - mean**2)
    return mean.astype(np.float32), std.astype(np.float32)


def _cached_stats(train: Split, spec: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    # Stored beside the prepared data, keyed by split, so each run reads rather than recomputes.
    path = folder / STATS_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    if spec not in stored:
        mean, std = channel_stats(train.images)
        stored[spec] = {"mean": mean.tolist(), "std": std.tolist()}
        try:
            write_json(path, stored, indent=1)
        except OSError:  # a read-only data dir still trains; it just recomputes next time
            return mean, std
    return (
        np.asarray(stored[spec]["mean"], np.float32),
        np.asarray(stored[spec]["std"], np.float32),
    )


def synthetic_splits(cfg: DataConfig, seed: int = 0) -> Splits:
    """CIFAR-shaped uint8 data whose class shows in its colour, so models can learn it."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 216, size=(10, 3))

    def make(n):
        labels = rng.integers(0, 10, size=n).astype(np.int32)
        noise = rng.normal(0, 40, size=(n, 32, 32, 3))
        images = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        return Split(images, labels)

    n = cfg.synthetic_examples
    train = make(min(n, cfg.train_examples))
    mean, std = channel_stats(train.images)
    return Splits(
        train,
        make(min(n, cfg.val_examples)),
        make(min(n, cfg.test_examples)),
        mean,
        std,
        tuple(f"class_{i}" for i in range(10)),
    )


def load_splits(cfg: DataConfig, seed: int = 0) -> Splits:
    """Decodes the train / val / test splits once into memory, with training-split statistics.

    Raises:
        DataError: when the data is missing (with the command that fixes it) or a split
            size is out of range.
    """
    if cfg.source == "synthetic":
        return synthetic_splits(cfg, seed)
    specs = _split_specs(cfg)
    ensure_prepared(cfg)
    b = builder(cfg.data_dir)
    sizes = {"train": cfg.train_examples, "val": cfg.val_examples, "test": cfg.test_examples}
    empty = Split(np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int32))
    splits = {
        name: _load_tfds_split(spec, cfg.data_dir) if sizes[name] else empty
        for name, spec in specs.items()
    }
    mean, std = _cached_stats(splits["train"], specs["train"], Path(b.data_dir))
    return Splits(
        splits["train"],
        splits["val"],
        splits["test"],
        mean,
        std,
        tuple(b.info.features["label"].names),
    )


def load_test_split(cfg: DataConfig, seed: int = 0) -> Split:
    """The test split alone (what scoring a trained model needs), decoded into memory.

    Raises:
        DataError: when the data is missing (with the command that fixes it) or the test
            size is out of range.
    """
    if cfg.source == "synthetic":
        return synthetic_splits(cfg, seed).test
    spec = _split_specs(cfg)["test"]
    ensure_prepared(cfg)
    return _load_tfds_split(spec, cfg.data_dir)


def normalised(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 images as float32 with zero mean and unit std per channel, as numpy, at once."""
    return ((images.astype(np.float32) - mean) / std).astype(np.float32)

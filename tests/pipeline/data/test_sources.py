import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.data import cifar_files
from pipeline.data import sources as data
from pipeline.data.cifar_files import DataError


def read_bin_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images, labels), "test": ...} straight from the .bin files (NHWC uint8):
    the reference the imported dataset is checked against."""

    def read(names):
        raw = np.concatenate(
            [np.fromfile(folder / n, np.uint8).reshape(-1, cifar_files.RECORD_BYTES) for n in names]
        )
        images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), raw[:, 0].astype(np.int32)

    return {"train": read(cifar_files.TRAIN_FILES), "test": read([cifar_files.TEST_FILE])}


def _fake_bin_folder(tmp_path: Path, local_cifar: Path, bad_file=None, content=None) -> Path:
    """A copy of the binary release (symlinks) with one file replaced by `content`."""
    root = tmp_path / "copy"
    folder = root / cifar_files.BIN_FOLDER
    folder.mkdir(parents=True)
    for f in (local_cifar / cifar_files.BIN_FOLDER).iterdir():
        if f.name != bad_file:
            os.symlink(f, folder / f.name)
    if bad_file:
        (folder / bad_file).write_bytes(content)
    return root


def _nothing_prepared(data_dir: Path):
    assert not data.is_prepared(str(data_dir))
    written = [p for p in data_dir.rglob("*") if p.is_file()] if data_dir.exists() else []
    assert written == [], f"a failed import left files behind: {written}"


def test_synthetic_splits_sizes_and_stats():
    cfg = DataConfig(source="synthetic", synthetic_examples=300, val_examples=100)
    splits = data.load_splits(cfg)
    assert splits.train.images.shape == (300, 32, 32, 3) and splits.train.images.dtype == np.uint8
    assert len(splits.val.labels) == 100 and len(splits.test.labels) == 300
    mean, std = data.channel_stats(splits.train.images)
    assert np.allclose(mean, splits.train.images.reshape(-1, 3).mean(0), atol=1e-3)
    assert np.allclose(std, splits.train.images.reshape(-1, 3).std(0), atol=1e-3)


def test_bad_split_sizes_are_rejected():
    with pytest.raises(DataError, match="val_examples=2000 is out of range"):
        data.load_splits(DataConfig(train_examples=49_000, val_examples=2_000))


def test_missing_data_without_download_says_how_to_fix(tmp_path):
    with pytest.raises(DataError, match="cifar-data import"):
        data.load_splits(DataConfig(data_dir=str(tmp_path), download=False))


def test_missing_data_offline_fails_fast_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_online", lambda *a, **k: False)
    with pytest.raises(DataError, match="unreachable.*cifar-data import"):
        data.load_splits(DataConfig(data_dir=str(tmp_path)))
    _nothing_prepared(tmp_path)


def test_missing_local_copy_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.import_local_copy(str(tmp_path / "nowhere"), str(tmp_path / "tfds"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds neither cifar-10-batches-bin"):
        data.import_local_copy(str(tmp_path / "empty"), str(tmp_path / "tfds"))
    _nothing_prepared(tmp_path / "tfds")


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "cifar-10-binary.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="not a readable tar archive"):
        data.import_local_copy(str(bad), str(tmp_path / "tfds"))


@pytest.mark.real_data
def test_truncated_file_is_named(tmp_path, local_cifar):
    src = _fake_bin_folder(tmp_path, local_cifar, "data_batch_3.bin", b"\0" * 1000)
    with pytest.raises(DataError, match=r"data_batch_3.bin has 1,000 bytes, expected 30,730,000"):
        data.import_local_copy(str(src), str(tmp_path / "tfds"))
    _nothing_prepared(tmp_path / "tfds")


@pytest.mark.real_data
def test_label_out_of_range_is_named(tmp_path, local_cifar):
    raw = bytearray((local_cifar / cifar_files.BIN_FOLDER / "test_batch.bin").read_bytes())
    raw[5 * cifar_files.RECORD_BYTES] = 12
    src = _fake_bin_folder(tmp_path, local_cifar, "test_batch.bin", bytes(raw))
    with pytest.raises(DataError, match="test_batch.bin: record 5 has label byte 12"):
        data.import_local_copy(str(src), str(tmp_path / "tfds"))
    _nothing_prepared(tmp_path / "tfds")


@pytest.mark.real_data
def test_changed_bytes_fail_the_checksum(tmp_path, local_cifar):
    raw = bytearray((local_cifar / cifar_files.BIN_FOLDER / "data_batch_1.bin").read_bytes())
    raw[100] ^= 0xFF
    src = _fake_bin_folder(tmp_path, local_cifar, "data_batch_1.bin", bytes(raw))
    with pytest.raises(DataError, match="sha256 differs.*--no-checksums"):
        data.import_local_copy(str(src), str(tmp_path / "tfds"))
    _nothing_prepared(tmp_path / "tfds")


@pytest.mark.real_data
def test_python_release_is_laid_out_as_the_binary_one(tmp_path, local_cifar):
    import pickle

    py = tmp_path / cifar_files.PY_FOLDER
    py.mkdir()
    raw = read_bin_folder(local_cifar / cifar_files.BIN_FOLDER)
    images = {"train": raw["train"][0], "test": raw["test"][0]}
    for i, name in enumerate([*cifar_files.TRAIN_FILES, cifar_files.TEST_FILE]):
        split, k = ("test", 0) if name == cifar_files.TEST_FILE else ("train", i)
        rows = slice(k * 10_000, (k + 1) * 10_000)
        flat = images[split][rows].transpose(0, 3, 1, 2).reshape(10_000, 3072)
        labels = raw[split][1][rows].tolist()
        with open(py / name.removesuffix(".bin"), "wb") as f:
            pickle.dump({b"data": flat, b"labels": labels}, f)
    with cifar_files.binary_release(py) as (folder, official):
        assert not official
        cifar_files.check_bin_folder(folder / cifar_files.BIN_FOLDER)  # same sha256 digests


@pytest.mark.real_data
def test_imported_dataset_is_the_official_one(cifar_data_dir, local_cifar):
    import tensorflow_datasets as tfds

    b = data.builder(cifar_data_dir)
    assert b.is_prepared() and str(b.version) == "3.0.2"
    assert b.info.splits["train"].num_examples == 50_000
    assert b.info.splits["test"].num_examples == 10_000
    assert b.info.features["label"].names[:2] == ["airplane", "automobile"]
    # Byte-exact against the .bin files, matched through tfds's "id" (= original position).
    raw = read_bin_folder(local_cifar / cifar_files.BIN_FOLDER)
    test = tfds.as_numpy(
        tfds.load("cifar10", split="test", data_dir=cifar_data_dir, batch_size=-1, download=False)
    )
    order = np.argsort(test["id"])
    assert np.array_equal(test["image"][order], raw["test"][0])
    assert np.array_equal(test["label"][order], raw["test"][1])
    # A second import is a no-op that reuses the data.
    assert data.import_local_copy(str(local_cifar), cifar_data_dir) == Path(b.data_dir)


@pytest.mark.real_data
def test_default_splits_counts_and_published_statistics(cifar_data_dir):
    full = data.load_splits(
        DataConfig(data_dir=cifar_data_dir, train_examples=50_000, val_examples=0)
    )
    assert np.array_equal(np.bincount(full.train.labels), [5000] * 10)
    assert np.array_equal(np.bincount(full.test.labels), [1000] * 10)
    np.testing.assert_allclose(full.mean, [125.307, 122.950, 113.865], atol=5e-3)
    np.testing.assert_allclose(full.std, [62.993, 62.089, 66.705], atol=5e-3)
    default = data.load_splits(DataConfig(data_dir=cifar_data_dir))
    assert (len(default.train.labels), len(default.val.labels), len(default.test.labels)) == (
        49_000,
        1_000,
        10_000,
    )
    stats = Path(data.builder(cifar_data_dir).data_dir) / data.STATS_FILE
    assert "train[:49000]" in stats.read_text(), "statistics are stored, not recomputed"


def test_tfds_chatter_is_kept_out_of_an_import(capsys):
    """tfds's "Variant folder ... has no dataset_info.json" (absl) and its "Downloading and
    preparing dataset" (stdout) mislead during an import that downloads nothing; its progress
    bars are cursor codes in a log file (stderr is not a terminal here)."""
    from absl import logging as absl_logging
    from tensorflow_datasets.core.utils import tqdm_utils

    from pipeline.data import sources

    before = absl_logging.get_verbosity()
    with sources._quiet_tfds():
        absl_logging.warning("Variant folder x has no dataset_info.json")
        print("Downloading and preparing dataset Unknown size")
        for _ in tqdm_utils.tqdm(range(3), desc="Generating splits..."):
            pass
    after = capsys.readouterr()
    assert "Variant folder" not in after.err + after.out
    assert "Downloading" not in after.out
    assert "Generating splits" not in after.err
    assert absl_logging.get_verbosity() == before  # restored afterwards
    assert tqdm_utils._active  # and the bars, for a terminal
    absl_logging.warning("a warning after the import shows")

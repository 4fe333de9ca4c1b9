"""The official CIFAR-10 release on local disk: find it, check it, hand it to tfds offline."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

BIN_FOLDER = "cifar-10-batches-bin"
PY_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
RECORD_BYTES = 1 + 32 * 32 * 3  # label byte, then R, G, B planes of 32x32
RECORDS_PER_FILE = 10_000
FILE_BYTES = RECORD_BYTES * RECORDS_PER_FILE  # 30,730,000
CLASS_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()
# sha256 of the official cifar-10-binary.tar.gz members (see shared data README).
OFFICIAL_SHA256 = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}


class DataError(UserError):
    """The data the user pointed at is missing or damaged; the message says how to fix it."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_bin_folder(folder: Path, check_digests: bool = True) -> None:
    """Checks a `cifar-10-batches-bin` folder: every file there, full size, labels 0-9.

    Raises:
        DataError: naming the first bad file and what to do about it.
    """
    for name in (*TRAIN_FILES, TEST_FILE):
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"{path} is missing: a CIFAR-10 binary folder holds {', '.join(TRAIN_FILES)}, "
                f"{TEST_FILE} and {META_FILE}. Re-extract cifar-10-binary.tar.gz."
            )
        size = path.stat().st_size
        if size != FILE_BYTES:
            raise DataError(
                f"{path} has {size:,} bytes, expected {FILE_BYTES:,} ({RECORDS_PER_FILE:,} "
                f"records of {RECORD_BYTES} bytes): the file is truncated or not CIFAR-10. "
                "Copy it again from the official cifar-10-binary.tar.gz."
            )
        labels = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)[:, 0]
        bad = np.flatnonzero(labels > 9)
        if bad.size:
            raise DataError(
                f"{path}: record {bad[0]} has label byte {labels[bad[0]]}, expected 0-9; "
                "the file is corrupt. Copy it again from the official cifar-10-binary.tar.gz."
            )
        if check_digests and sha256(path) != OFFICIAL_SHA256[name]:
            raise DataError(
                f"{path}: sha256 differs from the official release's ({OFFICIAL_SHA256[name]}); "
                "the file is corrupt or modified. Copy it again, or pass --no-checksums "
                "to import a modified copy on purpose."
            )
    meta = folder / META_FILE
    if not meta.is_file():
        raise DataError(f"{meta} is missing: it lists the 10 class names, one per line.")


def _write_bin_from_python(py_folder: Path, out: Path) -> None:
    """The python release holds the same bytes as the binary one, pickled: re-lay them."""
    out.mkdir(parents=True)
    for name in (*TRAIN_FILES, TEST_FILE):
        src = py_folder / name.removesuffix(".bin")
        if not src.is_file():
            raise DataError(f"{src} is missing from the python CIFAR-10 release.")
        try:
            with open(src, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.uint8)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise DataError(f"{src} cannot be read as a CIFAR-10 python batch: {e}") from e
        if data.shape != (RECORDS_PER_FILE, 3072) or labels.shape != (RECORDS_PER_FILE,):
            raise DataError(f"{src}: expected 10,000 x 3,072 bytes of images, got {data.shape}.")
        np.concatenate([labels[:, None], data], axis=1).tofile(out / name)
    (out / META_FILE).write_text("\n".join(CLASS_NAMES) + "\n")


@contextlib.contextmanager
def binary_release(src: str | os.PathLike) -> Iterator[tuple[Path, bool]]:
    """Yields (folder holding `cifar-10-batches-bin/`, is_official_bytes) for any local copy.

    `src` may be that folder, the `cifar-10-batches-bin` folder itself, the official
    `cifar-10-binary.tar.gz`, or the python release (folder or `cifar-10-python.tar.gz`).
    Archives and the python release are laid out in a temporary folder removed afterwards.

    Raises:
        DataError: when `src` holds none of these.
    """
    src = Path(src).expanduser()
    if not src.exists():
        raise DataError(
            f"{src} does not exist: pass the folder holding {BIN_FOLDER}/ (or {PY_FOLDER}/), "
            "or the official cifar-10-binary.tar.gz / cifar-10-python.tar.gz."
        )
    if src.is_dir() and src.name == BIN_FOLDER:
        yield src.parent, True
        return
    if src.is_dir() and (src / BIN_FOLDER).is_dir():
        yield src, True
        return
    with tempfile.TemporaryDirectory(prefix="cifar-import-") as tmp:
        tmp = Path(tmp)
        folder = src
        if src.is_file():
            try:
                with tarfile.open(src, "r:*") as tar:
                    tar.extractall(tmp / "x", filter="data")
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DataError(
                    f"{src} is not a readable tar archive ({e}); download "
                    "cifar-10-binary.tar.gz again."
                ) from e
            folder = tmp / "x"
        if (folder / BIN_FOLDER).is_dir():
            yield folder, True
        elif (folder / PY_FOLDER).is_dir() or folder.name == PY_FOLDER:
            py = folder if folder.name == PY_FOLDER else folder / PY_FOLDER
            _write_bin_from_python(py, tmp / "bin" / BIN_FOLDER)
            yield tmp / "bin", False
        else:
            raise DataError(
                f"{src} holds neither {BIN_FOLDER}/ nor {PY_FOLDER}/: pass the folder "
                "that contains one of them, or the official .tar.gz."
            )

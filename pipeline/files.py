"""Files written whole or not at all: every output the project writes goes through here.

A kill (or a full disk) mid-write leaves the previous file, never half of one: the
content goes to a temporary name beside the target, which is then renamed over it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import UserError


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Calls `write(tmp)` for a temporary path beside `path`, then renames it to `path`;
    the temporary file is removed when `write` fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")  # same suffix: savefig reads it
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, payload, indent: int | None = 2) -> None:
    """The project's one JSON writer: indented, newline-terminated, atomic."""
    write_text(path, json.dumps(payload, indent=indent) + "\n")


class ExportError(UserError):
    """The export cannot be written where asked; the message says the fix."""


def check_target(to: str | Path, overwrite: bool) -> None:
    """Raises ExportError unless `to` is absent, an empty folder, or `overwrite` is set.
    Needs no TensorFlow, so a CLI checks it before loading it."""
    to = Path(to)
    if to.exists() and not to.is_dir():
        raise ExportError(f"{to} is a file: give a folder to export into")
    if to.is_dir() and any(to.iterdir()) and not overwrite:
        raise ExportError(
            f"{to} is not empty: give a new folder, or --overwrite to replace what is there"
        )

"""One live run per output folder: `claim` takes `OUT/.lock` (an flock holding the owner's
pid) before any work, and checks that the folder can be written and has room.

The kernel drops an flock when its process dies (kill -9 included), so a lock file left by
a dead run is simply taken over. A process started by the lock's owner (the workers of
`--local-workers`) runs under its parent's claim.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import shutil
import sys
from pathlib import Path

from pipeline.errors import UserError

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # folder -> lock file descriptor, for the life of the process


class OutDirError(UserError):
    """The output folder is in use by another run, read-only or full."""


def claim(out: str | Path, log=print) -> None:
    """Makes `out` this process's (and its children's) until the process ends.

    Raises:
        OutDirError: when a live process holds `out`, or `out` cannot be created or
            written (read-only, no permission, no space), with the path and the fix.
    """
    out = Path(out).resolve()
    if out in _held:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                if owner is not None and _is_ancestor(owner):
                    return
                raise OutDirError(
                    f"{out} is in use by another run (pid {owner}); wait for it to end, "
                    "or give another --out"
                ) from None
            if os.fstat(fd).st_ino == os.stat(out / LOCK_NAME).st_ino:
                break
            os.close(fd)  # a releasing owner removed the file we opened; take the new one
        previous = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {' '.join(sys.argv[:3])}\n".encode())
        os.fsync(fd)
    except OSError as e:
        raise OutDirError(_unwritable(out, e)) from e
    _held[out] = fd
    atexit.register(release, out)
    if previous is not None and previous != os.getpid():
        log(f"took over {out / LOCK_NAME} from pid {previous}, which is no longer running")


def release(out: str | Path) -> None:
    """Gives `out` up before the process ends (tests, several runs in one process)."""
    out = Path(out).resolve()
    fd = _held.pop(out, None)
    if fd is not None:
        (out / LOCK_NAME).unlink(missing_ok=True)
        os.close(fd)


def check_free_space(out: str | Path, needed_bytes: int, what: str) -> None:
    """Raises OutDirError when `out`'s file system has less than `needed_bytes` free."""
    free = shutil.disk_usage(out).free
    if free < needed_bytes:
        raise OutDirError(
            f"{out} has {free / 2**20:.1f} MiB free, and {what} needs about "
            f"{needed_bytes / 2**20:.1f} MiB: free some space or give another --out"
        )


def _unwritable(out: Path, e: OSError) -> str:
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir's EEXIST / ENOTDIR: a file where a folder must go
        return f"{blocker} is a file, not a folder: give an --out that is a folder (or a new path)"
    why = {
        errno.EROFS: "is on a read-only file system",
        errno.EACCES: "is not writable by this user",
        errno.EPERM: "is not writable by this user",
        errno.ENOSPC: "is on a full file system",
        errno.EDQUOT: "is over its disk quota",
    }.get(e.errno, f"cannot be written ({e.strerror})")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{out} {why}: free some space or give another --out"
    return f"{out} {why}: give a writable --out"


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    first = os.read(fd, 200).split(b" ", 1)[0]
    return int(first) if first.strip().isdigit() else None


def _is_ancestor(pid: int) -> bool:
    """Whether `pid` is this process's parent, grandparent, ... (Linux /proc)."""
    current = os.getppid()
    for _ in range(32):
        if current == pid:
            return True
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            return False
        current = int(stat.rsplit(")", 1)[1].split()[1])
        if current <= 1:
            return False
    return False

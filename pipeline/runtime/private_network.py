"""Moves this process into a network namespace of its own, holding only loopback.

TensorFlow's gRPC server binds every interface and has no bind-address option, and it
runs whatever graph it is sent, unauthenticated. Workers started after `enter()` inherit
the namespace: they reach each other on 127.0.0.1, and nothing outside this machine's
processes in the namespace can reach them.

Linux only. Root gets the namespace directly; other users through a user namespace that
maps their own uid and gid (files they write keep their owner), where the system allows
unprivileged user namespaces.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
IFREQ = "16sH22x"  # struct ifreq: interface name, flags, padding to 40 bytes


class NamespaceUnavailable(OSError):
    """This system does not let this process create a network namespace."""


def enter() -> str:
    """Unshares the network namespace (with a user namespace unless root) and brings its
    loopback up; returns how, for the log.

    Must run before the process starts threads (a user namespace needs a single thread):
    before TensorFlow is imported.

    Raises:
        NamespaceUnavailable: with the reason, when the kernel refuses.
    """
    if not hasattr(os, "getuid") or not os.path.exists("/proc/self/ns/net"):
        raise NamespaceUnavailable(errno.ENOSYS, "network namespaces need Linux")
    if threading.active_count() > 1 or len(os.listdir("/proc/self/task")) > 1:
        raise NamespaceUnavailable(errno.EINVAL, "the process already runs several threads")
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        _unshare(CLONE_NEWNET)
        how = "a private network namespace"
    else:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
        how = "a private network namespace (in a user namespace of this user)"
    _loopback_up()
    return how


def interfaces(pid: int | str = "self") -> list[str]:
    """Network interfaces in the namespace of process `pid` (Linux /proc/PID/net/dev)."""
    with open(f"/proc/{pid}/net/dev") as f:
        return sorted(line.split(":")[0].strip() for line in f if ":" in line)


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(flags)) != 0:
        code = ctypes.get_errno()
        raise NamespaceUnavailable(code, os.strerror(code))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack(IFREQ, b"lo", 0)
        flags = struct.unpack(IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(IFREQ, b"lo", flags | IFF_UP))

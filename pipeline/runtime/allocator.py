"""The C allocator's handling of large tensors on a CPU.

glibc's malloc serves every block above 32 MB (a batch-512 activation of the airbench94
widths is 88 MB in bfloat16) with a fresh `mmap` and returns it on free, so each step
pays the kernel to map and zero those pages again: an 88 MB XLA multiply took 31.7 ms
that way and 22.8 ms reusing freed memory (docs/performance.md, "Freed memory"). PyTorch
users get the same from tcmalloc through `LD_PRELOAD`; this does it from inside the
process, where the project can.
"""

from __future__ import annotations

import ctypes
import platform

# glibc's <malloc.h> parameter numbers for mallopt.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free memory kept at the heap's top before it is returned to the system (mallopt takes an
# int): more than a step's tensors, so a step never gives back what the next one needs.
_KEEP_BYTES = 2**31 - 1


def reuse_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse: large blocks come from the heap
    (no per-block `mmap`) and freed ones stay in the process. Memory use stays at the
    run's peak instead of falling between steps.

    Returns:
        Whether it took effect: False without glibc (macOS, musl) or where mallopt refuses.
        Under an `LD_PRELOAD`ed allocator (tcmalloc, jemalloc) it is true and harmless:
        that allocator already reuses memory and glibc's settings go unused.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))

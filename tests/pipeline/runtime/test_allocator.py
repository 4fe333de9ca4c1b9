"""reuse_freed_memory: a large block freed and asked for again comes back without new
pages. Each case runs in its own interpreter, as the setting lasts for the process."""

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)

# Allocates and fills a 64 MB block three times; prints the page faults of the third.
_PROBE = """
import resource, sys
import numpy as np
from pipeline.runtime import allocator
if sys.argv[1] == "reuse":
    assert allocator.reuse_freed_memory()
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.empty(64 * 2**20, np.uint8)
    block.fill(1)
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults_of_a_repeated_block(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


def test_a_freed_block_is_reused_without_new_pages():
    # 64 MB is 16,384 pages of 4 KB, or 32 transparent huge pages: a fresh mapping
    # faults at least 32 times; a reused block none (a few for the interpreter's own).
    assert _faults_of_a_repeated_block("reuse") < 8
    assert _faults_of_a_repeated_block("default") >= 32

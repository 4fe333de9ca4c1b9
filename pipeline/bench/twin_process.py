"""The PyTorch twin in a process of its own, with a malloc preloaded (tcmalloc, which
PyTorch's CPU tuning guide recommends and which speeds the twin's step up).

`LD_PRELOAD` takes effect only when a process starts, so the twin under tcmalloc cannot
share the benchmark's process. `TwinProcess` runs it in a child driven over a pipe, one
line per pass, so `cifar-bench train` can time it in turn with the in-process contenders
(`timing.time_in_turn`): a machine whose speed drifts then slows the reference and the
loop alike. Run as `python -m pipeline.bench.twin_process JOB_DIR` by `TwinProcess` only.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from pipeline.bench.torch_twin import TwinError
from pipeline.config import Config, from_dict, to_dict

TCMALLOC = "tcmalloc_minimal"  # the library's name without lib/.so: Debian's libtcmalloc-minimal4
TCMALLOC_HINT = "apt-get install libtcmalloc-minimal4 (or your system's gperftools package)"
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the child imports this same code
_STDERR_TAIL = 2_000  # characters of the child's stderr quoted when it fails


def find_tcmalloc() -> str | None:
    """The file name the dynamic loader knows tcmalloc by on this machine, or None."""
    return ctypes.util.find_library(TCMALLOC)


class TwinProcess:
    """`torch_twin.training_pass` in a child process started with `preload` in its
    LD_PRELOAD. `one_pass()` runs one pass there and returns the images it trained; use
    it as a context manager, or call `close()`, to end the child and delete its files.

    Raises:
        TwinError: the child could not start, the library was not preloaded, or the child
            failed; the message quotes the child's stderr.
    """

    def __init__(
        self, cfg: Config, images: np.ndarray, labels: np.ndarray, steps: int, preload: str
    ):
        self._preload = preload
        self._files = tempfile.TemporaryDirectory(prefix="cifar-twin-")
        job = Path(self._files.name)
        np.save(job / "images.npy", images)
        np.save(job / "labels.npy", labels)
        (job / "job.json").write_text(
            json.dumps({"config": to_dict(cfg), "steps": steps, "preload": preload})
        )
        self._stderr_path = job / "stderr.txt"
        path = os.environ.get("PYTHONPATH")
        env = {
            **os.environ,
            "LD_PRELOAD": preload,
            "PYTHONPATH": os.pathsep.join([str(_PACKAGE_ROOT), *([path] if path else [])]),
        }
        with open(self._stderr_path, "w") as stderr:
            self._child = subprocess.Popen(
                [sys.executable, "-m", __name__, str(job)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )
        try:
            self.trainable_parameters = self._reply("ready")
        except TwinError:
            self.close()
            raise

    def one_pass(self) -> int:
        self._child.stdin.write("pass\n")
        self._child.stdin.flush()
        return self._reply("trained")

    def _reply(self, expected: str) -> int:
        line = self._child.stdout.readline()
        words = line.split()
        if len(words) == 2 and words[0] == expected:
            return int(words[1])
        if line:  # alive but off the protocol: it would wait for input, not end
            self._child.kill()
        self._child.wait()
        tail = self._stderr_path.read_text()[-_STDERR_TAIL:].strip()
        said = f"answered {line.strip()!r}" if line else "stopped"
        raise TwinError(
            f"the PyTorch twin's process (LD_PRELOAD={self._preload}) {said} instead of "
            f"{expected!r} (exit code {self._child.returncode}); its stderr ends:\n"
            f"{tail or '(empty)'}"
        )

    def close(self) -> None:
        if self._child.poll() is None:
            self._child.stdin.close()  # end of input: the child returns
            try:
                self._child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        self._files.cleanup()

    def __enter__(self) -> TwinProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _preloaded(library: str) -> bool:
    """Whether `library` is mapped into this process (True where /proc cannot tell)."""
    maps = Path("/proc/self/maps")
    return not maps.exists() or Path(library).name in maps.read_text()


def serve(job_dir: Path) -> int:
    """The child: builds the twin from `job_dir`, answers "ready N" (its trainable
    parameters), then one "trained N" line for each "pass" line until its input ends."""
    from pipeline.bench import torch_twin  # noqa: PLC0415 - imports torch

    job = json.loads((job_dir / "job.json").read_text())
    if not _preloaded(job["preload"]):
        print(
            f"error: LD_PRELOAD={job['preload']} was not loaded (the loader's message, if "
            f"any, is above); install it: {TCMALLOC_HINT}",
            file=sys.stderr,
        )
        return 2
    one_pass, parameters = torch_twin.training_pass(
        from_dict(job["config"]),
        np.load(job_dir / "images.npy"),
        np.load(job_dir / "labels.npy"),
        job["steps"],
    )
    print(f"ready {parameters}", flush=True)
    for line in sys.stdin:
        if line.strip() == "pass":
            print(f"trained {one_pass()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1])))

"""Signals: the first stops a run after its step and saves; a second exits at once."""

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.processes import (
    ENV,
    EPOCHS_OF_MANY_STEPS,
    STEPS_PER_EPOCH,
    checkpoint_steps,
    start_training,
    wait_for,
)


@pytest.mark.slow
def test_sigint_saves_and_exits_130(tmp_path):
    proc = start_training(*EPOCHS_OF_MANY_STEPS, "--epochs", "3", out=tmp_path)
    wait_for(lambda: (tmp_path / "history.json").is_file(), 240, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "stopped by SIGINT" in err and "Traceback" not in err
    assert max(checkpoint_steps(tmp_path)) >= STEPS_PER_EPOCH


# A process inside StopRequests whose main thread never reaches a step boundary (as when
# it is stuck in a long compiled call or a slow save): only the second signal ends it.
STUCK = """
import sys, time
from pipeline.runtime import preemption
with preemption.StopRequests() as stops:
    print("ready", flush=True)
    time.sleep(120)
print("slept through", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_exits_at_once_without_saving(signum):
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signum)
    time.sleep(1.0)
    assert proc.poll() is None, "the first signal only asks to stop after the step"
    started = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    assert f"{name}: stopping after the current step" in err
    assert f"{name} again: exiting without saving" in err and "slept through" not in out

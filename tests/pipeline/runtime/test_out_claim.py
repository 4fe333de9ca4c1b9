"""One run per --out: a live claim refuses others, a dead one is taken over, and an --out
that cannot hold the run is refused before training."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.runtime import out_claim
from tests.conftest import REPO
from tests.processes import ENV, start_training

HOLDER = (
    "import sys, time; from pipeline.runtime import out_claim; out_claim.claim(sys.argv[1]); "
    "print('held', flush=True); time.sleep(600)"
)


def _hold(out: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_live_claim_refuses_another_run(tmp_path):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        with pytest.raises(
            out_claim.OutDirError, match=f"in use by another run \\(pid {holder.pid}"
        ):
            out_claim.claim(out)
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_runs_claim_is_taken_over_and_released(tmp_path):
    out = tmp_path / "run"
    holder = _hold(out)
    holder.kill()
    holder.wait()
    assert (out / out_claim.LOCK_NAME).read_text().startswith(str(holder.pid))
    said = []
    out_claim.claim(out, log=said.append)
    try:
        assert said == [
            f"took over {out.resolve() / '.lock'} from pid {holder.pid}, which is no longer running"
        ]
        assert (out / out_claim.LOCK_NAME).read_text().startswith(str(os.getpid()))
    finally:
        out_claim.release(out)
    assert not (out / out_claim.LOCK_NAME).exists()


@pytest.mark.slow
def test_cli_into_a_busy_out_is_refused_before_loading_data(tmp_path):
    holder = _hold(tmp_path)
    try:
        started = time.monotonic()
        busy = start_training(
            "--model", "functional_two_layer_fc", "--data-dir", str(tmp_path / "none"), out=tmp_path
        )
        _, err = busy.communicate(timeout=120)
        assert busy.returncode == 2, err[-2000:]
        assert f"in use by another run (pid {holder.pid})" in err
        assert "another --out" in err and time.monotonic() - started < 60
        # cifar-tune claims its --out the same way, before any data or trial.
        tune = subprocess.run(
            [sys.executable, "-m", "scripts.tune", "--data-dir", str(tmp_path / "none")]
            + ["--out", str(tmp_path)],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert tune.returncode == 2, tune.stderr[-2000:]
        assert f"in use by another run (pid {holder.pid})" in tune.stderr
    finally:
        holder.kill()


def _in_mount_namespace(script: str) -> subprocess.CompletedProcess:
    """Runs `script` in a mount namespace of its own (unshare -m, with a user namespace
    unless root), where it may mount small or read-only file systems."""
    unshare = ["unshare", "-m"] if os.getuid() == 0 else ["unshare", "-rm"]
    probe = subprocess.run([*unshare, "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode().strip()}")
    return subprocess.run(
        [*unshare, "sh", "-c", script],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )


# The notebook's FC net, hidden 4000: 12.3M weights, a 49 MB checkpoint. Two kept plus the
# one being written need about 150 MB: a 64 MB tmpfs holds the small files' allowance and
# one checkpoint, so only an estimate that counts the checkpoints refuses it up front.
BIG_CHECKPOINTS = "--model functional_two_layer_fc --set model.params.hidden=4000"


@pytest.mark.slow
@pytest.mark.parametrize(
    "options,model,why",
    [
        ("ro", "", "read-only file system"),
        ("size=64k", "", "MiB free"),
        ("size=64m", BIG_CHECKPOINTS, "2 checkpoint(s) of this run needs about 1"),
    ],
)
def test_a_read_only_or_full_out_fails_before_training(tmp_path, options, model, why):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    train = (
        f"{sys.executable} -m scripts.train --synthetic --epochs 1 --quiet {model} --out {mnt}/run"
    )
    done = _in_mount_namespace(f"mount -t tmpfs -o {options} tmpfs {mnt} && exec {train}")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{mnt}" in done.stderr and why in done.stderr
    assert "epoch 1/1" not in done.stdout, "refused before training"


@pytest.mark.parametrize("out", ["a_file", "a_file/run"])
def test_an_out_that_is_or_lies_under_a_file_is_named_as_such(tmp_path, out):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(out_claim.OutDirError) as refused:
        out_claim.claim(tmp_path / out)
    message = str(refused.value)
    assert f"{tmp_path / 'a_file'} is a file, not a folder" in message
    assert "space" not in message

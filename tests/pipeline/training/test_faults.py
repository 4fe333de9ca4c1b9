"""Faults: SIGTERM / SIGINT save the step reached, a lost worker ends a multi-worker run,
local workers listen on loopback only, and one live run per output folder."""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from pipeline.runtime import out_claim, private_network
from pipeline.training import loop, run, steps
from tests.conftest import REPO, TINY, latest_checkpoint_step, tiny_config

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
# Epochs long enough to be interrupted between two steps: 128 steps of 32 images, with
# random shifts and flips (the resumed run must draw the same ones).
EPOCHS_OF_MANY_STEPS = [
    *TINY,
    "--set",
    "data.synthetic_examples=4096",
    "--set",
    "data.augment.translate=2",
    "--set",
    "data.augment.flip=random",
    "--no-export",
]
STEPS_PER_EPOCH = 4096 // 32


def _train(*args, out: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scripts.train", *args, "--out", str(out)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name[5:-6]) for p in (out / "checkpoints").glob("ckpt-*.index"))


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_set_stop_flag_ends_the_call_before_its_next_step():
    cfg = tiny_config()
    strategy, inputs = run.prepare(cfg)
    model = run.build(cfg, strategy)
    length = inputs.run_length(1)
    flag = tf.Variable(False)
    trainer = loop.Trainer(model, inputs, cfg, strategy, length, flag)
    trainer.start(0)
    assert trainer.train_steps(3) == 3
    flag.assign(True)
    before = [v.numpy() for v in model.trainable_variables]
    assert trainer.train_steps(3) == 0
    for a, b in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    assert trainer.epoch_step == 3
    assert not steps.agreed_flag(None, strategy)()


def test_checkpoint_every_steps_saves_inside_epochs(tmp_path):
    cfg = tiny_config(
        **{
            "train.epochs": 2,
            "train.out_dir": str(tmp_path),
            "train.checkpoint_every_steps": 3,
            "train.keep_checkpoints": 10,
        }
    )
    run.train(cfg, log=lambda s: None)
    # 8 steps per epoch: saves at 3 and 6 inside each epoch, and at each epoch's end.
    assert _checkpoint_steps(tmp_path) == [3, 6, 8, 11, 14, 16]


@pytest.mark.slow
def test_sigint_saves_and_exits_130(tmp_path):
    proc = _train(*EPOCHS_OF_MANY_STEPS, "--epochs", "3", out=tmp_path)
    _wait_for(lambda: (tmp_path / "history.json").is_file(), 240, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "stopped by SIGINT" in err and "Traceback" not in err
    assert max(_checkpoint_steps(tmp_path)) >= STEPS_PER_EPOCH


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


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the listening TCP sockets process `pid` holds, read from
    /proc/PID/net/tcp and tcp6 (its network namespace) and matched by socket inode."""
    fd_dir = Path(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:
                found.append(_address(local))
    return found


def _address(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # /proc prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw)), int(port, 16)


def _host_listening_ports() -> set[int]:
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                ports.add(_address(fields[1])[1])
    return ports


def _workers(launcher: int) -> dict[int, int]:
    """{worker index: pid} of the launcher's children, from their TF_CONFIG."""
    found = {}
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        config = next((e[10:] for e in environ if e.startswith(b"TF_CONFIG=")), None)
        if config:
            found[json.loads(config)["task"]["index"]] = int(child)
    return found


@pytest.mark.slow
def test_local_workers_loopback_only_sigterm_saves_all_and_a_lost_worker_ends_the_run(tmp_path):
    """One 2-worker run, three launches: SIGTERM to the launcher stops both workers at one
    saved step; the rerun resumes there until worker 1 is killed; the third completes."""
    flags = [*EPOCHS_OF_MANY_STEPS, "--epochs", "3", "--local-workers", "2"]
    flags += ["--set", "train.checkpoint_every_steps=16"]
    proc = _train(*flags, out=tmp_path)
    _wait_for(lambda: latest_checkpoint_step(tmp_path) >= 16, 240, proc)

    workers = _workers(proc.pid)
    assert sorted(workers) == [0, 1]
    ports = set()
    for pid in workers.values():
        listening = _listening(pid)
        assert listening, "the worker's server is up"
        for address, port in listening:
            ports.add(port)
            loopback = ipaddress.ip_address(address).is_loopback
            alone = private_network.interfaces(pid) == ["lo"]
            assert loopback or alone, f"{address}:{port} is reachable from outside"
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert not ports & _host_listening_ports(), "nothing listens in this machine's namespace"

    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert time.monotonic() - sent < 30
    # Saving is collective: the chief's checkpoint exists only if both workers saved it.
    saved = latest_checkpoint_step(tmp_path)
    epoch, step = saved // STEPS_PER_EPOCH + 1, saved % STEPS_PER_EPOCH
    assert err.count(f"stopped by SIGTERM at epoch {epoch}, step {step}/") == 2, err[-3000:]

    proc = _train(*flags, out=tmp_path)
    _wait_for(lambda: latest_checkpoint_step(tmp_path) > saved, 240, proc)
    workers = _workers(proc.pid)
    os.kill(workers[1], signal.SIGKILL)
    killed = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - killed < 120
    assert f"resuming from the checkpoint of epoch {epoch}, step {step}/" in out
    assert proc.returncode == 4, err[-3000:]
    assert f"lost worker 1 (pid {workers[1]}), which was killed by SIGKILL" in err
    kept = latest_checkpoint_step(tmp_path)
    assert f"Run the same command again to resume from ckpt-{kept}" in err

    # The last launch asks for the export: a multi-worker run names the command instead.
    proc = _train(*[f for f in flags if f != "--no-export"], out=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming from the checkpoint of epoch" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and len(metrics["history"]) == 3
    assert f"no export from a multi-worker run: run `cifar-export {tmp_path}" in out
    assert not (tmp_path / "export").exists()


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


def test_a_live_claim_refuses_others_and_a_dead_ones_is_taken_over(tmp_path):
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
        busy = _train(
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


def test_without_a_private_namespace_local_workers_refuse_unless_the_risk_is_accepted(
    monkeypatch,
):
    from pipeline.runtime import launch

    def refuse():
        raise private_network.NamespaceUnavailable(1, "Operation not permitted")

    monkeypatch.setattr(private_network, "enter", refuse)
    with pytest.raises(launch.LaunchError, match="--allow-exposed-workers") as refused:
        launch.isolate(allow_exposed=False)
    assert "Operation not permitted" in str(refused.value)
    said = []
    launch.isolate(allow_exposed=True, log=said.append)
    assert "listen on every interface" in said[0] and "accepted" in said[0]


# Two workers of a cluster started from TF_CONFIG alone, as a cluster's scheduler starts
# them: no launcher watches them or forwards signals. They run in a private network
# namespace holding only loopback; each one's output goes to its own files.
CLUSTER = """
import json, subprocess, sys
from pipeline.runtime import launch, private_network
private_network.enter()
out, flags = sys.argv[1], sys.argv[2:]
procs = []
for i, config in enumerate(launch.local_cluster(2)):
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "scripts.train", *flags, "--strategy", "multi_worker"],
        env={**__import__("os").environ, "TF_CONFIG": config},
        stdout=open(f"{out}/worker{i}.out", "w"), stderr=open(f"{out}/worker{i}.err", "w")))
print(json.dumps([p.pid for p in procs]), flush=True)
print(json.dumps([p.wait() for p in procs]), flush=True)
"""


def _cluster(flags: list[str], logs: Path) -> tuple[subprocess.Popen, list[int]]:
    logs.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", CLUSTER, str(logs), *flags],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, json.loads(proc.stdout.readline())


def _ended(proc: subprocess.Popen) -> list[int]:
    codes = json.loads(proc.stdout.readline())
    proc.wait(timeout=60)
    return codes


@pytest.mark.slow
def test_a_cluster_without_launcher_stops_at_one_step_and_its_workers_report_a_lost_peer(
    tmp_path,
):
    """SIGTERM to one worker alone (a cluster preempting one machine): both stop and save
    at one agreed step, exit 143, and the rerun resumes there. Then worker 1 is killed:
    worker 0 itself exits 4 with one line that says what is kept."""
    out, logs = tmp_path / "run", tmp_path / "logs"
    flags = [*EPOCHS_OF_MANY_STEPS, "--epochs", "3", "--out", str(out)]
    flags += ["--set", "train.checkpoint_every_steps=16"]
    proc, pids = _cluster(flags, logs)
    _wait_for(lambda: out.is_dir() and latest_checkpoint_step(out) >= 16, 240, proc)
    os.kill(pids[1], signal.SIGTERM)
    assert _ended(proc) == [143, 143]
    errs = [(logs / f"worker{i}.err").read_text() for i in (0, 1)]
    saved = latest_checkpoint_step(out)
    epoch, step = saved // STEPS_PER_EPOCH + 1, saved % STEPS_PER_EPOCH
    assert f"stopped by SIGTERM at epoch {epoch}, step {step}/" in errs[1], errs[1][-3000:]
    assert f"stopped by a signal to another worker at epoch {epoch}, step {step}/" in errs[0]

    proc, pids = _cluster(flags, logs)
    _wait_for(lambda: latest_checkpoint_step(out) > saved, 240, proc)
    os.kill(pids[1], signal.SIGKILL)
    codes = _ended(proc)
    assert codes[0] == 4 and codes[1] == -signal.SIGKILL, codes
    resumed = (logs / "worker0.out").read_text()
    assert f"resuming from the checkpoint of epoch {epoch}, step {step}/" in resumed
    err = (logs / "worker0.err").read_text()
    assert "lost contact with another worker" in err, err[-3000:]
    assert "run the same command again to resume" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_frozen_worker_ends_the_run_with_exit_4(tmp_path):
    """kill -STOP of one local worker: the other finds it through the coordination
    service's heartbeats and exits 4; the launcher names it and exits 4 within 120 s."""
    flags = [*EPOCHS_OF_MANY_STEPS, "--epochs", "3", "--local-workers", "2"]
    flags += ["--set", "train.checkpoint_every_steps=16"]
    proc = _train(*flags, out=tmp_path)
    _wait_for(lambda: latest_checkpoint_step(tmp_path) >= 16, 240, proc)
    frozen = _workers(proc.pid)[1]
    os.kill(frozen, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - stopped < 120
    assert proc.returncode == 4, err[-3000:]
    assert "worker 0" in err and "lost contact with it" in err, err[-3000:]
    assert "Run the same command again to resume from ckpt-" in err

"""Local and cluster workers: loopback only, one agreed stop step, a lost or frozen worker
ends the run with exit 4 and says what is kept."""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.runtime import private_network
from tests.conftest import REPO
from tests.processes import (
    ENV,
    EPOCHS_OF_MANY_STEPS,
    STEPS_PER_EPOCH,
    latest_checkpoint_step,
    start_training,
    wait_for,
)


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


@pytest.fixture(scope="module")
def three_launches(tmp_path_factory) -> dict:
    """One 2-worker run, three launches, as facts for the tests below: the first is stopped
    by SIGTERM to the launcher after a checkpoint; the rerun resumes until worker 1 is
    killed; the third (asking for the export) completes. Module-scoped: one run serves
    every claim (xdist_group keeps them on one worker)."""
    out = tmp_path_factory.mktemp("local_workers")
    flags = [*EPOCHS_OF_MANY_STEPS, "--epochs", "3", "--local-workers", "2"]
    flags += ["--set", "train.checkpoint_every_steps=16"]
    facts = {"out": out}
    proc = start_training(*flags, out=out)
    wait_for(lambda: latest_checkpoint_step(out) >= 16, 240, proc)
    workers = _workers(proc.pid)
    facts["workers"] = sorted(workers)
    facts["listening"] = {pid: _listening(pid) for pid in workers.values()}
    facts["alone"] = {pid: private_network.interfaces(pid) == ["lo"] for pid in workers.values()}
    facts["own_namespace"] = [
        os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        for pid in workers.values()
    ]
    facts["host_ports"] = _host_listening_ports()
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, facts["stop_err"] = proc.communicate(timeout=60)
    facts["stop_code"], facts["stop_seconds"] = proc.returncode, time.monotonic() - sent
    facts["saved"] = latest_checkpoint_step(out)

    proc = start_training(*flags, out=out)
    wait_for(lambda: latest_checkpoint_step(out) > facts["saved"], 240, proc)
    facts["killed_pid"] = _workers(proc.pid)[1]
    os.kill(facts["killed_pid"], signal.SIGKILL)
    killed = time.monotonic()
    facts["lost_out"], facts["lost_err"] = proc.communicate(timeout=120)
    facts["lost_code"], facts["lost_seconds"] = proc.returncode, time.monotonic() - killed
    facts["kept"] = latest_checkpoint_step(out)

    proc = start_training(*[f for f in flags if f != "--no-export"], out=out)
    facts["last_out"], facts["last_err"] = proc.communicate(timeout=300)
    facts["last_code"] = proc.returncode
    return facts


def _stopped_at(saved: int) -> str:
    return f"epoch {saved // STEPS_PER_EPOCH + 1}, step {saved % STEPS_PER_EPOCH}/"


@pytest.mark.slow
@pytest.mark.xdist_group("local_workers")
def test_local_workers_listen_on_loopback_in_their_own_namespace_only(three_launches):
    facts = three_launches
    assert facts["workers"] == [0, 1]
    ports = set()
    for pid, listening in facts["listening"].items():
        assert listening, "the worker's server is up"
        for address, port in listening:
            ports.add(port)
            loopback = ipaddress.ip_address(address).is_loopback
            assert loopback or facts["alone"][pid], f"{address}:{port} is reachable from outside"
    assert all(facts["own_namespace"])
    assert not ports & facts["host_ports"], "nothing listens in this machine's namespace"


@pytest.mark.slow
@pytest.mark.xdist_group("local_workers")
def test_sigterm_to_the_launcher_saves_both_workers_at_one_step(three_launches):
    facts = three_launches
    assert facts["stop_code"] == 143, facts["stop_err"][-3000:]
    assert facts["stop_seconds"] < 30
    # Saving is collective: the chief's checkpoint exists only if both workers saved it.
    stopped = f"stopped by SIGTERM at {_stopped_at(facts['saved'])}"
    assert facts["stop_err"].count(stopped) == 2, facts["stop_err"][-3000:]


@pytest.mark.slow
@pytest.mark.xdist_group("local_workers")
def test_a_killed_local_worker_ends_the_resumed_run_with_exit_4_naming_it(three_launches):
    facts = three_launches
    assert f"resuming from the checkpoint of {_stopped_at(facts['saved'])}" in facts["lost_out"]
    assert facts["lost_code"] == 4, facts["lost_err"][-3000:]
    assert facts["lost_seconds"] < 120
    pid = facts["killed_pid"]
    assert f"lost worker 1 (pid {pid}), which was killed by SIGKILL" in facts["lost_err"]
    resume = f"Run the same command again to resume from ckpt-{facts['kept']}"
    assert resume in facts["lost_err"]


@pytest.mark.slow
@pytest.mark.xdist_group("local_workers")
def test_a_multi_worker_run_completes_and_names_the_export_command(three_launches):
    facts, out = three_launches, three_launches["out"]
    assert facts["last_code"] == 0, facts["last_err"][-3000:]
    assert "resuming from the checkpoint of epoch" in facts["last_out"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and len(metrics["history"]) == 3
    assert f"no export from a multi-worker run: run `cifar-export {out}" in facts["last_out"]
    assert not (out / "export").exists()


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
    wait_for(lambda: out.is_dir() and latest_checkpoint_step(out) >= 16, 240, proc)
    os.kill(pids[1], signal.SIGTERM)
    assert _ended(proc) == [143, 143]
    errs = [(logs / f"worker{i}.err").read_text() for i in (0, 1)]
    saved = latest_checkpoint_step(out)
    epoch, step = saved // STEPS_PER_EPOCH + 1, saved % STEPS_PER_EPOCH
    assert f"stopped by SIGTERM at epoch {epoch}, step {step}/" in errs[1], errs[1][-3000:]
    assert f"stopped by a signal to another worker at epoch {epoch}, step {step}/" in errs[0]

    proc, pids = _cluster(flags, logs)
    wait_for(lambda: latest_checkpoint_step(out) > saved, 240, proc)
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
    proc = start_training(*flags, out=tmp_path)
    wait_for(lambda: latest_checkpoint_step(tmp_path) >= 16, 240, proc)
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

"""SLURM: `--strategy multi_worker` under srun reads the cluster through TensorFlow's
SlurmClusterResolver, with no TF_CONFIG; only task 0 writes."""

import json
import os
import subprocess
import sys

import pytest

from pipeline.config import TrainConfig
from pipeline.runtime import distribute
from tests.conftest import REPO, TINY


def _slurm(monkeypatch, procid, nodes="node[1-2]", tasks="2(x2)", **extra):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test, as all these
    monkeypatch.delenv("SLURM_GPUS_ON_NODE", raising=False)
    env = {
        "SLURM_PROCID": str(procid),
        "SLURM_STEP_NUM_TASKS": "4" if tasks == "2(x2)" else tasks,
        "SLURM_STEP_NODELIST": nodes,
        "SLURM_STEP_TASKS_PER_NODE": tasks,
        **extra,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_cpu_nodes_resolve_every_task_without_nvidia_smi(monkeypatch):
    # 2 nodes x 2 tasks: the tasks of a node on consecutive ports, rank 3 the last worker.
    _slurm(monkeypatch, 3)
    monkeypatch.setenv("PATH", "")  # no nvidia-smi anywhere
    resolver = distribute.slurm_resolver(port=7000)
    spec = resolver.cluster_spec().as_dict()
    assert spec == {"worker": ["node1:7000", "node1:7001", "node2:7000", "node2:7001"]}
    assert resolver.get_task_info() == ("worker", 3)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # nothing hidden or shown on a CPU node


def test_gpu_nodes_share_their_gpus_and_too_few_gpus_say_how_to_run(monkeypatch):
    _slurm(monkeypatch, 1, nodes="gpu7", tasks="2", SLURM_GPUS_ON_NODE="4")
    resolver = distribute.slurm_resolver(port=7000)
    resolver.cluster_spec()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"  # task 1's half of the node
    _slurm(monkeypatch, 0, nodes="gpu7", tasks="2", SLURM_GPUS_ON_NODE="1")
    with pytest.raises(distribute.StrategyError, match="--ntasks-per-node=1"):
        distribute.slurm_resolver(port=7000)


def test_only_task_0_is_chief_and_without_a_cluster_the_error_names_both_sources(monkeypatch):
    cfg = TrainConfig(strategy="multi_worker")
    _slurm(monkeypatch, 0)
    assert distribute.is_chief_task(cfg)
    _slurm(monkeypatch, 2)
    assert not distribute.is_chief_task(cfg)
    for name in distribute.SLURM_STEP_VARS:
        monkeypatch.delenv(name)
    with pytest.raises(distribute.StrategyError, match="TF_CONFIG.*SLURM_PROCID.*srun"):
        distribute.make_strategy(cfg)


# Two tasks of one srun step on one node, as SLURM starts them: the same command line,
# the same --out, SLURM's variables and no TF_CONFIG, in a network namespace holding only
# loopback (so the default ports are free and nothing outside can reach them).
SRUN = """
import json, os, subprocess, sys
from pipeline.runtime import private_network
private_network.enter()
logs, flags = sys.argv[1], sys.argv[2:]
env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
env.update(SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="localhost",
           SLURM_STEP_TASKS_PER_NODE="2", SLURM_NODEID="0")
procs = [subprocess.Popen(
    [sys.executable, "-m", "scripts.train", *flags, "--strategy", "multi_worker"],
    env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
    stdout=open(f"{logs}/task{i}.out", "w"), stderr=open(f"{logs}/task{i}.err", "w"))
    for i in range(2)]
print(json.dumps([p.wait(timeout=600) for p in procs]), flush=True)
"""


@pytest.mark.slow
def test_two_srun_tasks_form_one_cluster_with_the_loss_of_two_replicas(tmp_path):
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "from pipeline.runtime import private_network as p; p.enter()"],
            cwd=REPO,
            capture_output=True,
        )
    except OSError as e:  # pragma: no cover - no Python to start
        pytest.skip(str(e))
    if probe.returncode:
        pytest.skip(f"no private network namespace here: {probe.stderr.decode()[-300:]}")
    flags = [*TINY, "--epochs", "2", "--no-export", "--set", "optim.lr=0.05"]
    logs, out = tmp_path / "logs", tmp_path / "slurm"
    logs.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SRUN, str(logs), *flags, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    errs = [(logs / f"task{i}.err").read_text()[-3000:] for i in range(2)]
    assert json.loads(done.stdout) == [0, 0], errs
    mirrored = tmp_path / "mirrored"
    one = subprocess.run(
        [sys.executable, "-m", "scripts.train", *flags, "--strategy", "mirrored"]
        + ["--cpu-replicas", "2", "--out", str(mirrored)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    cluster = json.loads((out / "history.json").read_text())
    local = json.loads((mirrored / "history.json").read_text())
    assert len(cluster) == 2
    for a, b in zip(cluster, local, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert json.loads((out / "metrics.json").read_text())["replicas"] == 2

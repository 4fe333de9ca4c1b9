"""tf.distribute strategy from config, and which process is the chief.

A multi-worker cluster comes from TF_CONFIG or, under SLURM's `srun`, from SLURM's own
variables through TensorFlow's `SlurmClusterResolver`.
"""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from pipeline.config import TrainConfig
from pipeline.errors import UserError


class StrategyError(UserError):
    """The strategy flags do not fit together or this process; the message says the fix."""


def split_cpu(replicas: int) -> list[str]:
    """Splits the CPU into `replicas` logical devices (for testing MirroredStrategy).

    Must run before TensorFlow initialises its devices; afterwards only an equal or
    larger existing split is accepted.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
    except RuntimeError as e:
        have = tf.config.list_logical_devices("CPU")
        if len(have) < replicas:
            raise StrategyError(
                f"cannot split the CPU into {replicas} devices: TensorFlow is already "
                f"initialised with {len(have)}. Pass --cpu-replicas before anything else "
                "uses TensorFlow (a fresh process)."
            ) from e
    return [f"/cpu:{i}" for i in range(replicas)]


def make_strategy(cfg: TrainConfig) -> tf.distribute.Strategy:
    """ "default": one device; "mirrored": all GPUs (or `cpu_replicas` logical CPUs);
    "multi_worker": MultiWorkerMirroredStrategy over the cluster in TF_CONFIG."""
    if cfg.strategy == "default":
        if cfg.cpu_replicas > 1:
            raise StrategyError("--cpu-replicas needs --strategy mirrored")
        return tf.distribute.get_strategy()
    if cfg.strategy == "mirrored":
        if cfg.cpu_replicas > 0:
            devices = split_cpu(cfg.cpu_replicas)
            # NCCL is GPU-only; CPU replicas reduce through one device.
            return tf.distribute.MirroredStrategy(
                devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
            )
        return tf.distribute.MirroredStrategy()
    if "TF_CONFIG" in os.environ:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if in_slurm_step():
        resolver = slurm_resolver(cfg.slurm_port)
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    raise StrategyError(
        "--strategy multi_worker reads the cluster from the TF_CONFIG environment variable "
        "or, under srun, from SLURM's (" + ", ".join(SLURM_STEP_VARS) + "); neither is "
        "set: run every task through srun, set TF_CONFIG on every worker, or try it "
        "locally with --local-workers N."
    )


# What srun sets in each task and SlurmClusterResolver reads.
SLURM_STEP_VARS = (
    "SLURM_PROCID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_STEP_NODELIST",
    "SLURM_STEP_TASKS_PER_NODE",
)


def in_slurm_step() -> bool:
    """This process is a task of an srun job step."""
    return all(name in os.environ for name in SLURM_STEP_VARS)


def slurm_resolver(port: int) -> tf.distribute.cluster_resolver.SlurmClusterResolver:
    """TensorFlow's resolver for this srun task: every task a worker, the tasks of a node
    on ports `port`, `port` + 1, ...; the node's GPUs (SLURM_GPUS_ON_NODE, else
    CUDA_VISIBLE_DEVICES) shared evenly among its tasks.

    Raises:
        StrategyError: when a node has fewer GPUs than tasks.
    """
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver
    tasks = max(int(n) for n in re.findall(r"(\d+)(?:\(x\d+\))?", _slurm_tasks_per_node()))
    gpus = _slurm_gpus_on_node()
    if gpus == 0:
        # CPU-only nodes: the resolver hands out GPUs by count and would ask nvidia-smi;
        # one nominal GPU per task, never made visible, keeps its task list whole.
        return resolver(port_base=port, gpus_per_node=tasks, gpus_per_task=1, auto_set_gpu=False)
    if gpus < tasks:
        raise StrategyError(
            f"SLURM runs {tasks} tasks on a node with {gpus} GPU(s): run one task per node "
            "(srun --ntasks-per-node=1; each task then uses all of the node's GPUs) or at "
            "most one per GPU."
        )
    return resolver(port_base=port, gpus_per_node=gpus)


def _slurm_tasks_per_node() -> str:
    return os.environ["SLURM_STEP_TASKS_PER_NODE"]  # e.g. "2(x3),1"


def _slurm_gpus_on_node() -> int:
    if os.environ.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(os.environ["SLURM_GPUS_ON_NODE"])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one worker that writes outputs (worker 0 of a multi-worker cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def is_chief_task(cfg: TrainConfig) -> bool:
    """`is_chief` before any strategy exists, from TF_CONFIG or SLURM's task rank (for
    work that must precede TensorFlow's start-up, such as claiming the output folder)."""
    if cfg.strategy != "multi_worker":
        return True
    if "TF_CONFIG" not in os.environ:
        return not in_slurm_step() or os.environ["SLURM_PROCID"] == "0"
    try:
        spec = json.loads(os.environ["TF_CONFIG"])
        task, cluster = spec.get("task", {}), spec.get("cluster", {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON with cluster and task: {e}") from e
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index") == 0 and "chief" not in cluster

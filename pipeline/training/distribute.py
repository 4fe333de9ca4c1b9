"""tf.distribute strategy from config, and which process is the chief."""

from __future__ import annotations

import json
import os

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
    if "TF_CONFIG" not in os.environ:
        raise StrategyError(
            "--strategy multi_worker reads the cluster from the TF_CONFIG environment "
            "variable, which is not set: set it on every worker, or try it locally with "
            "--local-workers N."
        )
    return tf.distribute.MultiWorkerMirroredStrategy()


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
    """`is_chief` before any strategy exists, from TF_CONFIG (for work that must precede
    TensorFlow's start-up, such as claiming the output folder)."""
    if cfg.strategy != "multi_worker" or "TF_CONFIG" not in os.environ:
        return True
    try:
        spec = json.loads(os.environ["TF_CONFIG"])
        task, cluster = spec.get("task", {}), spec.get("cluster", {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON with cluster and task: {e}") from e
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and task.get("index") == 0 and "chief" not in cluster

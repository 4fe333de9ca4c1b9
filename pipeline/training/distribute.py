"""tf.distribute strategy from config, and local multi-worker clusters on loopback."""

from __future__ import annotations

import json
import os
import socket

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


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def local_cluster(n: int) -> list[str]:
    """TF_CONFIG values for `n` workers on loopback ports of this machine."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(n)]
    return [
        json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
        for i in range(n)
    ]

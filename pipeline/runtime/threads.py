"""TensorFlow's inter-op thread pool on a CPU, sized from config before TensorFlow starts."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from pipeline.config import ConfigError


def size_inter_op_pool(threads: int, log: Callable[[str], None] = print) -> None:
    """Gives TensorFlow `threads` inter-op threads on a machine without GPUs (0: its
    default, one per core).

    The pool runs independent ops at once, each op splitting itself over the intra-op
    threads; with one, ops run one at a time on every core, which keeps wide convs from
    competing for the same cores and caches (docs/performance.md). GPU runs keep the
    default: their host threads launch kernels and feed the devices. TensorFlow takes the
    size only before its first op; later, a different size is reported and left: it
    changes speed only, never results.

    Raises:
        ConfigError: for a negative `threads`.
    """
    if threads < 0:
        raise ConfigError(
            f"train.cpu_inter_op_threads must be 0 (TensorFlow's default) or a thread "
            f"count, e.g. 1; got {threads}"
        )
    if threads == 0:
        return
    if tf.config.list_physical_devices("GPU"):
        log(
            f"train.cpu_inter_op_threads = {threads} left aside: this machine has GPUs, "
            "whose runs keep TensorFlow's default inter-op pool"
        )
        return
    try:
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        have = tf.config.threading.get_inter_op_parallelism_threads() or "its default"
        log(
            f"warning: train.cpu_inter_op_threads = {threads} not applied: TensorFlow "
            f"already runs with {have} inter-op threads in this process, and takes the "
            "setting only before its first op (a fresh process). Speed may differ; results "
            "do not."
        )
        return
    log(f"inter-op threads: {threads} (train.cpu_inter_op_threads)")

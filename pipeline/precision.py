"""Mixed precision from config: a dtype-policy scope for building, loss scaling for float16."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras


@contextlib.contextmanager
def policy_scope(precision: str) -> Iterator[None]:
    """Builds models under `precision` ("float32", "mixed_bfloat16", "mixed_float16").

    Keras layers read the policy when they are created, so the policy is set only while
    models are built and restored afterwards: nothing global outlives the scope.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, precision: str):
    """float16 needs loss scaling against gradient underflow; bfloat16 has float32's range.

    Keras 3's LossScaleOptimizer scales the loss (`scale_loss`, inside the tape), unscales
    the gradients, skips any step whose gradients are not finite and lowers the scale.
    """
    if precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer

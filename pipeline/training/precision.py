"""Mixed precision from config: the policy the hardware calls for, a dtype-policy scope for
building, loss scaling for float16."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import keras

from pipeline.runtime import hardware
from pipeline.runtime.hardware import BF16_CPU_FLAGS


@dataclass(frozen=True)
class Choice:
    """The precision a run trains in and why; `device` is "gpu" or "cpu"."""

    policy: str
    reason: str
    device: str
    # What GPU trainers rely on, turned on with "auto" on a GPU: augmentation inside the
    # compiled step and an XLA-compiled step.
    augment_on_device: bool = False
    jit_compile: bool = False


def choose(
    requested: str, cpu_flags: frozenset[str] | None, gpu_capabilities: list[tuple[int, int]]
) -> Choice:
    """The policy for `requested` ("auto" or an explicit policy) on this hardware.

    Args:
        requested: "auto", "float32", "mixed_bfloat16" or "mixed_float16".
        cpu_flags: the CPU's feature flags, or None when they cannot be read.
        gpu_capabilities: (major, minor) compute capability of each visible GPU.
    """
    device = "gpu" if gpu_capabilities else "cpu"
    if requested != "auto":
        return Choice(requested, "asked for explicitly", device)
    if gpu_capabilities:
        major, minor = min(gpu_capabilities)
        cc = f"GPU compute capability {major}.{minor}"
        gpu = {"device": device, "augment_on_device": True, "jit_compile": True}
        if major >= 8:
            return Choice("mixed_bfloat16", f"{cc} >= 8.0 has bfloat16 tensor cores", **gpu)
        if major == 7:
            return Choice("mixed_float16", f"{cc} has float16 tensor cores", **gpu)
        return Choice("float32", f"{cc} < 7.0 has no half-precision tensor cores", **gpu)
    if cpu_flags is None:
        return Choice(
            "float32", "CPU flags unknown (no /proc/cpuinfo), so the safe float32", device
        )
    found = hardware.bf16_units(cpu_flags)
    if found:
        return Choice("mixed_bfloat16", f"CPU has {' and '.join(found)}", device)
    return Choice("float32", f"CPU has no bfloat16 unit ({' / '.join(BF16_CPU_FLAGS)})", device)


def resolve(cfg, log: Callable[[str], None] = print):
    """`cfg` with `train.precision` decided for this machine, and the `Choice`: the one
    place "auto" is decided (building and the optimizer refuse it).

    Prints the choice and its reason in one line. On a GPU, "auto" also turns on what GPU
    trainers rely on: augmentation inside the compiled step and an XLA-compiled step; the
    line says so. Warns when bfloat16 is asked for on a CPU that can only emulate it.
    """
    flags = hardware.cpu_flags()
    choice = choose(cfg.train.precision, flags, hardware.gpu_capabilities())
    changes = {"train": dataclasses.replace(cfg.train, precision=choice.policy)}
    also = ""
    if choice.augment_on_device or choice.jit_compile:
        changes["data"] = dataclasses.replace(cfg.data, augment_on_device=True)
        changes["train"] = dataclasses.replace(changes["train"], jit_compile=True)
        also = "; with augmentation inside the compiled step and an XLA step, as on GPUs"
    log(f"precision: {choice.policy} ({choice.reason}){also}")
    emulated = flags is not None and not hardware.bf16_units(flags)
    if choice.policy == "mixed_bfloat16" and choice.device == "cpu" and emulated:
        log(
            "warning: this CPU has no bfloat16 unit, so mixed_bfloat16 runs about 5-10x "
            "slower than float32 here; use --precision float32 (or auto)"
        )
    return dataclasses.replace(cfg, **changes), choice


def decided(precision: str) -> str:
    """`precision`, refused while still "auto": `resolve` decides it, once a run."""
    if precision == "auto":
        raise ValueError(
            'train.precision "auto" reached the model or optimizer undecided: pass the config '
            "through pipeline.training.precision.resolve first (run.train and cifar-* do)"
        )
    return precision


@contextlib.contextmanager
def policy_scope(precision: str) -> Iterator[None]:
    """Builds models under `precision` ("float32", "mixed_bfloat16", "mixed_float16").

    Keras layers read the policy when they are created, so the policy is set only while
    models are built and restored afterwards: nothing global outlives the scope.
    """
    precision = decided(precision)
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
    if decided(precision) == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer

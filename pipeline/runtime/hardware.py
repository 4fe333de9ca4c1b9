"""What this machine has, read once where a decision or a figure needs it: the CPU's flags
and model (every measured figure states it), its bfloat16 units, the GPUs' compute
capabilities."""

from __future__ import annotations

from pathlib import Path

# CPU flags of bfloat16 matrix units: Intel AMX (Sapphire Rapids on) and AVX512-BF16
# (Cooper Lake, AMD Zen 4). Without them bfloat16 is emulated: 5-10x slower than float32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def bf16_units(flags: frozenset[str]) -> list[str]:
    """Which of the bfloat16 unit flags the CPU has (none: bfloat16 is emulated)."""
    return [f for f in BF16_CPU_FLAGS if f in flags]


def _cpuinfo_field(names: tuple[str, ...], cpuinfo: str | Path) -> str | None:
    """The first CPU's value of the first field in `names` (Linux); None where unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in names:  # exact: "model" must not match "model name"
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The first CPU's feature flags (Linux); None where they cannot be read."""
    flags = _cpuinfo_field(("flags", "Features"), cpuinfo)
    return None if flags is None else frozenset(flags.split())


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The CPU as every measured figure states it: its model name, family and model
    numbers (the flags alone do not tell a Zen 4 from a Zen 5) and its bfloat16 units;
    None where unknown."""
    name = _cpuinfo_field(("model name",), cpuinfo)
    if name is None:
        return None
    family, model = (_cpuinfo_field((key,), cpuinfo) or "?" for key in ("cpu family", "model"))
    flags = cpu_flags(cpuinfo) or frozenset()
    units = ", ".join(bf16_units(flags)) or "no bfloat16 units"
    return f"{name} (family {family}, model {model}; {units})"


def gpu_capabilities() -> list[tuple[int, int]]:
    import tensorflow as tf  # noqa: PLC0415 - only when resolving

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(cc) if cc else (0, 0))
    return capabilities

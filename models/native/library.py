"""The native ops' shared libraries, one per C++ source in this folder: compiled against
the installed TensorFlow's headers on first use, kept in a cache folder keyed by the source
and the TensorFlow build, and loaded with `tf.load_op_library`.

Nothing here is required: where the CPU lacks the instructions, or the machine has no C++
compiler, `conv_filter_grad_bf16()`, `gelu_bf16()`, `winograd_conv_f32()` and
`winograd_conv_bf16()` return None with a logged reason and the layers take TensorFlow's
kernels.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import tensorflow as tf

SOURCES = Path(__file__).parent
CACHE = Path.home() / ".cache" / "cifar-pipeline" / "native"
# AVX512-BF16 without AMX: the CPUs (AMD Zen 4 on) where the ops were measured faster than
# TensorFlow's own (docs/performance.md, "A native weight gradient" and "A native GELU").
# With AMX, oneDNN's kernels use the matrix units; not measured there.
_NEEDS, _DEFERS_TO = "avx512_bf16", "amx_bf16"
# The float32 Winograd convs need AVX-512 alone (its F, BW and VL parts); measured faster
# than oneDNN's float32 convs on a Zen 4 (docs/performance.md, "Winograd convolutions").
# CPUs with AMX train in bfloat16 at `auto` and were not measured, so they keep oneDNN's.
_WINOGRAD_NEEDS = frozenset({"avx512f", "avx512bw", "avx512vl"})

log = logging.getLogger(__name__)


def cpu_flag_set(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def pays_on(flags: frozenset[str]) -> bool:
    """Whether a CPU with these flags takes the native ops."""
    return _NEEDS in flags and _DEFERS_TO not in flags


def winograd_pays_on(flags: frozenset[str]) -> bool:
    """Whether a CPU with these flags takes the float32 Winograd convs."""
    return _WINOGRAD_NEEDS <= flags and _DEFERS_TO not in flags


def compile_command(source: Path, target: Path) -> list[str]:
    """g++ building `source` into a TensorFlow op library at `target`. Only the kernel's
    own functions use AVX-512 (a target pragma); the library is built and loaded only
    where `pays_on` holds."""
    flags = tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    return ["g++", "-O3", "-shared", "-fPIC", "-w", str(source), "-o", str(target), *flags]


def library_path(source: Path, cache: Path = CACHE) -> Path:
    """Where the library built from `source` for this TensorFlow lives."""
    key = hashlib.sha256(source.read_bytes())
    key.update(" ".join([tf.__version__, *compile_command(Path("src"), Path("out"))]).encode())
    return cache / f"{source.stem}-{key.hexdigest()[:16]}.so"


def build(source: Path, cache: Path = CACHE) -> Path:
    """The library built from `source`, compiled now unless already cached. Built into a
    temporary file and renamed, so concurrent builds (test workers) never load half a file.
    Raises RuntimeError with the compiler's message when the build fails."""
    target = library_path(source, cache)
    if target.exists():
        return target
    if shutil.which("g++") is None:
        raise RuntimeError("no C++ compiler: install g++ (e.g. apt-get install g++)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            compile_command(source, Path(partial)), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"g++ failed on {source.name}:\n{done.stderr[-2000:]}")
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


@functools.cache
def load(source_name: str, takes=pays_on):
    """The op library built from `source_name` in this folder, or None where this CPU does
    not take it (`takes(flags)` is false) or the library cannot be built (the reason is
    logged once)."""
    if not takes(cpu_flag_set()):
        return None
    try:
        return tf.load_op_library(str(build(SOURCES / source_name)))
    except (RuntimeError, OSError, tf.errors.NotFoundError) as err:
        log.warning(
            "native ops of %s unavailable, TensorFlow's kernel runs instead: %s", source_name, err
        )
        return None


def conv_filter_grad_bf16():
    """The `Bf16ConvFilterGrad` op (bfloat16 NHWC input and out_backprop of a stride-1
    "same" conv with an odd square kernel -> its float32 weight gradient), or None (`load`)."""
    ops = load("conv_filter_grad_bf16.cc")
    return None if ops is None else ops.bf16_conv_filter_grad


def gelu_bf16():
    """The ops `Bf16Gelu` (x -> exact GELU) and `Bf16GeluGrad` (x, upstream -> dx) on
    bfloat16, as a pair, or None (`load`)."""
    ops = load("gelu_bf16.cc")
    return None if ops is None else (ops.bf16_gelu, ops.bf16_gelu_grad)


def winograd_conv_f32():
    """The ops `WinogradConv3x3` (float32 NHWC input and 3x3 HWIO filter of a stride-1
    "same" conv -> its output; with `input_gradient=True`, the output's gradient and the
    forward filter -> the input gradient) and `WinogradConv3x3FilterGrad` (input and output
    gradient -> the filter gradient), as a pair, or None (`load`)."""
    ops = load("winograd_conv.cc", winograd_pays_on)
    return None if ops is None else (ops.winograd_conv3x3, ops.winograd_conv3x3_filter_grad)


def winograd_conv_bf16():
    """The op `Bf16WinogradConv3x3` (bfloat16 NHWC input and 3x3 HWIO filter of a stride-1
    "same" conv -> its output, in bfloat16), or None: it needs the float32 ops' library and
    a CPU that takes the bfloat16 native ops (`pays_on`)."""
    ops = load("winograd_conv.cc", winograd_pays_on)
    return None if ops is None or not pays_on(cpu_flag_set()) else ops.bf16_winograd_conv3x3

"""Where a training step's time goes: TensorFlow's profiler around the compiled loop, its
trace summed by op type (`cifar-bench profile`)."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

# Trace events that wrap others (the step function, the executor) rather than run an op.
_WRAPPERS = ("__inference", "Run", "Process", "Start", "Done", "RunAsync", "Iterator")


def op_times(cfg, steps: int) -> dict:
    """Profiles `steps` steps of the project's loop (after 2 untimed ones).

    Returns:
        {"ops": [(op type, ms per step, share of all op time), ...] most costly first,
         "step_ms": wall ms per step while profiling, "logdir": the raw trace}.
        Ops of one step may run side by side on the inter-op threads, so op times can add
        up to more than the step's wall time; shares are of their sum.
    """
    import tensorflow as tf  # noqa: PLC0415 - only when profiling

    from pipeline.bench.benchmark import compiled_loop  # noqa: PLC0415
    from pipeline.training import run  # noqa: PLC0415

    strategy, inputs = run.prepare(cfg)
    _, train_steps = compiled_loop(cfg, strategy, inputs, steps)
    train_steps(2)
    logdir = tempfile.mkdtemp(prefix="cifar-profile-")
    tf.profiler.experimental.start(logdir)
    train_steps(steps)
    tf.profiler.experimental.stop()
    totals, step_ps = _sum_by_op(logdir)
    all_ops = sum(totals.values()) or 1
    ops = [(name, ps / 1e9 / steps, ps / all_ops) for name, ps in totals.most_common()]
    return {"ops": ops, "step_ms": step_ps / 1e9 / steps, "logdir": logdir}


def _sum_by_op(logdir: str) -> tuple[collections.Counter, int]:
    """(picoseconds by op type, picoseconds of the traced step call) from the trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: PLC0415

    path = max(Path(logdir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    totals: collections.Counter = collections.Counter()
    step = 0
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name:
                    continue
                op_type = name.rsplit(":", 1)[-1].strip()
                if op_type.startswith("__inference_train_steps"):
                    step = max(step, event.duration_ps)
                elif op_type and not op_type.startswith(_WRAPPERS):
                    totals[op_type] += event.duration_ps
    return totals, step


def format_table(result: dict, top: int = 12) -> str:
    """A markdown table of the `top` op types and the rest."""
    rows = ["| op | ms per step | share |", "|---|---:|---:|"]
    for name, ms, share in result["ops"][:top]:
        rows.append(f"| `{name}` | {ms:,.0f} | {share:.1%} |")
    rest = result["ops"][top:]
    if rest:
        ms, share = sum(r[1] for r in rest), sum(r[2] for r in rest)
        rows.append(f"| {len(rest)} other op types | {ms:,.0f} | {share:.1%} |")
    rows.append(f"| **step wall time** | **{result['step_ms']:,.0f}** | |")
    return "\n".join(rows)

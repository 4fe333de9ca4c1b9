"""cifar-bench: throughput benchmarks, every contender measured side by side in one run.

cifar-bench pipeline --data-dir DIR [--json OUT]
    images/s of the notebook's numpy iterator, a textbook per-element tf.data
    pipeline (per-image map(crop, flip)) and the project's vectorised pipeline with the
    same augmentation.
cifar-bench train [--experiment NAME | --model NAME] [--set KEY=VALUE] [--precision P]
                  [--contenders naive,fit,loop,torch,torch_tcmalloc] [--json OUT]
    training images/s of the notebook's way (numpy iterator + eager GradientTape),
    keras model.fit on the project's pipeline, the project's compiled loop, and the
    PyTorch twin of custom_convnet, plainly and under tcmalloc in a process of its own
    (needs the `compare` extra: pip install -e '.[compare]', and for the second
    libtcmalloc-minimal4; skipped with a note without them). All passes are taken in
    turn; `loop_over_reference` is the loop against the faster twin.

cifar-bench profile [--experiment NAME | --model NAME] [--set KEY=VALUE] [--steps N]
    TensorFlow's profiler around N steps of the loop: milliseconds per step by op type.
cifar-bench layers [--experiment NAME | --model NAME] [--set KEY=VALUE] [--precision P] [--torch]
    each trained conv layer of the net alone, in the training dtype and batch: ms and
    GFLOP/s of its forward conv, input gradient and weight gradient (stock, and the
    shifted products where the layer could take them), the one the layer takes, and the
    convs' share of a step; with --torch, PyTorch's kernels on the same layers.
cifar-bench peak [--dtypes float32,bfloat16] [--json OUT]
    the CPU's conv peak as TensorFlow reaches it: GFLOP/s of a large 3x3 NHWC conv, its
    input gradient and its weight gradient, each alone (the yardstick for `train`'s GFLOP/s).

`train` also prints each contender's GFLOP/s: images/s x 3 x the model's forward FLOPs per
image (pipeline/compute.py).

Measured figures live in docs/results.md, with the commands that made them.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.bench import benchmark
from pipeline.config import Config, choices
from pipeline.files import write_json
from pipeline.runtime import hardware
from scripts.exits import run_cli
from scripts.flags import (
    add_data_args,
    add_experiment_args,
    add_override_arg,
    apply_flags,
    command_parser,
    experiment_config,
)

_MODEL = "functional_three_layer_convnet"  # without --model or --preset


def parse(argv=None) -> argparse.Namespace:
    parser = command_parser("cifar-bench", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    pipe = sub.add_parser("pipeline", help="input pipeline images/s")
    add_data_args(pipe)
    pipe.add_argument("--batch-size", type=int, default=256)
    pipe.add_argument("--repeats", type=int, default=3, help="timed epochs per contender")
    pipe.add_argument("--json", metavar="OUT", help="write the results here")
    train = sub.add_parser("train", help="training images/s")
    _add_training_args(train)
    train.add_argument("--steps", type=int, default=200, help="timed steps per pass")
    train.add_argument("--repeats", type=int, default=3, help="timed passes per contender")
    train.add_argument(
        "--contenders",
        type=_contenders,
        default=",".join(benchmark.CONTENDERS),
        help=f"comma-separated subset of {','.join(benchmark.CONTENDERS)}",
    )
    prof = sub.add_parser("profile", help="time per op type of the loop's training step")
    _add_training_args(prof)
    prof.add_argument("--steps", type=int, default=4, help="profiled steps")
    prof.add_argument("--top", type=int, default=12, help="op types listed; the rest summed")
    layers = sub.add_parser("layers", help="each conv layer's forward conv and gradients, ms")
    _add_training_args(layers)
    layers.add_argument("--repeats", type=int, default=5, help="timed calls per op (median)")
    layers.add_argument(
        "--torch",
        action="store_true",
        help="also PyTorch's kernels on each layer (the `compare` extra)",
    )
    peak = sub.add_parser("peak", help="conv GFLOP/s: forward, input and weight gradients")
    peak.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated")
    peak.add_argument("--repeats", type=int, default=5, help="timed calls per op (median)")
    peak.add_argument("--json", metavar="OUT", help="write the results here")
    return parser.parse_args(argv)


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    """What picks the trained net and recipe: `train_config` reads these."""
    add_data_args(parser)
    add_experiment_args(parser)
    add_override_arg(parser)
    parser.add_argument("--precision", default="auto", choices=choices("train.precision"))
    parser.add_argument("--batch-size", type=int, help="default: the recipe's")
    parser.add_argument("--json", metavar="OUT", help="write the results here")


def _contenders(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in benchmark.CONTENDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(benchmark.CONTENDERS)}"
        )
    return names


def bench_pipeline(args) -> dict:
    augment = {"data.augment.translate": 4, "data.augment.flip": "random"}
    cfg = apply_flags(Config(), args, {"batch_size": "data.batch_size"}, augment)
    return benchmark.input_pipelines(cfg.data, args.repeats)


def train_config(args) -> Config:
    """The experiment's (or the model's best-known) recipe, with the flags and --set on top."""
    flags = {"precision": "train.precision", "batch_size": "data.batch_size"}
    return apply_flags(experiment_config(args, _MODEL), args, flags, {"train.progress": "none"})


def bench_train(args) -> dict:
    from pipeline import compute  # noqa: PLC0415 - imports TensorFlow
    from pipeline.training import precision  # noqa: PLC0415

    cfg, choice = precision.resolve(train_config(args))
    out = benchmark.training_throughput(
        cfg, args.steps, args.repeats, args.contenders, log=lambda s: print(s, flush=True)
    )
    results = out["results"]
    forward = _forward_flops(cfg)
    train_flops = compute.TRAIN_FLOPS_PER_FORWARD * forward
    gflops = {k: v["median"] * train_flops / 1e9 for k, v in results.items()}
    print(
        f"{forward / 1e9:.3f} GFLOP forward per image, {train_flops / 1e9:.3f} per training "
        "image: " + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in gflops.items())
    )
    ratios = {
        f"loop_over_{k}": results["loop"]["median"] / v["median"]
        for k, v in results.items()
        if k != "loop" and "loop" in results
    }
    twins = [results[k]["median"] for k in benchmark.TWINS if k in results]
    if "loop" in results and twins:
        ratios["loop_over_reference"] = results["loop"]["median"] / max(twins)
    print("  ".join(f"{k} = {v:.2f}x" for k, v in ratios.items()))
    return {
        **{k: v["median"] for k, v in results.items()},
        "runs": {k: v["runs"] for k, v in results.items()},
        **ratios,
        "forward_flops_per_image": forward,
        "gflops_per_second": gflops,
        "skipped": out["skipped"],
        "settings": {
            **_settings(args, cfg, choice),
            "steps_per_pass": args.steps,
            "repeats": args.repeats,
            "source": cfg.data.source,
            "trainable_parameters": {
                k: v["trainable_parameters"]
                for k, v in results.items()
                if "trainable_parameters" in v
            },
        },
    }


def _forward_flops(cfg: Config) -> int:
    from models import registry  # noqa: PLC0415 - imports TensorFlow
    from pipeline import compute  # noqa: PLC0415

    return compute.flops_per_image(registry.build_model(cfg.model))


def bench_peak(args) -> dict:
    from pipeline.bench import peak  # noqa: PLC0415 - imports TensorFlow

    results = {}
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        r = results[dtype] = peak.conv_peak(dtype, args.repeats)
        print(
            f"{dtype:9s} forward {r['forward']:,.0f}  input gradient {r['input_gradient']:,.0f}  "
            f"weight gradient {r['weight_gradient']:,.0f} GFLOP/s",
            flush=True,
        )
    return {"results": results, "cpu": hardware.cpu_model(), "shape": peak.SHAPE}


def bench_layers(args) -> dict:
    import keras  # noqa: PLC0415 - imports TensorFlow
    import tensorflow as tf  # noqa: PLC0415

    from models import registry  # noqa: PLC0415
    from pipeline.bench import conv_layers  # noqa: PLC0415
    from pipeline.training import precision  # noqa: PLC0415

    cfg, choice = precision.resolve(train_config(args))
    dtype = keras.mixed_precision.Policy(cfg.train.precision).compute_dtype
    batch = cfg.data.batch_size
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # each op is its own tf.function: TF warns of retracing
    try:
        rows = conv_layers.layer_times(registry.build_model(cfg.model), batch, dtype, args.repeats)
    finally:
        logger.setLevel(level)
    if args.torch:
        _add_torch_layer_times(rows, batch, dtype, args.repeats)
    print(conv_layers.format_table(rows, batch))
    return {"layers": rows, "dtype": dtype, "settings": _settings(args, cfg, choice)}


def _add_torch_layer_times(rows: list[dict], batch: int, dtype: str, repeats: int) -> None:
    from pipeline.bench import torch_twin  # noqa: PLC0415

    if not torch_twin.available():
        raise torch_twin.TwinError(
            "--torch needs PyTorch: pip install -e '.[compare]' -c constraints.txt"
        )
    times = torch_twin.conv_layer_times(rows, batch, dtype, repeats)
    for row, torch_times in zip(rows, times, strict=True):
        row["torch"] = torch_times


def bench_profile(args) -> dict:
    from pipeline.bench import op_profile  # noqa: PLC0415 - imports TensorFlow
    from pipeline.training import precision  # noqa: PLC0415

    cfg, choice = precision.resolve(train_config(args))
    result = op_profile.op_times(cfg, args.steps)
    print(op_profile.format_table(result, args.top))
    print(f"raw trace (TensorBoard's profile tab): {result['logdir']}")
    return {
        "ops": [{"op": n, "ms_per_step": ms, "share": share} for n, ms, share in result["ops"]],
        "step_ms": result["step_ms"],
        "settings": {**_settings(args, cfg, choice), "steps": args.steps},
    }


def _settings(args, cfg: Config, choice) -> dict:
    """What a training measurement ran: net, precision and why, CPU, batch."""
    return {
        "experiment": args.experiment,
        "model": cfg.model.name,
        "params": cfg.model.params,
        "precision": cfg.train.precision,
        "precision_reason": choice.reason,
        "cpu": hardware.cpu_model(),
        "batch_size": cfg.data.batch_size,
    }


@run_cli
def main() -> None:
    args = parse()
    run = {
        "pipeline": bench_pipeline,
        "train": bench_train,
        "profile": bench_profile,
        "peak": bench_peak,
        "layers": bench_layers,
    }
    result = run[args.command](args)
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(main())

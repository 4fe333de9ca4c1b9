"""cifar-bench: throughput benchmarks, every contender measured side by side in one run.

cifar-bench pipeline --data-dir DIR [--json OUT]
    images/s of the notebook's numpy iterator, a textbook per-element tf.data
    pipeline (per-image map(crop, flip)) and the project's vectorised pipeline with the
    same augmentation. On the 2-core CPU dev machine: per-element ~10k images/s, the
    project's pipeline ~120k (about 12x).
cifar-bench train --model NAME [--precision P] [--json OUT]
    training images/s of the notebook's way (numpy iterator + eager GradientTape),
    keras model.fit on the project's pipeline, and the project's compiled loop.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from pipeline import benchmark, data
from pipeline.config import Config, override
from scripts.common import add_data_args, data_overrides, run_cli, write_json


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cifar-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pipe = sub.add_parser("pipeline", help="input pipeline images/s")
    add_data_args(pipe)
    pipe.add_argument("--batch-size", type=int, default=256)
    pipe.add_argument("--repeats", type=int, default=3, help="timed epochs per contender")
    pipe.add_argument("--json", metavar="OUT", help="write the results here")
    train = sub.add_parser("train", help="training images/s")
    add_data_args(train)
    train.add_argument("--model", default="functional_three_layer_convnet")
    train.add_argument(
        "--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"]
    )
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--steps", type=int, default=200, help="timed steps per contender")
    train.add_argument("--repeats", type=int, default=3)
    train.add_argument("--json", metavar="OUT", help="write the results here")
    return parser.parse_args(argv)


def bench_pipeline(args) -> dict:
    from pipeline import input as inputs_lib  # noqa: PLC0415 - imports TensorFlow

    cfg = override(
        Config(),
        {
            **data_overrides(args),
            "data.batch_size": args.batch_size,
            "data.augment.translate": 4,
            "data.augment.flip": "random",
        },
    )
    splits = data.load_splits(cfg.data)
    train = splits.train
    inputs = inputs_lib.make_inputs(splits, cfg.data, seed=0)
    x = inputs_lib.notebook_preprocess(train, splits.mean, splits.std)
    # Each contender is built once and read one epoch per pass, as training reads it.
    notebook = inputs_lib.NotebookIterator(x, train.labels, args.batch_size, shuffle=True)
    per_element = inputs_lib.per_element_dataset(train, splits, args.batch_size, 0)
    epochs = iter(inputs_lib.train_dataset(inputs, 0, args.repeats + 1))
    contenders = {
        "notebook_iterator": lambda: notebook,
        "per_element": lambda: per_element,
        "pipeline": lambda: itertools.islice(epochs, inputs.steps_per_epoch),
    }
    results = {}
    for name, make in contenders.items():
        r = benchmark.images_per_second(make, repeats=args.repeats)
        results[name] = r
        print(
            f"{name:18s} {r['median']:>10,.0f} images/s  (runs: "
            + ", ".join(f"{v:,.0f}" for v in r["runs"])
            + ")",
            flush=True,
        )
    ratio = results["pipeline"]["median"] / results["per_element"]["median"]
    print(f"pipeline / per_element = {ratio:.1f}x")
    return {
        **{k: v["median"] for k, v in results.items()},
        "runs": {k: v["runs"] for k, v in results.items()},
        "pipeline_over_per_element": ratio,
        "settings": {
            "batch_size": args.batch_size,
            "images": len(train.labels),
            "augment": "shift 4 px zero-padded + random flip (all three but the "
            "notebook iterator, which does none)",
            "source": cfg.data.source,
            "repeats": args.repeats,
        },
    }


def bench_train(args) -> dict:
    from pipeline import presets  # noqa: PLC0415

    cfg = override(
        presets.for_model(args.model),
        {
            **data_overrides(args),
            "data.batch_size": args.batch_size,
            "train.precision": args.precision,
            "train.progress": "none",
        },
    )
    results = benchmark.training_throughput(cfg, args.steps, args.repeats)
    for name, r in results.items():
        print(
            f"{name:6s} {r['median']:>9,.0f} images/s  (runs: "
            + ", ".join(f"{v:,.0f}" for v in r["runs"])
            + ")",
            flush=True,
        )
    naive = results["naive"]["median"]
    ratios = {
        f"loop_over_{k}": results["loop"]["median"] / v["median"]
        for k, v in results.items()
        if k != "loop"
    }
    print("  ".join(f"{k} = {v:.2f}x" for k, v in ratios.items()))
    return {
        **{k: v["median"] for k, v in results.items()},
        "runs": {k: v["runs"] for k, v in results.items()},
        **ratios,
        "settings": {
            "model": args.model,
            "precision": args.precision,
            "batch_size": args.batch_size,
            "steps_per_pass": args.steps,
            "repeats": args.repeats,
            "source": cfg.data.source,
            "naive_images_per_second": naive,
        },
    }


@run_cli
def main() -> None:
    args = parse()
    if args.command == "pipeline":
        result = bench_pipeline(args)
    else:
        result = bench_train(args)
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    sys.exit(main())

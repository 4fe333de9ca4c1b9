"""cifar-notebook: reproduce the notebook: every variant, one epoch, its own settings.

  cifar-notebook --data-dir DIR --out runs/notebook

Trains each notebook model for one epoch on the 49,000 / 1,000 split through the
project's loop (and the Sequential FC also through `model.fit`, as the notebook does),
then writes `results.md` (variant, bar, measured val accuracy, seconds) and
`results.json` in --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.common import add_data_args, data_overrides, run_cli, write_json


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="cifar-notebook",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_args(p)
    p.add_argument("--out", default="runs/notebook")
    p.add_argument("--models", nargs="*", help="a subset of the variants")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def runs(models: list[str]) -> list[tuple[str, str]]:
    out = [(m, "custom") for m in models]
    if "sequential_two_layer_fc" in models:
        out.append(("sequential_two_layer_fc", "fit"))
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| variant | loop | bar | val accuracy | met | seconds |",
        "|---|---|---:|---:|:-:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['loop']} | {r['bar']:.0%} | {r['val_accuracy']:.1%} "
            f"| {'yes' if r['val_accuracy'] >= r['bar'] else 'NO'} "
            f"| {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


@run_cli
def main() -> None:
    args = parse()
    from pipeline import experiments  # noqa: PLC0415
    from pipeline.config import override  # noqa: PLC0415
    from pipeline.training import run  # noqa: PLC0415

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, loop in runs(args.models or list(experiments.NOTEBOOK)):
        name = f"{model}-{loop}"
        cfg = override(
            experiments.for_model(model),
            {
                **data_overrides(args),
                "train.loop": loop,
                "train.seed": args.seed,
                "train.out_dir": str(out / name),
                "train.progress": "none",
            },
        )
        metrics = run.train(cfg, log=lambda s, n=name: print(f"[{n}] {s}", flush=True))
        bar = experiments.NOTEBOOK[model][1] if loop == "custom" else experiments.NOTEBOOK_FIT_BAR
        rows.append(
            {
                "model": model,
                "loop": loop,
                "bar": bar,
                "val_accuracy": metrics["val_accuracy"],
                "test_accuracy": metrics.get("test_accuracy"),
                "seconds": metrics["history"][-1]["seconds"],
            }
        )
        write_json(str(out / "results.json"), {"rows": rows})
        (out / "results.md").write_text(table(rows))
    print(table(rows))


if __name__ == "__main__":
    sys.exit(main())

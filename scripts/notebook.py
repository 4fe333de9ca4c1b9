"""cifar-notebook: reproduce the notebook: every variant, one epoch, its own settings.

  cifar-notebook --data-dir DIR --out runs/notebook
  cifar-notebook --ipynb notebooks/cifar10_notebook.ipynb --data-dir DIR   # run the notebook

Trains each notebook model for one epoch on the 49,000 / 1,000 split through the
project's loop (and the Sequential FC also through `model.fit`, as the notebook does),
then writes `results.md` (variant, bar, measured val accuracy, seconds) and
`results.json` in --out.

With --ipynb PATH it instead executes the completed course notebook top to bottom in a
fresh Jupyter kernel and writes it back with its outputs (--train-examples etc. shrink the
data through the notebook's NOTEBOOK_* environment variables).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.files import write_atomic, write_json
from scripts.exits import run_cli
from scripts.flags import add_data_args, apply_flags, command_parser


def parse(argv=None) -> argparse.Namespace:
    p = command_parser("cifar-notebook", __doc__)
    add_data_args(p)
    p.add_argument("--out", default="runs/notebook")
    p.add_argument("--models", nargs="*", help="a subset of the variants")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ipynb", metavar="PATH", help="execute this notebook in place instead")
    p.add_argument("--timeout", type=int, default=3600, help="--ipynb: seconds per cell")
    return p.parse_args(argv)


NOTEBOOK_ENV = {  # flag -> the environment variable the notebook's cells read
    "data_dir": "CIFAR_DATA_DIR",
    "local_copy": "CIFAR10_LOCAL",
    "train_examples": "NOTEBOOK_TRAIN_EXAMPLES",
    "val_examples": "NOTEBOOK_VAL_EXAMPLES",
    "test_examples": "NOTEBOOK_TEST_EXAMPLES",
}


def execute_ipynb(path: Path, out: Path, env: dict[str, str], timeout: int = 3600) -> None:
    """Runs the notebook at `path` top to bottom in a fresh kernel (working directory: the
    notebook's folder) with `env` added to its environment; writes it with outputs to
    `out` (written beside and renamed, so a failed run leaves `out` as it was).

    Raises:
        UserError: when `path` is not a notebook file.
        nbclient.exceptions.CellExecutionError: when a cell fails (the cell is named).
    """
    import nbclient  # noqa: PLC0415 - the dev extra; only this command needs it
    import nbformat  # noqa: PLC0415

    from pipeline.errors import UserError  # noqa: PLC0415

    if not path.is_file() or path.suffix != ".ipynb":
        raise UserError(f"{path} is not a notebook file (.ipynb): give the path of one")
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute(env={**os.environ, **env})  # the kernel's environment; ours is left as it was
    write_atomic(out, lambda tmp: nbformat.write(notebook, tmp))


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
    if args.ipynb:
        env = {
            var: str(getattr(args, flag))
            for flag, var in NOTEBOOK_ENV.items()
            if getattr(args, flag, None) is not None
        }
        execute_ipynb(Path(args.ipynb), Path(args.ipynb), env, args.timeout)
        print(f"executed {args.ipynb}")
        return
    from pipeline import experiments  # noqa: PLC0415
    from pipeline.training import run  # noqa: PLC0415

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, loop in runs(args.models or list(experiments.NOTEBOOK)):
        name = f"{model}-{loop}"
        always = {"train.loop": loop, "train.out_dir": str(out / name), "train.progress": "none"}
        cfg = apply_flags(experiments.for_model(model), args, {"seed": "train.seed"}, always)
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

"""data.json, beside a run's config.json: the normalisation statistics and class names the
model was trained with, so that restoring it needs neither the dataset nor the network."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.files import write_json

DATA_RECORD = "data.json"  # what the model was trained on, beside config.json


def write_data_record(out: Path, splits) -> None:
    """The normalisation statistics and class names the model was trained with, so that
    restoring it (export, predict, eval) needs neither the dataset nor the network."""
    write_json(
        out / DATA_RECORD,
        {
            "mean": [float(v) for v in splits.mean],
            "std": [float(v) for v in splits.std],
            "class_names": list(splits.class_names),
            "train_examples": len(splits.train.labels),
        },
    )


def read_data_record(run_dir: Path) -> dict | None:
    """`write_data_record`'s content; None for a run written before it existed."""
    path = Path(run_dir) / DATA_RECORD
    return json.loads(path.read_text()) if path.is_file() else None

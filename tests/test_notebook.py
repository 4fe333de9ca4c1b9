"""The completed course notebook runs top to bottom on the project, on a subset of CIFAR-10:
its shape tests print the notebook's shapes and every training cell clears its own bar,
scaled to the data it trains on."""

import os
import re
import shutil

import pytest

from pipeline import experiments
from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "cifar10_notebook.ipynb"
CHANCE = 0.10
TRAIN_EXAMPLES, FULL_EXAMPLES = 3_000, 49_000  # this test's training split; the notebook's
# The training cells in order, each with the notebook's bar and the epochs that bar allows
# (the cells train one epoch): Part II: 2, Part III: 2, Part IV: 5 (2 through model.fit;
# the ConvNet's has no bar of its own), Part V: 1 (70% within 10 epochs).
CELL_BARS = [
    *(
        (experiments.NOTEBOOK[m][1], 1)
        for m in (
            "lowlevel_two_layer_fc",
            "lowlevel_three_layer_convnet",
            "subclass_two_layer_fc",
            "subclass_three_layer_convnet",
            "sequential_two_layer_fc",
        )
    ),
    (experiments.NOTEBOOK_FIT_BAR, 1),
    (experiments.NOTEBOOK["sequential_three_layer_convnet"][1], 1),
    (None, 1),
    (experiments.NOTEBOOK["functional_two_layer_fc"][1], 1),
    (0.70, 10),
]
BUDGET_EXPONENT = 1 / 3  # how a bar's gain over chance shrinks with the training budget;
# measured on 3,000 images (1/16 of the notebook's, 1/163 of Part V's 10 epochs): the cells
# reached 27.6-38.8%, 5-13 points over their scaled bars
NO_BAR = CHANCE + 0.10  # 500 validation images: chance gives 10% +/- 1.3 points


def scaled_bar(bar: float | None, bar_epochs: int) -> float:
    """A cell's bar for one epoch of TRAIN_EXAMPLES images: its gain over chance scaled by
    the cube root of the share of the bar's training budget the cell gets."""
    if bar is None:
        return NO_BAR
    share = TRAIN_EXAMPLES / (FULL_EXAMPLES * bar_epochs)
    return CHANCE + (bar - CHANCE) * share**BUDGET_EXPONENT


def _text(cell) -> str:
    return "".join(
        o.get("text", "") if o.output_type == "stream" else str(o.get("data", {}))
        for o in cell.get("outputs", [])
    )


@pytest.mark.slow
@pytest.mark.real_data
def test_the_completed_notebook_runs_top_to_bottom(tmp_path, cifar_data_dir):
    import nbformat

    from scripts.notebook import execute_ipynb

    copy = tmp_path / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    env = {
        "CIFAR_DATA_DIR": cifar_data_dir,
        "NOTEBOOK_TRAIN_EXAMPLES": str(TRAIN_EXAMPLES),
        "NOTEBOOK_VAL_EXAMPLES": "500",
        "NOTEBOOK_TEST_EXAMPLES": "500",
    }
    execute_ipynb(copy, copy, env, timeout=600)
    assert "NOTEBOOK_TRAIN_EXAMPLES" not in os.environ  # given to the kernel alone
    cells = [c for c in nbformat.read(copy, as_version=4).cells if c.cell_type == "code"]
    out = "\n".join(_text(c) for c in cells)
    for printed in (
        "Train data shape:  (3000, 32, 32, 3)",
        "Validation data shape:  (500, 32, 32, 3)",
        "shape=(2, 12)",  # test_flatten
        "Two-layer network output shape: (64, 10)",
        "Three-layer ConvNet output shape: (64, 10)",
    ):
        assert printed in out, printed
    # test_TwoLayerFC, test_ThreeLayerConvNet, test_two_layer_fc_functional
    assert sum(_text(c).strip() == "(64, 10)" for c in cells) == 3
    accuracies = [
        float(re.findall(r"([\d.]+)%", line)[0]) / 100
        for line in out.splitlines()
        if line.startswith("Validation accuracy after training:")
    ]
    assert len(accuracies) == len(CELL_BARS), accuracies
    bars = [scaled_bar(*cell) for cell in CELL_BARS]
    below = [
        (i, a, round(b, 3)) for i, (a, b) in enumerate(zip(accuracies, bars, strict=True)) if a <= b
    ]
    assert not below, f"cells under their bar (cell, accuracy, bar): {below}"
    assert any("image/png" in o.get("data", {}) for o in cells[-1].outputs)  # the plot

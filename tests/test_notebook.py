"""The completed course notebook runs top to bottom on the project, on a subset of CIFAR-10:
its shape tests print the notebook's shapes and every training cell beats chance."""

import os
import re
import shutil

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "cifar10_notebook.ipynb"
TRAINING_CELLS = 10  # Part II: 2, Part III: 2, Part IV: 5 (2 through model.fit), Part V: 1
CHANCE = 0.10
MARGIN = 0.10  # 500 validation images: chance gives 10% +/- 1.3 points; one epoch of
# 3,000 images gave 26-35%


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
        "NOTEBOOK_TRAIN_EXAMPLES": "3000",
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
    assert len(accuracies) == TRAINING_CELLS, accuracies
    assert min(accuracies) > CHANCE + MARGIN, accuracies
    assert any("image/png" in o.get("data", {}) for o in cells[-1].outputs)  # the plot

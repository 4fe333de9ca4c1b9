"""A run folder rebuilt into its model (inference/restore.py): what it restores, from one
short run trained once, and what it refuses, naming what the folder holds."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from pipeline.inference import restore
from pipeline.training import run
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("restore") / "run"
    cfg = tiny_config(**{"train.epochs": 1, "train.out_dir": str(out), "train.seed": 3})
    run.train(cfg, log=lambda s: None)
    return out


def test_a_run_restores_with_its_checkpoint_statistics_and_test_split(trained):
    restored = restore.restore_run(trained)
    data = json.loads((trained / "data.json").read_text())
    assert restored.checkpoint.endswith("ckpt-8")  # 1 epoch of 8 steps
    assert restored.epochs_done == 1 and restored.finished
    np.testing.assert_array_equal(restored.mean, data["mean"])
    np.testing.assert_array_equal(restored.std, data["std"])
    assert restored.class_names == tuple(data["class_names"]) and len(restored.class_names) == 10
    # Only the test split is read; it carries the run's statistics, and nothing is written.
    splits = restored.inputs.splits
    assert len(splits.train.images) == 0 and len(splits.val.images) == 0
    assert len(splits.test.images) > 0
    np.testing.assert_array_equal(splits.mean, restored.mean)
    assert restored.cfg.train.progress == "none" and restored.cfg.train.seed == 3


def test_a_restore_without_the_test_split_reads_no_data(trained):
    restored = restore.restore_run(trained, test_split=False, data_dir="/elsewhere")
    assert restored.inputs is None
    assert restored.cfg.data.data_dir == "/elsewhere"


def test_a_run_stopped_early_is_not_finished(trained):
    restored = restore.restore_run(trained, test_split=False)
    assert not dataclasses.replace(restored, epochs_done=0).finished


def test_the_training_images_int8_calibrates_on_are_the_runs_first(trained):
    restored = restore.restore_run(trained, test_split=False)
    images = restore.training_images(restored, n=5)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    whole = restore.training_images(restored, n=1000)
    assert len(whole) == 256  # the synthetic split's size, not more
    np.testing.assert_array_equal(whole[:5], images)


def test_eval_refuses_a_folder_without_a_run_and_names_what_is_there(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(restore.RunDirError, match="holds no trained run.*it holds notes.txt"):
        restore.restore_run(tmp_path)
    with pytest.raises(restore.RunDirError, match="is not a folder"):
        restore.restore_run(tmp_path / "nowhere")


def test_a_folder_without_a_run_is_described_by_what_it_holds(tmp_path):
    # Planted by mutation testing (docs/mutation.md): the listing in the message.
    with pytest.raises(restore.RunDirError, match=r"it holds nothing$"):
        restore.restore_run(tmp_path)
    for i in range(13):
        (tmp_path / f"f{i:02d}").write_text("")
    (tmp_path / "sub").mkdir()
    with pytest.raises(restore.RunDirError) as refused:
        restore.restore_run(tmp_path)
    listed = ", ".join(f"f{i:02d}" for i in range(12))
    assert str(refused.value).endswith(f"it holds {listed} ...")
    (tmp_path / "f00").unlink()
    (tmp_path / "f01").unlink()
    with pytest.raises(restore.RunDirError, match=r"it holds f02, .*, f12, sub/$"):
        restore.restore_run(tmp_path)  # 12 names (a folder marked "/"): all listed


@pytest.mark.parametrize("missing", ["config.json", "checkpoints"])
def test_a_run_missing_its_config_or_checkpoints_is_refused(trained, tmp_path, missing):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    target = copy / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(restore.RunDirError, match="expected config.json and checkpoints/"):
        restore.restore_run(copy)


def _with_config(trained, tmp_path, text):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    (copy / "config.json").write_text(text)
    return copy


def test_a_config_that_is_not_a_runs_is_refused(trained, tmp_path):
    with pytest.raises(restore.RunDirError, match="config.json is not a run's config"):
        restore.restore_run(_with_config(trained, tmp_path, "{not json"))


def test_eval_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    config = json.loads((trained / "config.json").read_text())
    config["model"]["params"] = {"hidden": 16}
    copy = _with_config(trained, tmp_path, json.dumps(config))
    with pytest.raises(restore.RunDirError, match="does not hold the functional_two_layer_fc"):
        restore.restore_run(copy)

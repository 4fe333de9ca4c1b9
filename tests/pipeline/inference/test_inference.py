"""Using a trained run: cifar-eval's tables and pictures, cifar-export's SavedModel served
without the project, cifar-predict on image files, and their refusals."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import files
from pipeline.inference import evaluate, predict, restore
from pipeline.training import export, run
from tests.conftest import REPO, tiny_config

SMALL_NET = {"model.name": "custom_convnet", "model.params": {"size": "tiny"}}


class _StopAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def _train(tmp_path, name="run", **updates):
    out = tmp_path / name
    cfg = tiny_config(**{**SMALL_NET, "train.out_dir": str(out), **updates})
    return out, run.train(cfg, log=lambda s: None)


def test_eval_writes_tables_and_pictures_and_matches_the_run(tmp_path):
    # EMA and BN refresh: the weights judged are not the checkpoint's raw ones.
    out, metrics = _train(
        tmp_path,
        **{
            "train.epochs": 2,
            "train.tta": "flip",
            "optim.ema_decay": 0.9,
            "train.bn_recalibration_batches": 1,
        },
    )
    lines = []
    result = evaluate.evaluate_run(restore.restore_run(out), out / "eval", log=lines.append)
    assert result["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-9)
    assert result["test_accuracy_no_tta"] == pytest.approx(metrics["test_accuracy_no_tta"])
    assert result["finished"] and "epoch 2 of 2 (the end of training" in lines[0]
    for name in ("metrics.json", "per_class.md", "per_class.json", "confusion_matrix.png"):
        assert (out / "eval" / name).stat().st_size > 0
    assert (out / "eval" / "mistakes.png").stat().st_size > 0
    table = json.loads((out / "eval" / "per_class.json").read_text())
    support = np.array([r["support"] for r in table])
    recall = np.array([r["recall"] for r in table])
    assert support.sum() == result["test_images"]
    assert recall @ support / support.sum() == pytest.approx(result["test_accuracy"])
    assert "| class_0 |" in (out / "eval" / "per_class.md").read_text()


def test_eval_of_a_run_stopped_early_names_its_epoch(tmp_path):
    out = tmp_path / "stopped"
    cfg = tiny_config(**{**SMALL_NET, "train.out_dir": str(out), "train.epochs": 3})
    with pytest.raises(KeyboardInterrupt):
        run.train(cfg, log=lambda s: None, callbacks=[_StopAfterEpoch(1)])
    lines = []
    result = evaluate.evaluate_run(restore.restore_run(out), out / "eval", log=lines.append)
    assert (result["epochs_trained"], result["finished"]) == (1, False)
    assert "epoch 1 of 3 (a run stopped early" in lines[0]


@pytest.mark.parametrize(
    "updates",
    [
        {"model.name": "lowlevel_two_layer_fc", "model.params": {"hidden": 32}},
        {"train.precision": "mixed_bfloat16"},
        {"train.strategy": "mirrored", "train.cpu_replicas": 2},
    ],
    ids=["tf_module", "mixed_bfloat16", "two_replicas"],
)
def test_every_kind_of_run_restores_to_its_own_test_accuracy(tmp_path, updates):
    out, metrics = _train(tmp_path, **updates)
    restored = restore.restore_run(out)
    probs = evaluate.test_probabilities(restored, restored.cfg.train.tta)
    labels = restored.inputs.splits.test.labels
    assert np.mean(probs.argmax(1) == labels) == pytest.approx(metrics["test_accuracy"], abs=1e-9)


def test_cli_exit_codes_for_eval_export_and_predict(tmp_path, monkeypatch, capsys):
    from scripts import evaluate as eval_cli
    from scripts import export as export_cli
    from scripts import predict as predict_cli

    for cli, argv in (
        (eval_cli, ["cifar-eval", str(tmp_path)]),
        (export_cli, ["cifar-export", str(tmp_path), "--to", str(tmp_path / "x")]),
        (predict_cli, ["cifar-predict", str(tmp_path), "a.png"]),
    ):
        monkeypatch.setattr(sys, "argv", argv)
        assert cli.main() == 2
        assert capsys.readouterr().err.startswith("error: ")


SERVE_ALONE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    images = np.load(sys.argv[2])
    out = model.signatures["serving_default"](images=tf.constant(images))["probabilities"]
    np.save(sys.argv[3], out.numpy())
    names = [n.decode() for n in model.class_names.numpy()]
    # Plain Keras loads the bare network.
    import keras
    net = keras.saving.load_model(sys.argv[1] + "/model.keras")
    np.save(sys.argv[4], keras.ops.convert_to_numpy(net(images)))
    graph = model.signatures["serving_default"].graph.as_graph_def()
    dtypes = {str(n.attr["T"].type) for f in graph.library.function for n in f.node_def}
    project = [m for m in sys.modules if m.split(".")[0] in ("pipeline", "models", "tuning")]
    print(len(names), out.dtype.name, project, "14" in dtypes)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_the_runs_export_serves_uint8_images_without_the_project(tmp_path, precision):
    out, _ = _train(
        tmp_path,
        **{
            "train.precision": precision,
            "train.tta": "flip",
            "train.export": True,
            "data.test_examples": 256,
        },
    )
    restored = restore.restore_run(out)
    images = restored.inputs.splits.test.images[:256]
    expected = evaluate.test_probabilities(restored, "flip")[:256]
    np.save(tmp_path / "images.npy", images)
    # A fresh interpreter outside the repository: nothing of the project is imported.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVE_ALONE,
            str(out / "export"),
            "images.npy",
            "probs.npy",
            "keras_probs.npy",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # 10 classes, float32 out, no project module, no bfloat16 op (DT_BFLOAT16 = 14) in the
    # serving graph: whatever precision trained it.
    assert done.stdout.split() == ["10", "float32", "[]", "False"]
    served = np.load(tmp_path / "probs.npy")
    tolerance = 1e-5 if precision == "float32" else 2e-2
    np.testing.assert_allclose(served, expected, atol=tolerance)
    assert (served.argmax(1) == expected.argmax(1)).mean() > 0.97
    info = json.loads((out / "export" / export.INFO_FILE).read_text())
    assert info["precision"] == precision and "model.keras" in info["files"]
    # model.keras, loaded by plain Keras in that interpreter, keeps the SavedModel's contract
    # (uint8 images in, probabilities out), without TTA.
    without_tta = evaluate.test_probabilities(restored, "none")[:256]
    keras_probs = np.load(tmp_path / "keras_probs.npy")
    np.testing.assert_allclose(keras_probs, without_tta, atol=tolerance)
    assert "uint8 [N, 32, 32, 3]" in info["contracts"]["model.keras"]


def test_low_level_models_export_too(tmp_path):
    out, _ = _train(
        tmp_path,
        **{"model.name": "lowlevel_two_layer_fc", "model.params": {"hidden": 32}},
    )
    restored = restore.restore_run(out)
    path = restore.export_restored(restored, tmp_path / "export")
    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        images=tf.constant(restored.inputs.splits.test.images[:8])
    )["probabilities"]
    expected = evaluate.test_probabilities(restored, "none")[:8]
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert not (path / export.KERAS_FILE).exists()


def test_export_refuses_a_non_empty_folder_and_never_leaves_half_a_one(tmp_path, monkeypatch):
    out, _ = _train(tmp_path, **{"model.name": "lowlevel_two_layer_fc", "model.params": {}})
    restored = restore.restore_run(out)
    target = tmp_path / "served"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(files.ExportError, match="not empty.*--overwrite"):
        restore.export_restored(restored, target)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        restore.export_restored(restored, target, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    monkeypatch.undo()
    restore.export_restored(restored, target, overwrite=True)
    assert (target / "saved_model.pb").is_file() and not (target / "keep.txt").exists()


def test_predict_reads_any_image_and_names_the_files_it_cannot(tmp_path, capsys, monkeypatch):
    out, _ = _train(tmp_path, **{"train.export": True})
    rng = np.random.default_rng(0)
    files = {
        "wide.png": tf.io.encode_png(rng.integers(0, 255, (50, 90, 3), dtype=np.uint8)),
        "photo.jpg": tf.io.encode_jpeg(rng.integers(0, 255, (120, 100, 3), dtype=np.uint8)),
        "gray.png": tf.io.encode_png(rng.integers(0, 255, (32, 32, 1), dtype=np.uint8)),
        "rgba.png": tf.io.encode_png(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data.numpy())
    for name, data in _gif_and_bmp((10, 200, 30)).items():
        (tmp_path / name).write_bytes(data)
        files[name] = data
    whole = (tmp_path / "wide.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "notes.png").write_text("not an image")
    paths = [str(tmp_path / n) for n in [*files, "cut.png", "notes.png", "missing.png"]]
    results, errors = predict.predict_files(out / "export", paths)
    assert sorted(results) == sorted(str(tmp_path / n) for n in files)
    for top in results.values():
        assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] > 0
        assert top[0][0].startswith("class_")
    assert set(errors) == {str(tmp_path / n) for n in ("cut.png", "notes.png", "missing.png")}
    assert "missing.png: no such file" in errors[str(tmp_path / "missing.png")]
    assert "cut.png: a PNG file that does not decode whole" in errors[str(tmp_path / "cut.png")]
    # A text file is named for what it is, with no TensorFlow op trace nor other formats.
    notes = errors[str(tmp_path / "notes.png")]
    assert notes.endswith(
        "notes.png: not a PNG, JPEG, GIF or BMP image (its first bytes are none of theirs)"
    )
    assert "Op:" not in notes and "WebP" not in notes

    from scripts import predict as predict_cli

    monkeypatch.setattr(sys, "argv", ["cifar-predict", str(out / "export"), *paths, "--json"])
    assert predict_cli.main() == 2
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert len(payload["predictions"]) == 6 and len(payload["errors"]) == 3
    assert "cut.png" in captured.err and "missing.png" in captured.err


def _gif_and_bmp(colour) -> dict[str, bytes]:
    """A two-frame GIF (the first frame `colour`) and a BMP, `colour` all over, 64x48."""
    import io

    from PIL import Image

    first, second = Image.new("RGB", (64, 48), colour), Image.new("RGB", (64, 48), (0, 0, 0))
    gif, bmp = io.BytesIO(), io.BytesIO()
    first.save(gif, format="GIF", save_all=True, append_images=[second])
    first.save(bmp, format="BMP")
    return {"anim.gif": gif.getvalue(), "plain.bmp": bmp.getvalue()}


def test_read_image_takes_gif_and_bmp(tmp_path):
    for name, data in _gif_and_bmp((10, 200, 30)).items():
        (tmp_path / name).write_bytes(data)
        image = predict.read_image(tmp_path / name)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, name
        assert (image == (10, 200, 30)).all(), name  # the GIF's first frame


def test_read_image_makes_32x32_rgb(tmp_path):
    gray = tmp_path / "g.png"
    gray.write_bytes(tf.io.encode_png(np.full((64, 64, 1), 200, np.uint8)).numpy())
    image = predict.read_image(gray)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (image == 200).all()


def test_a_two_replica_run_exports_at_its_end(tmp_path):
    out, metrics = _train(
        tmp_path,
        **{"train.strategy": "mirrored", "train.cpu_replicas": 2, "train.export": True},
    )
    restored = restore.restore_run(out)
    images = restored.inputs.splits.test.images
    served = (
        tf.saved_model.load(str(out / "export"))
        .signatures["serving_default"](images=tf.constant(images))["probabilities"]
        .numpy()
    )
    labels = restored.inputs.splits.test.labels
    assert np.mean(served.argmax(1) == labels) == pytest.approx(metrics["test_accuracy"])


def test_a_run_folder_restores_and_exports_without_the_dataset(tmp_path, monkeypatch):
    """data.json keeps what the model was trained with: export reads no data at all, and
    eval reads the test split alone."""
    from pipeline.data import sources

    out, result = _train(tmp_path, **{"train.tta": "flip"})
    record = json.loads((out / "data.json").read_text())
    assert len(record["mean"]) == 3 and len(record["class_names"]) == 10

    def no_dataset(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(sources, "load_splits", no_dataset)
    test_reads = []
    real_test = sources.load_test_split
    monkeypatch.setattr(sources, "load_test_split", lambda *a: test_reads.append(a) or no_dataset())
    restored = restore.restore_run(out, test_split=False)
    assert restored.inputs is None and test_reads == []
    np.testing.assert_allclose(restored.mean, record["mean"])
    path = restore.export_restored(restored, tmp_path / "export")
    assert json.loads((path / export.INFO_FILE).read_text())["classes"] == record["class_names"]
    # Scoring reads the test split only, and gets the run's own test accuracy back.
    monkeypatch.setattr(sources, "load_test_split", real_test)
    restored = restore.restore_run(out, test_split=True)
    labels = restored.inputs.splits.test.labels
    assert len(restored.inputs.splits.train.labels) == 0 and len(labels) > 0
    probs = evaluate.test_probabilities(restored, "flip")
    assert np.mean(probs.argmax(1) == labels) == pytest.approx(result["test_accuracy"])


CHECK_WITHOUT_TF = textwrap.dedent(
    """
    import sys
    from scripts import export, predict
    run, busy = sys.argv[1], sys.argv[2]
    codes = []
    for cli, argv in (
        (export, [run + "/missing", "--to", run + "/new"]),
        (export, [run, "--to", busy]),
        (predict, [run, "a.png"]),
    ):
        sys.argv = ["cli", *argv]
        codes.append(cli.main())
    print(codes, "tensorflow" in sys.modules)
    """
)


def test_a_missing_run_a_busy_target_or_a_missing_export_fail_before_tensorflow_loads(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # looks like a run folder
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    done = subprocess.run(
        [sys.executable, "-c", CHECK_WITHOUT_TF, str(tmp_path), str(tmp_path / "busy")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "[2, 2, 2] False", done.stdout + done.stderr[-2000:]
    assert "missing holds no run (no config.json)" in done.stderr
    assert "busy is not empty" in done.stderr
    assert "holds no export (no saved_model.pb)" in done.stderr


def test_the_serving_signature_answers_an_empty_batch_and_refuses_a_wrong_size(tmp_path):
    out, _ = _train(tmp_path, **{"train.tta": "flip_translate", "train.export": True})
    serve = tf.saved_model.load(str(out / "export")).signatures[export.SIGNATURE]
    assert serve(images=tf.zeros([0, 32, 32, 3], tf.uint8))["probabilities"].shape == (0, 10)
    assert serve(images=tf.zeros([3, 32, 32, 3], tf.uint8))["probabilities"].shape == (3, 10)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be uint8 \[N, 32, 32"):
        serve(images=tf.zeros([4, 16, 32, 3], tf.uint8))


@pytest.mark.slow
def test_the_tflite_model_predicts_as_the_savedmodel(tmp_path):
    from pipeline.inference import tflite

    out, _ = _train(
        tmp_path,
        **{
            "train.precision": "mixed_bfloat16",
            "train.tta": "flip",
            "train.export": True,
            "train.epochs": 2,
            "data.synthetic_examples": 1024,
        },
    )
    restored = restore.restore_run(out)
    images = restored.inputs.splits.test.images
    serve = tf.saved_model.load(str(out / "export")).signatures[export.SIGNATURE]
    expected = serve(images=tf.constant(images))["probabilities"].numpy()
    path = tflite.convert(out / "export", "float")
    assert path.name == "model.tflite"
    served = tflite.predict(path, images)
    assert (served.argmax(1) == expected.argmax(1)).mean() >= 0.995
    np.testing.assert_allclose(served, expected, atol=1e-4)
    for quantization in ("dynamic", "int8"):  # smaller; their accuracy is measured, not bound
        smaller = tflite.convert(out / "export", quantization, restored.inputs.splits.test.images)
        assert smaller.stat().st_size < path.stat().st_size
        assert tflite.predict(smaller, images[:8]).shape == (8, 10)
    listed = json.loads((out / "export" / export.INFO_FILE).read_text())["files"]
    assert listed[-3:] == ["model.tflite", "model_dynamic.tflite", "model_int8.tflite"]

"""A trained model as a SavedModel that needs nothing of this project to serve:
`serving_default` takes uint8 images [N, 32, 32, 3], normalises them inside and returns
float32 class probabilities (with the run's test-time augmentation). Keras models also get
a `.keras` file beside it.

Whatever precision trained it, the export serves a float32 copy built from plain Keras
layers (stock BatchNormalization and GELU, not the training's fused kernels): ops every
TensorFlow runtime has, TFLite's converter included."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from models import registry
from pipeline.data import augment
from pipeline.files import check_target
from pipeline.training import precision, steps

SIGNATURE = "serving_default"
KERAS_FILE = "model.keras"
INFO_FILE = "export.json"


class _Serving(tf.Module):
    def __init__(self, model, mean, std, class_names, tta: str):
        super().__init__(name="cifar_classifier")
        self.model = model
        self.class_names = tf.Variable(list(class_names), trainable=False)  # saved with it
        self._mean, self._std, self._tta = np.asarray(mean), np.asarray(std), tta

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="images")])
    def serve(self, images):
        # A signature call does not check static shapes: a wrong image size must fail
        # here, with the shape it wants, not serve numbers.
        tf.debugging.assert_equal(
            tf.shape(images)[1:],
            tf.constant([32, 32, 3]),
            message="images must be uint8 [N, 32, 32, 3] (RGB, 0-255)",
        )
        # One blank image rides along and is dropped from the answer: an empty batch then
        # gets an empty answer (TTA's mirror padding fails on no images), without a branch
        # that TFLite's interpreter could not run on frozen weights.
        padded = tf.concat([images, tf.zeros([1, 32, 32, 3], tf.uint8)], axis=0)
        x = augment.normalise(padded, self._mean, self._std)
        logits = steps.predict_logits(self.model, x, self._tta)
        return {"probabilities": tf.nn.softmax(logits)[:-1]}


def classifier(net: keras.Model, mean, std) -> keras.Model:
    """`net` (normalised images in, logits out) as the SavedModel's contract in plain Keras
    layers: uint8 images in, the training split's normalisation inside, probabilities out
    (without test-time augmentation)."""
    images = keras.Input((32, 32, 3), dtype="uint8", name="images")
    std = np.asarray(std, np.float64)
    x = keras.layers.Normalization(mean=np.asarray(mean), variance=std**2, name="normalise")(
        keras.ops.cast(images, "float32")
    )
    probabilities = keras.layers.Softmax(name="probabilities")(net(x))
    return keras.Model(images, probabilities, name="cifar_classifier")


def export_model(
    model, mean, std, class_names, tta: str, to: str | Path, info: dict, overwrite: bool = False
) -> Path:
    """Writes the SavedModel (+ `model.keras` for Keras models, + `export.json` describing
    it) into `to`, via a temporary folder renamed at the end: a failure leaves `to` as it
    was.

    Raises:
        ExportError: when `to` is a file, or a non-empty folder and not `overwrite`.
    """
    to = Path(to)
    check_target(to, overwrite)
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(f".{to.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        serving = _Serving(model, mean, std, class_names, tta)
        tf.saved_model.save(serving, str(tmp), signatures={SIGNATURE: serving.serve})
        files = ["saved_model.pb", "variables/"]
        if isinstance(model, keras.Model):
            classifier(model, mean, std).save(tmp / KERAS_FILE)
            files.append(KERAS_FILE)
        description = {
            **info,
            "classes": list(class_names),
            "signature": SIGNATURE,
            "input": "images: uint8 [N, 32, 32, 3], RGB, 0-255 (normalised inside)",
            "output": "probabilities: float32 [N, classes]",
            "test_time_augmentation": tta,
            "files": files,
            "contracts": {
                "saved_model.pb": "tf.saved_model.load(DIR).signatures['serving_default']"
                "(images=uint8 [N, 32, 32, 3]) -> {'probabilities': float32 [N, classes]}, "
                f"with test-time augmentation {tta!r}",
                KERAS_FILE: "keras.models.load_model(DIR/model.keras)(uint8 [N, 32, 32, 3]) "
                "-> float32 probabilities [N, classes], without test-time augmentation "
                "(plain Keras layers: loads without this project)",
                "model*.tflite": "cifar-export --tflite: tf.lite.Interpreter(path)."
                "get_signature_runner()(images=uint8 [N, 32, 32, 3])['probabilities']",
            },
        }
        (tmp / INFO_FILE).write_text(json.dumps(description, indent=2) + "\n")
        if to.exists():
            old = to.with_name(f".{to.name}.old-{os.getpid()}")
            os.replace(to, old)
            os.replace(tmp, to)
            shutil.rmtree(old)
        else:
            os.replace(tmp, to)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return to


def portable_model(model, model_cfg):
    """A float32 copy of a Keras `model` built from plain layers (its builder's `fused`
    off and stock initialisers, where it has them), holding the same weights: the
    training's precision, fused kernels and project classes stay out of the export. A
    tf.Module (the low-level variants, float32 already) is returned as it is."""
    if not isinstance(model, keras.Model):
        return model
    params = dict(model_cfg.params)
    accepted = inspect.signature(registry.entry(model_cfg.name).builder).parameters
    if "fused" in accepted:
        params["fused"] = False
    if "init" in accepted:  # the weights are copied over; stock initialisers keep the
        params["init"] = "glorot"  # .keras file loadable by plain Keras
    with precision.policy_scope("float32"):
        twin = registry.build_model(dataclasses.replace(model_cfg, params=params))
    by_path = {v.path: v for v in model.weights}
    if set(by_path) >= {v.path for v in twin.weights}:
        pairs = [(v, by_path[v.path]) for v in twin.weights]
    else:  # names uniquified by a second build (subclassed models): the same order
        pairs = list(zip(twin.weights, model.weights, strict=True))
    for target, source in pairs:
        target.assign(tf.cast(source, target.dtype))
    return twin


def export_run(
    model, trained_on, cfg, to: str | Path, epochs_trained: int, overwrite: bool = False, **extra
) -> Path:
    """`export_model` with what the run was trained on (`trained_on.mean`, `.std` and
    `.class_names`: its training split's statistics and class names), its test-time
    augmentation, and a description of it in export.json."""
    info = {
        "model": cfg.model.name,
        "params": cfg.model.params,
        "precision": cfg.train.precision,
        "epochs_trained": epochs_trained,
        **extra,
    }
    return export_model(
        portable_model(model, cfg.model),
        trained_on.mean,
        trained_on.std,
        trained_on.class_names,
        cfg.train.tta,
        to,
        info,
        overwrite,
    )

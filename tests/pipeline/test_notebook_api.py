"""The notebook's own cells against the project: its names, signatures and shape tests."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import registry
from models.notebook_layers import fc_layers
from pipeline import notebook_api as nb
from pipeline.config import ModelConfig


def test_part2_shape_tests_as_the_notebook_writes_them():
    x_flat = nb.flatten(np.arange(24).reshape((2, 3, 4)))
    np.testing.assert_array_equal(x_flat, np.arange(24).reshape((2, 12)))
    x = tf.zeros((64, 32, 32, 3))
    scores = nb.two_layer_fc(x, [tf.zeros((32 * 32 * 3, 42)), tf.zeros((42, 10))])
    assert scores.shape == (64, 10)
    params = [
        tf.zeros((5, 5, 3, 6)),
        tf.zeros((6,)),
        tf.zeros((3, 3, 6, 9)),
        tf.zeros((9,)),
        tf.zeros((32 * 32 * 9, 10)),
        tf.zeros((10,)),
    ]
    assert nb.three_layer_convnet(x, params).shape == (64, 10)


def test_kaiming_normal_takes_the_notebooks_shape_argument():
    w = nb.kaiming_normal((3072, 4000))
    assert w.shape == (3072, 4000) and not isinstance(w, tf.Variable)
    assert float(tf.math.reduce_std(w)) == pytest.approx(np.sqrt(2 / 3072), rel=0.02)
    conv = nb.kaiming_normal((5, 5, 3, 32))
    assert float(tf.math.reduce_std(conv)) == pytest.approx(np.sqrt(2 / 75), rel=0.1)
    with pytest.raises(ValueError, match="shape must be a dense .* or conv"):
        nb.kaiming_normal((3, 3, 3))


def test_init_functions_give_the_notebooks_variables():
    w1, w2 = nb.two_layer_fc_init()
    assert (w1.shape, w2.shape) == ((3072, 4000), (4000, 10))
    shapes = [tuple(v.shape) for v in nb.three_layer_convnet_init()]
    assert shapes == [(5, 5, 3, 32), (32,), (3, 3, 32, 16), (16,), (32 * 32 * 16, 10), (10,)]
    assert all(isinstance(v, tf.Variable) for v in nb.three_layer_convnet_init())


def test_part3_and_4_shape_tests_with_softmax_outputs():
    # The notebook's own tests: inputs the registry's models (fixed 32x32x3) cannot take.
    scores = nb.TwoLayerFC(42, 10)(tf.zeros((64, 50)))
    assert scores.shape == (64, 10)
    np.testing.assert_allclose(tf.reduce_sum(scores, -1), np.ones(64), rtol=1e-5)
    assert nb.ThreeLayerConvNet(12, 8, 10)(tf.zeros((64, 3, 32, 32))).shape == (64, 10)
    model = nb.two_layer_fc_functional((50,), 42, 10)
    probs = model(tf.zeros((64, 50)))
    assert probs.shape == (64, 10)
    np.testing.assert_allclose(tf.reduce_sum(probs, -1), np.ones(64), rtol=1e-5)


def test_two_layer_fc_positional_order_is_hidden_then_classes():
    model = nb.TwoLayerFC(4000, 10)
    model(tf.zeros((1, 32, 32, 3)))
    kernels = [tuple(v.shape) for v in model.trainable_variables if len(v.shape) == 2]
    assert kernels == [(3072, 4000), (4000, 10)]


def test_the_notebook_class_is_the_registry_stack_plus_softmax():
    x = tf.random.stateless_normal((4, 32, 32, 3), seed=[1, 2])
    notebook_model = nb.TwoLayerFC(64, 10)
    notebook_model(x)
    registry_model = registry.build_model(
        ModelConfig(name="subclass_two_layer_fc", params={"hidden": 64})
    )
    for target, source in zip(
        registry_model.trainable_variables, notebook_model.trainable_variables, strict=True
    ):
        target.assign(source)
    np.testing.assert_allclose(
        notebook_model(x), tf.nn.softmax(registry_model(x)), rtol=1e-5, atol=1e-6
    )
    assert [type(layer) for layer in notebook_model.stack] == [
        type(layer) for layer in fc_layers(64, 10)
    ]


@pytest.mark.parametrize(
    "cell",
    [
        "subclass_two_layer_fc",
        "subclass_three_layer_convnet",
        "sequential_two_layer_fc",
        "sequential_three_layer_convnet",
        "functional_two_layer_fc",
    ],
)
def test_every_training_cell_has_its_init_fns(cell):
    model_init_fn, optimizer_init_fn = nb.init_fns(cell)
    model = model_init_fn()
    probs = model(tf.zeros((2, 32, 32, 3)))
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(tf.reduce_sum(probs, -1), [1.0, 1.0], rtol=1e-5)
    optimizer = optimizer_init_fn()
    assert isinstance(optimizer, keras.optimizers.SGD)


def test_cell_optimizers_follow_the_notebook():
    subclass = nb.init_fns("subclass_three_layer_convnet")[1]()
    assert subclass.nesterov and float(subclass.momentum) == pytest.approx(0.9)
    assert float(subclass.learning_rate) == pytest.approx(3e-3)
    fc = nb.init_fns("sequential_two_layer_fc")[1]()
    assert not fc.nesterov and float(fc.learning_rate) == pytest.approx(1e-2)


def test_softmax_models_train_with_the_notebooks_probability_loss():
    # The notebook compiles with 'sparse_categorical_crossentropy' on probabilities; with
    # logit models that silently trained at chance.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 512).astype(np.int32)
    palette = rng.normal(size=(10, 1, 1, 3)).astype(np.float32)
    x = palette[y] + 0.3 * rng.normal(size=(512, 32, 32, 3)).astype(np.float32)
    model_init_fn, optimizer_init_fn = nb.init_fns("sequential_two_layer_fc")
    model = model_init_fn()
    model.compile(optimizer_init_fn(), loss="sparse_categorical_crossentropy", metrics=["acc"])
    history = model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    assert history.history["acc"][-1] > 0.5


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: nb.ThreeLayerConvNet(0, 16, 10), "channel_1 must be a positive int, got 0"),
        (lambda: nb.ThreeLayerConvNet(32, 16.0, 10), "channel_2 must be a positive int"),
        (lambda: nb.TwoLayerFC(-5, 10), "hidden_size must be a positive int, got -5"),
        (lambda: nb.two_layer_fc_functional((32, 0, 3), 10, 10), "input_shape must be"),
        (lambda: nb.init_fns("part9"), "no notebook cell 'part9'; cells: subclass_two"),
        (lambda: nb.Dataset(np.zeros((3, 2)), np.zeros(4), 2), "X has 3 examples but y has 4"),
    ],
)
def test_bad_arguments_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_dataset_batches_as_the_notebook_prints():
    x, y = np.zeros((130, 32, 32, 3), np.float32), np.arange(130)
    batches = list(nb.Dataset(x, y, batch_size=64, shuffle=True, seed=0))
    assert [b[0].shape for b in batches] == [(64, 32, 32, 3), (64, 32, 32, 3), (2, 32, 32, 3)]
    assert sorted(np.concatenate([b[1] for b in batches])) == list(range(130))

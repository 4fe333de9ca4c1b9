import numpy as np
import pytest
import tensorflow as tf

from models import fast_layers, registry
from pipeline.config import ModelConfig
from pipeline.data import datasets, sources
from pipeline.run_length import RunLength
from pipeline.training import optim, precision, steps
from tests.conftest import tiny_config

NOTEBOOK = [
    "lowlevel_two_layer_fc",
    "lowlevel_three_layer_convnet",
    "subclass_two_layer_fc",
    "subclass_three_layer_convnet",
    "sequential_two_layer_fc",
    "sequential_three_layer_convnet",
    "functional_two_layer_fc",
    "functional_three_layer_convnet",
]


def test_every_notebook_variant_is_registered():
    assert set(NOTEBOOK) <= set(registry.names())


@pytest.mark.parametrize("name", registry.names())
def test_model_gives_logits_from_zeros(name):
    model = registry.build_model(ModelConfig(name=name))
    logits = model(tf.zeros((64, 32, 32, 3)), training=False)
    assert logits.shape == (64, 10)  # the notebook's shape check
    assert np.isfinite(logits.numpy()).all()


@pytest.mark.parametrize("name", registry.names())
def test_a_few_steps_on_one_batch_lower_the_loss(name):
    cfg = tiny_config(
        **{
            "model.name": name,
            "model.params": {},
            "data.batch_size": 64,
            "data.synthetic_examples": 64,
            "optim.optimizer": "sgd",
            "optim.momentum": 0.0,
            "optim.lr": 1e-3,
        }
    )
    splits = sources.load_splits(cfg.data)
    inputs = datasets.make_inputs(splits, cfg.data, 0)
    strategy = tf.distribute.get_strategy()
    with precision.policy_scope("float32"):
        model = registry.build_model(cfg.model)
    opt = optim.make_optimizer(cfg.optim, RunLength(1, 10))
    step = steps.make_train_step(model, opt, inputs, cfg, strategy, RunLength(1, 10))
    it = iter(inputs.train_dataset_fn(inputs.run_length(10))())
    losses = []
    for _ in range(6):
        total = step(it, tf.constant(1))[0].numpy()
        losses.append(total[0] / total[2])
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]


def test_unknown_and_duplicate_names_raise():
    with pytest.raises(registry.ModelError, match="Known models: .*functional_two_layer_fc"):
        registry.build_model(ModelConfig(name="resnet9000"))
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("functional_two_layer_fc")(lambda num_classes: None)
    with pytest.raises(registry.ModelError, match="bad model.params"):
        registry.build_model(ModelConfig(name="functional_two_layer_fc", params={"depth": 3}))


def test_builders_follow_the_policy_scope():
    with precision.policy_scope("mixed_bfloat16"):
        fc = registry.build_model(ModelConfig(name="lowlevel_two_layer_fc", params={"hidden": 8}))
        seq = registry.build_model(
            ModelConfig(name="sequential_two_layer_fc", params={"hidden": 8})
        )
    assert fc(tf.zeros((2, 32, 32, 3))).dtype == tf.bfloat16
    assert seq(tf.zeros((2, 32, 32, 3))).dtype == tf.bfloat16
    assert fc.params[0].dtype == tf.float32, "parameters stay float32"
    plain = registry.build_model(ModelConfig(name="sequential_two_layer_fc", params={"hidden": 8}))
    assert plain(tf.zeros((2, 32, 32, 3))).dtype == tf.float32, "the scope does not leak"


KERAS_NOTEBOOK = [name for name in NOTEBOOK if not name.startswith("lowlevel")]


@pytest.mark.parametrize("name", KERAS_NOTEBOOK)
def test_notebook_keras_variants_train_on_fast_layers_and_export_plain_keras(name):
    """The registry's notebook models add their dense biases through fast_layers (summed
    in float32 in bfloat16 on a CPU); the export rebuilds them from Keras's own layers,
    with the same weights and outputs."""
    from pipeline.training import export

    cfg = ModelConfig(name=name)
    model = registry.build_model(cfg)
    classes = {type(layer) for layer in _layers(model)}
    assert fast_layers.Dense in classes
    plain = export.portable_model(model, cfg)
    assert all(type(layer).__module__.startswith("keras.") for layer in _layers(plain))
    x = tf.constant(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), tf.float32)
    np.testing.assert_array_equal(plain(x).numpy(), model(x).numpy())


def _layers(model):
    stack = getattr(model, "stack", None)  # subclass.Stack keeps its layers in a list
    return stack if stack is not None else model.layers

import numpy as np
import pytest

from models import registry
from pipeline import experiments
from pipeline.config import Config, ConfigError


@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_builds_its_model(name):
    cfg = experiments.get(name)
    model = registry.build_model(cfg.model)
    logits = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert logits.shape == (2, cfg.model.num_classes) and np.isfinite(logits).all()


def test_unknown_experiment_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown experiment 'fast'.*challenge.*quick"):
        experiments.get("fast")


@pytest.mark.parametrize("model", registry.names())
def test_every_model_trains_with_its_best_known_experiment(model):
    cfg = experiments.for_model(model)
    assert cfg.model.name == model
    assert cfg != Config()  # a recipe was chosen, not the bare defaults


def test_custom_convnet_gets_the_challenge_recipe_not_plain_sgd():
    # Plain constant-rate SGD trained custom_convnet to 19% after one epoch; the airbench
    # recipe of `challenge` reached 58% with the same widths.
    assert experiments.for_model("custom_convnet") == experiments.get("challenge")
    cfg = experiments.for_model("custom_convnet")
    assert cfg.optim.optimizer == "nesterov" and cfg.optim.schedule == "onecycle"


def test_the_notebook_recipes_are_the_notebooks():
    cfg = experiments.for_model("sequential_three_layer_convnet")
    assert (cfg.data.batch_size, cfg.train.epochs, cfg.data.augment.translate) == (64, 1, 0)
    assert (cfg.optim.optimizer, cfg.optim.momentum, cfg.optim.lr) == ("nesterov", 0.9, 5e-4)
    assert experiments.for_model("lowlevel_two_layer_fc").optim.lr == 1e-2


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown model 'resnet'.*custom_convnet"):
        experiments.for_model("resnet")

"""The search spaces: the airbench space's defaults are challenge_airbench94, its
conditional hyperparameters exist only where they apply, and every draw builds a model."""

import keras_tuner as kt
import pytest

from models import registry
from pipeline import experiments
from tuning import space


def _draw(name: str, base, seed: int) -> kt.HyperParameters:
    """Random values of a space, as keras-tuner's random oracle draws them."""
    hp = kt.HyperParameters()
    space.get(name).changes(hp, base)  # registers the space
    oracle = kt.oracles.RandomSearchOracle(
        objective="val_accuracy", max_trials=1, seed=seed, hyperparameters=hp
    )
    drawn = kt.HyperParameters()
    drawn.merge(hp)
    drawn.values.update(oracle.populate_space("t")["values"])
    return drawn


def test_the_airbench_space_defaults_are_challenge_airbench94():
    base = experiments.get("challenge_airbench94")
    assert space.config_for(space.get("airbench"), base, kt.HyperParameters()) == base


def test_the_airbench_space_covers_the_architecture_and_the_recipe():
    hp = kt.HyperParameters()
    space.airbench_changes(hp, experiments.get("challenge_airbench94"))
    names = {p.name for p in hp.space}
    architecture = {"width0", "width1", "width2", "depth", "residual", "kernel_size"}
    architecture |= {"whiten_size", "whiten_width_k2", "bn_momentum", "activation"}
    recipe = {"lr_per_1024", "momentum", "weight_decay", "label_smoothing", "batch_size"}
    recipe |= {"warmup_fraction", "lookahead", "lookahead_every_steps", "whiten_bias_freeze"}
    recipe |= {"whiten_bias_fraction", "flip", "translate", "cutout"}
    assert architecture | recipe <= names
    # The hand recipes' widths are in it: challenge's 48/128/128 and airbench94's 64/256/256.
    choices = {p.name: p.values for p in hp.space if hasattr(p, "values")}
    for widths in ((48, 128, 128), (64, 256, 256)):
        assert all(w in choices[f"width{i}"] for i, w in enumerate(widths))


@pytest.mark.parametrize(
    "condition, value, conditional",
    [
        ("lookahead", False, "lookahead_every_steps"),
        ("whiten_bias_freeze", False, "whiten_bias_fraction"),
        ("whiten_size", 3, "whiten_width_k2"),
        ("whiten_size", 2, "whiten_width_k3"),
    ],
)
def test_conditional_hyperparameters_exist_only_where_they_apply(condition, value, conditional):
    base = experiments.get("challenge_airbench94")
    hp = kt.HyperParameters()
    space.airbench_changes(hp, base)  # registers every hyperparameter and condition
    hp.values[condition] = value
    cfg = space.config_for(space.get("airbench"), base, hp)
    assert not hp.is_active(conditional)
    if condition == "lookahead":
        assert cfg.optim.lookahead_every_steps == 0
    if condition == "whiten_bias_freeze":
        assert cfg.optim.whiten_bias_epochs == 0
    if condition == "whiten_size" and value == 3:
        assert cfg.model.params["whiten_size"] == 3
        assert cfg.model.params["whiten_width"] in space.WHITEN_WIDTHS[3]


def test_the_learning_rate_follows_the_batch_and_durations_the_run():
    base = experiments.get("challenge_airbench94")
    hp = kt.HyperParameters()
    space.airbench_changes(hp, base)
    hp.values.update(batch_size=256, lr_per_1024=2.0, warmup_fraction=0.1)
    cfg = space.config_for(space.get("airbench"), base, hp)
    assert cfg.data.batch_size == 256
    assert cfg.optim.lr == pytest.approx(0.5)  # 2.0 per 1,024 images at 256
    assert cfg.optim.warmup_epochs == pytest.approx(0.1 * base.train.epochs)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", sorted(space.SPACES))
def test_every_draw_of_a_space_builds_a_valid_model(name, seed):
    import tensorflow as tf

    base = experiments.get(space.get(name).base)
    cfg = space.config_for(space.get(name), base, _draw(name, base, seed))
    model = registry.build_model(cfg.model)
    assert model(tf.zeros((2, 32, 32, 3))).shape == (2, 10)
    assert cfg.optim.lr > 0 and cfg.model.name == "custom_convnet"


def test_an_unknown_space_names_the_known_ones():
    with pytest.raises(space.UserError, match="unknown search space 'nas'; spaces: airbench"):
        space.get("nas")


def test_searched_b009_is_the_searchs_best_trial_through_the_space():
    import json
    from pathlib import Path

    from pipeline.config import override

    best = json.loads((Path(__file__).parents[2] / "docs/search_b009/best.json").read_text())
    hp = kt.HyperParameters()
    base = experiments.get("challenge_airbench94")
    space.airbench_changes(hp, base)
    hp.values.update(best["hyperparameters"])
    rebuilt = space.config_for(space.get("airbench"), base, hp)
    assert experiments.get("searched_b009") == override(rebuilt, {"train.budget_pflops": 0.09})

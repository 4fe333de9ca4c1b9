"""The final comparison: the searched recipe and the hand recipe, scored alike, at the
same compute, over seeds the search never used."""

import json

import keras_tuner as kt
import pytest

from pipeline import experiments
from pipeline.config import get_dotted, override, to_dict
from tuning import retrain, space
from tuning.search import SearchError


def _search_out(tmp_path, **values):
    """A finished search's best.json, as write_results leaves it."""
    base = override(
        experiments.get("challenge_airbench94"),
        {
            "data.train_examples": 45_000,
            "data.val_examples": 5_000,
            "data.test_examples": 0,
            "train.tta": "none",
            "train.budget_pflops": 0.09,
        },
    )
    hp = kt.HyperParameters()
    space.airbench_changes(hp, base)
    hp.values.update(values)
    best = {
        "space": "airbench",
        "config": to_dict(space.config_for(space.get("airbench"), base, hp)),
    }
    (tmp_path / "best.json").write_text(json.dumps(best))
    return tmp_path


def test_both_contenders_are_scored_alike_at_the_searched_budget(tmp_path):
    pair = retrain.contenders(_search_out(tmp_path, width1=128, batch_size=512))
    searched, hand = pair["searched"], pair["hand"]
    assert hand == override(experiments.get("challenge_airbench94"), {"train.budget_pflops": 0.09})
    assert searched.train.budget_pflops == 0.09
    assert searched.model.params["widths"] == [64, 128, 256] and searched.data.batch_size == 512
    for key in retrain.SCORING:  # all training images, the test set, the hand recipe's TTA
        assert get_dotted(searched, key) == get_dotted(hand, key)
    assert searched.data.test_examples == 10_000 and searched.train.tta == "flip_translate"


def test_the_search_seed_is_refused_for_the_final_comparison(tmp_path):
    with pytest.raises(SearchError, match="the search trained its trials with.*--seeds 1 2 3"):
        retrain.retrain(_search_out(tmp_path), [0, 1], {})
    with pytest.raises(SearchError, match="run `cifar-tune --out"):
        retrain.contenders(tmp_path / "nothing")


def test_the_summary_gives_means_and_the_gain():
    runs = {
        "searched": [{"test_accuracy": a, "train_pflops": 0.09} for a in (0.91, 0.92, 0.93)],
        "hand": [{"test_accuracy": a, "train_pflops": 0.09} for a in (0.89, 0.90, 0.91)],
    }
    means = retrain._means(runs)
    assert means["searched"]["test_accuracy"] == pytest.approx(0.92)
    assert means["hand"]["std"] == pytest.approx(0.01)
    assert means["gain_points"] == pytest.approx(2.0)

import pytest

from models.registry import build_model
from pipeline import presets
from pipeline.config import ConfigError


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_builds_its_model(name):
    cfg = presets.get(name)
    model = build_model(cfg.model)
    assert model.count_params() > 0
    assert cfg.train.epochs <= 10  # the challenge's budget


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'fast'.*challenge.*quick"):
        presets.get("fast")

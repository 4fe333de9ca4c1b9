import numpy as np
import pytest

from models.registry import build_model
from pipeline import presets
from pipeline.config import ConfigError


@pytest.mark.parametrize("name", presets.names())
def test_every_preset_builds_its_model(name):
    cfg = presets.get(name)
    model = build_model(cfg.model)
    logits = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert logits.shape == (2, cfg.model.num_classes) and np.isfinite(logits).all()


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'fast'.*challenge.*quick"):
        presets.get("fast")

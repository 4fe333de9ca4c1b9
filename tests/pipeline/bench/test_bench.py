import pytest

from pipeline.bench import torch_twin
from pipeline.config import ConfigError, override
from scripts import bench


def _bench(*args):
    return bench.bench_train(bench.parse(["train", "--synthetic", *args]))


@pytest.mark.parametrize("size", ["tiny", "medium"])
def test_twin_has_the_projects_trainable_parameter_count(size):
    pytest.importorskip("torch", reason="the PyTorch twin needs: pip install -e '.[compare]'")
    from models.registry import build_model
    from pipeline.experiments import get
    from pipeline.training import run

    cfg = override(get("challenge"), {"model.params.size": size})
    keras_count = run.count_params(build_model(cfg.model))
    assert torch_twin.trainable_parameters(torch_twin.build(cfg)) == keras_count


def test_bench_times_loop_and_twin_side_by_side_or_says_why_not():
    result = _bench(
        "--preset", "quick", "--contenders", "loop,torch", "--steps", "1", "--repeats", "1"
    )
    assert result["loop"] > 0 and result["settings"]["experiment"] == "quick"
    if torch_twin.available():
        assert result["torch"] > 0 and result["loop_over_torch"] > 0
        counts = result["settings"]["trainable_parameters"]
        assert counts["loop"] == counts["torch"]
    else:
        assert "torch" not in result and "compare" in result["skipped"]["torch"]


def test_twin_refuses_what_it_cannot_reproduce():
    cfg = bench.train_config(bench.parse(["train", "--model", "functional_two_layer_fc"]))
    with pytest.raises(torch_twin.TwinError, match="custom_convnet only"):
        torch_twin._params(cfg)
    flat = bench.train_config(
        bench.parse(["train", "--preset", "quick", "--set", "model.params.head=flatten"])
    )
    with pytest.raises(torch_twin.TwinError, match="head"):
        torch_twin._params(flat)


def test_bench_flags_are_checked(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse(["train", "--contenders", "loop,jax"])
    assert exit_info.value.code == 2 and "jax" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown config key"):
        bench.train_config(bench.parse(["train", "--preset", "quick", "--set", "optim.nope=1"]))


def test_profile_sums_the_step_by_op_type():
    from pipeline.bench import op_profile as profile

    args = bench.parse(["train", "--synthetic", "--preset", "quick"])
    cfg = bench.train_config(args)
    result = profile.op_times(override(cfg, {"train.precision": "float32"}), steps=1)
    names = [name for name, _, _ in result["ops"]]
    assert any("Conv2D" in n for n in names), names
    assert sum(share for _, _, share in result["ops"]) == pytest.approx(1.0)
    assert result["step_ms"] > 0
    table = profile.format_table(result, top=3)
    assert table.count("\n") == 3 + 3 and "other op types" in table


def test_the_conv_peak_times_the_forward_conv_and_both_gradients():
    from pipeline.bench import peak

    shape = {"batch": 4, "size": 8, "channels": 16}
    r = peak.conv_peak("float32", repeats=1, calls=1, shape=shape)
    assert r["flops_per_op"] == 2 * 4 * 8 * 8 * 9 * 16 * 16
    assert all(r[k] > 0 for k in ("forward", "input_gradient", "weight_gradient"))

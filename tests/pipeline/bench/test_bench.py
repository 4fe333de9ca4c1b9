import numpy as np
import pytest

from pipeline.bench import timing, torch_twin, twin_process
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


def test_twin_under_tcmalloc_runs_in_its_own_process_in_turn_or_says_why_not():
    pytest.importorskip("torch", reason="the PyTorch twin needs: pip install -e '.[compare]'")
    result = _bench(
        "--preset",
        "quick",
        "--contenders",
        "loop,torch,torch_tcmalloc",
        "--steps",
        "1",
        "--repeats",
        "1",
    )
    if twin_process.find_tcmalloc() is None:
        assert "libtcmalloc" in result["skipped"]["torch_tcmalloc"]
        return
    assert len(result["runs"]["torch_tcmalloc"]) == 1 and result["torch_tcmalloc"] > 0
    counts = result["settings"]["trainable_parameters"]
    assert counts["torch_tcmalloc"] == counts["loop"]
    reference = max(result["torch"], result["torch_tcmalloc"])
    assert result["loop_over_reference"] == pytest.approx(result["loop"] / reference)


def test_twin_process_says_when_its_malloc_was_not_preloaded():
    cfg = bench.train_config(bench.parse(["train", "--preset", "quick"]))
    images, labels = np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int64)
    with pytest.raises(torch_twin.TwinError, match="was not loaded.*libtcmalloc-minimal4"):
        twin_process.TwinProcess(cfg, images, labels, 1, "libnot_a_malloc.so")


def test_contenders_passes_are_timed_in_turn():
    calls = []

    def contender(name, images):
        def one_pass():
            calls.append(name)
            return images

        return one_pass

    result = timing.time_in_turn({"a": contender("a", 10), "b": contender("b", 20)}, 3, 1)
    # A warm-up round, then three timed rounds, each taking one pass of every contender.
    assert calls == ["a", "b"] * 4
    assert [len(result[n]["runs"]) for n in "ab"] == [3, 3]
    assert result["b"]["images"] == 20 and min(result["a"]["runs"] + result["b"]["runs"]) > 0
    assert result["a"]["median"] == sorted(result["a"]["runs"])[1]


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


def _layer_rows(model: str, dtype: str, model_params: dict | None = None):
    from models import registry
    from pipeline import experiments
    from pipeline.bench import conv_layers

    cfg = experiments.for_model(model)
    if model_params:
        cfg = override(cfg, {"model.params": model_params})
    return conv_layers.layer_times(registry.build_model(cfg.model), 2, dtype, 1, 1)


def test_layer_times_cover_each_trained_conv_with_its_flops():
    rows = _layer_rows("custom_convnet", "float32", {"size": "tiny"})
    # The whitening stem's kernel is frozen: its weight gradient never runs.
    assert [r["name"] for r in rows] == [f"stage{s}_conv{d}" for s in range(3) for d in range(2)]
    assert rows[0]["map"] == (31, 31) and rows[0]["channels"] == (24, 16)
    assert rows[0]["flops"] == 2 * 2 * 31 * 31 * 9 * 24 * 16
    for r in rows:
        assert all(r[k] > 0 for k in ("forward", "input_gradient", "weight_gradient", "shifted"))
        # float32 takes no weight gradient of its own (Winograd's is tested below)
        assert r["taken"] in ("stock", "winograd")


def test_layer_times_name_the_weight_gradient_each_layer_takes_in_bfloat16():
    from models.fast_layers import shifted_products_pay
    from pipeline.bench import conv_layers

    rows = _layer_rows("custom_convnet", "bfloat16", {"widths": [8, 8, 8]})
    assert [r["taken"] == "shifted" for r in rows] == [
        shifted_products_pay(*r["map"], *r["channels"]) for r in rows
    ]
    assert rows[-1]["map"] == (3, 3) and rows[-1]["taken"] == "shifted"
    table = conv_layers.format_table(rows, batch=2)
    assert table.count("| stage") == len(rows) and "ceiling" in table


def test_layer_times_in_float32_time_the_winograd_ops_and_take_them_where_they_pay():
    from models.fast_layers import winograd_pays
    from models.native import library
    from pipeline.bench import conv_layers

    rows = _layer_rows("custom_convnet", "float32", {"widths": [32, 32, 32]})
    takes = library.winograd_conv_f32() is not None
    assert [r["taken"] == "winograd" for r in rows] == [
        takes and winograd_pays(*r["map"], *r["channels"]) for r in rows
    ]
    for r in rows:
        assert (r["winograd"] is not None) == takes
        assert not takes or all(ms > 0 for ms in r["winograd"].values())
    if not takes:
        pytest.skip("this CPU does not take the Winograd ops (AVX-512 without AMX)")
    assert rows[0]["taken"] == "winograd" and rows[-1]["taken"] == "stock"  # 31x31 and 3x3
    table = conv_layers.format_table(rows, batch=2)
    steps = sum(sum(r["winograd"].values()) for r in rows if r["taken"] == "winograd")
    steps += sum(r[op] for r in rows if r["taken"] == "stock" for op in conv_layers._PASSES)
    assert f"takes: {steps:,.0f} ms" in table


def test_layer_times_of_a_model_without_shapes_name_the_fix():
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="functional or Sequential"):
        _layer_rows("subclass_three_layer_convnet", "float32")
    with pytest.raises(UserError, match="no trained Conv2D"):
        _layer_rows("functional_two_layer_fc", "float32")


def test_bench_layers_prints_the_table_and_returns_the_rows(capsys):
    args = ["layers", "--model", "functional_three_layer_convnet", "--batch-size", "2"]
    result = bench.bench_layers(bench.parse([*args, "--repeats", "1", "--precision", "float32"]))
    assert result["dtype"] == "float32" and len(result["layers"]) == 2
    assert result["settings"]["model"] == "functional_three_layer_convnet"
    out = capsys.readouterr().out
    assert out.count("| conv2d") == 2 and "a ceiling of" in out


def test_layer_times_of_pytorch_fill_the_torch_columns():
    pytest.importorskip("torch", reason="the `compare` extra: pip install -e '.[compare]'")
    from pipeline.bench import conv_layers

    rows = _layer_rows("custom_convnet", "float32", {"size": "tiny"})
    times = torch_twin.conv_layer_times(rows, batch=2, dtype="float32", repeats=1)
    assert len(times) == len(rows)
    assert all(t[op] > 0 for t in times for op in ("forward", "input_gradient", "weight_gradient"))
    for row, t in zip(rows, times, strict=True):
        row["torch"] = t
    table = conv_layers.format_table(rows, batch=2)
    assert "PyTorch weight gradient" in table
    assert all(line.count("|") == 14 for line in table.splitlines() if line.startswith("| stage"))
    strided = {"map": (8, 8), "channels": (3, 4), "kernel": (3, 3), "stride": 2, "padding": "same"}
    assert torch_twin.conv_layer_times([strided], batch=2, dtype="float32", repeats=1) == [None]

import dataclasses
import json

import keras
import pytest

from pipeline.config import Config
from pipeline.runtime import hardware
from pipeline.training import precision, run
from tests.conftest import tiny_config

SPR = frozenset({"avx512f", "amx_bf16", "amx_tile", "avx512_bf16"})
EPYC_ZEN3 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(
    "requested,flags,gpus,policy,reason",
    [
        ("auto", SPR, [], "mixed_bfloat16", "amx_bf16"),
        ("auto", frozenset({"avx512_bf16"}), [], "mixed_bfloat16", "avx512_bf16"),
        ("auto", EPYC_ZEN3, [], "float32", "no bfloat16 unit"),
        ("auto", None, [], "float32", "unknown"),
        ("auto", EPYC_ZEN3, [(8, 0)], "mixed_bfloat16", "8.0"),
        ("auto", EPYC_ZEN3, [(9, 0), (7, 5)], "mixed_float16", "7.5"),
        ("auto", EPYC_ZEN3, [(6, 1)], "float32", "6.1"),
        ("float32", SPR, [(8, 6)], "float32", "explicitly"),
        ("mixed_bfloat16", EPYC_ZEN3, [], "mixed_bfloat16", "explicitly"),
    ],
)
def test_choose_by_hardware(requested, flags, gpus, policy, reason):
    choice = precision.choose(requested, flags, gpus)
    assert choice.policy == policy
    assert reason in choice.reason
    assert choice.device == ("gpu" if gpus else "cpu")


def _machine(monkeypatch, flags, gpus):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware, "gpu_capabilities", lambda: gpus)


def test_resolve_prints_one_line_and_warns_on_emulated_bfloat16(monkeypatch):
    _machine(monkeypatch, EPYC_ZEN3, [])
    lines = []
    cfg, choice = precision.resolve(Config(), lines.append)
    assert cfg.train.precision == "float32" and lines == [
        "precision: float32 (CPU has no bfloat16 unit (amx_bf16 / avx512_bf16))"
    ]
    lines.clear()
    bf16 = dataclasses.replace(Config().train, precision="mixed_bfloat16")
    cfg, _ = precision.resolve(dataclasses.replace(Config(), train=bf16), lines.append)
    assert cfg.train.precision == "mixed_bfloat16"
    assert len(lines) == 2 and "5-10x slower" in lines[1] and "--precision float32" in lines[1]
    lines.clear()
    _machine(monkeypatch, SPR, [])
    precision.resolve(dataclasses.replace(Config(), train=bf16), lines.append)
    assert len(lines) == 1


def test_auto_on_a_gpu_turns_on_device_augmentation_and_xla_and_says_so(monkeypatch):
    _machine(monkeypatch, EPYC_ZEN3, [(8, 0)])
    lines = []
    cfg, choice = precision.resolve(Config(), lines.append)
    assert (cfg.train.precision, cfg.data.augment_on_device, cfg.train.jit_compile) == (
        "mixed_bfloat16",
        True,
        True,
    )
    assert choice.augment_on_device and choice.jit_compile
    assert lines[0].endswith(
        "with augmentation inside the compiled step and an XLA step, as on GPUs"
    )
    # Asked for explicitly, the precision is all that changes.
    bf16 = dataclasses.replace(Config().train, precision="mixed_bfloat16")
    cfg, choice = precision.resolve(dataclasses.replace(Config(), train=bf16), lambda s: None)
    assert not (cfg.data.augment_on_device or cfg.train.jit_compile or choice.jit_compile)
    _machine(monkeypatch, EPYC_ZEN3, [])
    cfg, _ = precision.resolve(Config(), lambda s: None)
    assert not cfg.data.augment_on_device and not cfg.train.jit_compile


def test_a_run_records_the_choice(tmp_path, monkeypatch):
    _machine(monkeypatch, EPYC_ZEN3, [])
    out = tmp_path / "run"
    cfg = tiny_config(**{"train.out_dir": str(out), "train.precision": "auto"})
    metrics = run.train(cfg, log=lambda s: None)
    expected = {
        "requested": "auto",
        "chosen": "float32",
        "reason": "CPU has no bfloat16 unit (amx_bf16 / avx512_bf16)",
        "device": "cpu",
        "augment_on_device": False,
        "jit_compile": False,
    }
    assert metrics["precision"] == "float32" and metrics["precision_choice"] == expected
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["precision"] == "float32"
    assert saved["resolved"]["train.precision"] == expected
    assert json.loads((out / "metrics.json").read_text())["precision_choice"] == expected


@pytest.mark.parametrize("use", ["policy_scope", "wrap_optimizer"])
def test_building_refuses_a_precision_not_yet_decided(use):
    # "auto" is decided once, by resolve; nothing downstream decides it again.
    with pytest.raises(ValueError, match="auto.*undecided.*precision.resolve first"):
        if use == "policy_scope":
            with precision.policy_scope("auto"):
                pass
        else:
            precision.wrap_optimizer(keras.optimizers.SGD(), "auto")

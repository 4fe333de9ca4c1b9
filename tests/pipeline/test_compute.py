"""The FLOP counter against hand counts, and a budget in PFLOPs as a run length."""

import pytest

from models import registry
from pipeline import compute, experiments
from pipeline.config import ModelConfig, override
from pipeline.run_length import run_length
from tests.conftest import tiny_config


def _conv(out_hw: int, k: int, cin: int, cout: int) -> int:
    """A 'same' or 'valid' conv by hand: a multiply-add per kernel tap, input channel and
    output channel at every output pixel, 2 FLOPs each."""
    return 2 * out_hw * out_hw * k * k * cin * cout


def test_airbench94_forward_flops_by_layer_match_hand_counts():
    model = registry.build_model(experiments.get("challenge_airbench94").model)
    # Whitening stem: 2x2 'valid' on 32x32 -> 31x31, 3 -> 24; each stage's first conv runs
    # at the stage's input size (pooling follows it): 31, 15, 7; the second after pooling.
    hand = {
        "whiten": _conv(31, 2, 3, 24),
        "stage0_conv0": _conv(31, 3, 24, 64),
        "stage0_conv1": _conv(15, 3, 64, 64),
        "stage1_conv0": _conv(15, 3, 64, 256),
        "stage1_conv1": _conv(7, 3, 256, 256),
        "stage2_conv0": _conv(7, 3, 256, 256),
        "stage2_conv1": _conv(3, 3, 256, 256),
        "head": 2 * 256 * 10,
    }
    assert compute.forward_flops_by_layer(model) == hand
    forward = sum(hand.values())
    assert forward == 236_294_720  # airbench94's ~0.236 GFLOP
    # Its 476 steps of 1,024 at 3x forward: airbench lists about 0.36 PFLOPs.
    cfg = experiments.get("challenge_airbench94")
    length = run_length(50_000, 1024, cfg.train.epochs)
    _, cost = compute.resolve(
        cfg, model, lambda train_cfg: run_length(50_000, 1024, train_cfg.epochs)
    )
    assert cost.forward_flops_per_image == forward
    assert cost.train_flops_per_image == 3 * forward
    assert cost.train_images == length.total_steps * 1024 == 476 * 1024
    assert cost.train_pflops == pytest.approx(3 * forward * 476 * 1024 / 1e15)
    assert 0.34 < cost.train_pflops < 0.36


def test_a_low_level_module_is_counted_from_its_matrix_products():
    model = registry.build_model(ModelConfig(name="lowlevel_two_layer_fc"))
    # flatten 3072 -> 4000 -> 10
    assert compute.flops_per_image(model) == 2 * 3072 * 4000 + 2 * 4000 * 10


def test_twice_the_flops_per_image_trains_half_the_steps():
    assert compute.budget_steps(0.09, 700_000_000, 1024) == 126  # 125.56 rounds up
    assert compute.budget_steps(0.09, 1_400_000_000, 1024) == 63  # 62.78
    assert compute.budget_steps(0.09, 700_000_000, 512) == 251  # 251.1 rounds down
    with pytest.raises(compute.BudgetError, match="buys no step.*Raise --budget-pflops"):
        compute.budget_steps(1e-9, 700_000_000, 1024)


def _resolve(cfg, examples: int = 256):
    model = registry.build_model(cfg.model)
    length_of = lambda train_cfg: run_length(examples, cfg.data.batch_size, train_cfg.epochs)  # noqa: E731
    return compute.resolve(cfg, model, length_of), compute.flops_per_image(model)


def test_a_budget_sets_the_run_length_and_scales_its_durations_with_it():
    cfg = override(
        tiny_config(),
        {
            "train.epochs": 10,
            "optim.warmup_epochs": 2.3,
            "optim.whiten_bias_epochs": 3.0,
            "train.budget_pflops": 1e-6,
        },
    )
    (resolved, cost), forward = _resolve(cfg)
    steps = round(1e-6 * 1e15 / (3 * forward * 32))
    assert resolved.train.budget_pflops == 0  # nothing left to apply twice
    assert run_length(256, 32, resolved.train.epochs).total_steps == steps
    # 256 / 32 = 8 steps an epoch; the schedule keeps its shape: same fractions of the run.
    scale = steps / 8 / 10
    assert resolved.optim.warmup_epochs == pytest.approx(2.3 * scale)
    assert resolved.optim.whiten_bias_epochs == pytest.approx(3.0 * scale)
    assert cost.budget_pflops == 1e-6
    assert cost.train_images == steps * 32
    assert cost.train_pflops == pytest.approx(1e-6, rel=0.5 / steps)


def test_without_a_budget_the_run_is_as_given_and_its_compute_recorded():
    cfg = override(tiny_config(), {"train.epochs": 2.5})
    (resolved, cost), forward = _resolve(cfg)
    assert resolved == cfg
    assert cost.budget_pflops == 0 and cost.train_images == 20 * 32  # 8 a epoch x 2.5
    assert cost.train_pflops == pytest.approx(3 * forward * 20 * 32 / 1e15)


def test_a_budgeted_run_records_its_compute_and_reruns_from_its_config(tmp_path):
    import json

    from pipeline.config import from_dict
    from pipeline.training import run

    cfg = override(
        tiny_config(),
        {"train.budget_pflops": 2e-6, "train.epochs": 4, "train.out_dir": str(tmp_path / "r")},
    )
    metrics = run.train(cfg, log=lambda s: None)
    forward = compute.flops_per_image(registry.build_model(cfg.model))
    steps = round(2e-6 * 1e15 / (3 * forward * 32))
    assert metrics["compute"]["budget_pflops"] == 2e-6
    assert metrics["compute"]["forward_flops_per_image"] == forward
    assert metrics["compute"]["train_images"] == steps * 32
    assert sum(len(row["step_losses"]) for row in metrics["history"]) == steps
    # config.json holds the run as trained (its epochs), the budget as a record beside it:
    # rerunning it trains the same steps, not a budget applied twice.
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["resolved"]["train.budget_pflops"]["budget_pflops"] == 2e-6
    rerun = from_dict(saved)
    assert rerun.train.budget_pflops == 0
    assert run_length(256, 32, rerun.train.epochs).total_steps == steps

"""Training compute: a model's analytic FLOPs per image, layer by layer, and a budget in
PFLOPs turned into a run length, so runs and search trials compare at equal compute.

Counted: every convolution and matrix product of one forward pass, a multiply-add as 2
FLOPs (what airbench counts: 0.236 GFLOP forward at its widths). Not counted: BN,
activations, pooling, additions (under 1% of a convnet's). Training one image costs
3x its forward pass (forward, input gradient and weight gradient each as much), and a
run's compute is that times the images it trains on; evaluation is not counted.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from pipeline.config import Config, get_dotted, override
from pipeline.errors import UserError
from pipeline.run_length import RunLength

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward as 3x forward
PETA = 1e15
IMAGE_SHAPE = (32, 32, 3)
# Durations a budget rescales with the run (the recipe's schedule keeps its shape).
EPOCH_DURATIONS = ("optim.warmup_epochs", "optim.whiten_bias_epochs")


class BudgetError(UserError):
    """A compute budget that cannot be met; the message says why and what to give."""


def _conv_flops(op) -> int:
    out = op.outputs[0].shape.as_list()  # NHWC: batch, H, W, C_out
    kh, kw, cin, cout = op.inputs[1].shape.as_list()
    return 2 * out[1] * out[2] * kh * kw * cin * cout


def _depthwise_flops(op) -> int:
    out = op.outputs[0].shape.as_list()
    kh, kw, cin, mult = op.inputs[1].shape.as_list()
    return 2 * out[1] * out[2] * kh * kw * cin * mult


def _matmul_flops(op) -> int:
    a, b = (t.shape.as_list() for t in op.inputs[:2])
    transpose_a = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
    transpose_b = op.get_attr("transpose_b") if op.type == "MatMul" else op.get_attr("adj_y")
    m, k = (a[-1], a[-2]) if transpose_a else (a[-2], a[-1])
    n = b[-2] if transpose_b else b[-1]
    batch = int(np.prod(a[:-2])) if len(a) > 2 else 1
    return 2 * batch * m * k * n


_COUNTERS = {
    "Conv2D": _conv_flops,
    # fast_layers.Conv2D's Winograd ops (models/native): the same conv, counted as the
    # direct one (what the FLOPs compare across kernels), whatever the kernel saves.
    "WinogradConv3x3": _conv_flops,
    "Bf16WinogradConv3x3": _conv_flops,
    "DepthwiseConv2dNative": _depthwise_flops,
    "MatMul": _matmul_flops,
    "BatchMatMulV2": _matmul_flops,
    "BatchMatMulV3": _matmul_flops,
}


def _layer_of(op_name: str, layer_names: set[str]) -> str:
    """The layer an op belongs to, from its name scope ("model_1/stage0_conv0_1/convolution"
    -> "stage0_conv0": a traced call's scopes may carry a "_N" suffix); the scope as is
    when no layer has that name (a tf.Module's)."""
    parts = op_name.split("/")
    scope = parts[-2] if len(parts) > 1 else parts[0]
    bare = re.sub(r"_\d+$", "", scope)
    return bare if scope not in layer_names and bare in layer_names else scope


def forward_flops_by_layer(model) -> dict[str, int]:
    """FLOPs of one image's forward pass, per layer, from the ops TensorFlow traces for
    the model (any model: Keras functional, subclassed, or a tf.Module of tf.Variables).

    Raises:
        BudgetError: when the trace leaves a convolution's shapes unknown.
    """

    @tf.function(input_signature=[tf.TensorSpec((1, *IMAGE_SHAPE), tf.float32)])
    def forward(images):
        return model(images, training=False)

    graph = forward.get_concrete_function().graph
    layer_names = {layer.name for layer in getattr(model, "layers", [])}
    flops: dict[str, int] = defaultdict(int)
    for op in graph.get_operations():
        count = _COUNTERS.get(op.type)
        if count is None:
            continue
        try:
            flops[_layer_of(op.name, layer_names)] += count(op)
        except (TypeError, ValueError) as e:  # a None in a shape
            raise BudgetError(f"cannot count the FLOPs of {op.name}: shapes unknown ({e})") from e
    return dict(flops)


@dataclass(frozen=True)
class Compute:
    """What a run costs: FLOPs per image and the PFLOPs of all its training images."""

    forward_flops_per_image: int
    train_flops_per_image: int  # TRAIN_FLOPS_PER_FORWARD x forward
    train_images: int  # steps x global batch
    train_pflops: float
    budget_pflops: float  # 0 when the run's length was given in epochs

    def record(self) -> dict:
        return asdict(self)


def flops_per_image(model) -> int:
    """One image's forward FLOPs (see `forward_flops_by_layer`)."""
    return sum(forward_flops_by_layer(model).values())


def budget_steps(budget_pflops: float, train_flops_per_image: int, batch_size: int) -> int:
    """Steps whose training images cost `budget_pflops`, to the nearest step: twice the
    FLOPs per image, half the steps.

    Raises:
        BudgetError: when the budget does not buy one step.
    """
    steps = round(budget_pflops * PETA / (train_flops_per_image * batch_size))
    if steps < 1:
        one_step = train_flops_per_image * batch_size / PETA
        raise BudgetError(
            f"a budget of {budget_pflops:g} PFLOPs buys no step of this model: one step of "
            f"{batch_size} images costs {one_step:.3g} PFLOPs. Raise --budget-pflops."
        )
    return steps


def resolve(cfg: Config, model, length_of: Callable[..., RunLength]) -> tuple[Config, Compute]:
    """`cfg` with its run length fixed: by `train.budget_pflops` when set, else as given.

    A budget replaces `train.epochs` by the epochs its steps make, and scales every duration
    in epochs (warm-up, the whitening-bias freeze) by the same factor, so the schedule
    keeps its shape at any length. The returned config has no budget left to apply.

    Args:
        length_of: the run length of a TrainConfig (`Inputs.length_for_config`).

    Returns:
        (the config to train, what it costs).
    """
    forward = flops_per_image(model)
    per_image = TRAIN_FLOPS_PER_FORWARD * forward
    budget = cfg.train.budget_pflops
    batch = cfg.data.batch_size
    if budget > 0:
        steps = budget_steps(budget, per_image, batch)
        epochs = steps / length_of(cfg.train).steps_per_epoch
        scale = epochs / cfg.train.epochs
        updates = {"train.epochs": epochs, "train.budget_pflops": 0.0}
        for key in EPOCH_DURATIONS:
            updates[key] = get_dotted(cfg, key) * scale
        cfg = override(cfg, updates)
    images = length_of(cfg.train).total_steps * batch
    compute = Compute(forward, per_image, images, per_image * images / PETA, budget)
    return cfg, compute

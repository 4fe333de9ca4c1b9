"""Each trained conv layer of a model timed alone: its forward conv, input gradient and
weight gradient (the stock kernel, and `shifted_products` and the native op where the
layer could take them; the Winograd ops' three too where this CPU takes them), in the
training dtype, at the training batch. It shows which layers hold a step's conv time and whether
`fast_layers.Conv2D`'s choices are the faster ones on this CPU."""

from __future__ import annotations

import keras
import tensorflow as tf

from models import fast_layers
from models.native import library
from pipeline.bench.peak import conv_ops, op_seconds
from pipeline.errors import UserError


def trained_convs(model) -> list[keras.layers.Conv2D]:
    """The model's 2-D convolutions whose kernels train, in order."""
    return [
        layer
        for layer in getattr(model, "layers", [])
        if isinstance(layer, keras.layers.Conv2D) and layer.kernel.trainable
    ]


def _shapes(layer: keras.layers.Conv2D, model_name: str):
    """The layer's input and output shapes, which only a graph model (functional or
    Sequential) knows before it runs."""
    try:
        return layer.input.shape, layer.output.shape
    except (AttributeError, ValueError) as err:
        raise UserError(
            f"{model_name}'s layers have no shapes before the model runs (it is not a "
            "functional or Sequential model); time a graph model's layers, e.g. "
            "--experiment challenge or --model functional_three_layer_convnet"
        ) from err


def layer_times(model: keras.Model, batch: int, dtype: str, repeats: int = 5, calls: int = 2):
    """Per trained conv layer of `model`: its shape, FLOPs per op and the ms of each op.

    Returns a list of dicts: name, map (h, w of its input), channels (in, out), flops,
    forward / input_gradient / weight_gradient ms (stock kernels), shifted and native ms
    (None where the layer, or this CPU, cannot take them), winograd (the Winograd ops'
    forward / input_gradient / weight_gradient ms, where the layer and this CPU could take
    them, else None) and `taken`, what the layer runs in training ("winograd"
    for all three passes, else its weight gradient: "native", "shifted" or "stock";
    fast_layers.Conv2D's `takes_winograd` and `weight_gradient`, stock for any other
    Conv2D).
    """
    dt = tf.as_dtype(dtype)
    rows = []
    convs = trained_convs(model)
    if not convs:
        raise UserError(
            f"{getattr(model, 'name', 'the model')} has no trained Conv2D layer to time; "
            "choose a convnet (cifar-train --list names them)"
        )
    for i, layer in enumerate(convs):
        (_, h, w, c_in), (_, oh, ow, c_out) = _shapes(layer, model.name)
        k = tuple(layer.kernel_size)
        x = tf.cast(tf.random.stateless_normal([batch, h, w, c_in], seed=[i, 1]), dt)
        kernel = tf.cast(tf.random.stateless_normal([*k, c_in, c_out], seed=[i, 2]) * 0.05, dt)
        dy = tf.cast(tf.random.stateless_normal([batch, oh, ow, c_out], seed=[i, 3]), dt)
        padding = layer.padding.upper()
        ops = conv_ops(x, kernel, dy, strides=layer.strides[0], padding=padding)
        native = library.conv_filter_grad_bf16() if dt == tf.bfloat16 else None
        if fast_layers.fits_shifted_products(layer):
            ops["shifted"] = lambda x=x, dy=dy, k=k[0]: fast_layers.shifted_products(x, dy, k)
            if native is not None:
                ops["native"] = lambda x=x, dy=dy, k=k[0], op=native: op(x, dy, kernel_size=k)
        winograd = fast_layers.winograd_passes(dt)
        if winograd is not None and k == (3, 3) and fast_layers.fits_shifted_products(layer):
            ops.update(_winograd_ops(winograd, x, kernel, dy))
        ms = {name: 1e3 * op_seconds(op, repeats, calls) for name, op in ops.items()}
        taken = "stock"
        if isinstance(layer, fast_layers.Conv2D):
            taken = "winograd" if layer.takes_winograd(x) else layer.weight_gradient(x, kernel)
        rows.append(
            {
                "name": layer.name,
                "map": (h, w),
                "channels": (c_in, c_out),
                "kernel": k,
                "stride": layer.strides[0],
                "padding": layer.padding,
                "flops": 2 * batch * oh * ow * k[0] * k[1] * c_in * c_out,
                **ms,
                "shifted": ms.get("shifted"),
                "native": ms.get("native"),
                "winograd": {op: ms[f"winograd_{op}"] for op in _PASSES}
                if "winograd_forward" in ms
                else None,
                "taken": taken,
            }
        )
    return rows


_PASSES = ("forward", "input_gradient", "weight_gradient")


def _winograd_ops(passes, x, kernel, dy) -> dict:
    """`fast_layers.winograd_passes` on one layer, as callables keyed like `conv_ops`."""
    forward, input_gradient, weight_gradient = passes
    return {
        "winograd_forward": lambda: forward(x, kernel),
        "winograd_input_gradient": lambda: input_gradient(dy, kernel),
        "winograd_weight_gradient": lambda: weight_gradient(x, dy),
    }


def format_table(rows: list[dict], batch: int) -> str:
    """A markdown table of `layer_times`, ms and GFLOP/s, and the conv time of one step;
    PyTorch's columns too where the rows hold them ("torch")."""

    def cell(ms, flops):
        return "" if ms is None else f"{ms:,.1f} ({flops / ms / 1e6:,.0f})"

    def winograd_cell(times, flops):
        return "" if not times else " / ".join(cell(times[op], flops) for op in _PASSES)

    with_torch = any(r.get("torch") for r in rows)
    ops = _PASSES
    header = (
        "| layer | map | channels | forward | input gradient | weight gradient | shifted "
        "products | native | Winograd: forward / input / weight gradient | taken |"
    )
    if with_torch:
        header += " PyTorch forward | PyTorch input gradient | PyTorch weight gradient |"
    lines = [header, "|---|---|---|" + "---:|" * 6 + "---|" + "---:|" * (3 * with_torch)]
    total = 0.0
    for r in rows:
        f = r["flops"]
        if r["taken"] == "winograd":
            total += sum(r["winograd"].values())
        else:
            taken = r["weight_gradient"] if r["taken"] == "stock" else r[r["taken"]]
            total += r["forward"] + r["input_gradient"] + taken
        cells = [cell(r[op], f) for op in ops]
        cells += [cell(r.get(choice), f) for choice in ("shifted", "native")]
        cells += [winograd_cell(r.get("winograd"), f), r["taken"]]
        if with_torch:
            cells += [cell((r.get("torch") or {}).get(op), f) for op in ops]
        lines.append(
            f"| {r['name']} | {r['map'][0]}x{r['map'][1]} | {r['channels'][0]} -> "
            f"{r['channels'][1]} | " + " | ".join(cells) + " |"
        )
    lines.append(
        f"\nms (GFLOP/s) per op at batch {batch} (Winograd's GFLOP/s count the direct conv's "
        f"FLOPs). The convs of one training step, with the kernels each layer takes: "
        f"{total:,.0f} ms, a ceiling of "
        f"{batch / total * 1e3:,.0f} images/s for the convs alone."
    )
    return "\n".join(lines)

"""The PyTorch twin of `custom_convnet`, the script a user would otherwise write, for
`cifar-bench train`: same net, batch, optimizer, schedule, loss and precision.

Imports torch only when called (the optional `compare` extra); nothing here is used in
training. Written the way a careful PyTorch user would: channels_last, `torch.autocast`
for bfloat16, the data held as one normalised tensor and augmented per batch with
tensor ops (airbench's way), a fused cross-entropy with label smoothing.
"""

from __future__ import annotations

import numpy as np

from pipeline.config import Config
from pipeline.errors import UserError
from pipeline.run_length import RunLength

# custom_convnet params the twin reproduces; any other value is refused, not approximated.
_TWIN_PARAMS = {"stem": ("whiten", "conv", "none"), "pool": ("max", "avg"), "head": ("max", "avg")}


class TwinError(UserError):
    """The requested model or setting has no PyTorch twin."""


def available() -> bool:
    try:
        import torch  # noqa: F401, PLC0415 - optional dependency
    except ImportError:
        return False
    return True


def _params(cfg: Config) -> dict:
    """custom_convnet's keyword arguments with its defaults filled in."""
    import inspect  # noqa: PLC0415

    from models.custom_convnet import SIZES, custom_convnet  # noqa: PLC0415

    if cfg.model.name != "custom_convnet":
        raise TwinError(
            f"the PyTorch twin reproduces custom_convnet only, not {cfg.model.name}: "
            "use --experiment challenge (or quick), or drop the torch contender"
        )
    defaults = {
        k: v.default
        for k, v in inspect.signature(custom_convnet).parameters.items()
        if v.default is not inspect.Parameter.empty
    }
    p = {**defaults, **cfg.model.params}
    for key, allowed in _TWIN_PARAMS.items():
        if p[key] not in allowed:
            raise TwinError(f"the PyTorch twin has no {key}={p[key]!r}; it knows {allowed}")
    p["widths"] = list(p["widths"] or SIZES[p["size"]])
    return p


def build(cfg: Config):
    """The twin net as a `torch.nn.Module` (float32, channels_last)."""
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    p = _params(cfg)
    act = {"gelu": nn.GELU, "relu": nn.ReLU}[p["activation"]]
    pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[p["pool"]]
    layers: list = []
    channels = 3
    if p["stem"] == "whiten":
        stem = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        stem.weight.requires_grad = False  # set from data in the project; frozen in both
        layers += [stem, act()]
        channels = 24
    elif p["stem"] == "conv":
        layers += [nn.Conv2d(3, p["widths"][0] // 2, 3, padding=1, bias=False), act()]
        channels = p["widths"][0] // 2

    class Stage(nn.Module):
        def __init__(self, cin: int, width: int):
            super().__init__()
            k = p["kernel_size"]
            self.convs = nn.ModuleList(
                nn.Conv2d(cin if d == 0 else width, width, k, padding=k // 2, bias=False)
                for d in range(p["depth"])
            )
            self.pool = pool(2)
            self.norms = nn.ModuleList(
                _batch_norm(nn, width, p) if p["batch_norm"] else nn.Identity()
                for _ in range(p["depth"])
            )
            self.acts = nn.ModuleList(act() for _ in range(p["depth"]))

        def forward(self, x):
            for d, (conv, norm, a) in enumerate(
                zip(self.convs, self.norms, self.acts, strict=True)
            ):
                y = conv(x)
                if d == 0:
                    y = self.pool(y)
                y = a(norm(y))
                x = x + y if p["residual"] and d > 0 else y
            return x

    for width in p["widths"]:
        layers.append(Stage(channels, width))
        channels = width
    global_pool = nn.AdaptiveMaxPool2d(1) if p["head"] == "max" else nn.AdaptiveAvgPool2d(1)
    layers += [global_pool, nn.Flatten()]
    if p["dropout"]:
        layers.append(nn.Dropout(p["dropout"]))
    head = nn.Linear(channels, cfg.model.num_classes, bias=False)
    layers.append(head)

    class Twin(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * p["logit_scale"]

    return Twin(*layers).to(memory_format=torch.channels_last)


def _batch_norm(nn, width: int, p: dict):
    # Keras momentum m keeps m of the running value; PyTorch's momentum is the new share.
    bn = nn.BatchNorm2d(width, eps=1e-12, momentum=1 - p["bn_momentum"])
    bn.weight.requires_grad = not p["frozen_bn_scale"]
    return bn


def trainable_parameters(model) -> int:
    return sum(t.numel() for t in model.parameters() if t.requires_grad)


def _is_bias(name: str) -> bool:
    return name.endswith("bias")


def _is_bn_shift(name: str) -> bool:
    """A BN layer's shift: what the project's `bias_lr_scale` applies to (optim.is_bn_shift),
    not the whitening stem's bias."""
    return ".norms." in name and name.endswith(".bias")


def _make_optimizer(model, cfg: Config, length: RunLength):
    """SGD with (Nesterov) momentum and the BN-shift lr multiplier, and `lr_at(step)`: the
    project's own schedule (`optim.lr_at`), so both sides follow the same rates. Decoupled
    weight decay is applied in the step, as Keras applies it (w -= lr * wd * w)."""
    import torch  # noqa: PLC0415

    from pipeline.training import optim  # noqa: PLC0415 - imports TensorFlow

    o = cfg.optim
    if o.optimizer not in ("sgd", "nesterov"):
        raise TwinError(f"the PyTorch twin trains with SGD or Nesterov, not {o.optimizer}")
    named = [(n, t) for n, t in model.named_parameters() if t.requires_grad]
    groups = [
        {"params": [t for n, t in named if not _is_bn_shift(n)], "scale": 1.0},
        {"params": [t for n, t in named if _is_bn_shift(n)], "scale": o.bias_lr_scale},
    ]
    opt = torch.optim.SGD(
        groups, lr=o.lr, momentum=o.momentum, nesterov=o.optimizer == "nesterov" and o.momentum > 0
    )

    # Every step's rate computed up front, so the timed steps pay nothing for TensorFlow.
    rates = optim.lr_at(np.arange(length.total_steps), o, length).numpy()
    rates = np.broadcast_to(rates, [length.total_steps])  # a constant schedule: one scalar

    def lr_at(step: int) -> float:
        return float(rates[step])

    return opt, lr_at


def training_pass(cfg: Config, images: np.ndarray, labels: np.ndarray, steps: int):
    """The twin, built and ready to train: a pass of `steps` training steps, for the
    benchmark to time beside the project's loop.

    Args:
        images: (N, 32, 32, 3) normalised float32 training images.
        labels: (N,) int labels.

    Returns:
        (one_pass() -> images trained, the twin's trainable parameter count).
    """
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: N812, PLC0415

    from pipeline.bench.timing import schedule_length  # noqa: PLC0415

    torch.manual_seed(cfg.train.seed)
    batch = cfg.data.batch_size
    model = build(cfg)
    opt, lr_at = _make_optimizer(model, cfg, schedule_length(steps))
    decayed = [t for n, t in model.named_parameters() if t.requires_grad and not _is_bias(n)]
    x_all = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y_all = torch.from_numpy(np.asarray(labels, np.int64))
    aug = cfg.data.augment
    bf16 = cfg.train.precision == "mixed_bfloat16"
    if cfg.train.precision == "mixed_float16":
        raise TwinError("the PyTorch twin runs on the CPU: float32 or mixed_bfloat16")
    generator = torch.Generator().manual_seed(cfg.train.seed)
    state = {"step": 0}
    span = torch.arange(32)[None, :]
    rows_of_batch = torch.arange(batch)[:, None, None, None]
    channels = torch.arange(3)[None, :, None, None]

    def augmented_batch():
        idx = torch.randint(len(y_all), (batch,), generator=generator)
        x = x_all[idx]
        if aug.flip != "none":  # random half mirrored: the cost of either flip mode
            mirror = torch.rand(batch, generator=generator) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        if aug.translate:  # pad, then a random crop per image, as the project does
            t = aug.translate
            mode = "reflect" if aug.pad_mode == "reflect" else "constant"
            padded = F.pad(x, (t, t, t, t), mode=mode)
            dy, dx = torch.randint(0, 2 * t + 1, (2, batch, 1), generator=generator)
            rows = (dy + span)[:, None, :, None]  # (B, 1, 32, 1)
            cols = (dx + span)[:, None, None, :]  # (B, 1, 1, 32)
            x = padded[rows_of_batch, channels, rows, cols]
        return x.contiguous(memory_format=torch.channels_last), y_all[idx]

    def one_step():
        lr = lr_at(state["step"])
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        x, y = augmented_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.optim.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.weight_decay:
            with torch.no_grad():
                torch._foreach_mul_(decayed, 1.0 - lr * cfg.optim.weight_decay)
        opt.step()
        state["step"] += 1
        return loss

    def one_pass() -> int:
        model.train()
        for _ in range(steps):
            loss = one_step()
        float(loss.detach())
        return steps * batch

    return one_pass, trainable_parameters(model)


def conv_layer_times(layers: list[dict], batch: int, dtype: str, repeats: int) -> list[dict]:
    """PyTorch's ms for each layer's forward conv, input gradient and weight gradient, each
    alone (`convolution_backward` for one gradient per call, channels-last), for the layers
    `conv_layers.layer_times` describes (map, channels, kernel, stride, padding). A layer
    whose "same" padding PyTorch cannot match with one symmetric pad (strided, or an even
    kernel) gets None."""
    import torch  # noqa: PLC0415

    from pipeline.bench.timing import median_seconds  # noqa: PLC0415

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
    if dt is None:
        raise TwinError(
            f"the PyTorch layer timings run on the CPU: float32 or bfloat16, not {dtype}"
        )
    generator = torch.Generator().manual_seed(0)
    times = []
    for layer in layers:
        (h, w), (c_in, c_out), (kh, kw) = layer["map"], layer["channels"], layer["kernel"]
        if layer["padding"] == "same" and (layer["stride"] != 1 or kh % 2 == 0 or kw % 2 == 0):
            times.append(None)
            continue
        pad = [kh // 2, kw // 2] if layer["padding"] == "same" else [0, 0]

        def tensor(*shape):
            t = torch.randn(*shape, generator=generator).to(dt)
            return t.contiguous(memory_format=torch.channels_last)

        x, weight = tensor(batch, c_in, h, w), tensor(c_out, c_in, kh, kw) * 0.05
        stride = [layer["stride"]] * 2
        dy = tensor(*torch.nn.functional.conv2d(x, weight, stride=stride, padding=pad).shape)

        def backward(mask, x=x, weight=weight, dy=dy, stride=stride, pad=pad):
            return lambda: torch.ops.aten.convolution_backward(
                dy, x, weight, None, stride, pad, [1, 1], False, [0, 0], 1, mask
            )

        ops = {
            "forward": lambda x=x, weight=weight, stride=stride, pad=pad: (
                torch.nn.functional.conv2d(x, weight, stride=stride, padding=pad)
            ),
            "input_gradient": backward([True, False, False]),
            "weight_gradient": backward([False, True, False]),
        }
        with torch.no_grad():
            times.append({k: 1e3 * median_seconds(op, repeats) for k, op in ops.items()})
    return times

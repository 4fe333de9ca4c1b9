"""The open challenge: one configurable convnet family (airbench-style by default).

Stages of conv-pool-BN-activation blocks, widths and depth per stage from a table, an
optional frozen 2x2 patch-whitening stem initialised from training data, residual
connections, global average/max pooling or flatten, dropout and a scaled linear head.
"""

from __future__ import annotations

import keras
import numpy as np

from models import fast_layers
from models.registry import ModelError, register

# Sizes by name, as nanoGPT's table of model sizes; `widths` overrides.
SIZES = {
    "airbench94": (64, 256, 256),  # the fastest published 94% CIFAR-10 net
    "medium": (48, 128, 128),  # the `challenge` experiment's: what a 2-core CPU affords
    "small": (32, 64, 128),
    "tiny": (16, 32, 64),
}

WHITEN_PATCH = 2  # px; the stem's kernel (airbench94's)
WHITEN_EIGEN = 12  # 2*2*3 patch dimensions; the stem has +/- each eigenvector: 24 channels
WHITEN_IMAGES = 5_000  # training images whose 2x2 patches set the stem (airbench's count)


STEMS = ("whiten", "conv", "none")
POOLS = ("max", "avg")
HEADS = ("max", "avg", "flatten", "maxpool3")
ACTIVATIONS = ("gelu", "relu")
INITS = ("airbench", "airbench_muon", "glorot")


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class DiracUniform(keras.initializers.Initializer):
    """airbench94's conv initialisation: PyTorch's default, uniform in +-1/sqrt(fan_in), with
    the first min(in, out) filters replaced by identities (`torch.nn.init.dirac_`): filter i
    passes input channel i through its centre tap. A 3x3 conv with as many outputs as
    inputs starts as the identity."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, cin, cout = shape
        n = min(cin, cout)
        identity = np.zeros(shape, np.float32)
        identity[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        keep = np.ones(shape, np.float32)
        keep[..., :n] = 0.0
        random = torch_default_init(self.seed)(shape, dtype)
        return random * keras.ops.convert_to_tensor(keep, dtype) + identity

    def get_config(self):
        return {"seed": self.seed}


@keras.saving.register_keras_serializable(package="cifar_pipeline")
class UnitStd(keras.initializers.Initializer):
    """airbench94_muon's head: PyTorch's Linear default, then scaled so the drawn weights'
    standard deviation is exactly 1 (`w *= 1 / w.std()`); its logits are divided by the
    width (`logit_scale`)."""

    def __init__(self, seed=None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        w = torch_default_init(self.seed)(shape, dtype)
        return w / keras.ops.std(w)

    def get_config(self):
        return {"seed": self.seed}


def torch_default_init(seed=None) -> keras.initializers.Initializer:
    """PyTorch's default for Conv2d and Linear weights: uniform in +-1/sqrt(fan_in)
    (kaiming_uniform with a = sqrt(5)); airbench94's head keeps it."""
    return keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform", seed=seed)


def _check_choices(**named: tuple) -> None:
    """Each name=(value, allowed) must have its value among `allowed`: the fix in the error."""
    for name, (value, allowed) in named.items():
        if value not in allowed:
            raise ModelError(
                f"custom_convnet: model.params.{name} must be one of {', '.join(allowed)}; "
                f"got {value!r} (e.g. --set model.params.{name}={next(iter(allowed))})"
            )


def _activation(name: str, fused: bool):
    if name == "gelu" and fused:
        return fast_layers.GELU()
    return keras.layers.Activation(name)


def _bn(batch_norm: bool, frozen_scale: bool, momentum: float, name: str, fused: bool, sync: bool):
    if not batch_norm:
        return None
    # airbench freezes BN's scale at 1 and learns only its shift.
    layer = fast_layers.BatchNorm if fused else keras.layers.BatchNormalization
    return layer(
        momentum=momentum,
        epsilon=1e-12,
        center=True,
        scale=not frozen_scale,
        synchronized=sync,
        name=name,
    )


def whitening_kernel(
    images: np.ndarray, eps: float = 5e-4, size: int = WHITEN_PATCH, width: int | None = None
) -> np.ndarray:
    """A size x size conv kernel (size, size, 3, width) that whitens the patches of `images`.

    Eigenvectors of the patches' second moment (airbench94's "covariance", not centred:
    the images are already normalised), each scaled by 1/sqrt(eigenvalue + eps), with its
    negative beside it (so a following GELU/ReLU keeps both signs). A `width` under
    2 x size x size x 3 keeps the eigenvectors of the largest eigenvalues.

    Args:
        images: (N, 32, 32, 3) normalised float images (airbench uses 5,000).
        width: output channels, even; default all 2 x size x size x 3 (24 at size 2).
    """
    x = np.asarray(images, np.float64)
    n, h, w, c = x.shape
    p = size
    width = 2 * p * p * c if width is None else width
    patches = np.stack(
        [x[:, i : h - p + 1 + i, j : w - p + 1 + j, :] for i in range(p) for j in range(p)], axis=3
    )  # (N, H', W', p*p, C)
    patches = patches.reshape(-1, p * p * c)
    cov = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    filters = eigenvectors.T[::-1] / np.sqrt(eigenvalues[::-1, None] + eps)  # largest first
    filters = filters[: width // 2]
    filters = np.concatenate([filters, -filters])  # (width, p*p*C)
    # Patch layout (i, j, c) -> conv kernel (i, j, c, out).
    return filters.reshape(width, p, p, c).transpose(1, 2, 3, 0).astype(np.float32)


def whiten_stem(model: keras.Model, normalised_images: np.ndarray) -> bool:
    """Sets the whitening stem's kernel from data; False when the model has no such stem."""
    try:
        layer = model.get_layer("whiten")
    except ValueError:
        return False
    size, _, _, width = layer.kernel.shape
    layer.kernel.assign(whitening_kernel(normalised_images, size=size, width=width))
    return True


def _check_whiten(size: int, width: int) -> None:
    most = 2 * size * size * 3
    if size < 1 or width < 2 or width % 2 or width > most:
        raise ModelError(
            f"custom_convnet: whiten_width must be even and 2..{most} for a {size}x{size} "
            f"whitening stem (+/- each of its {most // 2} patch eigenvectors); got "
            f"whiten_size={size}, whiten_width={width}"
        )


@register(
    "custom_convnet",
    doc="open challenge: configurable conv-pool-BN stages (airbench94 by default)",
    init_from_data=whiten_stem,
    init_images=WHITEN_IMAGES,
)
def custom_convnet(
    num_classes: int = 10,
    size: str = "airbench94",
    widths: list[int] | None = None,  # per stage; overrides `size`
    depth: int = 2,  # convs per stage
    kernel_size: int = 3,
    stem: str = "whiten",  # "whiten" (frozen, set by `whiten_stem`) | "conv" | "none"
    whiten_size: int = WHITEN_PATCH,  # the whitening stem's kernel, px
    whiten_width: int = 2 * WHITEN_EIGEN,  # its channels: +/- the top width/2 eigenvectors
    batch_norm: bool = True,
    frozen_bn_scale: bool = True,
    bn_momentum: float = 0.6,  # Keras convention: the running value's weight; airbench94's
    # BatchNorm(momentum=0.6) passes PyTorch momentum 1 - 0.6 = 0.4, the new batch's weight
    pool: str = "max",  # "max" | "avg": halves each stage's resolution
    residual: bool = False,  # add a skip around each stage's later convs
    head: str = "max",  # "max" | "avg" (global pooling) | "flatten" | "maxpool3": a 3x3
    # max pool, then flatten (airbench's MaxPool2d(3)); on the whitening stem's 3x3 last
    # map it is the global max
    dropout: float = 0.0,
    activation: str = "gelu",
    logit_scale: float = 1 / 9,  # airbench scales logits down; keeps early softmax soft
    init: str = "airbench",  # "airbench": DiracUniform convs, PyTorch's default head;
    # "airbench_muon": also a unit-std head and PyTorch's default whitening bias; "glorot"
    fused: bool = True,  # fused BN + GELU kernels and the small-map bfloat16 weight
    # gradient (models/fast_layers.py); False = stock Keras
    sync_bn: bool = True,  # with >1 replicas, BN statistics of the global batch (N replicas
    # train as one); costs an all-reduce per BN layer and the unfused kernel
):
    _check_choices(size=(size, SIZES), stem=(stem, STEMS), pool=(pool, POOLS), head=(head, HEADS))
    _check_choices(activation=(activation, ACTIVATIONS), init=(init, INITS))
    _check_whiten(whiten_size, whiten_width)
    airbench_init = init in ("airbench", "airbench_muon")
    muon_init = init == "airbench_muon"
    conv_init = DiracUniform() if airbench_init else "glorot_uniform"
    widths = list(widths or SIZES[size])
    conv = fast_layers.Conv2D if fused else keras.layers.Conv2D
    inputs = keras.Input((32, 32, 3))
    x = inputs
    if stem == "whiten":
        # Frozen conv; its kernel is set from data by `whiten_stem`, its bias learns (in
        # bfloat16, `fused` sums its gradient in float32: fast_layers.bias_add).
        # airbench94_muon's nn.Conv2d keeps PyTorch's default bias; airbench94 zeroes it.
        bound = 1 / np.sqrt(whiten_size**2 * 3)  # PyTorch: U(+-1/sqrt(the kernel's fan_in))
        bias_init = keras.initializers.RandomUniform(-bound, bound) if muon_init else "zeros"
        x = conv(
            whiten_width,
            whiten_size,
            padding="valid",
            bias_initializer=bias_init,
            name="whiten",
        )(x)
        x = _activation(activation, fused)(x)
    elif stem == "conv":
        x = conv(
            widths[0] // 2,
            3,
            padding="same",
            use_bias=False,
            kernel_initializer=conv_init,
            name="stem",
        )(x)
        x = _activation(activation, fused)(x)
    for s, width in enumerate(widths):
        for d in range(depth):
            y = conv(
                width,
                kernel_size,
                padding="same",
                use_bias=False,
                kernel_initializer=conv_init,
                name=f"stage{s}_conv{d}",
            )(x)
            if d == 0:
                y = (keras.layers.MaxPooling2D if pool == "max" else keras.layers.AveragePooling2D)(
                    2, name=f"stage{s}_pool"
                )(y)
            bn = _bn(batch_norm, frozen_bn_scale, bn_momentum, f"stage{s}_bn{d}", fused, sync_bn)
            y = bn(y) if bn is not None else y
            y = _activation(activation, fused)(y)
            x = keras.layers.Add()([x, y]) if residual and d > 0 else y
    if head in ("flatten", "maxpool3"):
        if head == "maxpool3":
            x = keras.layers.MaxPooling2D(3, name="head_pool")(x)
        x = keras.layers.Flatten()(x)
    else:
        x = (
            keras.layers.GlobalMaxPooling2D
            if head == "max"
            else keras.layers.GlobalAveragePooling2D
        )()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    head_init = (
        UnitStd() if muon_init else torch_default_init() if airbench_init else "glorot_uniform"
    )
    logits = keras.layers.Dense(
        num_classes, use_bias=False, kernel_initializer=head_init, name="head"
    )(x)
    if logit_scale != 1:
        logits = keras.layers.Rescaling(logit_scale, name="logit_scale")(logits)
    model = keras.Model(inputs, logits, name="custom_convnet")
    if stem == "whiten":
        model.get_layer("whiten").kernel.trainable = False
    return model

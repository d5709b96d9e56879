"""Finite networks (flax.linen) under the same names as the kernel presets: `fc1`, `convnet`,
`myrtle5`, ... give both the infinite-width kernel (`kip.kernels`) and the network trained here.

Every layer takes W_std / b_std as neural-tangents does (KIP: sqrt 2 and 0.1). 'ntk'
parameterization: W, b ~ N(0, 1), y = W_std / sqrt(fan_in) * x W + b_std * b (the network whose
empirical NTK converges to `kernel_fn(x1, x2, 'ntk')`); 'standard': W ~ N(0, W_std^2 / fan_in),
b ~ N(0, b_std^2), y = x W + b (what the finite-network transfer recipe trains).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from kip import InputError
from kip.kernels.presets import KIP_B_STD, KIP_W_STD, MYRTLE_BLOCKS

Array = jax.Array
PARAMETERIZATIONS = ("standard", "ntk")
NORMS = ("none", "instance", "batch")
# W_std / b_std normals; PyTorch's default U(+-1/sqrt(fan_in)) (DC/DSA/DM networks); flax's default
# (lecun_normal: a normal truncated at 2 std, variance 1/fan_in; zero biases: FRePo's networks)
INITS = ("normal", "torch", "lecun")


def _check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise InputError(f"parameterization must be one of {', '.join(PARAMETERIZATIONS)}, got {parameterization!r}")


class _Affine(nn.Module):
    """What Dense and Conv share: weights W (fan_in inputs per output), a bias b unless b_std
    is None, and where W_std / b_std go: output = w_mult * (x . W) + b_mult * b.
    weight_init 'torch' (standard parameterization): W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's
    default for Conv2d and Linear; 'lecun': flax's default, W from `nn.initializers.lecun_normal`
    (truncated normal of variance 1/fan_in), b = 0."""

    features: int
    W_std: float = KIP_W_STD
    b_std: float | None = KIP_B_STD
    parameterization: str = "standard"
    param_dtype: Any = jnp.float32
    weight_init: str = "normal"

    def affine(self, fan_in: int, w_shape: tuple[int, ...], contract: Callable[[Array], Array]) -> Array:
        """contract(W) is x . W; returns the layer's output."""
        w_scale = self.W_std / math.sqrt(fan_in)
        ntk = self.parameterization == "ntk"
        normal = nn.initializers.normal
        if self.weight_init == "torch":
            bound = 1 / math.sqrt(fan_in)
            w_init = b_init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
        elif self.weight_init == "lecun":
            # variance 1 / fan_in: fan_in is every axis but the last (flax's default for Dense and Conv)
            w_init, b_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), nn.initializers.zeros
        else:
            w_init, b_init = normal(1.0 if ntk else w_scale), normal(1.0 if ntk else self.b_std)
        w = self.param("kernel", w_init, w_shape, self.param_dtype)
        y = (w_scale if ntk else 1.0) * contract(w)
        if self.b_std is None:
            return y
        b = self.param("bias", b_init, (self.features,), self.param_dtype)
        return y + (self.b_std if ntk else 1.0) * b


class Dense(_Affine):
    """(..., fan_in) -> (..., features), as `kip.kernels.Dense(features, W_std, b_std, parameterization)`."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return self.affine(x.shape[-1], (x.shape[-1], self.features), lambda w: jnp.matmul(x, w))


_CONV_DIMS = ("NHWC", "HWIO", "NHWC")
# Inputs with at most this many values per output position (kh * kw * C: 9 for a 3x3 conv of
# grey images, 27 of RGB) take their input gradient as a matmul by W^T and shifted adds.
FEW_INPUTS = 32


def _conv_lax(x: Array, w: Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> Array:
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_CONV_DIMS)


def _patches(x: Array, kernel_size: tuple[int, int], strides: tuple[int, int],
             padding: tuple[tuple[int, int], ...]) -> Array:
    """(n, H, W, C) -> (n, H', W', kh * kw * C): what each output position of the convolution
    reads (im2col), ordered as an HWIO kernel reshaped to (kh * kw * C, O)."""
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    (kh, kw), (sh, sw) = kernel_size, strides
    h, w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    return jnp.concatenate([x[:, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw, :]
                            for i in range(kh) for j in range(kw)], axis=-1)


def _conv_input_tangent(dx: Array, w: Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> Array:
    """conv(dx, w), written so that its transpose (the input gradient) runs fast on XLA:CPU:
    as `_patches(dx) @ W` for few inputs per position (transposed: a matmul by W^T and shifted
    adds, where XLA's transposed convolution with few output channels is ~10x slower), else
    with the kernel stored input/output-swapped (HWOI), so that the transposed convolution JAX
    derives reads an HWIO kernel, which XLA runs fast also inside loops (`lax.map` over random
    networks), where it otherwise falls back to a ~5x slower convolution (benchmarks/rf_speed.py)."""
    if math.prod(w.shape[:3]) <= FEW_INPUTS:
        return _patches(dx, w.shape[:2], strides, padding) @ w.reshape(-1, w.shape[-1])
    return jax.lax.conv_general_dilated(dx, jnp.swapaxes(w, 2, 3), strides, padding,
                                        dimension_numbers=("NHWC", "HWOI", "NHWC"))


def _conv_weight_tangent(x: Array, dw: Array, strides: tuple[int, int],
                         padding: tuple[tuple[int, int], ...]) -> Array:
    """conv(x, dw), written so that its transpose (the weight gradient) runs fast on XLA:CPU: as
    `_patches(x) @ dW`, whose transpose is one matmul. XLA:CPU's own weight-gradient convolution
    falls back to a ~50x slower one inside loops (`lax.scan` over distillation steps, `fori_loop`
    over an expert's epoch) and is ~1.6x slower under vmap (benchmarks/conv_grad_speed.py).
    Other backends keep lax's convolution: the patches hold 9x the input's memory."""
    return jax.lax.platform_dependent(x, dw, cpu=lambda x, dw: _conv_im2col(x, dw, strides, padding),
                                      default=lambda x, dw: _conv_lax(x, dw, strides, padding))


def _conv_im2col(x: Array, w: Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> Array:
    """The convolution as `_patches(x) @ W`: plain slices and matmuls at every order of derivative."""
    return _patches(x, w.shape[:2], strides, padding) @ w.reshape(-1, w.shape[-1])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv(x: Array, w: Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]) -> Array:
    """lax's convolution (NHWC, HWIO), differentiated in x through `_conv_input_tangent` and in w
    through `_conv_weight_tangent`: the same numbers, faster gradients on CPU (random-feature KIP
    takes an input gradient every step; every trained network a weight gradient)."""
    return _conv_lax(x, w, strides, padding)


def _conv_jvp(strides, padding, primals, tangents):
    (x, w), (dx, dw) = primals, tangents
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(_conv_input_tangent(dx, w, strides, padding))
    if not isinstance(dw, SymbolicZero):
        terms.append(_conv_weight_tangent(x, dw, strides, padding))
    out = _conv_lax(x, w, strides, padding)
    return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


class Conv(_Affine):
    """(n, H, W, C) -> (n, H', W', features): a 3x3 (by default) convolution padded by `padding`
    (ph, pw) zeros on each side (default k // 2: SAME at stride 1), stride s (default 1);
    fan_in = kh * kw * C."""

    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | None = None
    im2col: bool = False  # see `_ConvNetwork.im2col`

    @nn.compact
    def __call__(self, x: Array) -> Array:
        def conv(w):
            dtype = jnp.result_type(x, w)
            same = tuple(k // 2 for k in self.kernel_size)
            extra = tuple(max(0, p - s) for p, s in zip(self.padding or same, same))
            # Padding beyond SAME is added by jnp.pad: XLA:CPU's convolution (and its weight gradient)
            # with a wider padding runs ~6x slower (DC's first conv pads 28x28 MNIST by 3)
            xp = jnp.pad(x, ((0, 0), (extra[0], extra[0]), (extra[1], extra[1]), (0, 0))) if any(extra) else x
            padding = tuple((p - e, p - e) for p, e in zip(self.padding or same, extra))
            conv_fn = _conv_im2col if self.im2col else _conv
            return conv_fn(xp.astype(dtype), w.astype(dtype), tuple(self.strides), padding)

        w_shape = (*self.kernel_size, x.shape[-1], self.features)
        return self.affine(math.prod(w_shape[:-1]), w_shape, conv)


def avg_pool(x: Array) -> Array:
    """2x2 average pooling, stride 2, VALID (neural-tangents' `AvgPool((2, 2), (2, 2))`)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Network(nn.Module):
    """The fields every preset shares (see `build`). Subclasses define `__call__(x, train)`
    ((n, H, W, C) -> (n, num_classes); `train` is what kip.train passes: batch statistics
    (ResNet's BatchNorm) in train mode, running averages otherwise) and `min_size`."""

    num_classes: int = 10
    width: int = 1024
    W_std: float = KIP_W_STD
    b_std: float | None = KIP_B_STD
    parameterization: str = "standard"
    param_dtype: Any = jnp.float32
    head: bool = True  # False: return the (n, D) features the output layer reads (random features)
    weight_init: str = "normal"  # see INITS

    def _layer(self, cls, features: int, **kwargs) -> nn.Module:
        return cls(features, W_std=self.W_std, b_std=self.b_std, parameterization=self.parameterization,
                   param_dtype=self.param_dtype, weight_init=self.weight_init, **kwargs)

    def readout(self, features: Array) -> Array:
        """(n, D) -> (n, num_classes) by the output Dense layer; with `head=False` the features themselves."""
        return self._layer(Dense, self.num_classes)(features) if self.head else features

    min_size = 1  # smallest image height / width the network accepts

    def check_input_shape(self, image_shape: tuple[int, ...]) -> None:
        """Raises `InputError` unless single images of `image_shape` fit this network."""
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise InputError(f"{type(self).__name__}: images must be H x W x C, got shape {tuple(image_shape)}")
        if min(image_shape[:2]) < self.min_size:
            raise InputError(f"{type(self).__name__} pools its images down and needs at least "
                             f"{self.min_size}x{self.min_size} pixels, got {image_shape[0]}x{image_shape[1]}")


class FC(Network):
    """`Flatten, [Dense(width), Relu] * depth, Dense(num_classes)`: KIP's "FC<depth>".
    (n, H, W, C) or (n, d) -> (n, num_classes)."""

    depth: int = 1

    def check_input_shape(self, image_shape: tuple[int, ...]) -> None:
        if len(image_shape) < 1 or math.prod(image_shape) < 1:
            raise InputError(f"FC{self.depth}: inputs must be non-empty, got shape {tuple(image_shape)}")

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            x = nn.relu(self._layer(Dense, self.width)(x))
        return self.readout(x)


class _ConvNetwork(Network):
    """Conv nets share the conv block and its optional instance norm (DC/DSA protocol)."""

    norm: str = "none"
    # Convolutions as patch matmuls (im2col): the second-order gradients of DC's gradient matching
    # then run ~20x faster on XLA:CPU (benchmarks/distill_speed.py), where lax's convolutions
    # differentiated twice fall back to slow kernels; first-order training is faster without it.
    im2col: bool = False

    def conv_relu(self, x: Array, padding: tuple[int, int] | None = None, features: int | None = None) -> Array:
        """Conv(`features` (default width), 3x3, SAME or `padding`) [-> InstanceNorm] -> Relu."""
        x = self._layer(Conv, features or self.width, padding=padding, im2col=self.im2col)(x)
        if self.norm == "instance":
            x = nn.InstanceNorm(epsilon=1e-5, param_dtype=self.param_dtype)(x)
        return nn.relu(x)


class ConvNet(_ConvNetwork):
    """"ConvNet" of arXiv 2107.13034: Conv + Relu, then 3 x [Conv, Relu, AvgPool 2x2], Flatten,
    Dense(num_classes); "ConvNet3" (`stem=False`) drops the first Conv + Relu, which with
    `norm='instance'`, width 128, `pad_to=32` and weight_init 'torch' is the DC / DSA evaluation ConvNet.
    pad_to: the first conv pads smaller images up to pad_to x pad_to (DC: 28x28 MNIST -> 32x32).
    growth: the i-th of the 3 pooled blocks has width * growth**i channels (FRePo's Conv: 2).
    norm 'batch': FRePo's Conv (with growth 2, lecun init, pad_to 32): a BatchNorm before the 2nd and 3rd
    pooled blocks, batch statistics with train=True, running averages otherwise.
    (n, H, W, C) -> (n, num_classes); H, W >= 8."""

    stem: bool = True
    pad_to: int | None = None
    growth: int = 1
    min_size = 8

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        pad = lambda size: 1 + max(0, (self.pad_to or 0) - size) // 2
        first = (pad(x.shape[1]), pad(x.shape[2]))
        if self.stem:
            x = self.conv_relu(x, first)
        for i in range(3):
            if self.norm == "batch" and i > 0:
                # FRePo's Conv: batch norm on each pooled block's input but the first; flax momentum 0.1
                # as FRePo passes it (the running statistics keep 0.1 of the old, 0.9 of each batch's)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.1, epsilon=1e-5, param_dtype=self.param_dtype)(x)
            x = avg_pool(self.conv_relu(x, first if i == 0 and not self.stem else None, self.width * self.growth**i))
        return self.readout(x.reshape(x.shape[0], -1))


class Myrtle(_ConvNetwork):
    """Myrtle-5 / 7 / 10 (Shankar et al. 2020, as in neural-tangents' Myrtle example):
    [Conv, Relu] * a, AvgPool, [Conv, Relu] * b, AvgPool, [Conv, Relu] * c, GlobalAvgPool,
    Dense(num_classes), with (a, b, c) = `MYRTLE_BLOCKS[depth]`. The example's three final
    2x2 AvgPools equal the global mean at 32x32 (8x8 -> 1x1); the global mean also fits 28x28.
    (n, H, W, C) -> (n, num_classes); H, W >= 4."""

    depth: int = 5
    min_size = 4

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        stages = MYRTLE_BLOCKS[self.depth]
        for i, convs in enumerate(stages):
            for _ in range(convs):
                x = self.conv_relu(x)
            if i < len(stages) - 1:
                x = avg_pool(x)
        return self.readout(jnp.mean(x, axis=(1, 2)))


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016): Conv3x3(stride) BN Relu Conv3x3 BN, plus the
    input (through Conv1x1(stride) BN when the shape changes), then Relu."""

    features: int
    strides: int = 1
    W_std: float = KIP_W_STD
    parameterization: str = "standard"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        conv = functools.partial(Conv, self.features, W_std=self.W_std, b_std=None,
                                 parameterization=self.parameterization, param_dtype=self.param_dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 param_dtype=self.param_dtype)
        s = (self.strides, self.strides)
        y = nn.relu(norm()(conv(strides=s)(x)))
        y = norm()(conv()(y))
        if self.strides != 1 or x.shape[-1] != self.features:
            x = norm()(conv(kernel_size=(1, 1), strides=s)(x))
        return nn.relu(x + y)


class ResNet18(Network):
    """ResNet-18 for small images, as the Data Diet paper trains on CIFAR-10: a 3x3 stride-1
    stem (no max-pool) with BatchNorm and Relu, 4 stages of 2 basic blocks with `width` x
    (1, 2, 4, 8) channels (stride 2 from the second stage on), global average pool,
    Dense(num_classes). Convs have no bias and He-normal weights (W_std = sqrt 2).
    (n, H, W, C) -> (n, num_classes); width 64 is the paper's 11.2M-parameter network."""

    min_size = 8

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = Conv(self.width, W_std=self.W_std, b_std=None, parameterization=self.parameterization,
                 param_dtype=self.param_dtype)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 param_dtype=self.param_dtype)(x))
        for stage in range(4):
            for block in range(2):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(self.width * 2**stage, strides, self.W_std, self.parameterization,
                               self.param_dtype)(x, train)
        return self.readout(jnp.mean(x, axis=(1, 2)))


PRESETS: dict[str, Callable[..., Network]] = {
    **{f"fc{d}": functools.partial(FC, depth=d) for d in (1, 2, 3)},
    "convnet": functools.partial(ConvNet, stem=True),
    "convnet3": functools.partial(ConvNet, stem=False),
    **{f"myrtle{d}": functools.partial(Myrtle, depth=d) for d in MYRTLE_BLOCKS},
    "resnet18": ResNet18,
}
DEFAULT_WIDTHS = {"resnet18": 64}  # the rest: 1024, KIP's finite-network width


def build(
    name: str,
    num_classes: int = 10,
    width: int | None = None,
    parameterization: str = "standard",
    norm: str = "none",
    W_std: float = KIP_W_STD,
    b_std: float | None = KIP_B_STD,
    param_dtype: Any = jnp.float32,
    head: bool = True,
    weight_init: str = "normal",
    pad_to: int | None = None,
    im2col: bool = False,
    growth: int = 1,
) -> Network:
    """The finite network registered under `name` (see `PRESETS`): a flax module mapping
    (n, H, W, C) images to (n, num_classes) outputs, called as `apply(variables, x, train=...)`.

    width: hidden units / channels (ResNet-18: of its first stage); None is the preset's
    default, `DEFAULT_WIDTHS` or 1024.
    norm: 'instance' puts an instance norm after each conv (KIP conv nets only; the DC/DSA protocol);
    'batch' a batch norm before each pooled block but the first (the ConvNets only; FRePo's Conv).
    head: False drops the output layer: the network maps to the (n, D) features it would read.
    weight_init: 'normal' (W_std, b_std) or 'torch' (PyTorch's default uniform initialisation).
    pad_to: ConvNets only: the first conv pads smaller images up to pad_to x pad_to.
    growth: ConvNets only: block i has width * growth**i channels.
    im2col: conv nets only: convolutions as patch matmuls (see `_ConvNetwork.im2col`).
    """
    if name not in PRESETS:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
    width = DEFAULT_WIDTHS.get(name, 1024) if width is None else width
    _check_parameterization(parameterization)
    if norm not in NORMS:
        raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if width < 1 or num_classes < 1:
        raise InputError(f"width and num_classes must be at least 1, got {width} and {num_classes}")
    if weight_init not in INITS or (weight_init in ("torch", "lecun") and parameterization != "standard"):
        raise InputError(f"weight_init must be one of {', '.join(INITS)} ('torch' and 'lecun' with the standard "
                         f"parameterization), "
                         f"got {weight_init!r}")
    kwargs = dict(num_classes=num_classes, width=width, W_std=W_std, b_std=b_std,
                  parameterization=parameterization, param_dtype=param_dtype, head=head, weight_init=weight_init)
    if pad_to is not None:
        if not name.startswith("convnet"):
            raise InputError(f"pad_to applies to the ConvNets only, not {name}")
        kwargs["pad_to"] = pad_to
    if growth != 1:
        if not name.startswith("convnet") or growth < 1:
            raise InputError(f"growth (a positive channel factor per block) applies to the ConvNets only, got {growth} "
                             f"for {name}")
        kwargs["growth"] = growth
    if im2col:
        if name.startswith("fc") or name == "resnet18":
            raise InputError(f"im2col applies to the KIP conv nets only, not {name}")
        kwargs["im2col"] = True
    if norm != "none":
        if norm == "batch" and not name.startswith("convnet"):
            raise InputError(f"--norm batch applies to the ConvNets only, not {name}")
        if name.startswith("fc") or name == "resnet18":
            raise InputError(f"--norm {norm} applies to the KIP conv nets only, not {name}")
        kwargs["norm"] = norm
    return PRESETS[name](**kwargs)


def empirical_ntk(model: nn.Module, variables: dict, x1: Array, x2: Array | None = None) -> Array:
    """The finite network's NTK at `variables`: Θ(x1, x2) = Σ_p ∂f_c(x1)/∂p ∂f_c(x2)/∂p over
    all parameters, averaged over the outputs c (the infinite-width NTK is Θ times the identity
    on outputs). x1 (n1, ...), x2 (n2, ...) -> (n1, n2)."""
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def jacobian(x):
        return jax.jacrev(lambda p: model.apply({"params": p, **rest}, x))(params)  # leaves (n, C, *shape)

    j1 = jacobian(x1)
    j2 = j1 if x2 is None else jacobian(x2)
    contract = lambda a, b: jnp.einsum("ic...,jc...->ij", a, b) / a.shape[1]
    return sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(contract, j1, j2)))

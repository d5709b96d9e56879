"""Named architectures of the papers, as `stax` layers with the KIP defaults
(W_std = sqrt 2, b_std = 0.1, NTK parameterization)."""

from __future__ import annotations

import math

from kip.kernels.conv import AvgPool, Conv, GlobalAvgPool
from kip.kernels.combinators import serial
from kip.kernels.dense import Dense, Flatten
from kip.kernels.elementwise import Relu
from kip.kernels.kernel import Layer

KIP_W_STD = math.sqrt(2.0)
KIP_B_STD = 0.1


def fc(
    depth: int = 1,
    width: int = 1024,
    W_std: float = KIP_W_STD,
    b_std: float = KIP_B_STD,
    num_classes: int = 10,
    parameterization: str = "ntk",
) -> Layer:
    """`Flatten, [Dense(width), Relu] * depth, Dense(num_classes)`: KIP's "FC<depth>".

    Width only matters to the finite network (and to the standard parameterization's NTK).
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    hidden = [Dense(width, W_std, b_std, parameterization), Relu()] * depth
    return serial(Flatten(), *hidden, Dense(num_classes, W_std, b_std, parameterization))


def convnet(
    depth: int = 3,
    prepend_conv: bool = True,
    width: int = 1024,
    W_std: float = KIP_W_STD,
    b_std: float = KIP_B_STD,
    num_classes: int = 10,
    parameterization: str = "ntk",
) -> Layer:
    """The KIP ConvNet (Nguyen et al. 2021): [Conv 3x3 SAME, Relu] if prepend_conv, then
    depth x [Conv 3x3 SAME, Relu, AvgPool 2x2 stride 2], Flatten, Dense(num_classes).
    "ConvNet" is depth 3 with the prepended conv, "ConvNet3" depth 3 without it."""

    def conv():
        return Conv(width, (3, 3), padding="SAME", W_std=W_std, b_std=b_std, parameterization=parameterization)

    layers = [conv(), Relu()] if prepend_conv else []
    for _ in range(depth):
        layers += [conv(), Relu(), AvgPool((2, 2), strides=(2, 2))]
    return serial(*layers, Flatten(), Dense(num_classes, W_std, b_std, parameterization))


MYRTLE_BLOCKS = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}  # [Conv, Relu] layers per stage; kip.models too


def myrtle(
    depth: int = 5,
    width: int = 1024,
    W_std: float = KIP_W_STD,
    b_std: float = KIP_B_STD,
    num_classes: int = 10,
    parameterization: str = "ntk",
) -> Layer:
    """Myrtle-5/7/10 (Shankar et al. 2020): blocks of [Conv 3x3 SAME, Relu] separated by
    AvgPool 2x2 stride 2, then GlobalAvgPool and Dense. neural-tangents' example ends on
    three more 2x2 pools and Flatten instead: the same kernel for 32x32 images, where those
    average the last 8x8 positions exactly; the global pool also takes 28x28 ones."""
    if depth not in MYRTLE_BLOCKS:
        raise ValueError(f"Myrtle depth must be one of {sorted(MYRTLE_BLOCKS)}, got {depth}")

    def block(n):
        return [Conv(width, (3, 3), padding="SAME", W_std=W_std, b_std=b_std, parameterization=parameterization),
                Relu()] * n

    pool = AvgPool((2, 2), strides=(2, 2))
    first, second, third = MYRTLE_BLOCKS[depth]
    layers = block(first) + [pool] + block(second) + [pool] + block(third)
    return serial(*layers, GlobalAvgPool(), Dense(num_classes, W_std, b_std, parameterization))


PRESETS = {
    **{f"fc{d}": (lambda d: lambda num_classes=10: fc(d, num_classes=num_classes))(d) for d in (1, 2, 3)},
    "convnet": lambda num_classes=10: convnet(3, True, num_classes=num_classes),
    "convnet3": lambda num_classes=10: convnet(3, False, num_classes=num_classes),
    **{f"myrtle{d}": (lambda d: lambda num_classes=10: myrtle(d, num_classes=num_classes))(d) for d in MYRTLE_BLOCKS},
}


def preset(name: str, num_classes: int = 10) -> Layer:
    """The architecture registered under `name` (see `PRESETS`)."""
    try:
        build = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
    return build(num_classes=num_classes)

"""Named architectures of the papers, as `stax` layers with the KIP defaults
(W_std = sqrt 2, b_std = 0.1, NTK parameterization)."""

from __future__ import annotations

import math

from kip.kernels.stax import Dense, Flatten, Layer, Relu, serial

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


PRESETS = {f"fc{d}": (lambda d: lambda num_classes=10: fc(d, num_classes=num_classes))(d) for d in (1, 2, 3)}


def preset(name: str, num_classes: int = 10) -> Layer:
    """The architecture registered under `name` (see `PRESETS`)."""
    try:
        build = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(sorted(PRESETS))}") from None
    return build(num_classes=num_classes)

"""Infinite-width kernels: `kip.kernels.serial(Dense(...), Relu(), ...)` gives
`(init_fn, apply_fn, kernel_fn)` exactly as `neural_tangents.stax` does."""

from kip.kernels.presets import PRESETS, fc, preset
from kip.kernels.stax import (
    ABRelu,
    Dense,
    Erf,
    Flatten,
    Kernel,
    KernelFn,
    Layer,
    Relu,
    input_kernel,
    serial,
)

__all__ = [
    "ABRelu",
    "Dense",
    "Erf",
    "Flatten",
    "Kernel",
    "KernelFn",
    "Layer",
    "PRESETS",
    "Relu",
    "fc",
    "input_kernel",
    "preset",
    "serial",
]

"""Infinite-width kernels: `kip.kernels.serial(Dense(...), Relu(), ...)` gives
`(init_fn, apply_fn, kernel_fn)` exactly as `neural_tangents.stax` does."""

from kip.kernels.conv import AvgPool, Conv, GlobalAvgPool
from kip.kernels.presets import PRESETS, convnet, fc, myrtle, preset
from kip.kernels.rf import RandomFeatures, random_features
from kip.kernels.stax import (  # the language, gathered
    ABRelu,
    Dense,
    Erf,
    Flatten,
    Kernel,
    KernelFn,
    Layer,
    Relu,
    bytes_per_pair,
    input_kernel,
    serial,
)

__all__ = [
    "ABRelu",
    "AvgPool",
    "Conv",
    "Dense",
    "Erf",
    "Flatten",
    "GlobalAvgPool",
    "Kernel",
    "KernelFn",
    "Layer",
    "PRESETS",
    "RandomFeatures",
    "Relu",
    "bytes_per_pair",
    "convnet",
    "fc",
    "input_kernel",
    "myrtle",
    "preset",
    "random_features",
    "serial",
]

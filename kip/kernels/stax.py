"""Infinite-width NNGP/NTK kernels in neural-tangents' `stax` combinator language.

Each layer is the triple `(init_fn, apply_fn, kernel_fn)`: the finite network and the
kernel of its infinite-width limit come from the same description, as in neural-tangents.
This module gathers the language; each part has its own file, read in this order:

- `kip.kernels.kernel`: the `Kernel` record the layers fold over, its layouts (FLAT / DIAG /
  FULL / BAND), and `Layer`;
- `kip.kernels.numerics`: array helpers tuned for XLA (Gram matrices, the band of positions);
- `kip.kernels.engine`: `KernelFn`, how a network's kernel is computed (pairwise, bounded
  memory, two ways to differentiate), and `make_layer`;
- the layers: `kip.kernels.dense` (Dense, Flatten), `kip.kernels.elementwise` (ABRelu, Relu,
  Erf), `kip.kernels.conv` (Conv, AvgPool, GlobalAvgPool);
- `kip.kernels.combinators` (serial); then `kip.kernels.presets`, the papers' networks.

A new layer is a function returning `make_layer(init_fn, apply_fn, transform, input_req)`,
where `transform` maps a `Kernel` to the next one.
"""

from kip.kernels.combinators import serial
from kip.kernels.conv import AvgPool, Conv, GlobalAvgPool
from kip.kernels.dense import Dense, Flatten
from kip.kernels.elementwise import ABRelu, Erf, Relu
from kip.kernels.engine import KernelFn, PairKernels, bytes_per_pair, input_kernel, make_layer
from kip.kernels.kernel import BAND, DIAG, FLAT, FULL, OUTPUT, Band, Kernel, Layer
from kip.kernels.numerics import gram

__all__ = [
    "ABRelu", "AvgPool", "BAND", "Band", "Conv", "DIAG", "Dense", "Erf", "FLAT", "FULL", "Flatten", "GlobalAvgPool",
    "Kernel", "KernelFn", "Layer", "OUTPUT", "PairKernels", "Relu", "bytes_per_pair", "gram", "input_kernel",
    "make_layer", "serial",
]

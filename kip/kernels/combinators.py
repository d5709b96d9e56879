"""Combinators: `serial`, the composition of layers."""

from __future__ import annotations

from typing import Sequence

import jax

from kip.kernels.engine import make_layer, materialized
from kip.kernels.kernel import Kernel, Layer


def serial(*layers: Layer | Sequence[Layer]) -> Layer:
    """Composes layers bottom to top; the kernel_fn folds the layers' kernel transforms."""
    if len(layers) == 1 and not isinstance(layers[0], Layer):
        layers = tuple(layers[0])
    layers = tuple(Layer(*layer) for layer in layers)

    def init_fn(key, input_shape):
        params = []
        for layer, layer_key in zip(layers, jax.random.split(key, len(layers))):
            input_shape, p = layer.init_fn(layer_key, input_shape)
            params.append(p)
        return input_shape, tuple(params)

    def apply_fn(params, x, **kwargs):
        for layer, p in zip(layers, params):
            x = layer.apply_fn(p, x, **kwargs)
        return x

    def transform(k: Kernel) -> Kernel:
        for layer in layers:
            if k.inputs and not layer.kernel_fn.reads_inputs:
                k = materialized(k)
            k = layer.kernel_fn.transform(k)
        return k

    def input_req(req: int) -> int:
        for layer in reversed(layers):
            req = layer.kernel_fn.input_req(req)
        return req

    reads_inputs = bool(layers) and layers[0].kernel_fn.reads_inputs
    return make_layer(init_fn, apply_fn, transform, input_req, reads_inputs)

"""The layers of fully connected networks: `Dense` (on the channel axis) and `Flatten`."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kip.kernels.engine import make_layer
from kip.kernels.kernel import BAND, FLAT, HIGHEST, Array, Kernel, Layer, map_linear, variances


def _affine(m: Array | None, scale: float, shift: float) -> Array | None:
    return None if m is None else scale * m + shift


def Dense(out_dim: int, W_std: float = 1.0, b_std: float | None = None, parameterization: str = "ntk") -> Layer:
    """Fully connected layer on the last (channel) axis.

    NNGP: K' = W_std^2 K + b_std^2.  NTK ('ntk' parameterization): Θ' = K' + W_std^2 Θ;
    ('standard'): Θ' = n_in K + W_std^2 Θ + [b_std is not None], n_in the finite input width.
    """
    parameterization = parameterization.lower()
    if parameterization not in ("ntk", "standard"):
        raise ValueError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}")
    b_var = 0.0 if b_std is None else b_std**2

    def init_fn(key, input_shape):
        k1, k2 = jax.random.split(key)
        n_in = input_shape[-1]
        w = jax.random.normal(k1, (n_in, out_dim))
        b = None if b_std is None else jax.random.normal(k2, (out_dim,))
        if parameterization == "standard":
            w = w * W_std / math.sqrt(n_in)
            b = None if b is None else b * b_std
        return input_shape[:-1] + (out_dim,), (w, b)

    def apply_fn(params, x, **kwargs):
        w, b = params
        y = jnp.matmul(x, w, precision=HIGHEST)
        if parameterization == "ntk":
            y = y * (W_std / math.sqrt(x.shape[-1]))
            return y if b is None else y + b_std * b
        return y if b is None else y + b

    def transform(k: Kernel) -> Kernel:
        nngp = _affine(k.nngp, W_std**2, b_var)
        ntk = k.ntk
        if ntk is not None:
            if parameterization == "ntk":
                ntk = nngp + W_std**2 * ntk
            else:
                ntk = k.channels * k.nngp + W_std**2 * ntk + (0.0 if b_std is None else 1.0)
        cov1 = _affine(k.cov1, W_std**2, b_var)
        cov2 = cov1 if k.cov2 is k.cov1 else _affine(k.cov2, W_std**2, b_var)
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, channels=out_dim)

    return make_layer(init_fn, apply_fn, transform)


def Flatten() -> Layer:
    """Flattens (H, W, C) to H*W*C features. Kernel: the mean over positions of the
    same-position covariance, K' = (1/HW) Σ_p K(p, p)."""

    def init_fn(key, input_shape):
        return (input_shape[0], math.prod(input_shape[1:])) if len(input_shape) > 1 else input_shape, ()

    def apply_fn(params, x, **kwargs):
        return x.reshape(x.shape[0], -1)

    def transform(k: Kernel) -> Kernel:
        if k.spatial == FLAT:
            return k

        def flat(m):  # mean over positions of the same-position entries
            return jnp.mean(variances(m, k.spatial), axis=(0, 1))

        shape = (k.nngp if k.nngp is not None else k.cov1).shape
        h, w = shape[2:4] if k.spatial == BAND else shape[:2]
        return map_linear(k, flat, channels=k.channels * h * w, spatial=FLAT)

    return make_layer(init_fn, apply_fn, transform, input_req=lambda req: FLAT)

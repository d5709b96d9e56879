"""Random-feature NNGP kernels (RFAD, Loo et al. 2022): K(x1, x2) ~ Φ(x1) Φ(x2)ᵀ, with Φ the
last features of freshly drawn finite random networks of a preset's architecture (cost linear in
the number of points, instead of the exact kernel's pairs of covariances)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from kip import InputError, krr, models
from kip.kernels.presets import KIP_B_STD, KIP_W_STD, PRESETS

Array = jax.Array
PREFIX = "rf-"  # "rf-convnet3": the random-feature estimate of the preset "convnet3"
DEFAULT_MODELS = 8  # RFAD's M
DEFAULT_WIDTH = 256  # RFAD's width
DEFAULT_BLOCK = 256  # images per forward pass (memory of one block of activations)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (it holds a key array)
class RandomFeatures:
    """The NNGP of preset `arch` estimated from `n_models` random networks of width `width`.

    Called like the exact kernels, `kernel(x1, x2=None, get='nngp') -> (n1, n2)`; the networks
    are drawn from `key` (NTK parameterization, W ~ N(0, 1), no normalisation, output layer
    removed). `resampled(key)` gives fresh networks (KIP draws them every step) unless
    `resample` is False. Features are computed in `dtype` (float32: fast) and multiplied out in
    float64 when x64 is on, so the ridge solve downstream (`kip.krr.solve`) is float64 too.
    Without x64 the product and the solve are float32 at HIGHEST matmul precision, the most
    precise JAX then offers.
    """

    arch: str
    n_models: int
    width: int
    key: Array
    resample: bool = True
    dtype: Any = jnp.float32
    block_size: int = DEFAULT_BLOCK
    W_std: float = KIP_W_STD
    b_std: float = KIP_B_STD

    def __post_init__(self):
        if self.arch not in PRESETS:
            raise InputError(f"unknown architecture {self.arch!r} for random features; choose one of {', '.join(sorted(PRESETS))}")
        for name in ("n_models", "width", "block_size"):
            if getattr(self, name) < 1:
                raise InputError(f"random features: {name} must be at least 1, got {getattr(self, name)}")

    @property
    def network(self) -> models.Network:
        """The finite network without its output layer: (n, ...) -> (n, D)."""
        return models.build(self.arch, num_classes=1, width=self.width, parameterization="ntk", W_std=self.W_std,
                            b_std=self.b_std, param_dtype=self.dtype, head=False)

    def resampled(self, key: Array) -> "RandomFeatures":
        """Fresh networks drawn from `key` (the same ones when `resample` is False)."""
        return dataclasses.replace(self, key=key) if self.resample else self

    def features(self, x: Array) -> Array:
        """Φ(x): (n, ...) -> (n, n_models * D + 1) with E[Φ(x1) Φ(x2)ᵀ] the NNGP of the preset's output.

        Model m's features φ_m (n, D) enter as W_std φ_m / sqrt(n_models D) (the output layer's
        weights' variance, averaged over models), and a constant column b_std carries its bias.
        Compiled once per architecture, size and input shape; the key is an argument, so fresh
        networks (`resampled`) reuse the compiled program.
        """
        return _features(_spec(self), self.key, jnp.asarray(x))

    def __call__(self, x1: Array, x2: Array | None = None, get: str = "nngp") -> Array:
        """Φ(x1) Φ(x2)ᵀ: (n1, ...), (n2, ...) or None (x2 = x1) -> (n1, n2), in float64 when x64 is on."""
        if get != "nngp":
            raise ValueError(f"random features estimate the NNGP only, not {get!r}")
        return self.gram(self.features(x1), None if x2 is None else self.features(x2))

    def gram(self, phi1: Array, phi2: Array | None = None) -> Array:
        """Φ1 Φ2ᵀ of `features` outputs (n1, D), (n2, D) or None (Φ2 = Φ1) -> (n1, n2), in float64
        when x64 is on: the kernel from features computed once (KIP reuses the support's)."""
        dtype = krr.solve_dtype(self.dtype)
        phi1 = phi1.astype(dtype)
        phi2 = phi1 if phi2 is None else phi2.astype(dtype)
        return jnp.matmul(phi1, phi2.T, precision=jax.lax.Precision.HIGHEST)


def random_features(
    arch: str,
    n_models: int = DEFAULT_MODELS,
    width: int = DEFAULT_WIDTH,
    key: Array | None = None,
    resample: bool = True,
    dtype: Any = jnp.float32,
    block_size: int = DEFAULT_BLOCK,
) -> RandomFeatures:
    """The random-feature NNGP kernel of preset `arch` (e.g. 'convnet3'; see `RandomFeatures`).

    `key` draws the networks (default PRNGKey(0)); `resample=False` keeps them fixed in KIP.
    """
    return RandomFeatures(arch, n_models, width, jax.random.PRNGKey(0) if key is None else key, resample, dtype,
                          block_size)


def for_step(kernel_fn, key: Array):
    """The kernel one KIP step uses: fresh random networks from `key` for a `RandomFeatures`
    kernel that resamples, `kernel_fn` itself otherwise (exact kernels are deterministic)."""
    return kernel_fn.resampled(key) if isinstance(kernel_fn, RandomFeatures) else kernel_fn


def key_of(kernel_fn) -> Array | None:
    """The key a `RandomFeatures` kernel draws its networks from (None for an exact kernel): passed
    into a compiled program as an argument with `with_key`, it keeps the program seed-independent."""
    return kernel_fn.key if isinstance(kernel_fn, RandomFeatures) else None


def with_key(kernel_fn, key: Array | None):
    """`kernel_fn` drawing its networks from `key` (a `RandomFeatures`; any other kernel as it is)."""
    return dataclasses.replace(kernel_fn, key=key) if isinstance(kernel_fn, RandomFeatures) else kernel_fn


def parse(name: str) -> str | None:
    """'rf-convnet3' -> 'convnet3'; None for an exact kernel's name."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else None


@functools.partial(jax.jit, static_argnums=0)
def _features(spec: tuple, key: Array, x: Array) -> Array:
    """`RandomFeatures.features` of the kernel `spec` (`_spec`) with its networks drawn from `key`."""
    rf = RandomFeatures(key=key, **dict(spec))
    net = rf.network
    x = x.astype(rf.dtype)

    def one_model(k):
        variables = net.init(k, x[:1])
        phi = krr.map_blocks(lambda xb: net.apply(variables, xb), x, rf.block_size)
        return phi * (rf.W_std / math.sqrt(rf.n_models * phi.shape[1]))

    phi = jax.lax.map(one_model, jax.random.split(key, rf.n_models))  # (M, n, D)
    phi = jnp.moveaxis(phi, 0, 1).reshape(x.shape[0], -1)
    return jnp.concatenate([phi, jnp.full((x.shape[0], 1), rf.b_std, phi.dtype)], axis=1)


def _spec(rf: RandomFeatures) -> tuple:
    """Every field but the key, as (name, value) pairs: hashable, a static argument of `_features`."""
    return tuple((f.name, getattr(rf, f.name)) for f in dataclasses.fields(rf) if f.name != "key")

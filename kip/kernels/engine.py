"""How a network's kernel is computed: `KernelFn`, the callable every layer carries.

Networks without pooling fold their layers' transforms over all pairs at once; networks that
need position-position covariances run two phases (each image with itself, then one pair at a
time), differentiable two ways (`PairKernels`), with bounded memory (`bytes_per_pair`). `make_layer`
builds a `Layer` from a transform; `input_kernel` is the covariance of the inputs.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kip.kernels.kernel import (
    BAND, DIAG, FLAT, FULL, HIGHEST, OUTPUT, RECORD, REPLAY, Array, Band, Kernel, Layer, examples_first, interleave,
)
from kip.kernels.numerics import band_outer, gram, sq_norms


_GET_FIELDS = ("nngp", "ntk", "cov1", "cov2")


class KernelFn:
    """`kernel_fn(x1, x2=None, get=None)`: the infinite-width kernel of a network.

    Args:
      x1: (n1, d) vectors or (n1, H, W, C) images (channels last); or a `Kernel`,
        which is transformed by this layer and returned (for composition).
      x2: (n2, ...) with the same trailing shape as x1, or None for x2 = x1.
      get: 'nngp', 'ntk', a tuple of field names, or None for the whole `Kernel`.
    Returns:
      For a string `get`, the (n1, n2) matrix (or (n1, n2, ...spatial) if the network
      ends on a spatial layer); for a tuple, a namedtuple of those matrices.

    Networks with pooling need every pair of positions, ~(HW)^2 numbers per pair of
    images; those are computed `pairs_per_step` pairs at a time (memory ~ that many
    pairs' covariances, whatever n1 and n2), each image's own covariances once. One pair
    per step by default: fastest on CPU (the working set stays in cache), measured down to
    8x8 images; accelerators want more (`with_pairs_per_step`, `with_max_memory`).
    """

    def __init__(
        self,
        transform: Callable[[Kernel], Kernel],
        input_req: Callable[[Any], Any],
        pairs_per_step: int = 1,
        reads_inputs: bool = False,
        banded: bool = True,
    ):
        self.transform = transform
        # Given the spatial structure wanted above this layer (OUTPUT, FLAT, DIAG, FULL or a
        # Band), what it needs below.
        self.input_req = input_req
        self.pairs_per_step = pairs_per_step
        # Whether transform takes a Kernel whose `inputs` are not multiplied out yet.
        self.reads_inputs = reads_inputs
        # Whether a network ending on a Flatten computes only the band of position pairs
        # that reaches its output (`Band`); off gives the same numbers from all pairs.
        self.banded = banded

    def with_pairs_per_step(self, pairs_per_step: int) -> "KernelFn":
        """The same kernel, computing `pairs_per_step` pairs of images per step (more is
        faster on accelerators, and needs proportionally more memory)."""
        if pairs_per_step < 1:
            raise ValueError(f"pairs_per_step must be >= 1, got {pairs_per_step}")
        return KernelFn(self.transform, self.input_req, pairs_per_step, self.reads_inputs, self.banded)

    def with_banded(self, banded: bool) -> "KernelFn":
        """The same kernel, computing only the band of position pairs that reaches the
        output (True, the default) or every pair (False: slower, for comparisons)."""
        return KernelFn(self.transform, self.input_req, self.pairs_per_step, self.reads_inputs, banded)

    def spatial_layout(self, image_shape: Sequence[int]) -> tuple[int, tuple[int, int]]:
        """(FLAT / DIAG / FULL / BAND, band offsets) this network computes on (H, W, C) images."""
        req = self.input_req(OUTPUT)
        if req in (OUTPUT, FLAT):
            return FLAT, (0, 0)
        if isinstance(req, Band):
            if req == (0, 0):
                return DIAG, (0, 0)
            if self.banded and 2 * req.h + 1 < image_shape[0] and 2 * req.w + 1 < image_shape[1]:
                return BAND, (req.h, req.w)
            return FULL, (0, 0)
        return req, (0, 0)

    def with_max_memory(self, max_bytes: float, image_shape: Sequence[int], dtype=jnp.float64) -> "KernelFn":
        """As many pairs per step as fit in `max_bytes`, by the estimate `bytes_per_pair`."""
        return self.with_pairs_per_step(max(1, int(max_bytes // bytes_per_pair(image_shape, dtype))))

    def __call__(self, x1, x2=None, get=None, *, cov2=None):
        """cov2: optional precomputed `self.input_stats(x2)` (e.g. cached once for a training
        set, so that each batch drawn from it skips that pass over its pixels)."""
        if isinstance(x1, Kernel):
            return self.transform(materialized(x1) if x1.inputs and not self.reads_inputs else x1)
        fields = _parse_get(get)
        x1 = jnp.asarray(x1)
        x2 = None if x2 is None else jnp.asarray(x2)
        check_inputs(x1, x2)
        spatial, band = (FLAT, (0, 0)) if x1.ndim == 2 else self.spatial_layout(x1.shape[1:3])
        if spatial in (FULL, BAND):
            k = self._pairwise(x1, x2, fields, spatial, band)
        else:
            k = examples_first(self.transform(input_kernel(x1, x2, spatial, "ntk" in fields, cov2=cov2)))
        if k.ntk is not None and k.ntk.ndim == 0:  # no layer with parameters: Θ = 0
            k = k.replace(ntk=jnp.broadcast_to(k.ntk, k.nngp.shape))
        if get is None:
            return k
        if isinstance(get, str):
            return getattr(k, get)
        return collections.namedtuple("AnalyticKernel", fields)(*(getattr(k, f) for f in fields))

    def _pairwise(self, x1: Array, x2: Array | None, fields: tuple[str, ...], spatial: int = FULL,
                  band: tuple[int, int] = (0, 0)) -> Kernel:
        """The two-phase computation for position-position covariances (all, or a band)."""
        compute_ntk = "ntk" in fields

        @jax.checkpoint
        def self_pass(x):  # one image (H, W, C) with itself
            k = self(Kernel(None, None, None, None, x.shape[-1], spatial, inputs=(x, x), mode=RECORD, band=band))
            k = materialized(k)
            return k.tape1, k.cov1

        tape1, cov1 = jax.lax.map(self_pass, x1)
        tape2, cov2 = (tape1, cov1) if x2 is None else jax.lax.map(self_pass, x2)
        x2 = x1 if x2 is None else x2
        symmetric = x2 is x1  # K(x, x): each unordered pair once
        n1, n2 = x1.shape[0], x2.shape[0]

        def pair(a, b, t1, t2):  # one pair of images, given their tapes
            ntk = jnp.zeros((), a.dtype) if compute_ntk else None
            k = materialized(self(Kernel(None, ntk, None, None, a.shape[-1], spatial, t1, t2, (a, b), REPLAY,
                                          band=band)))
            return k.nngp, (jnp.broadcast_to(k.ntk, k.nngp.shape) if compute_ntk else k.nngp)

        if symmetric:
            i, j = np.triu_indices(n1)
        else:
            i, j = (m.ravel() for m in np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij"))
        pairs = PairKernels(pair, i, j, (n1, n2), self.pairs_per_step)
        per_pair = jax.eval_shape(pair, x1[0], x2[0], *(jax.tree_util.tree_map(lambda t: t[0], t) for t in (tape1, tape2)))
        # Outputs whose gradient is wanted: a network ending on a flat kernel has one number per
        # pair and output, whose gradient w.r.t. the pair's images (and tapes) is image-sized.
        wanted = tuple(n for n, f in enumerate(("nngp", "ntk")) if f in fields and (n == 0 or compute_ntk))
        jacobian_bytes = len(i) * len(wanted) * sum(
            math.prod(leaf.shape[1:]) * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves((x1, x2, tape1, tape2)))
        if per_pair[0].ndim == 0 and wanted and jacobian_bytes <= _MAX_JACOBIAN_BYTES:
            nngp, ntk = pairs.with_jacobians(wanted)(x1, x2, tape1, tape2)
        else:
            nngp, ntk = pairs.recomputed(x1, x2, tape1, tape2)
        i, j = jnp.asarray(i), jnp.asarray(j)

        def arrange(v):  # (pairs, ...) -> (n1, n2, ...)
            if not symmetric:
                return v.reshape((n1, n2) + v.shape[1:])
            swapped = v if v.ndim == 1 else jnp.moveaxis(v, (1, 2), (3, 4))  # K(j, i): x1, x2 positions swapped
            return jnp.zeros((n1, n1) + v.shape[1:], v.dtype).at[i, j].set(v).at[j, i].set(swapped)

        nngp = arrange(nngp)
        ntk = arrange(ntk) if compute_ntk else None
        if nngp.ndim == 2:
            return Kernel(nngp, ntk, cov1, cov2, 0, FLAT)
        # A network ending on full spatial covariances: neural-tangents' (H, H, W, W) order.
        return Kernel(*(None if m is None else interleave(m) for m in (nngp, ntk, cov1, cov2)), 0, FULL)

    def input_stats(self, x: Array) -> Array | None:
        """Per-example input self-covariances this network's kernel starts from, in the
        internal layout: (n,) for a network that flattens first, (H, W, n) for one without
        pooling; None when it needs all position pairs (computed pair by pair instead)."""
        x = jnp.asarray(x)
        spatial = FLAT if x.ndim == 2 else self.spatial_layout(x.shape[1:3])[0]
        return None if spatial in (FULL, BAND) else self_cov(x, spatial)


# Above this, the gradient of pairwise kernels recomputes each pair in the backward pass
# instead of keeping each pair's Jacobian (`PairKernels`).
_MAX_JACOBIAN_BYTES = 2**30


class PairKernels:
    """The kernel values of image pairs (i[p], j[p]), `pair(x1[i], x2[j], tape1[i], tape2[j])`
    for each p, computed `per_step` pairs at a time, differentiable two ways.

    KIP needs the values and their gradient. Keeping every pair's intermediate arrays for the
    backward pass would take memory ~ pairs x (HW)^2, so `recomputed` lets JAX recompute each
    pair there (two forward passes and one backward). When each pair's outputs are numbers
    (a network ending on a flat kernel), their gradients w.r.t. the pair's two images and
    tapes are only image-sized: `with_jacobians` computes them during the forward pass, while
    the pair's intermediates are at hand (one forward and one backward per pair and output),
    and the backward pass only weights and sums them (KIP's value and gradient through
    ConvNet3 on 28x28 images: 1.3x faster in float32, 1.4x or more in float64).
    """

    def __init__(self, pair: Callable, i: np.ndarray, j: np.ndarray, sizes: tuple[int, int], per_step: int):
        self.pair, self.i, self.j, self.sizes, self.per_step = pair, i, j, sizes, per_step

    def _map(self, fn: Callable, x1, x2, tape1, tape2):
        def one(ij):
            i, j = ij
            t1, t2 = (jax.tree_util.tree_map(lambda leaf: leaf[k], t) for t, k in ((tape1, i), (tape2, j)))
            return fn(x1[i], x2[j], t1, t2)

        ij = (jnp.asarray(self.i), jnp.asarray(self.j))
        return jax.lax.map(one, ij, batch_size=self.per_step if self.per_step > 1 else None)

    def recomputed(self, x1, x2, tape1, tape2):
        """Per-pair outputs (pairs, ...), each pair recomputed in the backward pass."""
        return self._map(jax.checkpoint(self.pair), x1, x2, tape1, tape2)

    def with_jacobians(self, wanted: tuple[int, ...]) -> Callable:
        """A function of (x1, x2, tape1, tape2) -> per-pair outputs (pairs,), differentiable
        through the outputs numbered `wanted` (the caller discards the others)."""
        pair, (n1, n2) = self.pair, self.sizes

        def is_primal(p):
            return isinstance(p, jax.custom_derivatives.CustomVJPPrimal)

        @jax.custom_vjp
        def kernels(x1, x2, tape1, tape2):
            return self._map(pair, x1, x2, tape1, tape2)

        def fwd(*args):
            values = jax.tree_util.tree_map(lambda p: p.value, args, is_leaf=is_primal)
            # Gradients are kept only for the arguments being differentiated (not KIP's targets).
            perturbed = [any(p.perturbed for p in jax.tree_util.tree_leaves(a, is_leaf=is_primal)) for a in args]

            def with_gradients(a, b, t1, t2):
                out, vjp = jax.vjp(pair, a, b, t1, t2)
                grads = []
                for n in wanted:
                    g = vjp(tuple(jnp.full_like(o, m == n) for m, o in enumerate(out)))
                    grads.append(tuple(d if p else None for d, p in zip(g, perturbed)))
                return out, tuple(grads)

            return self._map(with_gradients, *values)

        def bwd(grads, cotangents):
            totals = [None] * 4
            for n, g in zip(wanted, grads):
                c = cotangents[n]
                if isinstance(c, jax.custom_derivatives.SymbolicZero):
                    continue
                for arg, d in enumerate(g):
                    if d is None:
                        continue
                    weighted = jax.tree_util.tree_map(lambda leaf: leaf * c.reshape(c.shape + (1,) * (leaf.ndim - 1)), d)
                    totals[arg] = weighted if totals[arg] is None else jax.tree_util.tree_map(jnp.add, totals[arg], weighted)
            # Each pair's share to its two images (a point paired with itself gets both).
            return tuple(
                None if t is None else jax.tree_util.tree_map(lambda leaf: jax.ops.segment_sum(leaf, idx, size), t)
                for t, idx, size in zip(totals, (self.i, self.j, self.i, self.j), (n1, n2, n1, n2)))

        kernels.defvjp(fwd, bwd, symbolic_zeros=True)
        return kernels


# Live arrays of (HW)^2 entries while one pair is computed (measured with XLA's memory
# analysis on ConvNet/ConvNet3/Myrtle: 7 to 8), with some headroom.
_ARRAYS_PER_PAIR = 10


def bytes_per_pair(image_shape: Sequence[int], dtype=jnp.float64) -> int:
    """Working memory of one pair of (H, W, C) images when every pair of positions is kept."""
    h, w = image_shape[:2]
    return _ARRAYS_PER_PAIR * (h * w) ** 2 * jnp.dtype(dtype).itemsize


def _parse_get(get) -> tuple[str, ...]:
    if get is None:
        return ("nngp", "ntk")
    fields = (get,) if isinstance(get, str) else tuple(get)
    for f in fields:
        if f not in _GET_FIELDS:
            raise ValueError(f"get={get!r}: each entry must be one of {_GET_FIELDS}")
    return fields


def check_inputs(x1: Array, x2: Array | None) -> None:
    x2 = x1 if x2 is None else x2
    if x1.ndim not in (2, 4) or x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"inputs must be (n, d) or (n, H, W, C) with equal trailing shapes; got {x1.shape} and {x2.shape}"
        )


def input_kernel(x1: Array, x2: Array | None, spatial: int, compute_ntk: bool, cov2: Array | None = None) -> Kernel:
    """Covariances of the inputs, averaged over channels: x1 . x2 / C (per position for images).

    `spatial` is what the network needs: FLAT averages over all features at once (what a
    network that starts with Flatten sees), DIAG keeps positions, FULL keeps position pairs.
    cov2: x2's self-covariances if already known (`self_cov(x2, spatial)`).
    """
    x1 = jnp.asarray(x1)
    x2 = x1 if x2 is None else jnp.asarray(x2)
    check_inputs(x1, x2)
    if x1.ndim == 2:
        spatial = FLAT
    if spatial == FLAT:
        f1, f2 = x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)
        nngp = gram(f1, f2) / f1.shape[1]
        channels = f1.shape[1]
    elif spatial == DIAG:
        nngp = jnp.einsum("ahwc,bhwc->hwab", x1, x2, precision=HIGHEST) / x1.shape[-1]
        channels = x1.shape[-1]
    else:
        nngp = jnp.einsum("ahwc,bgvc->hwgvab", x1, x2, precision=HIGHEST) / x1.shape[-1]
        channels = x1.shape[-1]
    cov1 = self_cov(x1, spatial)
    if cov2 is None:
        cov2 = cov1 if x2 is x1 else self_cov(x2, spatial)
    elif cov2.shape != cov1.shape[:-1] + (x2.shape[0],):
        raise ValueError(f"cov2 has shape {cov2.shape}, expected {cov1.shape[:-1] + (x2.shape[0],)}")
    ntk = jnp.zeros((), nngp.dtype) if compute_ntk else None
    return Kernel(nngp, ntk, cov1, cov2.astype(nngp.dtype), channels, spatial)


def self_cov(x: Array, spatial: int) -> Array:
    """Each input with itself, averaged over channels: (n,) / (H, W, n) / (H, H, W, W, n)."""
    if spatial == FLAT:
        f = x.reshape(x.shape[0], -1)
        return sq_norms(f) / f.shape[1]
    if spatial == DIAG:
        return jnp.einsum("ahwc,ahwc->hwa", x, x, precision=HIGHEST) / x.shape[-1]
    return jnp.einsum("ahwc,agvc->hwgva", x, x, precision=HIGHEST) / x.shape[-1]


def materialized(k: Kernel) -> Kernel:
    """A kernel whose `inputs` (two images) are multiplied out into covariances."""
    if not k.inputs:
        return k
    a, b = k.inputs
    channels = a.shape[-1]

    def outer(u, v):
        if k.spatial == BAND:
            return band_outer(u, v, k.band)
        return jnp.einsum("hwc,gvc->hwgv", u, v, precision=HIGHEST) / channels

    nngp = None if k.mode == RECORD else outer(a, b)
    cov = None if k.mode == REPLAY else outer(a, a)
    return k.replace(nngp=nngp, cov1=cov, cov2=cov, inputs=())


def positionwise(req):
    """Layers acting on each position alone need per-position covariances (at least DIAG),
    and pass a band through (under a Flatten, FLAT: the same-position band)."""
    if isinstance(req, Band):
        return req
    if req == FLAT:
        return Band(0, 0)
    return max(req, DIAG)


def make_layer(init_fn, apply_fn, transform, input_req=positionwise, reads_inputs=False) -> Layer:
    return Layer(init_fn, apply_fn, KernelFn(transform, input_req, reads_inputs=reads_inputs))

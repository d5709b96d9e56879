"""Infinite-width NNGP/NTK kernels in neural-tangents' `stax` combinator language.

Each layer is the triple `(init_fn, apply_fn, kernel_fn)`: the finite network and the
kernel of its infinite-width limit come from the same description, as in neural-tangents.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# How much of the position-position covariance a kernel keeps (images only).
FLAT = 0  # no spatial axes: inputs are flattened, (n1, n2)
DIAG = 1  # same position in both images only: (H, W, n1, n2) inside, (n1, n2, H, W) outside
FULL = 2  # every pair of positions: (H, W, H, W, n1, n2) inside, (n1, n2, H, H, W, W) outside
# The pairs of positions at most (bh, bw) apart (`Kernel.band`), one pair of images at a
# time: (2 bh + 1, 2 bw + 1, H, W), entry [b + d, p] the covariance of x1 at p with x2 at
# p + d, 0 where p + d lies outside the image (offsets first: the positions stay the
# contiguous, vectorised axes). Under a Flatten nothing else reaches the output (see
# `Band`); never returned to the caller.
BAND = 3
# The request `kernel_fn` starts its layers' `input_req` fold from: the network's own
# output, whatever its spatial structure (a Flatten inside asks for less: FLAT).
OUTPUT = -1


class Band(NamedTuple):
    """A request for the position pairs at most (h, w) apart only.

    A Flatten reads the same-position entries only, a stride-1 convolution (its filter
    offset shared by both images) keeps the offset between the two positions, a
    nonlinearity acts entry by entry, and a disjoint pool of window f needs offsets up to
    f b + f - 1 below for offsets up to b above. So under a Flatten the first layers of a
    ConvNet need a band of offsets, not all (HW)^2 pairs: ConvNet3 on 28x28 images needs
    offsets up to 7, 15 x 15 of the 28 x 28 partners of each position.
    """

    h: int
    w: int


_HIGHEST = jax.lax.Precision.HIGHEST


# How a Kernel is being computed (see KernelFn): all pairs at once, or two phases for
# full position-position covariances: each image with itself once (RECORD: only its
# self-covariance, noting the variances every nonlinearity reads), then one pair at a
# time (REPLAY: the cross covariance only, reading those noted variances).
BATCH, RECORD, REPLAY = "batch", "record", "replay"


@dataclasses.dataclass(frozen=True)
class Kernel:
    """Covariances of one layer's pre-activations, the state `kernel_fn`s fold over.

    Shapes by `spatial` (FLAT / DIAG / FULL), positions first (for FULL: x1's position,
    then x2's, so the covariance of inputs is a plain outer product) and examples last, so
    that shifting and pooling positions moves contiguous blocks (`kernel_fn` returns
    neural-tangents' (n1, n2, ...) order):
      nngp, ntk: (n1, n2) / (H, W, n1, n2) / (H, W, H, W, n1, n2); ntk may be None, or a
        0-d zero until a layer with parameters makes it nonzero.
      cov1: the same for x1 with itself (batch diagonal only): (n1,) / (H, W, n1) / (H, W, H, W, n1).
      cov2: likewise for x2.
    In the two-phase modes the example axes are absent (one image or one pair), nngp/ntk
    are None while RECORDing and cov1/cov2 are None while REPLAYing; tape1/tape2 hold the
    per-nonlinearity variance maps of x1/x2; `inputs` may hold the two (H, W, C) images
    themselves, not yet multiplied out, for a first Conv to read as patches; BAND (two-phase
    modes only) keeps offsets up to `band`: (2 bh + 1, 2 bw + 1, H, W). `channels` is
    the finite width feeding the next layer (only the standard parameterization uses it).
    """

    nngp: Array | None
    ntk: Array | None
    cov1: Array | None
    cov2: Array | None
    channels: int
    spatial: int
    tape1: tuple = ()
    tape2: tuple = ()
    inputs: tuple = ()
    mode: str = BATCH
    tape_pos: int = 0
    band: tuple[int, int] = (0, 0)  # the offsets kept, for spatial == BAND

    def replace(self, **changes: Any) -> "Kernel":
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    Kernel,
    data_fields=["nngp", "ntk", "cov1", "cov2", "tape1", "tape2", "inputs"],
    meta_fields=["channels", "spatial", "mode", "tape_pos", "band"],
)


class Layer(NamedTuple):
    """`(init_fn, apply_fn, kernel_fn)`, unpackable like a neural-tangents layer."""

    init_fn: Callable[[Array, tuple[int, ...]], tuple[tuple[int, ...], Any]]
    apply_fn: Callable[[Any, Array], Array]
    kernel_fn: "KernelFn"


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
            return self.transform(_materialized(x1) if x1.inputs and not self.reads_inputs else x1)
        fields = _parse_get(get)
        x1 = jnp.asarray(x1)
        x2 = None if x2 is None else jnp.asarray(x2)
        _check_inputs(x1, x2)
        spatial, band = (FLAT, (0, 0)) if x1.ndim == 2 else self.spatial_layout(x1.shape[1:3])
        if spatial in (FULL, BAND):
            k = self._pairwise(x1, x2, fields, spatial, band)
        else:
            k = _examples_first(self.transform(input_kernel(x1, x2, spatial, "ntk" in fields, cov2=cov2)))
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
            k = _materialized(k)
            return k.tape1, k.cov1

        tape1, cov1 = jax.lax.map(self_pass, x1)
        tape2, cov2 = (tape1, cov1) if x2 is None else jax.lax.map(self_pass, x2)
        x2 = x1 if x2 is None else x2
        symmetric = x2 is x1  # K(x, x): each unordered pair once
        n1, n2 = x1.shape[0], x2.shape[0]

        def pair(a, b, t1, t2):  # one pair of images, given their tapes
            ntk = jnp.zeros((), a.dtype) if compute_ntk else None
            k = _materialized(self(Kernel(None, ntk, None, None, a.shape[-1], spatial, t1, t2, (a, b), REPLAY,
                                          band=band)))
            return k.nngp, (jnp.broadcast_to(k.ntk, k.nngp.shape) if compute_ntk else k.nngp)

        if symmetric:
            i, j = np.triu_indices(n1)
        else:
            i, j = (m.ravel() for m in np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij"))
        pairs = _PairKernels(pair, i, j, (n1, n2), self.pairs_per_step)
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
        return Kernel(*(None if m is None else _interleave(m) for m in (nngp, ntk, cov1, cov2)), 0, FULL)

    def input_stats(self, x: Array) -> Array | None:
        """Per-example input self-covariances this network's kernel starts from, in the
        internal layout: (n,) for a network that flattens first, (H, W, n) for one without
        pooling; None when it needs all position pairs (computed pair by pair instead)."""
        x = jnp.asarray(x)
        spatial = FLAT if x.ndim == 2 else self.spatial_layout(x.shape[1:3])[0]
        return None if spatial in (FULL, BAND) else _self_cov(x, spatial)


# Above this, the gradient of pairwise kernels recomputes each pair in the backward pass
# instead of keeping each pair's Jacobian (`_PairKernels`).
_MAX_JACOBIAN_BYTES = 2**30


class _PairKernels:
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


def _check_inputs(x1: Array, x2: Array | None) -> None:
    x2 = x1 if x2 is None else x2
    if x1.ndim not in (2, 4) or x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"inputs must be (n, d) or (n, H, W, C) with equal trailing shapes; got {x1.shape} and {x2.shape}"
        )


def input_kernel(x1: Array, x2: Array | None, spatial: int, compute_ntk: bool, cov2: Array | None = None) -> Kernel:
    """Covariances of the inputs, averaged over channels: x1 . x2 / C (per position for images).

    `spatial` is what the network needs: FLAT averages over all features at once (what a
    network that starts with Flatten sees), DIAG keeps positions, FULL keeps position pairs.
    cov2: x2's self-covariances if already known (`_self_cov(x2, spatial)`).
    """
    x1 = jnp.asarray(x1)
    x2 = x1 if x2 is None else jnp.asarray(x2)
    _check_inputs(x1, x2)
    if x1.ndim == 2:
        spatial = FLAT
    if spatial == FLAT:
        f1, f2 = x1.reshape(x1.shape[0], -1), x2.reshape(x2.shape[0], -1)
        nngp = gram(f1, f2) / f1.shape[1]
        channels = f1.shape[1]
    elif spatial == DIAG:
        nngp = jnp.einsum("ahwc,bhwc->hwab", x1, x2, precision=_HIGHEST) / x1.shape[-1]
        channels = x1.shape[-1]
    else:
        nngp = jnp.einsum("ahwc,bgvc->hwgvab", x1, x2, precision=_HIGHEST) / x1.shape[-1]
        channels = x1.shape[-1]
    cov1 = _self_cov(x1, spatial)
    if cov2 is None:
        cov2 = cov1 if x2 is x1 else _self_cov(x2, spatial)
    elif cov2.shape != cov1.shape[:-1] + (x2.shape[0],):
        raise ValueError(f"cov2 has shape {cov2.shape}, expected {cov1.shape[:-1] + (x2.shape[0],)}")
    ntk = jnp.zeros((), nngp.dtype) if compute_ntk else None
    return Kernel(nngp, ntk, cov1, cov2.astype(nngp.dtype), channels, spatial)


def _self_cov(x: Array, spatial: int) -> Array:
    """Each input with itself, averaged over channels: (n,) / (H, W, n) / (H, H, W, W, n)."""
    if spatial == FLAT:
        f = x.reshape(x.shape[0], -1)
        return _sq_norms(f) / f.shape[1]
    if spatial == DIAG:
        return jnp.einsum("ahwc,ahwc->hwa", x, x, precision=_HIGHEST) / x.shape[-1]
    return jnp.einsum("ahwc,agvc->hwgva", x, x, precision=_HIGHEST) / x.shape[-1]


def _materialized(k: Kernel) -> Kernel:
    """A kernel whose `inputs` (two images) are multiplied out into covariances."""
    if not k.inputs:
        return k
    a, b = k.inputs
    channels = a.shape[-1]

    def outer(u, v):
        if k.spatial == BAND:
            return band_outer(u, v, k.band)
        return jnp.einsum("hwc,gvc->hwgv", u, v, precision=_HIGHEST) / channels

    nngp = None if k.mode == RECORD else outer(a, b)
    cov = None if k.mode == REPLAY else outer(a, a)
    return k.replace(nngp=nngp, cov1=cov, cov2=cov, inputs=())


def _interleave(m: Array) -> Array:
    """(..., H, W, H, W) -> (..., H, H, W, W): neural-tangents' order of position axes."""
    return jnp.moveaxis(m, (-4, -3, -2, -1), (-4, -2, -3, -1))


def _examples_first(k: Kernel) -> Kernel:
    """The internal positions-first layout back to neural-tangents' (n1, n2, ...) order."""
    if k.spatial == FLAT:
        return k

    def move(m, batch_ndim):
        if m is None or m.ndim == 0:
            return m
        m = jnp.moveaxis(m, tuple(range(m.ndim - batch_ndim, m.ndim)), tuple(range(batch_ndim)))
        return _interleave(m) if k.spatial == FULL else m

    return k.replace(nngp=move(k.nngp, 2), ntk=move(k.ntk, 2), cov1=move(k.cov1, 1), cov2=move(k.cov2, 1))


# --------------------------------------------------------------------------- helpers


def gram(f1: Array, f2: Array, copy_transpose: bool = True) -> Array:
    """f1 @ f2.T for (n1, d), (n2, d) -> (n1, n2).

    Its gradient needs g.T @ f1 for the (n1, n2) cotangent g. `copy_transpose` materialises
    g.T first: faster for a small g (XLA's CPU float64 matmul is ~2.5x slower when it
    contracts leading axes); pass False for a large g, such as the (P, P) cotangent of a
    patch Gram, whose transpose XLA:CPU would copy element by element (~40x the product).
    """
    return _gram(f1, f2, copy_transpose)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _gram(f1: Array, f2: Array, copy_transpose: bool) -> Array:
    return jnp.matmul(f1, f2.T, precision=_HIGHEST)


def _gram_fwd(f1, f2, copy_transpose):
    return _gram(f1, f2, copy_transpose), (f1, f2)


def _gram_bwd(copy_transpose, residuals, g):
    f1, f2 = residuals
    if copy_transpose:  # the barrier keeps XLA from folding the transpose back into the product
        g_t = jax.lax.optimization_barrier(jax.lax.optimization_barrier(g).T)
        g_t_f1 = jnp.matmul(g_t, f1, precision=_HIGHEST)
    else:
        g_t_f1 = jax.lax.dot_general(g, f1, (((0,), (0,)), ((), ())), precision=_HIGHEST)
    return jnp.matmul(g, f2, precision=_HIGHEST), g_t_f1


_gram.defvjp(_gram_fwd, _gram_bwd)


def _rewrite_first_row(x: Array) -> Array:
    # x with its first row written back in place: XLA must have x in memory to update it,
    # and the update of one row costs nothing. The row index is an iota so that XLA does not
    # fold the no-op away.
    first = jax.lax.iota(jnp.int32, 1)[0]
    return jax.lax.dynamic_update_slice_in_dim(x, jax.lax.dynamic_slice_in_dim(x, first, 1, 0), first, 0)


@jax.custom_vjp
def _materialize(x: Array) -> Array:
    return _rewrite_first_row(x)


def _materialize_fwd(x):
    return _rewrite_first_row(x), None


def _materialize_bwd(_, g):
    # The cotangent materialised too (the default transpose would split it into a
    # zeroed row and a padded one).
    return (_rewrite_first_row(g),)


_materialize.defvjp(_materialize_fwd, _materialize_bwd)


def materialize(x: Array) -> Array:
    """x, computed once into memory before its consumers read it (and so is its cotangent).

    XLA fuses cheap-looking producers into every consumer, so a small array read by each
    entry of a large one is recomputed per entry (16x for a 2x2 pool's output, far more for
    the layers after it). XLA:CPU drops `optimization_barrier` before fusing, but an
    in-place update of x needs x in memory: a fusion boundary at no cost (an identity
    scatter, used before, cost two passes over x).
    """
    return x if x.ndim == 0 else _materialize(x)


def _sq_norms(f: Array) -> Array:
    # Kept out of later fusions: XLA:CPU otherwise fuses this reduction into the
    # (n1, n2) outer product of variances and runs it ~8x slower.
    return jax.lax.optimization_barrier(jnp.einsum("ij,ij->i", f, f, precision=_HIGHEST))


def _positionwise(req):
    """Layers acting on each position alone need per-position covariances (at least DIAG),
    and pass a band through (under a Flatten, FLAT: the same-position band)."""
    if isinstance(req, Band):
        return req
    if req == FLAT:
        return Band(0, 0)
    return max(req, DIAG)


def _variances(cov: Array, spatial: int) -> Array:
    """Per-position variances from a batch-diagonal covariance: (...) or (H, W, ...)."""
    if spatial == FULL:
        return _position_diagonal(cov)
    if spatial == BAND:
        return band_centre(cov)
    return cov


def band_centre(m: Array) -> Array:
    """(2 bh + 1, 2 bw + 1, H, W) -> (H, W): the same-position entries."""
    return m[(m.shape[0] - 1) // 2, (m.shape[1] - 1) // 2]


def band_shifted(v: Array, band: tuple[int, int]) -> Array:
    """(H, W, ...) -> (2 bh + 1, 2 bw + 1, H, W, ...): entry [b + d, p] = v[p + d], 0
    outside. Rows shifted, then columns: contiguous slices of v zero-padded, whose
    transpose (the gradient) is 2 b + 2 shifted sums, not (2 b + 1)^2."""
    (bh, bw), (h, w) = band, v.shape[:2]
    v = jnp.pad(v, [(bh, bh), (bw, bw)] + [(0, 0)] * (v.ndim - 2))
    rows = jnp.stack([v[i: i + h] for i in range(2 * bh + 1)])  # (2bh+1, H, W + 2bw, ...)
    return jnp.stack([rows[:, :, j: j + w] for j in range(2 * bw + 1)], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def band_outer(a: Array, b: Array, band: tuple[int, int]) -> Array:
    """(H, W, C) images -> their BAND covariance averaged over channels, Σ_c a[p, c] b[p + d, c] / C."""
    return jnp.sum(a * band_shifted(b, band), axis=-1) / a.shape[-1]


def _band_outer_fwd(a, b, band):
    shifted = materialize(band_shifted(b, band))
    return jnp.sum(a * shifted, axis=-1) / a.shape[-1], (a, b, shifted)


def _band_outer_bwd(band, residuals, g):
    a, b, shifted = residuals
    g = g[..., None] / a.shape[-1]
    _, shift_vjp = jax.vjp(lambda v: band_shifted(v, band), b)
    # a's gradient sums over the offsets: a product with ones (XLA:CPU's reduction over
    # leading axes is several times slower)
    return _sum_to(g * shifted, a.shape), shift_vjp(g * a)[0]


band_outer.defvjp(_band_outer_fwd, _band_outer_bwd)


def band_inside(shape: Sequence[int]) -> Array:
    """Boolean (2 bh + 1, 2 bw + 1, H, W): whether p + d lies inside the image (from iotas,
    which XLA fuses into the consumer, not a constant of the array's size)."""
    inside = True
    for axis in (0, 1):
        d = jax.lax.broadcasted_iota(jnp.int32, tuple(shape), axis) - (shape[axis] - 1) // 2
        q = jax.lax.broadcasted_iota(jnp.int32, tuple(shape), 2 + axis) + d
        inside = inside & (q >= 0) & (q < shape[2 + axis])
    return inside


def band_zero_outside(m: Array) -> Array:
    """m with the entries whose second position lies outside the image set to exactly 0
    (a select, not a product: they may hold anything, and nothing flows back into them)."""
    return jnp.where(band_inside(m.shape), m, jnp.zeros((), m.dtype))


def _position_diagonal(m: Array) -> Array:
    """(H, W, H, W, ...) -> (H, W, ...): same-position entries, as a strided slice (XLA runs
    a diagonal einsum as a slow reduction)."""
    h, w = m.shape[:2]
    flat = m.reshape((h * w * h * w,) + m.shape[4:])
    return flat[:: h * w + 1].reshape((h, w) + m.shape[4:])


def _outer_factors(v1: Array, v2: Array, spatial: int, band: tuple[int, int] = (0, 0)) -> tuple[Array, Array]:
    """v1 and v2 reshaped so that their product is v1[p, a] * v2[q, b] laid out like nngp:
    positions of x1 and x2 first (interleaved for FULL), then x1's example axes, then
    x2's. v1 (*pos, *ex1), v2 (*pos, *ex2). For BAND (one pair, no example axes) q = p + d."""
    if spatial == BAND:
        return v1[None, None], band_shifted(v2, band)
    pos = 0 if spatial == FLAT else 2
    e1, e2 = v1.ndim - pos, v2.ndim - pos
    a = v1.reshape(v1.shape + (1,) * e2)
    b = v2.reshape(v2.shape[:pos] + (1,) * e1 + v2.shape[pos:])
    if spatial == FULL:  # (H, W, ...) -> (H, W, 1, 1, ...) and (1, 1, H, W, ...)
        a = a.reshape(a.shape[:2] + (1, 1) + a.shape[2:])
        b = b.reshape((1, 1) + b.shape)
    return a, b


def _outer(v1: Array, v2: Array, spatial: int, band: tuple[int, int] = (0, 0)) -> Array:
    """v1[p, a] * v2[q, b] laid out like nngp (see `_outer_factors`)."""
    a, b = _outer_factors(v1, v2, spatial, band)
    return a * b


def _self_outer_factors(v: Array, spatial: int = FULL, band: tuple[int, int] = (0, 0)) -> tuple[Array, Array]:
    """v reshaped twice so that the product is v[p, a] * v[q, a], laid out like a FULL
    cov: (H, W, ...) -> (H, W, 1, 1, ...) and (1, 1, H, W, ...) (or a BAND one)."""
    if spatial == BAND:
        return _outer_factors(v, v, BAND, band)
    return v[:, :, None, None], v[None, None, :, :]


def _self_outer(v: Array, spatial: int = FULL, band: tuple[int, int] = (0, 0)) -> Array:
    """v[p, a] * v[q, a] laid out like a FULL (or BAND) cov: (H, W, ...) -> (H, W, H, W, ...)."""
    a, b = _self_outer_factors(v, spatial, band)
    return a * b


def _nonlinearity_variances(k: Kernel) -> tuple[Array, Array, Kernel]:
    """The per-position variances of x1 and x2 that a nonlinearity reads, and the kernel
    with its tape advanced (REPLAY) or extended (RECORD)."""
    if k.mode == REPLAY:
        return k.tape1[k.tape_pos], k.tape2[k.tape_pos], k.replace(tape_pos=k.tape_pos + 1)
    # Materialised: XLA otherwise fuses the strided diagonal slice (and the layer that made
    # the covariance) into each entry of the (HW)^2 outer product, unvectorised (~10x slower).
    v1 = materialize(_variances(k.cov1, k.spatial))
    v2 = v1 if k.cov2 is k.cov1 else materialize(_variances(k.cov2, k.spatial))
    if k.mode == RECORD:
        k = k.replace(tape1=k.tape1 + (v1,))
    return v1, v2, k


def _affine(m: Array | None, scale: float, shift: float) -> Array | None:
    return None if m is None else scale * m + shift


def _map_linear(k: Kernel, fn: Callable[[Array], Array], **changes: Any) -> Kernel:
    """A linear map of positions (pooling, flattening) applied to every covariance: absent
    ones stay absent, a 0-d zero NTK stays zero, and cov2 stays cov1 when it was."""

    def f(m):
        return m if m is None or m.ndim == 0 else fn(m)

    cov1 = f(k.cov1)
    cov2 = cov1 if k.cov2 is k.cov1 else f(k.cov2)
    return k.replace(nngp=f(k.nngp), ntk=f(k.ntk), cov1=cov1, cov2=cov2, **changes)


def _is_zero(ntk: Array | None) -> bool:
    """The 0-d zero NTK of a network whose layers so far have no parameters."""
    return ntk is not None and ntk.ndim == 0


def _where_positive_sqrt(x: Array, floor: Array) -> Array:
    return _clamped_sqrt(x, jax.lax.stop_gradient(floor))


@jax.custom_jvp
def _clamped_sqrt(x: Array, floor: Array) -> Array:
    """sqrt(max(x, 0)), whose derivative is taken as 0 where x <= floor.

    x = prod - nngp**2 is exactly 0 for a point paired with itself, where the true
    derivative is 0 but a naive one divides rounding noise by ~0.
    """
    return jnp.sqrt(jnp.maximum(x, 0))


@_clamped_sqrt.defjvp
def _clamped_sqrt_jvp(primals, tangents):
    x, floor = primals
    dx, _ = tangents
    y = jnp.sqrt(jnp.maximum(x, 0))
    above = x > floor
    return y, jnp.where(above, dx / (2 * jnp.where(above, y, 1)), 0)


# asin(y) = y P(y^2) for y^2 <= 1/4, one polynomial per dtype; fitted by
# tools/fit_asin_polynomial.py (worst relative error 2.2e-16 in float64, 1.2e-7 in float32).
_ASIN_COEFFS = {
    "float64": (
        1.0, 0.16666666666666802, 0.07499999999964911, 0.04464285717838484, 0.0303819425721281,
        0.022372218025815713, 0.017351567002964478, 0.013981277001739989, 0.011395693423127882,
        0.0107960269752972, 0.003653710951385678, 0.021821921752629734, -0.02114483887761259,
        0.03271120769588076,
    ),
    "float32": (
        1.000000000244509, 0.1666665722277807, 0.07500591217156272, 0.04450528107419336,
        0.03188388258099387, 0.01419966122140196, 0.037805335975402865,
    ),
}


def _arccos(rho: Array, a: Array) -> Array:
    """arccos(rho) in [0, pi], given a = |rho| <= 1.

    Plain arithmetic that XLA vectorises and fuses: arccos(a) = pi/2 - asin(a) for a <= 1/2,
    2 asin(sqrt((1 - a) / 2)) above, both from one polynomial on [0, 1/4]. Each value is
    read once (the polynomial's argument is formed without squaring the square root): XLA
    does not fuse an expensive operation (sqrt, divide) into a consumer that reads it twice,
    and every unfused one is a pass over memory.
    """
    coeffs = _ASIN_COEFFS["float64" if a.dtype == jnp.float64 else "float32"]
    small = a <= 0.5
    z = jnp.where(small, a * a, (1 - a) / 2)
    y = jnp.where(small, a, jnp.sqrt(z))
    poly = jnp.full_like(z, coeffs[-1])
    for c in coeffs[-2::-1]:
        poly = poly * z + c
    asin = y * poly
    half_pi = jnp.asarray(math.pi / 2, a.dtype)  # constants in a's dtype, or the selects run in float64
    angle = jnp.where(small, half_pi - asin, 2 * asin)
    return jnp.where(rho < 0, jnp.asarray(math.pi, a.dtype) - angle, angle)


def _rounding_floor(prod: Array) -> Array:
    return 8 * jnp.finfo(prod.dtype).eps * prod


def _safe_reciprocal(x: Array) -> Array:
    return jnp.where(x > 0, 1 / jnp.where(x > 0, x, 1), 0)


@jax.custom_jvp
def _std(v: Array) -> Array:
    """sqrt(v) of variances, with derivative 0 where v = 0 (a position that is 0 for every
    network draw: its kernel entries are 0 whatever its scale)."""
    return jnp.sqrt(jnp.maximum(v, 0))


@_std.defjvp
def _std_jvp(primals, tangents):
    (v,), (dv,) = primals, tangents
    s = _std(v)
    return s, dv * 0.5 * _safe_reciprocal(s)


def _sum_to(x: Array, shape: tuple[int, ...]) -> Array:
    """x summed over the axes that were broadcast from `shape` (the transpose of a broadcast)."""
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
    if not axes:
        return x.reshape(shape)
    # A sum over leading or trailing axes as a product with a vector of ones: XLA:CPU runs
    # it as a matrix-vector product, several times faster than its reduction.
    kept = math.prod(x.shape[i] for i in range(x.ndim) if i not in axes)
    ones = jnp.ones((x.size // kept,), x.dtype)
    if axes == tuple(range(x.ndim - len(axes), x.ndim)):
        return jnp.dot(x.reshape(kept, -1), ones, precision=_HIGHEST).reshape(shape)
    if axes == tuple(range(len(axes))):
        return jnp.dot(ones, x.reshape(-1, kept), precision=_HIGHEST).reshape(shape)
    return jnp.sum(x, axis=axes).reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _arc_cosine(nngp: Array, ntk: Array | None, s1: Array, s2: Array, factor: float, gain: float):
    """ABRelu's map (K, Θ) -> (f sqrt(P) c + d K, d Θ) for P = (s1 s2)^2, the product of the
    two positions' variances given as standard deviations broadcastable against K (small
    arrays: their products and reciprocals are formed per position, never per entry):
    ρ = K / (s1 s2), c = sqrt(1 - ρ^2), d = gain - f arccos(ρ).

    Written with its derivative because the arc-cosine kernel's is closed-form and cheap:
    dK'/dK = d, dK'/ds1 = f c s2, dΘ'/dΘ = d, dΘ'/dK = f Θ / (s1 s2 c),
    dΘ'/ds1 = -f Θ ρ / (s1 c) (s2 alike), summed over the axes s1 and s2 were broadcast on.
    """
    c, dot_sigma = _arc_cosine_parts(nngp, s1, s2, factor, gain)
    return _arc_cosine_outputs(nngp, ntk, s1, s2, c, dot_sigma, factor)


def _arc_cosine_parts(nngp, s1, s2, factor, gain):
    """(c, d) of `_arc_cosine`."""
    rho = nngp * (_safe_reciprocal(s1) * _safe_reciprocal(s2))
    a = jnp.abs(rho)
    # A point paired with itself has |ρ| = 1 exactly; rounding (of K's sum, of 1/s) leaves it
    # some eps away, where c would be ~sqrt(eps): a 1e-8 error on the diagonal, and one that
    # changes with the summation order (another device split). Snap it to 1; 64 eps leaves
    # a margin over the rounding, and snaps no distinct pair of real images.
    a = jnp.where(a > 1 - 64 * jnp.finfo(a.dtype).eps, 1, a)
    c = jnp.sqrt((1 - a) * (1 + a))
    return c, gain - factor * _arccos(rho, a)


def _arc_cosine_outputs(nngp, ntk, s1, s2, c, dot_sigma, factor):
    out_nngp = factor * (s1 * s2) * c + dot_sigma * nngp
    return out_nngp, None if ntk is None else ntk * dot_sigma


def _arc_cosine_fwd(nngp, ntk, s1, s2, factor, gain):
    c, dot_sigma = _arc_cosine_parts(nngp, s1, s2, factor, gain)
    # c and d are read by several backward fusions (one per shifted read of the cotangent):
    # materialised, or XLA recomputes the arccos polynomial in each.
    c, dot_sigma = materialize(c), materialize(dot_sigma)
    return _arc_cosine_outputs(nngp, ntk, s1, s2, c, dot_sigma, factor), (nngp, ntk, s1, s2, c, dot_sigma)


def _arc_cosine_bwd(factor, gain, residuals, cotangents):
    nngp, ntk, s1, s2, c, dot_sigma = residuals
    g_nngp, g_ntk = cotangents
    d_nngp = g_nngp * dot_sigma
    d_s1 = g_nngp * factor * c * s2
    d_s2 = g_nngp * factor * c * s1
    d_ntk = None
    if ntk is not None:
        inv1, inv2 = _safe_reciprocal(s1), _safe_reciprocal(s2)
        rho = nngp * (inv1 * inv2)
        # 1/c blows up for a point paired with itself, where the true derivative is 0
        # (θ = 0 identically); c is snapped to exactly 0 there.
        w = g_ntk * ntk * factor * _safe_reciprocal(c)
        d_nngp = d_nngp + w * (inv1 * inv2)
        d_s1 = d_s1 - w * rho * inv1
        d_s2 = d_s2 - w * rho * inv2
        d_ntk = _sum_to(g_ntk * dot_sigma, ntk.shape)
    return d_nngp, d_ntk, _sum_to(d_s1, s1.shape), _sum_to(d_s2, s2.shape)


_arc_cosine.defvjp(_arc_cosine_fwd, _arc_cosine_bwd)


# --------------------------------------------------------------------------- layers


def _layer(init_fn, apply_fn, transform, input_req=_positionwise, reads_inputs=False) -> Layer:
    return Layer(init_fn, apply_fn, KernelFn(transform, input_req, reads_inputs=reads_inputs))


def _elementwise(fn: Callable[[Array], Array], transform) -> Layer:
    return _layer(lambda key, shape: (shape, ()), lambda params, x, **kw: fn(x), transform)


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
        y = jnp.matmul(x, w, precision=_HIGHEST)
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

    return _layer(init_fn, apply_fn, transform)


def ABRelu(a: float, b: float) -> Layer:
    """a * min(x, 0) + b * max(x, 0), by the arc-cosine kernel (Cho & Saul 2009).

    With θ = angle(K12; K11, K22): K' = (a-b)^2/(2π) sqrt(K11 K22 - K12^2)
    + ((a^2+b^2)/2 - (a-b)^2 θ/(2π)) K12, and Θ' = Θ ((a^2+b^2)/2 - (a-b)^2 θ/(2π)).
    """
    factor = (a - b) ** 2 / (2 * math.pi)
    diag_gain = (a**2 + b**2) / 2

    def fn(x):
        return a * jnp.minimum(x, 0) + b * jnp.maximum(x, 0)

    def nngp_ntk(nngp, stds, ntk=None):
        return _arc_cosine(nngp, ntk, *stds, factor, diag_gain)

    def transform(k: Kernel) -> Kernel:
        v1, v2, k = _nonlinearity_variances(k)
        s1, s2 = _std(v1), _std(v2)
        nngp, ntk = (None, None) if k.nngp is None else nngp_ntk(
            k.nngp, _outer_factors(s1, s2, k.spatial, k.band), k.ntk)
        if k.cov1 is None:
            cov1 = cov2 = None
        elif k.spatial in (FULL, BAND):
            cov1 = nngp_ntk(k.cov1, _self_outer_factors(s1, k.spatial, k.band))[0]
            cov2 = cov1 if k.cov2 is k.cov1 else nngp_ntk(k.cov2, _self_outer_factors(s2, k.spatial, k.band))[0]
        else:  # a variance is its own pair at angle 0
            cov1 = diag_gain * k.cov1
            cov2 = cov1 if k.cov2 is k.cov1 else diag_gain * k.cov2
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2)

    return _elementwise(fn, transform)


def Relu() -> Layer:
    """max(x, 0): the arc-cosine kernel of order 1, ABRelu(0, 1)."""
    return ABRelu(0.0, 1.0)


def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Layer:
    """a * erf(b x) + c (Williams 1997).

    With K scaled by b^2: K' = a^2 (2/π) arcsin(2 K12 / sqrt((1 + 2 K11)(1 + 2 K22))) + c^2,
    Θ' = a^2 b^2 Θ (4/π) / sqrt((1 + 2 K11)(1 + 2 K22) - 4 K12^2).
    """

    def fn(x):
        return a * jax.scipy.special.erf(b * x) + c

    def nngp_ntk(nngp, prod, ntk=None):
        root = _where_positive_sqrt(prod - 4 * nngp**2, _rounding_floor(prod))
        out = (2 / math.pi) * jnp.arctan2(2 * nngp, root)
        return out, None if ntk is None else ntk * (4 / math.pi) / root

    def transform(k: Kernel) -> Kernel:
        s = b**2
        v1, v2, k = _nonlinearity_variances(k)
        v1, v2 = 1 + 2 * s * v1, 1 + 2 * s * v2
        nngp, ntk = None, None
        if k.nngp is not None:
            nngp, ntk = nngp_ntk(s * k.nngp, _outer(v1, v2, k.spatial, k.band), None if k.ntk is None else s * k.ntk)
            nngp = a**2 * nngp + c**2
            ntk = None if ntk is None else a**2 * ntk

        def self_cov(cov, v):
            if k.spatial in (FULL, BAND):
                return a**2 * nngp_ntk(s * cov, _self_outer(v, k.spatial, k.band))[0] + c**2
            return a**2 * (2 / math.pi) * jnp.arcsin(2 * s * cov / v) + c**2

        cov1 = None if k.cov1 is None else self_cov(k.cov1, v1)
        cov2 = cov1 if k.cov2 is k.cov1 else (None if k.cov2 is None else self_cov(k.cov2, v2))
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2)

    return _elementwise(fn, transform)


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
            return jnp.mean(_variances(m, k.spatial), axis=(0, 1))

        shape = (k.nngp if k.nngp is not None else k.cov1).shape
        h, w = shape[2:4] if k.spatial == BAND else shape[:2]
        return _map_linear(k, flat, channels=k.channels * h * w, spatial=FLAT)

    return _layer(init_fn, apply_fn, transform, input_req=lambda req: FLAT)


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
                k = _materialized(k)
            k = layer.kernel_fn.transform(k)
        return k

    def input_req(req: int) -> int:
        for layer in reversed(layers):
            req = layer.kernel_fn.input_req(req)
        return req

    reads_inputs = bool(layers) and layers[0].kernel_fn.reads_inputs
    return _layer(init_fn, apply_fn, transform, input_req, reads_inputs)

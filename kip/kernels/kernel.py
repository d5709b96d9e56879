"""The record the kernel language folds over, and its layouts.

`Kernel` holds the covariances of one layer's pre-activations; FLAT / DIAG / FULL / BAND say
how much of the position-position covariance it keeps; `Layer` is the `(init_fn, apply_fn,
kernel_fn)` triple every layer returns. The functions here move between layouts and apply
linear maps of positions to every covariance at once. Read next: `engine` (how a network's
kernel is computed), then the layers (`dense`, `elementwise`, `conv`) and `combinators`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from kip.kernels.engine import KernelFn


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


HIGHEST = jax.lax.Precision.HIGHEST


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


def interleave(m: Array) -> Array:
    """(..., H, W, H, W) -> (..., H, H, W, W): neural-tangents' order of position axes."""
    return jnp.moveaxis(m, (-4, -3, -2, -1), (-4, -2, -3, -1))


def examples_first(k: Kernel) -> Kernel:
    """The internal positions-first layout back to neural-tangents' (n1, n2, ...) order."""
    if k.spatial == FLAT:
        return k

    def move(m, batch_ndim):
        if m is None or m.ndim == 0:
            return m
        m = jnp.moveaxis(m, tuple(range(m.ndim - batch_ndim, m.ndim)), tuple(range(batch_ndim)))
        return interleave(m) if k.spatial == FULL else m

    return k.replace(nngp=move(k.nngp, 2), ntk=move(k.ntk, 2), cov1=move(k.cov1, 1), cov2=move(k.cov2, 1))


def position_diagonal(m: Array) -> Array:
    """(H, W, H, W, ...) -> (H, W, ...): same-position entries, as a strided slice (XLA runs
    a diagonal einsum as a slow reduction)."""
    h, w = m.shape[:2]
    flat = m.reshape((h * w * h * w,) + m.shape[4:])
    return flat[:: h * w + 1].reshape((h, w) + m.shape[4:])


def band_centre(m: Array) -> Array:
    """(2 bh + 1, 2 bw + 1, H, W) -> (H, W): the same-position entries."""
    return m[(m.shape[0] - 1) // 2, (m.shape[1] - 1) // 2]


def variances(cov: Array, spatial: int) -> Array:
    """Per-position variances from a batch-diagonal covariance: (...) or (H, W, ...)."""
    if spatial == FULL:
        return position_diagonal(cov)
    if spatial == BAND:
        return band_centre(cov)
    return cov


def map_linear(k: Kernel, fn: Callable[[Array], Array], **changes: Any) -> Kernel:
    """A linear map of positions (pooling, flattening) applied to every covariance: absent
    ones stay absent, a 0-d zero NTK stays zero, and cov2 stays cov1 when it was."""

    def f(m):
        return m if m is None or m.ndim == 0 else fn(m)

    cov1 = f(k.cov1)
    cov2 = cov1 if k.cov2 is k.cov1 else f(k.cov2)
    return k.replace(nngp=f(k.nngp), ntk=f(k.ntk), cov1=cov1, cov2=cov2, **changes)


def is_zero(ntk: Array | None) -> bool:
    """The 0-d zero NTK of a network whose layers so far have no parameters."""
    return ntk is not None and ntk.ndim == 0

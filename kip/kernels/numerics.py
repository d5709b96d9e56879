"""Array helpers of the kernel language, tuned for XLA: the Gram matrix with its cheap
gradient, a free fusion boundary (`materialize`), sums as products with ones, the band of
position pairs (`band_*`) and outer products laid out like a covariance (`outer*`)."""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from kip.kernels.kernel import BAND, FLAT, FULL, HIGHEST, Array


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
    return jnp.matmul(f1, f2.T, precision=HIGHEST)


def _gram_fwd(f1, f2, copy_transpose):
    return _gram(f1, f2, copy_transpose), (f1, f2)


def _gram_bwd(copy_transpose, residuals, g):
    f1, f2 = residuals
    if copy_transpose:  # the barrier keeps XLA from folding the transpose back into the product
        g_t = jax.lax.optimization_barrier(jax.lax.optimization_barrier(g).T)
        g_t_f1 = jnp.matmul(g_t, f1, precision=HIGHEST)
    else:
        g_t_f1 = jax.lax.dot_general(g, f1, (((0,), (0,)), ((), ())), precision=HIGHEST)
    return jnp.matmul(g, f2, precision=HIGHEST), g_t_f1


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


def sq_norms(f: Array) -> Array:
    # Kept out of later fusions: XLA:CPU otherwise fuses this reduction into the
    # (n1, n2) outer product of variances and runs it ~8x slower.
    return jax.lax.optimization_barrier(jnp.einsum("ij,ij->i", f, f, precision=HIGHEST))


def sum_to(x: Array, shape: tuple[int, ...]) -> Array:
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
        return jnp.dot(x.reshape(kept, -1), ones, precision=HIGHEST).reshape(shape)
    if axes == tuple(range(len(axes))):
        return jnp.dot(ones, x.reshape(-1, kept), precision=HIGHEST).reshape(shape)
    return jnp.sum(x, axis=axes).reshape(shape)


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
    return sum_to(g * shifted, a.shape), shift_vjp(g * a)[0]


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


def outer_factors(v1: Array, v2: Array, spatial: int, band: tuple[int, int] = (0, 0)) -> tuple[Array, Array]:
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


def outer(v1: Array, v2: Array, spatial: int, band: tuple[int, int] = (0, 0)) -> Array:
    """v1[p, a] * v2[q, b] laid out like nngp (see `outer_factors`)."""
    a, b = outer_factors(v1, v2, spatial, band)
    return a * b


def self_outer_factors(v: Array, spatial: int = FULL, band: tuple[int, int] = (0, 0)) -> tuple[Array, Array]:
    """v reshaped twice so that the product is v[p, a] * v[q, a], laid out like a FULL
    cov: (H, W, ...) -> (H, W, 1, 1, ...) and (1, 1, H, W, ...) (or a BAND one)."""
    if spatial == BAND:
        return outer_factors(v, v, BAND, band)
    return v[:, :, None, None], v[None, None, :, :]


def self_outer(v: Array, spatial: int = FULL, band: tuple[int, int] = (0, 0)) -> Array:
    """v[p, a] * v[q, a] laid out like a FULL (or BAND) cov: (H, W, ...) -> (H, W, H, W, ...)."""
    a, b = self_outer_factors(v, spatial, band)
    return a * b

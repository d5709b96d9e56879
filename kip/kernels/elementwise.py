"""Nonlinearities, applied entry by entry: `ABRelu` and `Relu` (the arc-cosine kernel,
with its closed-form derivative) and `Erf`. Each reads the variances of both positions of an
entry (`nonlinearity_variances`: recorded once per image in the two-phase computation)."""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from kip.kernels.engine import make_layer
from kip.kernels.kernel import BAND, FULL, RECORD, REPLAY, Array, Kernel, Layer, variances
from kip.kernels.numerics import materialize, outer, outer_factors, self_outer, self_outer_factors, sum_to


def _nonlinearity_variances(k: Kernel) -> tuple[Array, Array, Kernel]:
    """The per-position variances of x1 and x2 that a nonlinearity reads, and the kernel
    with its tape advanced (REPLAY) or extended (RECORD)."""
    if k.mode == REPLAY:
        return k.tape1[k.tape_pos], k.tape2[k.tape_pos], k.replace(tape_pos=k.tape_pos + 1)
    # Materialised: XLA otherwise fuses the strided diagonal slice (and the layer that made
    # the covariance) into each entry of the (HW)^2 outer product, unvectorised (~10x slower).
    v1 = materialize(variances(k.cov1, k.spatial))
    v2 = v1 if k.cov2 is k.cov1 else materialize(variances(k.cov2, k.spatial))
    if k.mode == RECORD:
        k = k.replace(tape1=k.tape1 + (v1,))
    return v1, v2, k


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
        d_ntk = sum_to(g_ntk * dot_sigma, ntk.shape)
    return d_nngp, d_ntk, sum_to(d_s1, s1.shape), sum_to(d_s2, s2.shape)


_arc_cosine.defvjp(_arc_cosine_fwd, _arc_cosine_bwd)


def _elementwise(fn: Callable[[Array], Array], transform) -> Layer:
    return make_layer(lambda key, shape: (shape, ()), lambda params, x, **kw: fn(x), transform)


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
            k.nngp, outer_factors(s1, s2, k.spatial, k.band), k.ntk)
        if k.cov1 is None:
            cov1 = cov2 = None
        elif k.spatial in (FULL, BAND):
            cov1 = nngp_ntk(k.cov1, self_outer_factors(s1, k.spatial, k.band))[0]
            cov2 = cov1 if k.cov2 is k.cov1 else nngp_ntk(k.cov2, self_outer_factors(s2, k.spatial, k.band))[0]
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
            nngp, ntk = nngp_ntk(s * k.nngp, outer(v1, v2, k.spatial, k.band), None if k.ntk is None else s * k.ntk)
            nngp = a**2 * nngp + c**2
            ntk = None if ntk is None else a**2 * ntk

        def self_cov(cov, v):
            if k.spatial in (FULL, BAND):
                return a**2 * nngp_ntk(s * cov, self_outer(v, k.spatial, k.band))[0] + c**2
            return a**2 * (2 / math.pi) * jnp.arcsin(2 * s * cov / v) + c**2

        cov1 = None if k.cov1 is None else self_cov(k.cov1, v1)
        cov2 = cov1 if k.cov2 is k.cov1 else (None if k.cov2 is None else self_cov(k.cov2, v2))
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2)

    return _elementwise(fn, transform)

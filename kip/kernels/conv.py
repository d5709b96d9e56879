"""Convolution and pooling layers, with neural-tangents' names, arguments and defaults:
their finite networks on NHWC images and the kernels of their infinite-width limits."""

from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from kip.kernels.engine import make_layer, materialized, positionwise
from kip.kernels.kernel import BAND, DIAG, FLAT, FULL, HIGHEST, Array, Band, Kernel, Layer, is_zero, map_linear
from kip.kernels.numerics import band_zero_outside, gram, materialize

PADDINGS = ("VALID", "SAME", "CIRCULAR")


def _check_padding(padding: str) -> str:
    padding = padding.upper()
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return padding


def _pads(n: int, window: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(output size, padding before, padding after) along one axis, as XLA defines them."""
    if padding == "VALID":
        if n < window:
            raise ValueError(f"a window of {window} does not fit in {n} positions with VALID padding")
        return (n - window) // stride + 1, 0, 0
    out = -(-n // stride)
    total = max((out - 1) * stride + window - n, 0)
    return out, total // 2, total - total // 2


def _take(x: Array, axis: int, start: int, count: int, stride: int, circular: bool) -> Array:
    """x[start + stride * i] for i < count along `axis`; positions outside the axis read 0
    (or wrap around when circular). Zero fill is a pad of a slice, which XLA fuses into
    the consumer instead of materialising a padded copy."""
    n = x.shape[axis]
    idx = start + stride * jnp.arange(count)
    if circular:
        return jnp.take(x, idx % n, axis=axis)
    first = max(0, -(-(-start) // stride)) if start < 0 else 0  # first i with start + stride i >= 0
    last = min(count, (n - 1 - start) // stride + 1) if start <= n - 1 else 0  # one past the last in range
    if last <= first:
        shape = list(x.shape)
        shape[axis] = count
        return jnp.zeros(shape, x.dtype)
    inside = jax.lax.slice_in_dim(x, start + stride * first, start + stride * (last - 1) + 1, stride, axis)
    widths = [(0, 0, 0)] * x.ndim
    widths[axis] = (first, count - last, 0)
    return jax.lax.pad(inside, jnp.zeros((), x.dtype), widths)


def _window_sum(x: Array, axis: int, window: int, stride: int, padding: str) -> Array:
    """Σ_a x[s i + a - pad] along one axis: a pooling window."""
    out, lo, _ = _pads(x.shape[axis], window, stride, padding)
    return sum(_take(x, axis, a - lo, out, stride, padding == "CIRCULAR") for a in range(window))


def _tied_window_sum(x: Array, axes: tuple[int, int], window: int, stride: int, padding: str) -> Array:
    """Σ_a x[s i + a - pad, s j + a - pad] over a pair of axes: a filter offset shared by
    both images."""
    out, lo, _ = _pads(x.shape[axes[0]], window, stride, padding)
    circular = padding == "CIRCULAR"
    return sum(
        _take(_take(x, axes[0], a - lo, out, stride, circular), axes[1], a - lo, out, stride, circular)
        for a in range(window)
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _disjoint_mean(x: Array, windows: tuple[tuple[int, int], ...]) -> Array:
    """Means over disjoint windows of size f along each (axis, f) (a trailing remainder is
    dropped, as VALID pooling does): one sum of strided slices over all axes at once, into
    which XLA fuses the elementwise layer before it, so the un-pooled covariance (the
    largest array of a ConvNet kernel) is never written out. Its gradient spreads each
    output's cotangent evenly over its window (one broadcast, not one pad per slice)."""
    out = {axis: x.shape[axis] // f for axis, f in windows}
    total = 0
    for offsets in itertools.product(*(range(f) for _, f in windows)):
        index = [slice(None)] * x.ndim
        for (axis, f), o in zip(windows, offsets):
            index[axis] = slice(o, o + f * out[axis], f)
        total = total + x[tuple(index)]
    return total / math.prod(f for _, f in windows)


def _disjoint_mean_fwd(x, windows):
    # The pooled array is small, and read by every entry of the next layer's outer
    # products: materialised (here and its cotangent below), or XLA recomputes the layers
    # after the pool once per entry of the large array before it.
    y = materialize(_disjoint_mean(x, windows))
    return y, jnp.zeros((0,) + x.shape, x.dtype)  # carries x's shape


def _disjoint_mean_bwd(windows, shape_carrier, g):
    g = materialize(g)
    sizes = dict(windows)
    split, spread, covered = [], [], []  # each output's cotangent / |window| to its window
    for axis, n in enumerate(g.shape):
        f = sizes.get(axis, 1)
        split += [n, 1] if f > 1 else [n]
        spread += [n, f] if f > 1 else [n]
        covered.append(n * f)
    g = jnp.broadcast_to((g / math.prod(sizes.values())).reshape(split), spread).reshape(covered)
    pads = [(0, full - c) for full, c in zip(shape_carrier.shape[1:], covered)]  # dropped remainder
    return (jnp.pad(g, pads) if any(p for _, p in pads) else g,)


_disjoint_mean.defvjp(_disjoint_mean_fwd, _disjoint_mean_bwd)


def _conv_cov(k: Array, spatial: int, filter_shape, strides, padding) -> Array:
    """Covariance after a convolution with i.i.d. weights, before W_std^2 and b_std^2:
    the mean over filter offsets of the input covariance at the shifted positions."""
    if spatial == DIAG:  # (H, W, batch...)
        for d, (f, s) in enumerate(zip(filter_shape, strides)):
            k = _window_sum(k, d, f, s, padding)
    elif spatial == BAND:  # (offsets, H, W): the shared filter offset keeps the offset (stride 1)
        k = band_zero_outside(k)  # SAME's zero padding of x2's side
        for d, f in enumerate(filter_shape):
            k = materialize(_window_sum(k, 2 + d, f, 1, padding))
    else:  # (H, W, H, W, batch...): offset d of x1's axis d and of x2's axis 2 + d tied
        for d, (f, s) in enumerate(zip(filter_shape, strides)):
            # Each pass reads its input (and, backward, its cotangent) at |f| shifts: both
            # materialised once, else XLA recomputes their producers once per shift.
            k = materialize(_tied_window_sum(k, (d, 2 + d), f, s, padding))
    return k / math.prod(filter_shape)


def _patches(x: Array, filter_shape, strides, padding: str) -> Array:
    """(H, W, C) -> (H', W', |F| C): each output position's receptive field, zero-padded
    (wrapped for CIRCULAR)."""
    if padding == "CIRCULAR":
        for d, (f, s) in enumerate(zip(filter_shape, strides)):
            _, lo, hi = _pads(x.shape[d], f, s, "SAME")
            x = jnp.take(x, jnp.arange(-lo, x.shape[d] + hi) % x.shape[d], axis=d)
        padding = "VALID"
    return jax.lax.conv_general_dilated_patches(
        x[None], filter_shape, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST
    )[0]


def Conv(
    out_chan: int,
    filter_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str = "VALID",
    W_std: float = 1.0,
    b_std: float | None = None,
    parameterization: str = "ntk",
) -> Layer:
    """2-D convolution on NHWC images (HWIO filters).

    NNGP: K'(p, q) = W_std^2 / |F| Σ_{a in F} K(s p + a, s q + a) + b_std^2 (zero outside the
    image for SAME, wrapped for CIRCULAR). NTK ('ntk'): Θ' = K' + W_std^2 / |F| Σ_a Θ(...);
    ('standard'): Θ' = C_in Σ_a K(...) + W_std^2 / |F| Σ_a Θ(...) + [b_std is not None].
    """
    filter_shape = tuple(filter_shape)
    strides = tuple(strides) if strides is not None else (1,) * len(filter_shape)
    padding = _check_padding(padding)
    parameterization = parameterization.lower()
    if parameterization not in ("ntk", "standard"):
        raise ValueError(f"parameterization must be 'ntk' or 'standard', got {parameterization!r}")
    if len(filter_shape) != 2 or len(strides) != 2:
        raise ValueError("Conv supports 2-D images: filter_shape and strides need 2 entries")
    b_var = 0.0 if b_std is None else b_std**2

    def init_fn(key, input_shape):
        k1, k2 = jax.random.split(key)
        c_in = input_shape[-1]
        w = jax.random.normal(k1, filter_shape + (c_in, out_chan))
        b = None if b_std is None else jax.random.normal(k2, (out_chan,))
        if parameterization == "standard":
            w = w * W_std / math.sqrt(c_in * math.prod(filter_shape))
            b = None if b is None else b * b_std
        out_hw = tuple(_pads(n, f, s, padding)[0] for n, f, s in zip(input_shape[1:3], filter_shape, strides))
        return (input_shape[0],) + out_hw + (out_chan,), (w, b)

    def apply_fn(params, x, **kwargs):
        w, b = params
        if padding == "CIRCULAR":  # wrap the image, then a VALID convolution
            for d, (f, s) in enumerate(zip(filter_shape, strides)):
                _, lo, hi = _pads(x.shape[1 + d], f, s, "SAME")
                x = jnp.take(x, jnp.arange(-lo, x.shape[1 + d] + hi) % x.shape[1 + d], axis=1 + d)
        y = jax.lax.conv_general_dilated(
            x, w, strides, "VALID" if padding == "CIRCULAR" else padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST,
        )
        if parameterization == "ntk":
            y = y * (W_std / math.sqrt(x.shape[-1] * math.prod(filter_shape)))
            return y if b is None else y + b_std * b
        return y if b is None else y + b

    def conv_of_inputs(k: Kernel):
        """The first layer's filter sums straight from image patches: one matrix product
        instead of the (HW)^2 outer product of pixels followed by shifted sums."""
        a, b = k.inputs
        pa, pb = (_patches(x, filter_shape, strides, padding) for x in (a, b))
        scale = 1.0 / pa.shape[-1]  # the mean over filter offsets and input channels

        def patch_gram(u, v):  # (H', W', K) x (H', W', K) -> (H', W', H', W'), as one matrix product
            flat = gram(u.reshape(-1, u.shape[-1]), v.reshape(-1, v.shape[-1]), copy_transpose=False)
            return flat.reshape(u.shape[:2] + v.shape[:2]) * scale

        nngp_sum = None if k.mode == "record" else patch_gram(pa, pb)
        cov_sum = None if k.mode == "replay" else patch_gram(pa, pa)
        return nngp_sum, cov_sum, k.replace(inputs=())

    def transform(k: Kernel) -> Kernel:
        if k.spatial == FLAT:
            raise ValueError("Conv needs images: it cannot follow Flatten or GlobalAvgPool")

        if k.inputs and k.spatial == BAND:
            # The band of the pixels' own covariance is cheaper than the patches' Gram matrix.
            k = materialized(k)
        if k.inputs:
            nngp_sum, cov_sum, k = conv_of_inputs(k)
            k = k.replace(nngp=nngp_sum, cov1=cov_sum, cov2=cov_sum)

            def conv(m):
                return m  # already summed over the filter
        else:
            def conv(m):
                if m is None:
                    return None
                # Each input entry feeds |F| shifted sums: materialise it first, or XLA fuses
                # the (expensive) nonlinearity that made it into every one of them.
                return _conv_cov(materialize(m), k.spatial, filter_shape, strides, padding)

        def affine(m):
            return None if m is None else W_std**2 * m + b_var

        nngp_sum = conv(k.nngp)
        nngp = affine(nngp_sum)
        ntk = k.ntk
        if ntk is not None:
            ntk_sum = W_std**2 * (ntk if is_zero(ntk) else conv(ntk))
            if parameterization == "ntk":
                ntk = nngp + ntk_sum
            else:
                fan_in = k.channels * math.prod(filter_shape)
                ntk = fan_in * nngp_sum + ntk_sum + (0.0 if b_std is None else 1.0)
        cov1 = affine(conv(k.cov1))
        cov2 = cov1 if k.cov2 is k.cov1 else affine(conv(k.cov2))
        k = k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, channels=out_chan)
        # the bias reached entries outside the image too: keep them 0
        return map_linear(k, band_zero_outside) if k.spatial == BAND else k

    def input_req(req):
        req = positionwise(req)
        if isinstance(req, Band) and (strides != (1, 1) or padding == "CIRCULAR"):
            # offsets scale with the stride, and wrap around: only the same-position band passes
            return DIAG if req == (0, 0) else FULL
        return req

    return make_layer(init_fn, apply_fn, transform, input_req, reads_inputs=True)


def AvgPool(
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str = "VALID",
    normalize_edges: bool = False,
) -> Layer:
    """Average pooling (strides default to 1, as in neural-tangents).

    K'(p, q) = 1/|F|^2 Σ_{a, b in F} K(s p + a, s q + b): each image's window moves on its
    own, so it needs the position-position covariance (under a Flatten, for a disjoint VALID
    pool, only the band of offsets up to f b + f - 1, see `kernel.Band`). normalize_edges divides by the
    number of in-image positions instead of |F| (matters only at SAME edges).
    """
    window_shape = tuple(window_shape)
    strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
    padding = _check_padding(padding)
    if len(window_shape) != 2 or len(strides) != 2:
        raise ValueError("AvgPool supports 2-D images: window_shape and strides need 2 entries")

    def counts(n, f, s):
        ones = jnp.ones((n,))
        return _window_sum(ones, 0, f, s, padding) if normalize_edges and padding == "SAME" else jnp.full(
            (_pads(n, f, s, padding)[0],), float(f))

    def pool(x, axes_sizes):
        """x pooled along each (axis, (window, stride)) independently, divided by the counts."""
        if all(f == s and (padding == "VALID" or x.shape[axis] % f == 0) for axis, (f, s) in axes_sizes):
            return _disjoint_mean(x, tuple((axis, f) for axis, (f, _) in axes_sizes))
        for axis, (f, s) in axes_sizes:
            n = x.shape[axis]
            c = counts(n, f, s)
            x = _window_sum(x, axis, f, s, padding)
            shape = [1] * x.ndim
            shape[axis] = c.shape[0]
            x = x / c.reshape(shape).astype(x.dtype)
        return x

    def init_fn(key, input_shape):
        out_hw = tuple(_pads(n, f, s, padding)[0] for n, f, s in zip(input_shape[1:3], window_shape, strides))
        return (input_shape[0],) + out_hw + (input_shape[3],), ()

    def apply_fn(params, x, **kwargs):
        return pool(x, [(1, (window_shape[0], strides[0])), (2, (window_shape[1], strides[1]))])

    disjoint = window_shape == strides and padding == "VALID"

    def transform(k: Kernel) -> Kernel:
        if k.spatial == BAND:
            band = tuple((b - f + 1) // f for b, f in zip(k.band, window_shape))
            return map_linear(k, lambda m: band_zero_outside(_band_disjoint_mean(m, window_shape, band)), band=band)
        if k.spatial != FULL:
            raise ValueError("AvgPool needs the full spatial covariance (internal error: input_req)")

        # (H, W, H, W, batch...): each of the four position axes on its own
        return map_linear(k, lambda m: pool(m, list(enumerate(list(zip(window_shape, strides)) * 2))))

    def input_req(req):
        if disjoint and (req == FLAT or isinstance(req, Band)):
            above = Band(0, 0) if req == FLAT else req
            return Band(*(f * b + f - 1 for f, b in zip(window_shape, above)))
        return FULL

    return make_layer(init_fn, apply_fn, transform, input_req=input_req)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _band_disjoint_mean(m: Array, windows: tuple[int, int], band: tuple[int, int]) -> Array:
    """Disjoint f x f average pooling of a BAND covariance (offsets up to f b + f - 1) to
    offsets up to b: out[b + D, P] = 1/f^2 Σ_{i, j < f} m[f D + j - i + f - 1, f P + i] per
    axis. One sum of strided slices (each entry read at most once), into which XLA fuses
    the nonlinearity before it, as `_disjoint_mean` does; its gradient spreads each
    output's cotangent over its entries axis by axis."""
    out = [m.shape[2 + axis] // f for axis, f in enumerate(windows)]
    total = 0
    for offsets in itertools.product(*(itertools.product(range(f), repeat=2) for f in windows)):
        index = [slice(None)] * 4
        for axis, ((i, j), f, b, n) in enumerate(zip(offsets, windows, band, out)):
            index[axis] = slice(f - 1 - i + j, f - 1 - i + j + f * 2 * b + 1, f)
            index[2 + axis] = slice(i, i + f * (n - 1) + 1, f)
        total = total + m[tuple(index)]
    return total / math.prod(f * f for f in windows)


def _band_disjoint_mean_fwd(m, windows, band):
    return materialize(_band_disjoint_mean(m, windows, band)), jnp.zeros((0,) + m.shape, m.dtype)


def _band_disjoint_mean_bwd(windows, band, shape_carrier, g):
    g = materialize(g) / math.prod(f * f for f in windows)
    for axis, f in enumerate(windows):
        n_in, n_out = shape_carrier.shape[3 + axis], g.shape[2 + axis]
        # offsets: f D + j + (f - 1 - i) for j < f reads g[D]; positions: f P + i reads g[P]
        spread = jnp.repeat(g, f, axis=axis)
        widths = [(0, 0)] * 4
        pieces = []
        for i in range(f):
            widths[axis] = (f - 1 - i, i)
            pieces.append(jnp.pad(spread, widths))
        g = jnp.stack(pieces, axis=3 + axis)
        g = g.reshape(g.shape[: 2 + axis] + (n_out * f,) + g.shape[4 + axis:])
        widths = [(0, 0)] * 4
        widths[2 + axis] = (0, n_in - n_out * f)  # positions a VALID pool dropped
        g = jnp.pad(g, widths)
    return (g,)


_band_disjoint_mean.defvjp(_band_disjoint_mean_fwd, _band_disjoint_mean_bwd)


def GlobalAvgPool() -> Layer:
    """Mean over all positions: (N, H, W, C) -> (N, C). K' = mean over all position pairs."""

    def init_fn(key, input_shape):
        return (input_shape[0], input_shape[-1]), ()

    def apply_fn(params, x, **kwargs):
        return jnp.mean(x, axis=(1, 2))

    def transform(k: Kernel) -> Kernel:
        if k.spatial != FULL:
            raise ValueError("GlobalAvgPool needs the full spatial covariance (internal error: input_req)")
        return map_linear(k, lambda m: jnp.mean(m, axis=(0, 1, 2, 3)), spatial=FLAT)

    return make_layer(init_fn, apply_fn, transform, input_req=lambda req: FULL)

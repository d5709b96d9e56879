"""Training-time image augmentation on (n, H, W, C) batches, differentiable in the images:
Differentiable Siamese Augmentation (DSA, Zhao & Bilen, ICML 2021), Dataset Condensation's own
MNIST augmentation (DC, Zhao et al., ICLR 2021) and the flip / crop of the Data Diet recipe.

Every random choice comes from an explicit key. Each transform is split into a draw of its
parameters and a deterministic map, so the maps can be tested against references. Affine maps
(scale, rotate) resample with dm-pix.
"""

from __future__ import annotations

import dataclasses
import math

import dm_pix as pix
import jax
import jax.numpy as jnp

from kip import InputError

Array = jax.Array

DSA_FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # DSA / DM / MTT on CIFAR and Fashion-MNIST
DSA_DIGITS = "color_crop_cutout_scale_rotate"  # the DSA README's choice for MNIST and SVHN: no flip
DC_FAMILIES = ("crop", "scale", "rotate", "noise")
DC_MNIST = "crop_scale_rotate"  # DC's `get_daparam` for MNIST
STANDARD = ("flip", "crop")  # the Data Diet / CIFAR recipe


@dataclasses.dataclass(frozen=True)
class DSAStrength:
    """How strong each DSA transform is; DSA's `ParamDiffAug` defaults. Zero (one for `scale`)
    turns a transform into the identity."""

    scale: float = 1.2  # x and y factors drawn independently from U[1/scale, scale]
    rotate: float = 15.0  # degrees, U[-rotate, rotate]
    crop: float = 0.125  # integer shift in [-s, s] per axis, s = round(crop * size), zero fill
    cutout: float = 0.5  # a zeroed square of side round(cutout * size)
    flip: float = 0.5  # probability of a horizontal flip
    brightness: float = 1.0  # adds brightness * (u - 1/2)
    saturation: float = 1.0  # (x - mean over channels) * U[1 - s, 1 + s] + mean   (DSA's ratio 2: factor 2u)
    contrast: float = 0.5  # (x - image mean) * U[1 - c, 1 + c] + mean             (DSA's ratio 0.5: u + 0.5)


DSA_DEFAULT = DSAStrength()
IDENTITY = DSAStrength(scale=1.0, rotate=0.0, crop=0.0, cutout=0.0, flip=0.0, brightness=0.0, saturation=0.0,
                       contrast=0.0)


def _round_half_up(x: float) -> int:
    return int(x + 0.5)  # DSA's int(size * ratio + 0.5)


# --------------------------------------------------------------------------- deterministic maps


def affine(images: Array, theta: Array) -> Array:
    """PyTorch's `grid_sample(images, affine_grid(theta), align_corners=True)` with bilinear
    sampling and zeros outside: output pixel at normalised position p (corner pixels' centres at
    -1 and 1; x along the width) reads the input at theta @ [p_x, p_y, 1].
    images (n, H, W, C), theta (n, 2, 3) -> (n, H, W, C); H, W >= 2."""
    n, h, w, _ = images.shape
    a, b = (h - 1) / 2, (w - 1) / 2
    t = theta
    # The same map in pixel coordinates (row, col); +1 for the one-pixel zero border added below,
    # which makes dm-pix's 'constant' mode (zero outside [0, size - 1]) interpolate towards zero
    # across the edge, as grid_sample's zero padding does.
    zero = jnp.zeros_like(t[:, 0, 0])
    one = jnp.ones_like(zero)
    matrix = jnp.stack([
        jnp.stack([t[:, 1, 1], (a / b) * t[:, 1, 0], zero], -1),
        jnp.stack([(b / a) * t[:, 0, 1], t[:, 0, 0], zero], -1),
        jnp.stack([zero, zero, one], -1),
    ], 1)
    offset = jnp.stack([a * (1 - t[:, 1, 0] - t[:, 1, 1] + t[:, 1, 2]) + 1 - matrix[:, 0, 0] - matrix[:, 0, 1],
                        b * (1 - t[:, 0, 0] - t[:, 0, 1] + t[:, 0, 2]) + 1 - matrix[:, 1, 0] - matrix[:, 1, 1],
                        zero], -1)
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    warp = lambda img, m, o: pix.affine_transform(img, m, offset=o, order=1, mode="constant", cval=0.0)
    return jax.vmap(warp)(padded, matrix, offset)[:, 1:-1, 1:-1]


def scale_theta(sx: Array, sy: Array) -> Array:
    """(n,), (n,) -> (n, 2, 3): DSA's scale, the sampling grid stretched by sx (width), sy (height)."""
    z = jnp.zeros_like(sx)
    return jnp.stack([jnp.stack([sx, z, z], -1), jnp.stack([z, sy, z], -1)], 1)


def rotate_theta(radians: Array) -> Array:
    """(n,) -> (n, 2, 3): DSA's rotation [[cos, -sin, 0], [sin, cos, 0]]."""
    c, s, z = jnp.cos(radians), jnp.sin(radians), jnp.zeros_like(radians)
    return jnp.stack([jnp.stack([c, -s, z], -1), jnp.stack([s, c, z], -1)], 1)


def translate(images: Array, shift_h: Array, shift_w: Array, fill: Array | float = 0.0) -> Array:
    """output[i, j] = input[i + shift_h, j + shift_w], `fill` outside: (n, H, W, C), int (n,) x 2.
    `fill` is a scalar or (C,)."""
    n, h, w, c = images.shape
    pad = ((0, 0), (h, h), (w, w), (0, 0))  # shifts never exceed the image size
    zero = jnp.zeros((), jnp.int32)  # one index dtype, also when x64 is on
    crop = lambda img, dh, dw: jax.lax.dynamic_slice(img, (h + dh, w + dw, zero), (h, w, img.shape[-1]))
    shift = lambda a: jax.vmap(crop)(jnp.pad(a, pad), shift_h.astype(jnp.int32), shift_w.astype(jnp.int32))
    inside = shift(jnp.ones((n, h, w, 1), images.dtype))
    fill = jnp.broadcast_to(jnp.asarray(fill, images.dtype), (c,))
    return shift(images) + (1 - inside) * fill


def cutout(images: Array, centre_h: Array, centre_w: Array, size: tuple[int, int]) -> Array:
    """Zeroes rows [centre_h - size_h // 2, + size_h) x the same for columns, clipped to the
    image, in every channel (DSA's cutout). images (n, H, W, C), int centres (n,)."""
    _, h, w, _ = images.shape
    rows, cols = jnp.arange(h), jnp.arange(w)
    top = (centre_h - size[0] // 2)[:, None]
    left = (centre_w - size[1] // 2)[:, None]
    in_rows = (rows >= top) & (rows < top + size[0])
    in_cols = (cols >= left) & (cols < left + size[1])
    mask = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return images * mask[..., None].astype(images.dtype)


def flip(images: Array, flipped: Array) -> Array:
    """Horizontal flip of the images where `flipped` (n,) bool is true."""
    return jnp.where(flipped[:, None, None, None], jax.vmap(pix.flip_left_right)(images), images)


def color(images: Array, brightness: Array, saturation: Array, contrast: Array) -> Array:
    """DSA's colour transform with per-image parameters (n,) each: x + brightness, then
    (x - mean over channels) * saturation + mean, then (x - image mean) * contrast + mean."""
    per_image = lambda v: v[:, None, None, None].astype(images.dtype)
    x = jax.vmap(pix.adjust_brightness)(images, brightness.astype(images.dtype))
    mean_c = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - mean_c) * per_image(saturation) + mean_c
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * per_image(contrast) + mean


# --------------------------------------------------------------------------- DSA


def parse_strategy(strategy: str, families: tuple[str, ...] = DSA_FAMILIES) -> tuple[str, ...]:
    """'color_crop_cutout' -> ('color', 'crop', 'cutout'); `InputError` for an unknown family."""
    names = tuple(s for s in strategy.split("_") if s)
    unknown = [s for s in names if s not in families]
    if not names or unknown:
        raise InputError(f"augmentation strategy {strategy!r}: families must be among {', '.join(families)} "
                         f"joined by '_'" + (f" (unknown: {unknown[0]!r})" if unknown else ""))
    return names


def _dsa_family(name: str, key: Array, images: Array, n: int, s: DSAStrength) -> Array:
    """One DSA family with n parameter draws (n = 1: one draw for the whole batch)."""
    h, w = images.shape[1:3]
    u = lambda i, lo=0.0, hi=1.0: jax.random.uniform(jax.random.fold_in(key, i), (n,), images.dtype, lo, hi)
    batch = lambda v: jnp.broadcast_to(v, (len(images),) + v.shape[1:])
    if name == "scale":
        return affine(images, batch(scale_theta(u(0, 1 / s.scale, s.scale), u(1, 1 / s.scale, s.scale))))
    if name == "rotate":
        return affine(images, batch(rotate_theta(u(0, -s.rotate, s.rotate) * (math.pi / 180))))
    if name == "flip":
        return flip(images, batch(u(0) < s.flip))
    if name == "color":
        return color(images, batch(s.brightness * (u(0) - 0.5)), batch(1 + s.saturation * (2 * u(1) - 1)),
                     batch(1 + s.contrast * (2 * u(2) - 1)))
    if name == "crop":
        sh, sw = _round_half_up(h * s.crop), _round_half_up(w * s.crop)
        shift = lambda i, m: jax.random.randint(jax.random.fold_in(key, i), (n,), -m, m + 1)
        return translate(images, batch(shift(0, sh)), batch(shift(1, sw)))
    if name == "cutout":
        size = (_round_half_up(h * s.cutout), _round_half_up(w * s.cutout))
        # DSA's centres: 0..H for an even side, 0..H-1 for an odd one
        centre = lambda i, m, k: jax.random.randint(jax.random.fold_in(key, i), (n,), 0, m + 1 - k % 2)
        return cutout(images, batch(centre(0, h, size[0])), batch(centre(1, w, size[1])), size)
    raise InputError(f"unknown DSA family {name!r}")


def dsa(key: Array, images: Array, strategy: str = DSA_STRATEGY, siamese: bool = False,
        strength: DSAStrength = DSA_DEFAULT, single: bool = True) -> Array:
    """Differentiable Siamese Augmentation of images (n, H, W, C) -> (n, H, W, C).

    single: one family of `strategy` is drawn per call (DSA's default 'S' mode; 'color' runs
    brightness, saturation and contrast); False applies every family in order ('M' mode).
    siamese: one parameter draw for the whole batch, so that the same key gives the same
    transform on any batch (real and synthetic images in matching); otherwise each image draws
    its own parameters (training networks)."""
    families = parse_strategy(strategy)
    n = 1 if siamese else len(images)
    family_key, param_key = jax.random.split(key)
    apply = lambda i, x: _dsa_family(families[i], jax.random.fold_in(param_key, i), x, n, strength)
    if not single:
        for i in range(len(families)):
            images = apply(i, images)
        return images
    if len(families) == 1:
        return apply(0, images)
    choice = jax.random.randint(family_key, (), 0, len(families))
    return jax.lax.switch(choice, [lambda x, i=i: apply(i, x) for i in range(len(families))], images)


# --------------------------------------------------------------------------- DC (MNIST)


@dataclasses.dataclass(frozen=True)
class DCStrength:
    """DC's `get_daparam` values."""

    crop: int = 4  # pixels of padding (filled with the batch's channel means); offsets 0..2 crop - 1
    scale: float = 0.2  # height and width each int(U[1 - scale, 1 + scale] * H), nearest, zero fill
    rotate: int = 45  # integer degrees in [-rotate, rotate), filled with the batch's mean
    noise: float = 0.001  # Gaussian noise std


def dc_scale(images: Array, out_h: Array, out_w: Array) -> Array:
    """DC's scale: each image resized (nearest, as PyTorch's `interpolate`) to out_h x out_w,
    centred on a zero canvas of side max(out_h, out_w, H, W), then its centre H x W cut out.
    images (n, H, W, C), int sizes (n,)."""
    _, h, w, _ = images.shape

    def one(img, oh, ow):
        side = jnp.maximum(jnp.maximum(oh, ow), max(h, w))
        # canvas pixel r + (side - H) // 2 holds resized pixel r + (side - H) // 2 - (side - oh) // 2
        rr = jnp.arange(h) + (side - h) // 2 - (side - oh) // 2
        cc = jnp.arange(w) + (side - w) // 2 - (side - ow) // 2
        src_r = jnp.minimum(jnp.floor(rr * (h / oh)).astype(jnp.int32), h - 1)
        src_c = jnp.minimum(jnp.floor(cc * (w / ow)).astype(jnp.int32), w - 1)
        inside = ((rr >= 0) & (rr < oh))[:, None] & ((cc >= 0) & (cc < ow))[None, :]
        picked = img[jnp.clip(src_r, 0)[:, None], jnp.clip(src_c, 0)[None, :]]
        return picked * inside[..., None].astype(img.dtype)

    return jax.vmap(one)(images, out_h, out_w)


def dc_rotate(images: Array, degrees: Array, fill: Array | float) -> Array:
    """DC's rotate, `scipy.ndimage.rotate(img, degrees, reshape=True, cval=fill)` and the centre
    H x W cut out, with bilinear interpolation (order 1; scipy's default, which DC uses, is the
    cubic spline). images (n, H, W, C), degrees (n,), fill scalar."""
    _, h, w, _ = images.shape
    rad = degrees * (math.pi / 180)
    c, s = jnp.cos(rad), jnp.sin(rad)
    # scipy: the output plane is the rotated bounding box, rounded; input = R (out - out_c) + in_c
    out_h = (jnp.abs(c) * h + jnp.abs(s) * w + 0.5).astype(jnp.int32)
    out_w = (jnp.abs(s) * h + jnp.abs(c) * w + 0.5).astype(jnp.int32)
    top, left = (out_h - h) // 2, (out_w - w) // 2
    zero, one = jnp.zeros_like(c), jnp.ones_like(c)
    matrix = jnp.stack([jnp.stack([c, s, zero], -1), jnp.stack([-s, c, zero], -1), jnp.stack([zero, zero, one], -1)], 1)
    out_c_r, out_c_c = (out_h - 1) / 2 - top, (out_w - 1) / 2 - left  # output centre in the cut's coordinates
    offset = jnp.stack([(h - 1) / 2 - (c * out_c_r + s * out_c_c), (w - 1) / 2 - (-s * out_c_r + c * out_c_c), zero], -1)
    warp = lambda img, m, o: pix.affine_transform(img, m, offset=o, order=1, mode="constant", cval=fill)
    return jax.vmap(warp)(images, matrix, offset.astype(images.dtype))


def dc_augment(key: Array, images: Array, strategy: str = DC_MNIST, strength: DCStrength = DCStrength()) -> Array:
    """DC's `augment`: each image undergoes one family of `strategy`, drawn per image, with the
    batch's channel means as the crop fill and their mean as the rotation fill.
    (n, H, W, C) -> (n, H, W, C)."""
    families = parse_strategy(strategy, DC_FAMILIES)
    n, h, w, _ = images.shape
    keys = jax.random.split(key, 6)
    mean = jnp.mean(images, axis=(0, 1, 2))
    choice = jax.random.randint(keys[0], (n,), 0, len(families))
    out = images
    for i, family in enumerate(families):
        if family == "crop":
            offset = lambda k: jax.random.randint(k, (n,), 0, 2 * strength.crop) - strength.crop
            new = translate(images, offset(keys[1]), offset(keys[2]), fill=mean)
        elif family == "scale":
            size = lambda k: (jax.random.uniform(k, (n,), minval=1 - strength.scale, maxval=1 + strength.scale)
                              * h).astype(jnp.int32)
            new = dc_scale(images, size(keys[3]), size(jax.random.fold_in(keys[3], 1)))
        elif family == "rotate":
            degrees = jax.random.randint(keys[4], (n,), -strength.rotate, strength.rotate).astype(images.dtype)
            new = dc_rotate(images, degrees, jnp.mean(mean))
        else:
            new = images + strength.noise * jax.random.normal(keys[5], images.shape, images.dtype)
        out = jnp.where((choice == i)[:, None, None, None], new, out)
    return out


# --------------------------------------------------------------------------- flip / crop, and specs


def standard(key: Array, images: Array, kinds: tuple[str, ...]) -> Array:
    """Random horizontal flips (probability 1/2) and / or random crops after zero-padding by
    max(1, H // 8) pixels (4 at 32x32, the usual CIFAR recipe), each image independently."""
    n, h, _, _ = images.shape
    flip_key, crop_key = jax.random.split(key)
    if "flip" in kinds:
        images = flip(images, jax.random.bernoulli(flip_key, 0.5, (n,)))
    if "crop" in kinds:
        pad = max(1, h // 8)
        shifts = jax.random.randint(crop_key, (2, n), -pad, pad + 1)
        images = translate(images, shifts[0], shifts[1])
    return images


def check(spec: tuple[str, ...]) -> None:
    """Raises `InputError` unless `spec` is a valid augmentation: () for none, any of
    ('flip', 'crop'), or one 'dsa:STRATEGY' or 'dc:STRATEGY' entry."""
    special = [s for s in spec if ":" in s]
    if special:
        if len(spec) != 1:
            raise InputError(f"augmentation {'+'.join(spec)}: 'dsa:...' / 'dc:...' stand alone")
        kind, strategy = special[0].split(":", 1)
        if kind not in ("dsa", "dc"):
            raise InputError(f"augmentation {special[0]!r}: the prefix must be dsa: or dc:")
        parse_strategy(strategy, DSA_FAMILIES if kind == "dsa" else DC_FAMILIES)
        return
    unknown = [s for s in spec if s not in STANDARD]
    if unknown:
        raise InputError(f"augmentation must be among {', '.join(STANDARD)}, dsa:STRATEGY or dc:STRATEGY; "
                         f"got {unknown[0]!r}")


def apply(key: Array, images: Array, spec: tuple[str, ...]) -> Array:
    """The augmentation `spec` (see `check`) with per-image draws, as used when training networks."""
    if not spec:
        return images
    if spec[0].startswith("dsa:"):
        return dsa(key, images, spec[0][4:])
    if spec[0].startswith("dc:"):
        return dc_augment(key, images, spec[0][3:])
    return standard(key, images, spec)


# --------------------------------------------------------------------------- batch transforms (kip.train applies them)


def smooth_labels(targets: Array, epsilon: float) -> Array:
    """(n, C) -> (n, C): (1 - eps) y + eps * mean_c(y). For a probability vector this is
    label smoothing, (1 - eps) y + eps / C; for centred one-hot labels (rows summing to 0)
    it is (1 - eps) y, the same smoothing seen through the centring."""
    return (1 - epsilon) * targets + epsilon * jnp.mean(targets, axis=-1, keepdims=True)


def mixup(key: Array, images: Array, targets: Array, alpha: float) -> tuple[Array, Array]:
    """Mixup: with one lam ~ Beta(alpha, alpha) per batch and a random pairing `perm`,
    (lam x + (1 - lam) x[perm], lam y + (1 - lam) y[perm]). Shapes are kept."""
    lam_key, perm_key = jax.random.split(key)
    lam = jax.random.beta(lam_key, alpha, alpha, dtype=jnp.float32).astype(images.dtype)
    perm = jax.random.permutation(perm_key, images.shape[0])
    mix = lambda a: lam * a + (1 - lam) * a[perm]
    return mix(images), mix(targets.astype(images.dtype))

"""Soft-label prototype kNN (SLaPkNN; Sucholutsky & Schonlau, "'Less Than One'-Shot Learning",
arXiv 2009.08449): a training-free classifier that uses a distilled set and its soft labels."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kip import InputError, krr
from kip.kernels.numerics import gram

Array = jax.Array
DEFAULT_K = 10


def slapknn_scores(prototypes: Array, labels: Array, x: Array, k: int = DEFAULT_K, block_size: int = krr.DEFAULT_BLOCK) -> Array:
    """Class scores of SLaPkNN: the sum of the soft labels of the k nearest prototypes, each
    weighted by 1 / its Euclidean distance to x; the prediction is their argmax. A query at
    distance 0 from prototypes takes their labels alone (the limit of the weights).

    prototypes (m, ...), labels (m, C) (any real soft labels: adding a constant to every
    label moves all scores of a query equally, so centred labels classify alike), x (n, ...)
    with the prototypes' trailing shape -> (n, C). k is capped at m.
    """
    prototypes, labels, x = jnp.asarray(prototypes), jnp.asarray(labels), jnp.asarray(x)
    m = prototypes.shape[0]
    if m == 0 or labels.ndim != 2 or labels.shape[0] != m:
        raise InputError(f"SLaPkNN needs at least one prototype and one label row per prototype; got "
                         f"{prototypes.shape[0]} prototypes and labels of shape {labels.shape}")
    if x.shape[1:] != prototypes.shape[1:]:
        raise InputError(f"queries are {x.shape[1:]} but the prototypes are {prototypes.shape[1:]}")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    return _scores(prototypes.reshape(m, -1), labels, x.reshape(len(x), -1), min(k, m), block_size)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _scores(prototypes, labels, x, k, block_size):
    p_norms = jnp.sum(prototypes**2, axis=1)

    def block(xb):
        scale = jnp.sum(xb**2, axis=1)[:, None] + p_norms[None, :]
        sq = scale - 2 * gram(xb, prototypes)
        # |x - p|^2 by the Gram trick; within rounding of 0 it is 0 (x is that prototype)
        dist = jnp.where(sq > 8 * jnp.finfo(sq.dtype).eps * scale, jnp.sqrt(jnp.maximum(sq, 0)), 0)  # (b, m)
        neg_d, nearest = jax.lax.top_k(-dist, k)  # (b, k)
        d = -neg_d
        hit = d == 0
        weights = jnp.where(jnp.any(hit, axis=1, keepdims=True), hit, 1 / jnp.where(hit, 1, d))
        return jnp.einsum("bk,bkc->bc", weights.astype(labels.dtype), labels[nearest])

    return krr.map_blocks(block, x, block_size)


def slapknn_accuracy(prototypes: Array, labels: Array, x: Array, y: np.ndarray, k: int = DEFAULT_K) -> float:
    """Argmax accuracy of SLaPkNN on queries x (n, ...) against int labels y (n,)."""
    scores = slapknn_scores(prototypes, labels, x, k)
    return float(jnp.mean(jnp.argmax(scores, axis=1) == jnp.asarray(y)))

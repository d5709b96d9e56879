"""Kernel ridge regression: trace-scaled ridge, Cholesky solve, blocked prediction.

`kernel_fn` arguments here are `(x1, x2 | None) -> (n1, n2)` functions, e.g.
`functools.partial(layer.kernel_fn, get='ntk')`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from kip import parallel

Array = jax.Array
KernelMatrixFn = Callable[[Array, Array | None], Array]

DEFAULT_REG = 1e-6
DEFAULT_BLOCK = 1000


def map_blocks(fn: Callable, x, block_size: int):
    """fn over row blocks of x (an array, or a pytree of arrays sharing their first axis),
    padded with copies of row 0, concatenated: memory of one block instead of all rows.
    fn must map (b, ...) -> (b, ...) (pytrees likewise)."""
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    if n <= block_size:
        return fn(x)
    num_blocks = -(-n // block_size)
    pad = num_blocks * block_size - n

    def blocks(a):
        a = jnp.concatenate([a, jnp.broadcast_to(a[:1], (pad,) + a.shape[1:])]) if pad else a
        return a.reshape((num_blocks, block_size) + a.shape[1:])

    out = jax.lax.map(fn, jax.tree_util.tree_map(blocks, x))
    return jax.tree_util.tree_map(lambda o: o.reshape((num_blocks * block_size,) + o.shape[2:])[:n], out)


def regularize(k_ss: Array, reg: float = DEFAULT_REG) -> Array:
    """K + reg * tr(K)/n * I: the ridge scales with the kernel (KIP's convention)."""
    n = k_ss.shape[0]
    return k_ss + (reg * jnp.trace(k_ss) / n) * jnp.eye(n, dtype=k_ss.dtype)


def solve_dtype(dtype) -> jnp.dtype:
    """The dtype ridge solves run in: float64 whenever x64 is on, even for float32 kernels; with
    x64 off (a notebook's default), float32: predictions then agree with a float64 solve within
    cond(K_ss) * 6e-8 of the largest, relative (tests/test_notebook.py)."""
    return jnp.result_type(dtype, jnp.float64)


def solve(k_ss: Array, y_s: Array, reg: float = DEFAULT_REG) -> Array:
    """alpha = (K + reg tr(K)/n I)^-1 y by Cholesky. k_ss (n, n), y_s (n, C) -> (n, C)."""
    dtype = solve_dtype(k_ss.dtype)
    factor = jax.scipy.linalg.cho_factor(regularize(k_ss.astype(dtype), reg), lower=True)
    return jax.scipy.linalg.cho_solve(factor, y_s.astype(dtype))


def predict(
    kernel_fn: KernelMatrixFn,
    x_support: Array,
    y_support: Array,
    x_test: Array,
    reg: float = DEFAULT_REG,
    block_size: int = DEFAULT_BLOCK,
) -> Array:
    """KRR predictions K(x_test, x_s) (K_ss + ridge)^-1 y_s, `block_size` test rows at a time.

    x_support (n_s, ...), y_support (n_s, C), x_test (n_t, ...) -> (n_t, C).
    """
    return _predictions(kernel_fn, x_support, solve(kernel_fn(x_support, None), y_support, reg), x_test, block_size)


def _predictions(kernel_fn: KernelMatrixFn, x_support: Array, alpha: Array, x: Array, block_size: int) -> Array:
    """K(x, x_s) alpha, `block_size` rows of x at a time."""
    return map_blocks(lambda xb: kernel_fn(xb, x_support) @ alpha, x, block_size)


def test_metrics(
    kernel_fn: KernelMatrixFn,
    x_support: Array,
    y_support: Array,
    x_test: Array,
    labels: Array,
    y_test: Array,
    reg: float = DEFAULT_REG,
    block_size: int = DEFAULT_BLOCK,
    mesh: Mesh | None = None,
    weights: Array | None = None,
) -> tuple[Array, Array]:
    """Argmax accuracy and mean squared error of the KRR predictions for x_test, with the test
    rows split over the devices of `mesh` (see `kip.parallel`), `block_size` rows at a time on each.

    x_support (n_s, ...), y_support (n_s, C), x_test (n, ...), labels (n,) int, y_test (n, C);
    weights (n,): 1 for real rows, 0 for padding (`parallel.split_rows`); None: all ones.
    """
    alpha = solve(kernel_fn(x_support, None), y_support, reg)
    weights = jnp.ones(x_test.shape[0], alpha.dtype) if weights is None else weights

    def sums(shared, w, x, lab, y):
        alpha, x_s = shared
        pred = _predictions(kernel_fn, x_s, alpha, x, block_size)
        return {"n": w.sum(), "correct": jnp.sum(w * (jnp.argmax(pred, axis=1) == lab)),
                "squared_error": jnp.sum(w[:, None] * (pred - y) ** 2)}

    s = parallel.row_sums(sums, mesh, (alpha, x_support), weights, x_test, labels, y_test)
    return s["correct"] / s["n"], s["squared_error"] / (s["n"] * y_test.shape[1])

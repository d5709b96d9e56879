"""Analytic kernels against Monte-Carlo estimates from wide random finite networks built by
the same layers' init_fn/apply_fn: a check that does not trust neural-tangents.

With one hidden layer the finite-width expectation E[f(x1) f(x2)] (and of the empirical
NTK) equals the infinite-width kernel exactly, so the only error is sampling error and the
tolerance is a multiple of the measured standard error. Deeper nets add an O(1/width) bias.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import kernels

OUT = 8  # output units for the NTK (Jacobians are costly): independent samples of the GP
OUT_NNGP = 1024  # forward passes are cheap: many units, a precise NNGP estimate


def empirical_nngp(layer, x, key, draws):
    """Per-draw NNGP estimates f f^T / units: (draws, n, n)."""
    init_fn, apply_fn, _ = layer
    out = []
    for k in jax.random.split(key, draws):
        _, params = init_fn(k, x.shape)
        f = apply_fn(params, x)
        out.append(f @ f.T / f.shape[1])
    return np.stack(out)


def empirical_ntk(layer, x, key, draws):
    """Per-draw empirical NTK J J^T (summed over parameters, averaged over units): (draws, n, n)."""
    init_fn, apply_fn, _ = layer
    out = []
    for k in jax.random.split(key, draws):
        _, params = init_fn(k, x.shape)
        jac = jax.jacrev(lambda p: apply_fn(p, x))(params)  # leaves (n, units, *shape)
        units = apply_fn(params, x[:1]).shape[1]
        out.append(sum(jnp.einsum("aj...,bj...->ab", j, j) for j in jax.tree_util.tree_leaves(jac)) / units)
    return np.stack(out)


def check(estimates, analytic, sigmas=5.0, bias=0.0):
    mean = estimates.mean(0)
    se = estimates.std(0, ddof=1) / math.sqrt(len(estimates))
    scale = np.abs(analytic).max()
    err = np.abs(mean - analytic)
    assert np.all(err <= sigmas * se + bias * scale + 1e-12), (err / scale, se / scale)
    return np.max(err / scale)


NETWORKS = {  # one hidden layer of width 2048; `out` output units
    "relu": lambda out: kernels.serial(kernels.Dense(2048, 1.5, 0.2), kernels.Relu(), kernels.Dense(out, 1.2, 0.3)),
    "relu_standard_param": lambda out: kernels.serial(
        kernels.Dense(2048, 1.5, 0.2, "standard"), kernels.Relu(), kernels.Dense(out, 1.2, 0.3, "standard")),
    "erf": lambda out: kernels.serial(kernels.Dense(2048, 1.3, 0.1), kernels.Erf(0.8, 1.4, 0.2), kernels.Dense(out, 1.0, 0.1)),
    "abrelu": lambda out: kernels.serial(kernels.Dense(2048, 1.1), kernels.ABRelu(-0.4, 1.3), kernels.Dense(out, 1.0, 0.5)),
    "fc1_preset_on_images": lambda out: kernels.fc(1, width=2048, num_classes=out),
    # convolutional: the kernel keeps every pair of positions through the pooling
    "conv_images_relu_pool": lambda out: kernels.serial(
        kernels.Conv(512, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), kernels.Relu(),
        kernels.AvgPool((2, 2), (2, 2)), kernels.Flatten(), kernels.Dense(out, 1.2, 0.2)),
    "conv_images_erf_gap": lambda out: kernels.serial(
        kernels.Conv(512, (3, 3), strides=(2, 2), padding="CIRCULAR", W_std=1.3), kernels.Erf(),
        kernels.GlobalAvgPool(), kernels.Dense(out, 1.0, 0.3)),
}


# slow: the layers whose neural-tangents fixtures already check them in CI (tests/test_kernels_nt.py:
# pooling after a conv, ABRelu) and whose Monte-Carlo draws take ~20 s each
MC_SLOW = ("abrelu", "conv_images_relu_pool")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in MC_SLOW else n for n in sorted(NETWORKS)])
def test_one_hidden_layer_is_exact_in_expectation(name):
    shape = ((4, 3, 3, 2) if name.startswith("fc") else (3, 6, 6, 2)) if "images" in name else (4, 6)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    k = NETWORKS[name](OUT).kernel_fn(x, None, ("nngp", "ntk"))
    check(empirical_nngp(NETWORKS[name](OUT_NNGP), x, jax.random.PRNGKey(2), draws=64), np.asarray(k.nngp))
    check(empirical_ntk(NETWORKS[name](OUT), x, jax.random.PRNGKey(3), draws=32), np.asarray(k.ntk))


def test_two_hidden_layers_converge_with_width():
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 5))
    errs = []
    for width in (64, 1024):
        layer = kernels.fc(2, width=width, num_classes=OUT)
        ntk_mc = empirical_ntk(layer, x, jax.random.PRNGKey(4), draws=16)
        ntk = np.asarray(layer.kernel_fn(x, None, "ntk"))
        errs.append(np.abs(ntk_mc.mean(0) - ntk).max() / np.abs(ntk).max())
    # 5% at width 1024 (bias O(1/width) plus sampling); and the wide net is closer.
    assert errs[1] < 0.05 and errs[1] < errs[0], errs

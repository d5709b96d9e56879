"""kip.kernels against neural-tangents 0.6.5 (fixtures made by tests/fixtures/make_nt_fixtures.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import kernels

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
RTOL = 1e-9  # the issue asks for 1e-6; the recursions agree to ~1e-14
# ...except where a point meets itself: there sqrt(K11 K22 - K12^2) is the square root of
# rounding noise in neural-tangents (~sqrt(eps) = 1.5e-8 relative), while kip returns the exact 0.
RTOL_IDENTICAL = 1e-7


def load(name):
    with np.load(os.path.join(FIXTURES, name), allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    return data, [str(c) for c in data["cases"]]


FC, FC_CASES = load("nt_fc.npz")


def build(spec_json):
    return kernels.serial(*[getattr(kernels, name)(**kwargs) for name, kwargs in json.loads(str(spec_json))])


def assert_close(got, want, rtol=RTOL, identical=None):
    """Elementwise relative error <= rtol (RTOL_IDENTICAL on the `identical` mask)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    tol = np.full(want.shape, rtol)
    if identical is not None:
        tol[identical] = max(rtol, RTOL_IDENTICAL)
    scale = np.max(np.abs(want))
    np.testing.assert_array_less(np.abs(got - want), tol * np.maximum(np.abs(want), 1e-3 * scale) + 1e-300)


def identical_pairs(x1, x2):
    """(n1, n2) mask of pairs of equal inputs."""
    f1, f2 = x1.reshape(len(x1), -1), x2.reshape(len(x2), -1)
    return np.all(f1[:, None, :] == f2[None, :, :], axis=-1)


@pytest.mark.parametrize("case", FC_CASES)
def test_fc_matches_neural_tangents(case):
    layer = build(FC[f"{case}/spec"])
    x1, x2 = FC[f"{case}/x1"], FC[f"{case}/x2"]
    both = layer.kernel_fn(x1, x2, ("nngp", "ntk"))
    assert_close(both.nngp, FC[f"{case}/nngp"], identical=identical_pairs(x1, x2))
    assert_close(both.ntk, FC[f"{case}/ntk"], identical=identical_pairs(x1, x2))
    same = layer.kernel_fn(x1, None, ("nngp", "ntk"))
    assert_close(same.nngp, FC[f"{case}/nngp_same"], identical=identical_pairs(x1, x1))
    assert_close(same.ntk, FC[f"{case}/ntk_same"], identical=identical_pairs(x1, x1))


@pytest.mark.parametrize("case", ["fc1_kip", "fc3_kip", "fc2_standard_w64"])
def test_fc_float32_close_to_float64_reference(case):
    layer = build(FC[f"{case}/spec"])
    x1, x2 = (FC[f"{case}/{k}"].astype(np.float32) for k in ("x1", "x2"))
    ntk = layer.kernel_fn(x1, x2, "ntk")
    assert ntk.dtype == jnp.float32
    assert_close(ntk, FC[f"{case}/ntk"], rtol=1e-4, identical=identical_pairs(x1, x2))


def test_get_forms_and_jit():
    layer = build(FC["fc2_kip/spec"])
    x1, x2 = FC["fc2_kip/x1"], FC["fc2_kip/x2"]
    full = layer.kernel_fn(x1, x2)
    assert isinstance(full, kernels.Kernel)
    mask = identical_pairs(x1, x2)
    assert_close(full.ntk, FC["fc2_kip/ntk"], identical=mask)
    jitted = jax.jit(layer.kernel_fn, static_argnames="get")
    assert_close(jitted(x1, x2, get="nngp"), FC["fc2_kip/nngp"], identical=mask)
    with pytest.raises(ValueError, match="get="):
        layer.kernel_fn(x1, x2, "ntk_typo")
    with pytest.raises(ValueError, match="trailing shapes"):
        layer.kernel_fn(x1, x2[:, :3])


def test_fc_preset_is_the_notebook_architecture():
    layer = kernels.fc(2)
    ref = build(FC["fc2_kip/spec"])
    x1, x2 = FC["fc2_kip/x1"], FC["fc2_kip/x2"]
    assert_close(layer.kernel_fn(x1, x2, "ntk"), ref.kernel_fn(x1, x2, "ntk"), rtol=1e-14)
    with pytest.raises(ValueError, match="unknown kernel"):
        kernels.preset("fc9")


def test_cached_input_stats_give_the_same_kernel():
    layer = build(FC["fc2_image_5x4x3/spec"])
    x1, x2 = FC["fc2_image_5x4x3/x1"], FC["fc2_image_5x4x3/x2"]
    stats = layer.kernel_fn.input_stats(x2)
    assert stats.shape == (len(x2),)
    np.testing.assert_array_equal(layer.kernel_fn(x1, x2, "ntk", cov2=stats), layer.kernel_fn(x1, x2, "ntk"))
    with pytest.raises(ValueError, match="cov2 has shape"):
        layer.kernel_fn(x1, x2, "ntk", cov2=stats[:2])

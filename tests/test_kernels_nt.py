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
CONV, CONV_CASES = load("nt_conv.npz")


def build(spec_json):
    return kernels.serial(*[getattr(kernels, name)(**kwargs) for name, kwargs in json.loads(str(spec_json))])


def compare_to_fixture(fixture, case, rtol=RTOL):
    layer = build(fixture[f"{case}/spec"])
    x1, x2 = fixture[f"{case}/x1"], fixture[f"{case}/x2"]
    both = layer.kernel_fn(x1, x2, ("nngp", "ntk"))
    assert_close(both.nngp, fixture[f"{case}/nngp"], rtol, identical_pairs(x1, x2))
    assert_close(both.ntk, fixture[f"{case}/ntk"], rtol, identical_pairs(x1, x2))
    same = layer.kernel_fn(x1, None, ("nngp", "ntk"))
    assert_close(same.nngp, fixture[f"{case}/nngp_same"], rtol, identical_pairs(x1, x1))
    assert_close(same.ntk, fixture[f"{case}/ntk_same"], rtol, identical_pairs(x1, x1))


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
    compare_to_fixture(FC, case)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_neural_tangents(case):
    compare_to_fixture(CONV, case)  # the issue asks for 1e-5; this checks 1e-9


@pytest.mark.parametrize("case", ["pool_disjoint", "convnet_depth2"])
def test_conv_float32_close_to_float64_reference(case):
    layer = build(CONV[f"{case}/spec"])
    x1, x2 = (CONV[f"{case}/{k}"].astype(np.float32) for k in ("x1", "x2"))
    ntk = layer.kernel_fn(x1, x2, "ntk")
    assert ntk.dtype == jnp.float32
    assert_close(ntk, CONV[f"{case}/ntk"], rtol=1e-4, identical=identical_pairs(x1, x2))


def test_conv_kernel_jits_and_pairs_per_step_does_not_change_it():
    layer = build(CONV["convnet_depth2/spec"])
    x1, x2 = CONV["convnet_depth2/x1"], CONV["convnet_depth2/x2"]
    one = jax.jit(lambda a, b: layer.kernel_fn(a, b, "ntk"))(x1, x2)
    three = jax.jit(lambda a, b: layer.kernel_fn.with_pairs_per_step(3)(a, b, "ntk"))(x1, x2)
    np.testing.assert_allclose(three, one, rtol=1e-13)
    assert_close(one, CONV["convnet_depth2/ntk"], identical=identical_pairs(x1, x2))


def test_spatial_output_in_neural_tangents_layout():
    """A network ending on a pooled (not flattened) layer returns (n1, n2, H, H, W, W)."""
    layer = kernels.serial(kernels.Conv(4, (3, 3), padding="SAME"), kernels.Relu(), kernels.AvgPool((2, 2), (2, 2)))
    x1 = np.random.RandomState(0).randn(2, 4, 6, 1)
    x2 = np.random.RandomState(1).randn(3, 4, 6, 1)
    k = layer.kernel_fn(x1, x2, "nngp")
    assert k.shape == (2, 3, 2, 2, 3, 3)
    flat = kernels.serial(layer, kernels.Flatten()).kernel_fn(x1, x2, "nngp")
    # Flatten = mean of same-position entries, in neural-tangents' (H, H, W, W) order
    np.testing.assert_allclose(flat, np.einsum("abhhww->ab", k) / 6, rtol=1e-12)
    # K(x, x) computes each unordered pair once and mirrors it (positions swapped)
    x = np.concatenate([x1, x2])
    np.testing.assert_allclose(layer.kernel_fn(x, None, "ntk"), layer.kernel_fn(x, x + 0.0, "ntk"), rtol=1e-12)


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


def test_memory_is_bounded_by_the_pair_block_not_by_n():
    """XLA's own accounting of the compiled program's scratch memory: a 10 x n ConvNet3
    evaluation needs the same working set for n = 20 and n = 2000 (one pair at a time),
    and pairs_per_step scales it within the `with_max_memory` budget."""
    import functools

    from kip import krr

    layer = kernels.convnet(3, prepend_conv=False)
    xs, ys = jnp.zeros((10, 16, 16, 3)), jnp.zeros((10, 10))

    def temp_bytes(kernel_fn, n):
        kfn = functools.partial(kernel_fn, get="ntk")
        x = jax.ShapeDtypeStruct((n, 16, 16, 3), jnp.float64)
        compiled = jax.jit(lambda xt: krr.predict(kfn, xs, ys, xt, block_size=20)).lower(x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(layer.kernel_fn, 20), temp_bytes(layer.kernel_fn, 2000)
    assert large <= small * 1.05
    per_pair = kernels.stax.bytes_per_pair((16, 16), jnp.float64)
    assert small <= per_pair
    budget = 4 * per_pair
    bounded = layer.kernel_fn.with_max_memory(budget, (16, 16, 3))
    assert bounded.pairs_per_step == 4
    assert temp_bytes(bounded, 2000) <= budget


PRESET_FIXTURE, PRESET_CASES = load("nt_presets.npz")


@pytest.mark.parametrize("case", PRESET_CASES)
def test_presets_match_the_architectures_in_neural_tangents(case):
    x1, x2 = PRESET_FIXTURE[f"{case}/x1"], PRESET_FIXTURE[f"{case}/x2"]
    ntk = kernels.preset(case).kernel_fn(x1, x2, "ntk")
    assert_close(ntk, PRESET_FIXTURE[f"{case}/ntk"], identical=identical_pairs(x1, x2))


def test_band_of_position_pairs_is_used_where_it_pays():
    """Under a Flatten only pairs of positions a few pools' windows apart reach the output:
    ConvNet3 on 16x16 keeps offsets up to 7 (`stax.Band`); one more pool (offsets up to 15)
    or a global pool needs every pair; no pool needs the same positions only."""
    from kip.kernels import stax

    assert kernels.preset("convnet3").kernel_fn.spatial_layout((16, 16)) == (stax.BAND, (7, 7))
    assert kernels.preset("convnet3").kernel_fn.spatial_layout((28, 28)) == (stax.BAND, (7, 7))
    assert kernels.convnet(4, prepend_conv=False).kernel_fn.spatial_layout((16, 16)) == (stax.FULL, (0, 0))
    assert kernels.preset("myrtle5").kernel_fn.spatial_layout((32, 32)) == (stax.FULL, (0, 0))
    assert kernels.preset("convnet3").kernel_fn.with_banded(False).spatial_layout((28, 28)) == (stax.FULL, (0, 0))
    no_pool = kernels.serial(kernels.Conv(3, (3, 3), padding="SAME"), kernels.Relu(), kernels.Flatten())
    assert no_pool.kernel_fn.spatial_layout((8, 8)) == (stax.DIAG, (0, 0))
    # the all-pairs computation still matches the reference where the band is the default
    for case in ("convnet3", "convnet"):
        x1, x2 = PRESET_FIXTURE[f"{case}/x1"], PRESET_FIXTURE[f"{case}/x2"]
        ntk = kernels.preset(case).kernel_fn.with_banded(False)(x1, x2, "ntk")
        assert_close(ntk, PRESET_FIXTURE[f"{case}/ntk"], identical=identical_pairs(x1, x2))


BAND_NETWORKS = {
    # layers the neural-tangents fixtures do not combine with a band
    "valid_conv_erf_offset": [kernels.Conv(4, (3, 3), padding="VALID", W_std=1.3, b_std=0.2),
                              kernels.Erf(a=1.1, b=0.7, c=0.3), kernels.AvgPool((2, 2), (2, 2)), kernels.Flatten()],
    "even_filter_dense_abrelu": [kernels.Conv(4, (2, 2), padding="SAME", W_std=1.2, b_std=0.1),
                                 kernels.Dense(5, 1.1, 0.3), kernels.ABRelu(-0.3, 1.2),
                                 kernels.AvgPool((2, 2), (2, 2)), kernels.Conv(3, (3, 3), padding="SAME"),
                                 kernels.Relu(), kernels.Flatten(), kernels.Dense(2)],
    "pool_under_flatten_3x2": [kernels.Conv(4, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), kernels.Relu(),
                               kernels.AvgPool((3, 2), (3, 2)), kernels.Flatten()],
    "relu_first_then_pools": [kernels.Relu(), kernels.Conv(4, (3, 3), padding="SAME", W_std=1.4, b_std=0.1),
                              kernels.Relu(), kernels.AvgPool((2, 2), (2, 2)),
                              kernels.Conv(4, (3, 3), padding="SAME", W_std=1.4, b_std=0.1, parameterization="standard"),
                              kernels.Relu(), kernels.AvgPool((2, 2), (2, 2)), kernels.Flatten(), kernels.Dense(3)],
}


SLOW_BAND_NETWORKS = ("even_filter_dense_abrelu", "relu_first_then_pools")  # ~25 s each on a 2-core CPU


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BAND_NETWORKS else n
                                  for n in sorted(BAND_NETWORKS)])
def test_band_equals_all_pairs_with_gradients(name):
    """The band computation against the all-pairs one (checked against neural-tangents
    above) on odd, non-square images, for values and gradients in both arguments."""
    from kip.kernels import stax

    layer = kernels.serial(*BAND_NETWORKS[name])
    rng = np.random.RandomState(4)
    a, b = jnp.asarray(rng.randn(2, 13, 11, 2)), jnp.asarray(rng.randn(3, 13, 11, 2))
    assert layer.kernel_fn.spatial_layout(a.shape[1:])[0] == stax.BAND
    w1, w2, w3 = (jnp.asarray(rng.randn(*s)) for s in ((2, 3), (2, 3), (2, 2)))

    def f(kernel_fn, a, b):
        k = kernel_fn(a, b)
        return jnp.sum(w1 * k.nngp) + jnp.sum(w2 * k.ntk) + jnp.sum(w3 * kernel_fn(a, None, "ntk"))

    band, full = layer.kernel_fn, layer.kernel_fn.with_banded(False)
    for get in ("nngp", "ntk"):
        np.testing.assert_allclose(band(a, b, get), full(a, b, get), rtol=1e-12)
    # jitted: eagerly, every primitive of the pairwise engine's backward pass compiles on its own
    got = jax.jit(jax.value_and_grad(lambda a, b: f(band, a, b), argnums=(0, 1)))(a, b)
    want = jax.jit(jax.value_and_grad(lambda a, b: f(full, a, b), argnums=(0, 1)))(a, b)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12 * float(np.max(np.abs(w))))

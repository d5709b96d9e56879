"""kip.augment against independent references: PyTorch's grid_sample and interpolate and SciPy's
rotate (tests/fixtures/make_torch_fixtures.py), index arithmetic written out here, finite
differences; DSA's identity at zero strength and its siamese property."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import InputError, augment

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "torch_reference.npz"))


@pytest.mark.parametrize("name", ["scale", "rotate"])
def test_affine_equals_torch_grid_sample_with_aligned_corners(name):
    got = augment.affine(jnp.asarray(FIXTURE["affine_in"]), jnp.asarray(FIXTURE[f"affine_{name}_theta"]))
    np.testing.assert_allclose(got, FIXTURE[f"affine_{name}_out"], atol=2e-5)


def test_affine_theta_builders_give_dsa_matrices():
    np.testing.assert_allclose(augment.scale_theta(jnp.array([1.2]), jnp.array([0.9])), [[[1.2, 0, 0], [0, 0.9, 0]]])
    t = np.deg2rad(10.0)
    np.testing.assert_allclose(augment.rotate_theta(jnp.array([t])),
                               [[[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0]]], rtol=1e-6)


def test_dc_scale_equals_torch_nearest_resize_on_a_zero_canvas():
    sizes = FIXTURE["dc_scale_sizes"]
    got = augment.dc_scale(jnp.asarray(FIXTURE["dc_in"]), jnp.asarray(sizes[:, 0]), jnp.asarray(sizes[:, 1]))
    np.testing.assert_array_equal(got, FIXTURE["dc_scale_out"])


def test_dc_rotate_equals_scipy_rotate_order_1():
    got = augment.dc_rotate(jnp.asarray(FIXTURE["dc_in"]), jnp.asarray(FIXTURE["dc_rotate_degrees"], jnp.float32),
                            float(FIXTURE["dc_rotate_fill"]))
    np.testing.assert_allclose(got, FIXTURE["dc_rotate_out"], atol=2e-5)


def test_translate_and_cutout_by_index_arithmetic():
    x = np.random.RandomState(0).randn(3, 7, 6, 2).astype(np.float32)
    sh, sw = np.array([-2, 0, 3]), np.array([1, -4, 0])
    got = np.asarray(augment.translate(jnp.asarray(x), jnp.asarray(sh), jnp.asarray(sw), fill=jnp.array([0.5, -1.0])))
    for k in range(3):
        for i in range(7):
            for j in range(6):
                si, sj = i + sh[k], j + sw[k]
                want = x[k, si, sj] if 0 <= si < 7 and 0 <= sj < 6 else [0.5, -1.0]
                np.testing.assert_array_equal(got[k, i, j], want)
    cut = np.asarray(augment.cutout(jnp.asarray(x), jnp.array([0, 3, 7]), jnp.array([5, 0, 2]), (4, 3)))
    for k, (ch, cw) in enumerate([(0, 5), (3, 0), (7, 2)]):
        rows = set(range(ch - 2, ch + 2)) & set(range(7))
        cols = set(range(cw - 1, cw + 2)) & set(range(6))
        mask = np.array([[not (i in rows and j in cols) for j in range(6)] for i in range(7)])
        np.testing.assert_array_equal(cut[k], x[k] * mask[:, :, None])


def test_color_follows_dsa_formulas():
    x = np.random.RandomState(1).randn(2, 4, 5, 3)
    b, s, c = np.array([0.3, -0.1]), np.array([1.5, 0.2]), np.array([0.6, 1.4])
    got = np.asarray(augment.color(jnp.asarray(x), jnp.asarray(b), jnp.asarray(s), jnp.asarray(c)))
    y = x + b[:, None, None, None]
    y = (y - y.mean(-1, keepdims=True)) * s[:, None, None, None] + y.mean(-1, keepdims=True)
    y = (y - y.mean((1, 2, 3), keepdims=True)) * c[:, None, None, None] + y.mean((1, 2, 3), keepdims=True)
    np.testing.assert_allclose(got, y, rtol=1e-10)


@pytest.mark.parametrize("family", augment.DSA_FAMILIES)
def test_every_dsa_family_is_the_identity_at_zero_strength(family):
    x = jnp.asarray(np.random.RandomState(2).randn(5, 8, 8, 3))
    for siamese in (False, True):
        got = augment.dsa(jax.random.PRNGKey(3), x, family, siamese=siamese, strength=augment.IDENTITY)
        np.testing.assert_allclose(got, x, atol=1e-12)


@pytest.mark.parametrize("family", augment.DSA_FAMILIES)
def test_dsa_gradients_in_the_images_equal_finite_differences(family):
    rng = np.random.RandomState(4)
    x = jnp.asarray(rng.randn(3, 8, 8, 3))
    w = jnp.asarray(rng.randn(3, 8, 8, 3))
    f = jax.jit(lambda z: jnp.sum(w * augment.dsa(jax.random.PRNGKey(5), z, family)))
    direction = jnp.asarray(rng.randn(*x.shape))
    eps = 1e-6
    numeric = (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(jax.jit(jax.grad(f))(x), direction), numeric, rtol=1e-6)


@pytest.mark.parametrize("strategy", [pytest.param(augment.DSA_STRATEGY, marks=pytest.mark.slow),  # ~27 s: the families below
                                      "scale", "rotate", "crop", "cutout", "color"])
def test_siamese_draws_transform_any_batch_the_same_way(strategy):
    rng = np.random.RandomState(6)
    real, synthetic = jnp.asarray(rng.randn(6, 8, 8, 3)), jnp.asarray(rng.randn(2, 8, 8, 3))
    for seed in range(8):
        key = jax.random.PRNGKey(seed)
        together = augment.dsa(key, jnp.concatenate([real, synthetic]), strategy, siamese=True, single=False)
        apart = jnp.concatenate([augment.dsa(key, real, strategy, siamese=True, single=False),
                                 augment.dsa(key, synthetic, strategy, siamese=True, single=False)])
        np.testing.assert_allclose(together, apart, atol=1e-12)
        # ... the same image gets the same transform in either batch
        np.testing.assert_allclose(augment.dsa(key, real[:1], strategy, siamese=True),
                                   augment.dsa(key, jnp.concatenate([real[:1], synthetic]), strategy, siamese=True)[:1],
                                   atol=1e-12)


def test_without_siamese_each_image_draws_its_own_transform():
    same = jnp.broadcast_to(jnp.asarray(np.random.RandomState(7).randn(1, 8, 8, 3)), (6, 8, 8, 3))
    for family in ("scale", "rotate", "crop", "cutout", "color"):
        out = np.asarray(augment.dsa(jax.random.PRNGKey(8), same, family))
        assert len({out[i].tobytes() for i in range(6)}) > 1, family
        siamese = np.asarray(augment.dsa(jax.random.PRNGKey(8), same, family, siamese=True))
        assert len({siamese[i].tobytes() for i in range(6)}) == 1, family


def test_single_mode_applies_one_family_per_call():
    x = np.random.RandomState(9).rand(4, 8, 8, 1) + 1.0  # no zeros: a cutout shows
    seen = set()
    draw = jax.jit(lambda key: augment.dsa(key, jnp.asarray(x), "flip_cutout", siamese=True))  # compiled once
    for seed in range(30):
        out = np.asarray(draw(jax.random.PRNGKey(seed)))
        if np.array_equal(out, x[:, :, ::-1]):
            seen.add("flipped")
        elif np.array_equal(out, x):
            seen.add("unchanged")
        else:  # cut out, and not flipped as well: the rest is the image itself
            assert np.array_equal(out[out != 0], x[out != 0]), seed
            seen.add("cut")
    assert seen == {"flipped", "unchanged", "cut"}


def test_dc_augment_gives_each_image_one_of_its_families():
    x = jnp.asarray(np.random.RandomState(10).randn(40, 12, 12, 1), jnp.float32)
    key = jax.random.PRNGKey(11)
    out = np.asarray(augment.dc_augment(key, x, "crop_noise"))
    mean = float(np.mean(np.asarray(x)))
    # every image under every shift, one call per shift: (64, 40, 12, 12, 1)
    shifts = np.stack([np.asarray(augment.translate(x, jnp.full(40, a), jnp.full(40, b), fill=mean))
                       for a in range(-4, 4) for b in range(-4, 4)])
    kinds = []
    for k in range(40):
        noise = np.abs(out[k] - np.asarray(x[k])).max() < 0.01 and not np.array_equal(out[k], np.asarray(x[k]))
        shifted = any(np.allclose(out[k], s[k]) for s in shifts)
        kinds.append("noise" if noise else "crop" if shifted else "?")
    assert "?" not in kinds and 5 < kinds.count("noise") < 35


@pytest.mark.parametrize("spec, message", [
    (("rotate",), "augmentation must be among"),
    (("dsa:color_warp",), "unknown: 'warp'"),
    (("dc:color",), "unknown: 'color'"),
    (("flip", "dsa:color"), "stand alone"),
    (("xyz:crop",), "prefix"),
])
def test_bad_augmentation_specs_are_refused(spec, message):
    with pytest.raises(InputError, match=message):
        augment.check(spec)

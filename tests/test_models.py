"""kip.models: output shapes, initial weight scales, and that the empirical NTK of a wide
finite network approaches the analytic kernel of the preset with the same name."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import InputError, kernels, models

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CONV = ("convnet", "convnet3", "myrtle5", "myrtle7", "myrtle10")
# the NTK-convergence checks, ~15-40 s each: Myrtle-7 and -10 repeat Myrtle-5's layers in longer
# stages (one table, kernels.presets.MYRTLE_BLOCKS), so CI checks Myrtle-5 and the full run all three
CONV_CHECKED = [pytest.param(n, marks=pytest.mark.slow) if n in ("myrtle7", "myrtle10") else n for n in CONV]


@pytest.mark.parametrize("name", [n for n in models.PRESETS if n != "resnet18"])  # ResNet: below, traced only
@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_output_shapes(name, shape):
    model = models.build(name, num_classes=7, width=4)
    x = jnp.ones((3, *shape))
    variables = model.init(jax.random.PRNGKey(0), x)
    assert model.apply(variables, x).shape == (3, 7)
    assert model.apply(variables, x, train=True).shape == (3, 7)


def test_layer_counts_follow_the_papers():
    def convs(name):
        x = jnp.ones((1, 8, 8, 1))
        params = models.build(name, width=2).init(jax.random.PRNGKey(0), x)["params"]
        return sum(k.startswith("Conv") for k in params), sum(k.startswith("Dense") for k in params)

    # ConvNet: 1 + 3 convs; ConvNet3: 3; Myrtle-d: d - 1 convs and one Dense.
    assert [convs(n) for n in CONV] == [(4, 1), (3, 1), (4, 1), (6, 1), (9, 1)]
    assert convs("fc3") == (0, 4)


def test_instance_norm_normalises_each_channel_of_each_image():
    model = models.build("convnet3", width=16, norm="instance")
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3)) * 5 + 3
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
    _, inter = model.apply(variables, x, capture_intermediates=lambda mdl, _: type(mdl).__name__ == "InstanceNorm",
                           mutable=["intermediates"])
    h = inter["intermediates"]["InstanceNorm_0"]["__call__"][0]  # (2, 8, 8, 16), scale 1, bias 0 at init
    np.testing.assert_allclose(h.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(h.var(axis=(1, 2)), 1, atol=1e-3)


@pytest.mark.parametrize("parameterization", ["standard", "ntk"])
def test_initial_weights_have_the_kernel_scales(parameterization):
    w_std, b_std, fan_in, width = 1.7, 0.3, 400, 500
    model = models.build("fc1", num_classes=3, width=width, parameterization=parameterization, W_std=w_std, b_std=b_std)
    x = jnp.ones((1, fan_in))
    layer = model.init(jax.random.PRNGKey(0), x)["params"]["Dense_0"]
    expected = (1.0, 1.0) if parameterization == "ntk" else (w_std / math.sqrt(fan_in), b_std)
    np.testing.assert_allclose(np.std(layer["kernel"]), expected[0], rtol=0.01)  # 200k draws
    np.testing.assert_allclose(np.std(layer["bias"]), expected[1], rtol=0.2)  # 500 draws
    # ... and the same function either way: pre-activation variance W_std^2 |x|^2 / fan_in + b_std^2
    h = jax.vmap(lambda k: model.apply(model.init(k, x), x, capture_intermediates=True)[1]["intermediates"]
                 ["Dense_0"]["__call__"][0])(jax.random.split(jax.random.PRNGKey(1), 40))
    np.testing.assert_allclose(np.var(h), w_std**2 + b_std**2, rtol=0.05)  # 20k draws


def ntk_error(name, width, seeds, x, reference, num_classes=1):
    """Relative Frobenius error against `reference` of each network's empirical NTK (NTK
    parameterization, float64), and of their mean over seeds."""
    model = models.build(name, num_classes=num_classes, width=width, parameterization="ntk", param_dtype=jnp.float64)
    ntk = jax.jit(lambda key: models.empirical_ntk(model, model.init(key, x), x))
    ks = [np.asarray(ntk(jax.random.PRNGKey(s))) for s in range(seeds)]
    err = lambda k: np.linalg.norm(k - reference) / np.linalg.norm(reference)
    return np.mean([err(k) for k in ks]), err(np.mean(ks, axis=0))


def test_wide_fc_ntk_approaches_the_analytic_kernel():
    # The empirical NTK fluctuates around its limit by O(1/sqrt(width)) (measured: about
    # 0.2 at width 64 and 0.015 at 16384 for FC1): each 256x wider network must be >3x closer
    # (16x expected) and a width-16384 one within 5%.
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 4, 2), jnp.float64)
    analytic = kernels.fc(1, num_classes=1).kernel_fn(x, None, "ntk")
    narrow, _ = ntk_error("fc1", 64, 4, x, analytic)
    wide, _ = ntk_error("fc1", 16384, 4, x, analytic)
    assert wide < 0.05 and wide < narrow / 3, (narrow, wide)
    # FC2 with 3 outputs (their NTKs averaged), width 1024: ~0.08 per network (measured)
    analytic = kernels.fc(2, num_classes=3).kernel_fn(x, None, "ntk")
    assert ntk_error("fc2", 1024, 2, x, analytic, num_classes=3)[0] < 0.2


def conv_reference():
    with np.load(os.path.join(FIXTURES, "nt_models.npz")) as f:
        return {k: f[k] for k in f.files}


def assert_conv_ntk_converges(name, x, analytic):
    """A width-128 conv net's empirical NTK is off its limit by ~0.15-0.3 (measured on these
    12x12 inputs); that noise averages out over seeds (~1/sqrt(32) = 0.18 of it left in a mean
    of 32, plus an O(1/width) bias), while a different architecture or scale would not: the
    mean must be 3x closer than a single network and within 6% (measured: 0.005-0.033)."""
    single, mean = ntk_error(name, 128, 32, x, analytic)
    assert mean < 0.06 and mean < single / 3, (single, mean)


@pytest.mark.parametrize("name", CONV_CHECKED)
def test_conv_ntk_approaches_neural_tangents(name):
    # Against neural-tangents 0.6.5's analytic NTK of the same layout (fixture made by
    # tests/fixtures/make_nt_models_fixture.py). See `assert_conv_ntk_converges`.
    ref = conv_reference()
    assert_conv_ntk_converges(name, jnp.asarray(ref["x"]), ref[name])


@pytest.mark.parametrize("name", CONV_CHECKED)
def test_conv_ntk_approaches_kip_kernel_preset(name):
    layer = kernels.preset(name, num_classes=1)
    x = jnp.asarray(conv_reference()["x"])
    assert_conv_ntk_converges(name, x, np.asarray(layer.kernel_fn(x, None, "ntk")))


@pytest.mark.parametrize("channels, kernel, strides, size", [
    (1, 3, (1, 1), (9, 8)),  # few inputs per position: input derivative by patches
    pytest.param(3, 3, (2, 2), (9, 8), marks=pytest.mark.slow),  # strided patches: (2, 3, (2, 1)) below too
    (2, 3, (2, 1), (8, 7)),
    (6, 3, (1, 1), (9, 8)),  # many: by the input/output-swapped kernel
    pytest.param(6, 3, (2, 2), (8, 8), marks=pytest.mark.slow),  # strided swapped: (40, 1, (2, 2)) below too
    (40, 1, (2, 2), (8, 7)),
    (40, 5, (1, 1), (7, 7)),
])
def test_conv_derivatives_equal_lax_convolution(channels, kernel, strides, size):
    """`models._conv` rewrites the input and weight derivatives for speed: its value, gradients
    (input and weights), forward mode, per-example gradients (vmap of grad), per-network weight
    gradients, weight gradients in a scan, Hessian and gradient of a gradient must equal those
    of lax's convolution, which JAX differentiates itself."""
    x = jax.random.normal(jax.random.PRNGKey(0), (3, *size, channels), jnp.float64)
    w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, channels, 5), jnp.float64)
    padding = ((kernel // 2, kernel // 2),) * 2
    ours = lambda x, w: models._conv(x, w, strides, padding)  # noqa: E731
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731,E501
    probe = jax.random.normal(jax.random.PRNGKey(2), ref(x, w).shape, jnp.float64)
    loss = lambda conv: (lambda x, w: jnp.sum(jnp.sin(conv(x, w)) * probe))  # noqa: E731
    derivatives = {
        "value": lambda conv: conv(x, w),
        "grad": lambda conv: jax.grad(loss(conv), (0, 1))(x, w),
        "jvp": lambda conv: jax.jvp(loss(conv), (x, w), (jnp.cos(x), jnp.cos(w)))[1],
        "per-example grad": lambda conv: jax.vmap(jax.grad(loss(conv)), (0, None))(x[:, None], w),
        "hessian": lambda conv: jax.hessian(lambda x: loss(conv)(x, w))(x[:1]),
        "grad of grad": lambda conv: jax.grad(lambda w: jnp.sum(jax.grad(loss(conv))(x, w) ** 2))(w),
        # as networks train: weight gradients of several networks at once, and inside a loop
        "per-network weight grad": lambda conv: jax.vmap(jax.grad(loss(conv), 1), (None, 0))(x, jnp.stack([w, jnp.cos(w)])),
        "weight grad in a scan": lambda conv: jax.lax.scan(lambda c, _: (c, jax.grad(loss(conv), 1)(x, w)), 0, None,
                                                           length=2)[1],
    }
    for name, derivative in derivatives.items():
        # jitted: eagerly, each primitive of the Hessian and the nested gradients compiles on its own
        got, want = (jax.jit(lambda conv=conv: derivative(conv))() for conv in (ours, ref))
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * float(jnp.max(jnp.abs(b))), err_msg=name)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="resnet9000"), "unknown model"),
        (dict(name="fc1", parameterization="mup"), "parameterization"),
        (dict(name="fc1", norm="instance"), "conv nets only"),
        (dict(name="resnet18", norm="instance"), "conv nets only"),
        (dict(name="convnet", norm="group"), "norm must be"),
        (dict(name="myrtle5", norm="batch"), "ConvNets only"),
        (dict(name="convnet", width=0), "at least 1"),
    ],
)
def test_bad_options_raise_input_error(kwargs, message):
    with pytest.raises(InputError, match=message):
        models.build(**kwargs)


def test_images_too_small_for_the_pooling_are_refused():
    models.build("convnet").check_input_shape((8, 8, 1))
    with pytest.raises(InputError, match="at least 8x8"):
        models.build("convnet").check_input_shape((4, 4, 1))
    with pytest.raises(InputError, match="H x W x C"):
        models.build("myrtle5").check_input_shape((64,))
    models.build("fc1").check_input_shape((64,))


def test_resnet18_has_the_cifar_layout_and_parameter_count():
    # 3x3 stride-1 stem with 64 channels, no max-pool, 4 stages down to 4x4 at 32x32 inputs; the
    # 11,173,962 parameters of the usual CIFAR ResNet-18 (e.g. torchvision-style BasicBlocks with
    # 1x1 projection shortcuts), BatchNorm scale and bias included, running statistics not.
    model = models.build("resnet18")
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, capture_intermediates=True), x)
    params, inter = variables["params"], variables
    assert sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)) == 11_173_962
    assert params["Conv_0"]["kernel"].shape == (3, 3, 3, 64) and "bias" not in params["Conv_0"]
    assert [inter["intermediates"][f"BasicBlock_{i}"]["__call__"][0].shape[1:] for i in (0, 2, 4, 6, 7)] == [
        (32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)]
    assert scores_last_layer(params) == "Dense_0"
    for shape in [(8, 8, 1), (28, 28, 1)]:
        small = models.build("resnet18", num_classes=7, width=4)
        out = jax.eval_shape(lambda x: small.apply(small.init(jax.random.PRNGKey(0), x), x, train=True,
                                                   mutable=["batch_stats"])[0], jnp.ones((3, *shape)))
        assert out.shape == (3, 7)


def scores_last_layer(params):
    from kip import scores

    return scores.last_layer(params)


def test_resnet_block_uses_batch_statistics_in_train_mode_only():
    block = models.BasicBlock(5, strides=2)  # with a projection shortcut: 3 convs, 3 BatchNorms
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 8, 8, 3))
    variables = block.init(jax.random.PRNGKey(1), x, train=False)
    assert sorted(variables["params"]) == ["BatchNorm_0", "BatchNorm_1", "BatchNorm_2", "Conv_0", "Conv_1", "Conv_2"]
    # eval mode: an example's output does not depend on the rest of its batch
    np.testing.assert_allclose(block.apply(variables, x, False)[:2], block.apply(variables, x[:2], False), rtol=1e-5, atol=1e-6)
    out, state = block.apply(variables, x, True, mutable=["batch_stats"])
    out_pair, _ = block.apply(variables, x[:2], True, mutable=["batch_stats"])
    assert out.shape == (6, 4, 4, 5) and not np.allclose(out[:2], out_pair, atol=1e-4)
    # the first running mean moves from 0 by (1 - momentum) x the batch mean of the first conv's output
    conv = block.apply(variables, x, False, capture_intermediates=lambda m, _: type(m).__name__ == "Conv",
                       mutable=["intermediates"])[1]["intermediates"]["Conv_0"]["__call__"][0]
    np.testing.assert_allclose(state["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * conv.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-7)


def test_frepo_conv_has_its_layout_parameter_count_and_batch_norm_momentum():
    # FRePo's Conv (normalization='batch', width 128) on MNIST: the first conv pads 28 -> 32 (3 a side),
    # blocks of 128, 256, 512 channels pooled to 16, 8, 4, a BatchNorm on the 2nd and 3rd blocks' inputs
    from kip import method_run

    model, embed, width = method_run.frepo_conv(None, 10)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(1), x)
    params = variables["params"]
    conv = lambda c_in, c_out: 9 * c_in * c_out + c_out
    assert width == 128 and sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)) == (
        conv(1, 128) + 2 * 128 + conv(128, 256) + 2 * 256 + conv(256, 512) + 4 * 4 * 512 * 10 + 10)
    assert [params[f"BatchNorm_{i}"]["scale"].shape for i in (0, 1)] == [(128,), (256,)]
    features = embed.apply(frepo_head_free(variables, embed), x)
    assert features.shape == (6, 4 * 4 * 512)
    # train mode: batch statistics (an image's output depends on its batch), and the running mean keeps
    # 0.1 of the old (FRePo's flax momentum 0.1): from 0, one batch gives 0.9 m, the same batch again 0.99 m
    out, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    out_pair, _ = model.apply(variables, x[:2], train=True, mutable=["batch_stats"])
    assert not np.allclose(out[:2], out_pair, atol=1e-4)
    _, state2 = model.apply({**variables, **state}, x, train=True, mutable=["batch_stats"])
    m1, m2 = (np.asarray(s["batch_stats"]["BatchNorm_0"]["mean"]) for s in (state, state2))
    np.testing.assert_allclose(m2, 1.1 * m1, rtol=1e-4, atol=1e-7)
    # eval mode (FRePo's features): running statistics, so an image's features are its own
    trained = {**variables, **state2}
    np.testing.assert_allclose(embed.apply(frepo_head_free(trained, embed), x)[:2],
                               embed.apply(frepo_head_free(trained, embed), x[:2]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(embed.apply(frepo_head_free(trained, embed), x), features, atol=1e-4)


def frepo_head_free(variables, embed):
    from kip import frepo

    return frepo.head_free(variables, embed.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))["params"])

"""KIP and Label Solve: gradients against finite differences, the loss falls, Label Solve
is the least-squares optimum, and the jitted step samples class-balanced batches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kip import data, distill, kernels, loop
from kip.kernels import engine, stax


def toy(n_train=200, num_classes=3, dim=6, seed=0):
    rng = np.random.RandomState(seed)
    centres = rng.randn(num_classes, dim) * 2
    labels = np.arange(n_train) % num_classes
    x = centres[labels] + rng.randn(n_train, dim)
    return x, labels


@pytest.mark.parametrize("learn_labels", [False, True])
@pytest.mark.parametrize("kernel", ["fc1", "fc3"])
def test_kip_gradient_matches_finite_differences(kernel, learn_labels):
    kfn = functools.partial(kernels.preset(kernel, num_classes=3).kernel_fn, get="ntk")
    x, labels = toy()
    y = data.one_hot(labels, 3, dtype=jnp.float64)
    params = {"images": jnp.asarray(x[:6] + 0.3), "labels": y[:6] * 1.1}
    loss = jax.jit(lambda p: distill.kip_loss(kfn, p, jnp.asarray(x[6:60]), y[6:60], 1e-4, learn_labels)[0])
    grads = jax.jit(jax.grad(loss))(params)
    rng = np.random.RandomState(1)
    for name in ("images", "labels"):
        direction = jnp.asarray(rng.randn(*params[name].shape))
        eps = 1e-6
        plus = {**params, name: params[name] + eps * direction}
        minus = {**params, name: params[name] - eps * direction}
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        analytic = jnp.vdot(grads[name], direction)
        if name == "labels" and not learn_labels:
            assert float(jnp.abs(grads[name]).max()) == 0.0  # labels fixed: no gradient flows
        else:
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_gradient_finite_at_support_point_equal_to_a_target():
    """K(x, x) pairs sit exactly on the arc-cosine kernel's singular derivative."""
    kfn = functools.partial(kernels.fc(2, num_classes=3).kernel_fn, get="ntk")
    x, labels = toy()
    y = data.one_hot(labels, 3, dtype=jnp.float64)
    params = {"images": jnp.asarray(x[:6]), "labels": y[:6]}
    grads = jax.grad(lambda p: distill.kip_loss(kfn, p, jnp.asarray(x[:50]), y[:50])[0])(params)
    assert np.all(np.isfinite(grads["images"]))


@pytest.mark.parametrize("precision", [jnp.float64, jnp.float32])
def test_kip_steps_reduce_loss_and_sample_balanced(precision):
    x, labels = toy(n_train=300)
    layer = kernels.fc(1, num_classes=3)
    train = distill.train_data(x, labels, 3, precision, layer.kernel_fn)
    kfn = functools.partial(layer.kernel_fn, get="ntk")
    opt = optax.adam(0.04)
    init = data.balanced_subset(jax.random.PRNGKey(0), labels, 3, 2)
    state = distill.init_state(train.images[init], train.targets[init], opt, jax.random.PRNGKey(1))
    before = distill.kip_loss(kfn, state.params, train.images, train.targets)[0]
    run = distill.make_multi_step(distill.make_step(kfn, opt, target_batch=60), 50)
    state, metrics = run(state, train)
    after = distill.kip_loss(kfn, state.params, train.images, train.targets)[0]
    assert metrics["loss"].shape == (50,)
    assert int(state.step) == 50
    assert state.params["images"].dtype == precision
    assert float(after) < 0.7 * float(before)
    np.testing.assert_array_equal(state.params["labels"], train.targets[init])  # not learned


def test_fused_steps_of_any_length_equal_the_scanned_steps_from_one_compiled_program():
    x, labels = toy(n_train=120)
    layer = kernels.fc(1, num_classes=3)
    train = distill.train_data(x, labels, 3, jnp.float64, layer.kernel_fn)
    opt = optax.adam(0.04)
    init = data.balanced_subset(jax.random.PRNGKey(0), labels, 3, 2)
    state = distill.init_state(train.images[init], train.targets[init], opt, jax.random.PRNGKey(1))
    step = distill.make_step(functools.partial(layer.kernel_fn, get="ntk"), opt, target_batch=30, learn_labels=True)
    traces = []

    def counted(s, t):
        traces.append(1)  # runs when the step is traced, not when a compiled program runs
        return step(s, t)

    scanned, scanned_metrics = distill.make_multi_step(step, 9)(state, train)
    fused = loop.fused_steps(counted, capacity=4)
    mid, first = fused(state, train, num_steps=2)
    traced_once = len(traces)
    end, rest = fused(mid, train, num_steps=7)  # 4 + 3: longer than the capacity, split in two calls
    assert len(traces) == traced_once  # every length reused the one program
    assert first["loss"].shape == (2,) and rest["loss"].shape == (7,)
    np.testing.assert_array_equal(np.concatenate([first["loss"], rest["loss"]]), scanned_metrics["loss"])
    for a, b in zip(jax.tree_util.tree_leaves(end), jax.tree_util.tree_leaves(scanned)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="at least 1"):
        fused(state, train, num_steps=0)


def test_adam_step_with_its_lr_as_an_argument_equals_the_step_with_the_lr_built_in():
    x, labels = toy(n_train=120)
    layer = kernels.fc(1, num_classes=3)
    train = distill.train_data(x, labels, 3, jnp.float64, layer.kernel_fn)
    kfn = functools.partial(layer.kernel_fn, get="ntk")
    init = data.balanced_subset(jax.random.PRNGKey(0), labels, 3, 2)
    state = distill.init_state(train.images[init], train.targets[init], optax.adam(0.1), jax.random.PRNGKey(1), "platt")
    traces = []

    def counted(s, t):
        traces.append(1)
        return distill.make_adam_step(kfn, 30, learn_labels=True, loss="platt")(s, t)

    fused = loop.fused_steps(counted)
    traced = []
    for lr in (0.01, 0.04):
        built_in = distill.make_multi_step(distill.make_step(kfn, optax.adam(lr), 30, learn_labels=True, loss="platt"), 3)
        expected, _ = built_in(state, train)
        got, _ = fused(state, (train, jnp.asarray(lr, jnp.float64)), num_steps=3)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_array_equal(a, b)
        assert got.params["images"].dtype == jnp.float64
        traced.append(len(traces))
    assert traced[0] == traced[1]  # the second lr ran the first's program


def test_balanced_sample_is_balanced_distinct_and_uniform():
    labels = np.repeat(np.arange(4), [50, 80, 31, 60])
    table, counts = (jnp.asarray(a) for a in data.class_table(labels, 4))
    sample = jax.jit(lambda k: data.balanced_sample(k, table, counts, 30))
    hits = np.zeros(len(labels))
    for i in range(400):
        idx = np.asarray(sample(jax.random.PRNGKey(i)))
        assert len(set(idx.tolist())) == 30
        per_class = np.bincount(labels[idx], minlength=4)
        assert per_class.min() >= 7 and per_class.max() <= 8
        hits[idx] += 1
    # 30 = 4 * 7 + 2: the first two classes in interleaved order get 8, the others 7; every
    # member of a class is then equally likely, 400 * k_c / n_c hits on average
    for c, (n, k) in enumerate(zip([50, 80, 31, 60], [8, 8, 7, 7])):
        members = hits[labels == c]
        assert members.sum() == 400 * k
        expected = 400 * k / n
        assert members.min() > 0 and members.std() < 2 * np.sqrt(expected)  # binomial spread, no favourites


def test_label_solve_is_least_squares_optimal():
    kfn = functools.partial(kernels.fc(1, num_classes=3).kernel_fn, get="ntk")
    x, labels = toy(n_train=120)
    y = data.one_hot(labels, 3, dtype=jnp.float64)
    xs = jnp.asarray(x[:9])
    reg = 1e-8
    ys = distill.label_solve(kfn, xs, jnp.asarray(x), y, reg=reg, block_size=50)
    # independent check: least squares for w in K_ts w ~ y_t, then y_s = (K_ss + reg/n I) w
    k_ts = np.asarray(kfn(jnp.asarray(x), xs))
    w = np.linalg.lstsq(k_ts, np.asarray(y), rcond=None)[0]
    want = (np.asarray(kfn(xs, None)) + reg / 9 * np.eye(9)) @ w
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-7)
    # and the solved labels fit the targets better than the one-hot labels do
    def fit(y_s):
        pred = k_ts @ np.linalg.solve(np.asarray(kfn(xs, None)) + reg / 9 * np.eye(9), np.asarray(y_s))
        return np.mean((pred - np.asarray(y)) ** 2)
    assert fit(ys) < fit(y[:9])


def test_label_solve_blocks_do_not_change_the_result():
    kfn = functools.partial(kernels.fc(2, num_classes=3).kernel_fn, get="ntk")
    x, labels = toy(n_train=101)
    y = data.one_hot(labels, 3, dtype=jnp.float64)
    xs = jnp.asarray(x[:6])
    a = distill.label_solve(kfn, xs, jnp.asarray(x), y, block_size=1000)
    b = distill.label_solve(kfn, xs, jnp.asarray(x), y, block_size=16)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_label_solve_memory_does_not_grow_with_the_number_of_target_blocks():
    """M = K_st K_st^T is a running sum over target blocks: the compiled working set for 300
    support images and 64 blocks of targets stays far below the 64 (300, 300) blocks a stacked
    sum would hold (46 MB), and is the same with 8 blocks."""
    kfn = functools.partial(kernels.fc(1, num_classes=3).kernel_fn, get="ntk")
    xs = jnp.zeros((300, 4), jnp.float64)

    def temp_bytes(n_targets):
        solve = jax.jit(lambda xs, xt, yt: distill.label_solve(kfn, xs, xt, yt, block_size=50))
        args = (xs, jnp.zeros((n_targets, 4), jnp.float64), jnp.zeros((n_targets, 3), jnp.float64))
        return solve.lower(*args).compile().memory_analysis().temp_size_in_bytes

    many, few = temp_bytes(64 * 50), temp_bytes(8 * 50)
    assert many < 10 * 300 * 300 * 8, many
    assert many < few + 64 * 50 * 8 * 8, (many, few)  # at most copies of the (n_t, 4 + 3) inputs grow


@pytest.fixture(params=["jacobians", "recomputed"])
def pair_gradients(request, monkeypatch):
    """Both ways the pairwise kernels are differentiated (`kip.kernels.engine.PairKernels`): each pair's
    Jacobians kept from the forward pass (the default), or each pair recomputed backward
    (what a kernel whose Jacobians would exceed the memory limit does); the test fails if
    the way asked for is not the one taken."""
    taken = []
    original = engine.PairKernels.with_jacobians

    def spy(self, wanted):
        taken.append("jacobians")
        return original(self, wanted)

    monkeypatch.setattr(engine.PairKernels, "with_jacobians", spy)
    if request.param == "recomputed":
        monkeypatch.setattr(engine, "_MAX_JACOBIAN_BYTES", -1)
    yield request.param
    assert ("jacobians" in taken) == (request.param == "jacobians"), (request.param, taken)


@pytest.mark.parametrize("prepend_conv", [False, pytest.param(True, marks=pytest.mark.slow)])  # True: ~20 s each
def test_kip_gradient_through_convnet_kernel_matches_finite_differences(prepend_conv, pair_gradients):
    """The pair-by-pair kernel (pooling; the band of position pairs) differentiated end to end."""
    kernel_fn = kernels.convnet(depth=2, prepend_conv=prepend_conv, num_classes=3).kernel_fn
    assert kernel_fn.spatial_layout((8, 8))[0] == stax.BAND
    kfn = functools.partial(kernel_fn, get="ntk")
    rng = np.random.RandomState(0)
    x_t = jnp.asarray(rng.randn(7, 8, 8, 1))
    y_t = data.one_hot(np.arange(7) % 3, 3, dtype=jnp.float64)
    params = {"images": jnp.asarray(rng.randn(3, 8, 8, 1)), "labels": y_t[:3] * 1.2}
    loss = jax.jit(lambda p: distill.kip_loss(kfn, p, x_t, y_t, 1e-4, learn_labels=True)[0])
    grads = jax.jit(jax.grad(loss))(params)
    for name in ("images", "labels"):
        direction = jnp.asarray(rng.randn(*params[name].shape))
        eps = 1e-5
        numeric = (loss({**params, name: params[name] + eps * direction})
                   - loss({**params, name: params[name] - eps * direction})) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(grads[name], direction), numeric, rtol=1e-6)


def test_convnet_kernels_value_and_gradient_of_both_outputs(pair_gradients):
    """NNGP and NTK together (get=None), both arguments, the symmetric form, and two pairs per
    step: the value and gradient KIP takes, against finite differences."""
    kfn = kernels.convnet(depth=1, prepend_conv=False).kernel_fn.with_pairs_per_step(2)
    rng = np.random.RandomState(3)
    a, b = jnp.asarray(rng.randn(3, 6, 6, 1)), jnp.asarray(rng.randn(2, 6, 6, 1))
    w1, w2, w3 = (jnp.asarray(rng.randn(*shape)) for shape in ((3, 2), (3, 2), (3, 3)))

    def f(a, b):
        k = kfn(a, b)
        return jnp.sum(w1 * k.nngp) + jnp.sum(w2 * k.ntk ** 2) + jnp.sum(w3 * kfn(a, None, "nngp"))

    value, (ga, gb) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(a, b)
    np.testing.assert_allclose(value, f(a, b), rtol=1e-12)
    for g, arg in ((ga, 0), (gb, 1)):
        direction = jnp.asarray(rng.randn(*(a, b)[arg].shape))
        shifted = [lambda s: f(a + s * direction, b), lambda s: f(a, b + s * direction)][arg]
        numeric = (shifted(1e-5) - shifted(-1e-5)) / 2e-5
        np.testing.assert_allclose(jnp.vdot(g, direction), numeric, rtol=1e-6)


def test_convnet_kernel_gradient_in_the_second_argument():
    kfn = kernels.convnet(depth=1, prepend_conv=True).kernel_fn
    rng = np.random.RandomState(1)
    a, b = jnp.asarray(rng.randn(2, 6, 6, 2)), jnp.asarray(rng.randn(3, 6, 6, 2))
    w = jnp.asarray(rng.randn(2, 3))
    f = jax.jit(lambda b: jnp.sum(w * kfn(a, b, "ntk")))
    g = jax.jit(jax.grad(f))(b)
    direction = jnp.asarray(rng.randn(*b.shape))
    numeric = (f(b + 1e-5 * direction) - f(b - 1e-5 * direction)) / 2e-5
    np.testing.assert_allclose(jnp.vdot(g, direction), numeric, rtol=1e-6)


def test_gradient_of_pooling_that_drops_a_remainder():
    """Disjoint 2x2 pooling of 7x5 positions (VALID drops the last row and column)."""
    layer = kernels.serial(kernels.Conv(4, (3, 3), padding="SAME", W_std=1.3, b_std=0.2), kernels.Relu(),
                           kernels.AvgPool((2, 2), (2, 2)), kernels.Flatten(), kernels.Dense(1))
    rng = np.random.RandomState(2)
    a, b = jnp.asarray(rng.randn(2, 7, 5, 1)), jnp.asarray(rng.randn(2, 7, 5, 1))
    f = jax.jit(lambda a: jnp.sum(layer.kernel_fn(a, b, "ntk") ** 2))
    direction = jnp.asarray(rng.randn(*a.shape))
    numeric = (f(a + 1e-5 * direction) - f(a - 1e-5 * direction)) / 2e-5
    np.testing.assert_allclose(jnp.vdot(jax.jit(jax.grad(f))(a), direction), numeric, rtol=1e-6)

"""Kernel ridge regression: closed forms, blocking, and the trace-scaled ridge."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kip import kernels, krr


def test_solve_matches_numpy_closed_form():
    rng = np.random.RandomState(0)
    a = rng.randn(7, 7)
    k = a @ a.T + 0.1 * np.eye(7)
    y = rng.randn(7, 3)
    reg = 1e-2
    want = np.linalg.solve(k + reg * np.trace(k) / 7 * np.eye(7), y)
    np.testing.assert_allclose(krr.solve(jnp.asarray(k), jnp.asarray(y), reg), want, rtol=1e-10)


def test_solve_runs_in_float64_for_float32_kernels():
    k = jnp.eye(3, dtype=jnp.float32) * 2
    alpha = krr.solve(k, jnp.ones((3, 1), jnp.float32), 0.0)
    assert alpha.dtype == jnp.float64
    np.testing.assert_allclose(alpha, 0.5)


def test_blocked_prediction_equals_one_block():
    kfn = functools.partial(kernels.fc(2).kernel_fn, get="ntk")
    key1, key2, key3 = jax.random.split(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(key1, (12, 5))
    ys = jax.random.normal(key2, (12, 3))
    xt = jax.random.normal(key3, (37, 5))  # not a multiple of the block size
    whole = krr.predict(kfn, xs, ys, xt, reg=1e-4, block_size=1000)
    blocked = jax.jit(lambda xt: krr.predict(kfn, xs, ys, xt, reg=1e-4, block_size=8))(xt)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-12)
    k_ts = kfn(xt, xs)
    want = k_ts @ np.linalg.solve(kfn(xs, None) + 1e-4 * np.trace(kfn(xs, None)) / 12 * np.eye(12), ys)
    np.testing.assert_allclose(whole, want, rtol=1e-8)


def test_interpolates_training_points_as_ridge_vanishes():
    kfn = functools.partial(kernels.fc(1).kernel_fn, get="ntk")
    xs = jax.random.normal(jax.random.PRNGKey(1), (10, 4))
    ys = jax.random.normal(jax.random.PRNGKey(2), (10, 2))
    np.testing.assert_allclose(krr.predict(kfn, xs, ys, xs, reg=1e-12), ys, atol=1e-6)


def test_test_metrics_are_accuracy_and_mse_of_the_predictions():
    kfn = functools.partial(kernels.fc(1).kernel_fn, get="ntk")
    xs, xt = jax.random.normal(jax.random.PRNGKey(3), (8, 4)), jax.random.normal(jax.random.PRNGKey(4), (23, 4))
    ys = jax.nn.one_hot(jnp.arange(8) % 3, 3) - 1 / 3
    labels = jnp.arange(23) % 3
    yt = jax.nn.one_hot(labels, 3) - 1 / 3
    pred = np.asarray(krr.predict(kfn, xs, ys, xt, reg=1e-4))
    acc, mse = krr.test_metrics(kfn, xs, ys, xt, labels, yt, reg=1e-4, block_size=5)
    np.testing.assert_allclose(acc, np.mean(pred.argmax(1) == np.asarray(labels)))
    np.testing.assert_allclose(mse, np.mean((pred - np.asarray(yt)) ** 2), rtol=1e-12)
    # zero-weight rows (padding) count for nothing
    w = jnp.concatenate([jnp.ones(20), jnp.zeros(3)])
    acc20, _ = krr.test_metrics(kfn, xs, ys, xt, labels, yt, reg=1e-4, weights=w)
    np.testing.assert_allclose(acc20, np.mean(pred[:20].argmax(1) == np.asarray(labels[:20])))

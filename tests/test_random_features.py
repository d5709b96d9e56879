"""Random-feature NNGP kernels against the exact NNGP of the same preset, the Platt loss against
finite differences and an independent cross-entropy, and `kip distill --kernel rf-...` end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kip import cli, distill, kernels
from kip.kernels import rf


def _images(n=6, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, 8, 8, 1), jnp.float64)


@pytest.mark.parametrize("arch", ["fc1", "convnet3"])
def test_estimate_converges_to_exact_nngp_like_one_over_sqrt_features(arch):
    x = _images()
    exact = jax.jit(kernels.preset(arch).kernel_fn, static_argnums=2)(x, None, "nngp")
    sizes = [(1, 32), (2, 64), (4, 128), (8, 256)]  # models x width: 32 ... 2048, x4 each time
    errors = []
    for models, width in sizes:
        error = jax.jit(jax.vmap(lambda key: jnp.linalg.norm(kernels.random_features(arch, models, width, key)(x) - exact)))
        errors.append(float(jnp.mean(error(jax.random.split(jax.random.PRNGKey(0), 4))) / jnp.linalg.norm(exact)))
    slope = np.polyfit(np.log([m * w for m, w in sizes]), np.log(errors), 1)[0]
    assert -0.75 < slope < -0.3, (slope, errors)  # Monte Carlo: -1/2
    assert errors[-1] < 0.08, errors


def test_kernel_is_symmetric_psd_and_consistent_across_calls():
    x = _images(12)
    k = kernels.random_features("convnet3", 2, 16, jax.random.PRNGKey(3))
    full = k(x)
    assert full.dtype == jnp.float64  # float32 features, multiplied out in float64
    np.testing.assert_array_equal(full, full.T)
    eig = np.linalg.eigvalsh(np.asarray(full))
    assert eig.min() > -1e-10 * eig.max()
    np.testing.assert_allclose(k(x[:5], x[5:]), full[:5, 5:], rtol=1e-6)  # same networks for any x2


def test_resample_draws_fresh_networks_and_fixed_keeps_them():
    x = _images(4)
    fresh = kernels.random_features("fc1", 2, 16, jax.random.PRNGKey(0))
    fixed = kernels.random_features("fc1", 2, 16, jax.random.PRNGKey(0), resample=False)
    key = jax.random.PRNGKey(7)
    assert not np.allclose(rf.for_step(fresh, key)(x), fresh(x))
    np.testing.assert_array_equal(rf.for_step(fixed, key)(x), fixed(x))
    exact = kernels.preset("fc1").kernel_fn
    assert rf.for_step(exact, key) is exact


def test_a_kernel_with_its_key_passed_in_draws_the_networks_of_that_key():
    x = _images(4)
    fixed = kernels.random_features("fc1", 2, 16, jax.random.PRNGKey(0), resample=False)
    other = kernels.random_features("fc1", 2, 16, jax.random.PRNGKey(3), resample=False)
    # the key as a compiled program's argument (as KIP's evaluation passes it): the same kernel as built with it
    matrix = jax.jit(lambda key, x: rf.with_key(fixed, key)(x))
    np.testing.assert_array_equal(matrix(rf.key_of(fixed), x), fixed(x))
    np.testing.assert_array_equal(matrix(rf.key_of(other), x), other(x))
    assert not np.allclose(other(x), fixed(x))
    exact = kernels.preset("fc1").kernel_fn
    assert rf.key_of(exact) is None and rf.with_key(exact, None) is exact


def test_bad_sizes_are_input_errors():
    with pytest.raises(ValueError, match="n_models must be at least 1"):
        kernels.random_features("convnet3", 0, 16)
    with pytest.raises(ValueError, match="unknown architecture"):
        kernels.random_features("resnet18", 1, 16)


def _platt_problem():
    kfn = kernels.random_features("convnet3", 2, 16, jax.random.PRNGKey(1), dtype=jnp.float64)
    x = _images(26, seed=2)
    y = jax.nn.one_hot(jnp.arange(26) % 10, 10, dtype=jnp.float64) - 0.1
    params = {"images": x[:6], "labels": y[:6], "log_temperature": jnp.asarray(np.log(3.0))}
    return kfn, params, x[6:], y[6:]


def test_platt_loss_is_cross_entropy_of_scaled_krr_prediction():
    kfn, params, x_t, y_t = _platt_problem()
    loss, _ = jax.jit(lambda p: distill.kip_loss(kfn, p, x_t, y_t, 1e-4, loss="platt"))(params)
    k = np.asarray(jax.jit(kfn)(jnp.concatenate([params["images"], x_t])))
    k_ss, k_ts = k[:6, :6], k[6:, :6]
    pred = k_ts @ np.linalg.solve(k_ss + 1e-4 * np.trace(k_ss) / 6 * np.eye(6), np.asarray(params["labels"]))
    reference = optax.softmax_cross_entropy_with_integer_labels(3.0 * pred, np.argmax(y_t, 1)).mean()
    np.testing.assert_allclose(loss, reference, rtol=1e-8)


def test_platt_loss_gradient_matches_finite_differences():
    kfn, params, x_t, y_t = _platt_problem()
    loss = jax.jit(lambda p: distill.kip_loss(kfn, p, x_t, y_t, 1e-4, learn_labels=True, loss="platt")[0])
    grads = jax.jit(jax.grad(loss))(params)
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    direction = {name: jax.random.normal(k, jnp.shape(v), jnp.float64) for k, (name, v) in zip(keys, params.items())}
    eps = 1e-5
    shifted = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * eps * d, params, direction)  # noqa: E731
    numeric = (loss(shifted(1)) - loss(shifted(-1))) / (2 * eps)
    analytic = sum(jnp.vdot(grads[k], direction[k]) for k in params)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5)
    assert abs(float(grads["log_temperature"])) > 0  # the temperature is learned


def test_cli_distills_and_evaluates_with_random_features(tmp_path):
    out = tmp_path / "run"
    args = ["--kernel", "rf-convnet3", "--rf-models", "2", "--rf-width", "32"]
    assert cli.main(["distill", "--out", str(out), *args, "--steps", "10", "--eval-every", "5", "--ipc", "2",
                     "--target-batch", "100", "--loss", "platt", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["kernel"] == "rf-convnet3" and metrics["config"]["rf_models"] == 2
    assert np.isfinite(metrics["losses"][-1][1]) and metrics["test_accuracy"] > 0.5
    result = tmp_path / "eval.json"
    # the run evaluates with the networks its seed draws; evaluate with the same seed agrees
    assert cli.main(["evaluate", "--distilled", str(out / "distilled.npz"), *args, "--out", str(result)]) == 0
    np.testing.assert_allclose(json.loads(result.read_text())["test_accuracy"], metrics["test_accuracy"])


@pytest.mark.parametrize("bad", [["--rf-models", "0"], ["--rf-width", "-1"], ["--kernel", "rf-nope"]])
def test_cli_rejects_bad_random_feature_options(tmp_path, bad, capsys):
    argv = ["distill", "--out", str(tmp_path / "x"), "--kernel", "rf-convnet3", *bad, "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kip: error:")
    assert not (tmp_path / "x").exists()


def test_exact_kernel_options_choose_ntk_or_nngp():
    """`run.KernelOptions.get`: the exact counterpart of what random features estimate is the NNGP."""
    from kip import data, run

    ds = data.load("digits")
    x = jnp.asarray(ds.x_train[:3], jnp.float64)
    layer = kernels.preset("convnet3")
    for get in ("ntk", "nngp"):
        kernel_fn, _ = run.make_kernel(run.KernelOptions("convnet3", get=get), ds, jnp.float64)
        np.testing.assert_allclose(kernel_fn(x, None), layer.kernel_fn(x, None, get), rtol=1e-12)
    with pytest.raises(run.InputError, match="'ntk' or 'nngp'"):
        run.check_kernel(run.KernelOptions("convnet3", get="cov1"))

"""DC, DSA and DM (kip.matching): the matching distance against a hand computation on a tiny
network, its gradient in the synthetic images by finite differences, DM's zero at equal batches,
one step lowering each loss, the siamese draw inside matching, and whole runs (outputs, resume,
--steps 0, bad options) through the command line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import cli, io, matching, models

STRATEGY = "color_crop_cutout_scale_rotate"


def _tiny_fc():
    """FC1 of width 3 on 4-pixel inputs, 2 classes, in float64."""
    model = models.build("fc1", num_classes=2, width=3, param_dtype=jnp.float64)
    return model, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 1)))


def _fc1_gradients(p, x, label):
    """By hand: the gradients of the mean cross-entropy of relu(x W1 + b1) W2 + b2 on images x
    (n, 4) all of class `label`, as {layer: (dW, db)} in numpy."""
    W1, b1, W2, b2 = (np.asarray(p[k][n]) for k in ("Dense_0", "Dense_1") for n in ("kernel", "bias"))
    pre = x @ W1 + b1
    h = np.maximum(pre, 0)
    logits = h @ W2 + b2
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    delta = (prob - np.eye(2)[label]) / len(x)  # d loss / d logits
    dh = (delta @ W2.T) * (pre > 0)
    return {"Dense_0": (x.T @ dh, dh.sum(0)), "Dense_1": (h.T @ delta, delta.sum(0))}


def _distance_by_hand(g_real, g_syn):
    """DC's distance: over the weights as (out, in) rows, sum of 1 - cos (biases add nothing)."""
    total = 0.0
    for layer in g_real:
        r, s = g_real[layer][0].T, g_syn[layer][0].T  # (in, out) -> (out, in)
        total += np.sum(1 - np.sum(r * s, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(s, axis=1) + 1e-6))
    return total


def test_dc_distance_equals_a_hand_computation_on_a_tiny_network():
    model, variables = _tiny_fc()
    rng = np.random.default_rng(0)
    real, syn = rng.normal(size=(2, 5, 2, 2, 1)), rng.normal(size=(2, 3, 2, 2, 1))
    want = sum(_distance_by_hand(_fc1_gradients(variables["params"], real[c].reshape(5, 4), c),
                                 _fc1_gradients(variables["params"], syn[c].reshape(3, 4), c)) for c in range(2))
    got = matching.dc_loss(model, variables, jnp.asarray(real), jnp.asarray(syn), jax.random.PRNGKey(1))
    np.testing.assert_allclose(float(got), want, rtol=1e-10)


def test_gradient_distance_reads_conv_kernels_by_output_channel():
    """A flax conv kernel (kh, kw, in, out) is compared row by row of PyTorch's (out, in*kh*kw)."""
    rng = np.random.default_rng(1)
    r, s = rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(3, 3, 2, 4))
    torch_rows = lambda w: np.transpose(w, (3, 2, 0, 1)).reshape(4, -1)
    R, S = torch_rows(r), torch_rows(s)
    want = np.sum(1 - np.sum(R * S, 1) / (np.linalg.norm(R, axis=1) * np.linalg.norm(S, axis=1) + 1e-6))
    got = matching.gradient_distance({"k": jnp.asarray(r), "b": jnp.ones(4)}, {"k": jnp.asarray(s), "b": jnp.zeros(4)})
    np.testing.assert_allclose(float(got), want, rtol=1e-10)


def _conv_problem(ipc=2, batch=6, width=4):
    model = models.build("convnet3", 3, width, norm="instance", weight_init="torch", param_dtype=jnp.float64)
    key = jax.random.PRNGKey(2)
    real = jax.random.normal(key, (3, batch, 8, 8, 1), jnp.float64)
    syn = jax.random.normal(jax.random.fold_in(key, 1), (3, ipc, 8, 8, 1), jnp.float64)
    return model, model.init(key, syn[0]), real, syn


# lax's convolutions differentiated twice compile slowly on CPU (~30 s): the path accelerators take
@pytest.mark.parametrize("im2col", [pytest.param(False, marks=pytest.mark.slow), True])
def test_dc_gradient_in_the_synthetic_images_matches_finite_differences(im2col):
    model, variables, real, syn = _conv_problem()
    model = model.clone(im2col=im2col)
    # jitted: run eagerly, every primitive of the double derivative compiles on its own (2x slower here)
    loss = jax.jit(lambda s: matching.dc_loss(model, variables, real, s, jax.random.PRNGKey(3)))
    grad = jax.jit(jax.grad(loss))(syn)
    rng = np.random.default_rng(3)
    for _ in range(3):
        d = jnp.asarray(rng.normal(size=syn.shape))
        eps = 1e-5
        fd = (loss(syn + eps * d) - loss(syn - eps * d)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.sum(grad * d)), float(fd), rtol=1e-5, atol=1e-8)


def test_dm_loss_is_zero_when_the_synthetic_set_is_the_real_batch_even_augmented():
    model, variables, real, _ = _conv_problem()
    embed = model.clone(head=False)
    for strategy in (None, STRATEGY):
        got = matching.dm_loss(embed, variables, real, real, jax.random.PRNGKey(4), strategy)
        assert float(got) < 1e-20
    assert float(matching.dm_loss(embed, variables, real, real[:, ::-1][:, :2], jax.random.PRNGKey(4))) > 1e-3


def test_matching_applies_one_draw_to_a_class_real_and_synthetic_images():
    """DSA's siamese property inside the losses: a class's real and synthetic batches get the same
    transform whatever family is drawn, so DM's loss at equal batches stays zero under augmentation
    (independent draws would move the two means apart)."""
    model, variables, real, _ = _conv_problem()
    embed = model.clone(head=False)
    for seed in range(4):
        key = jax.random.PRNGKey(seed)
        r, s = matching._siamese(key, real[0], real[0][:2], STRATEGY)
        np.testing.assert_allclose(np.asarray(r[:2]), np.asarray(s), rtol=1e-12, atol=1e-12)
        assert float(matching.dm_loss(embed, variables, real, real, key, STRATEGY)) < 1e-20


@pytest.mark.parametrize("method", matching.METHODS)
def test_one_step_lowers_the_loss_on_a_small_problem(method):
    model, variables, real, syn = _conv_problem(ipc=2, batch=8)
    strategy = None if method == "dc" else STRATEGY
    key = jax.random.PRNGKey(5)
    if method == "dm":
        embed = model.clone(head=False)
        loss = lambda p: matching.dm_loss(embed, variables, real, p["images"], key, strategy)
    else:
        loss = lambda p: matching.dc_loss(model, variables, real, p["images"], key, strategy)
    optimizer = matching.image_optimizer(1e-3)
    params = {"images": syn}
    # eager: the three methods share most primitives, compiled once each (jitting DC's alone saved
    # 22 s there and cost DSA's 30 s in the suite)
    before, grads = jax.value_and_grad(loss)(params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    after = loss(jax.tree_util.tree_map(lambda p, u: p + u, params, updates))
    assert float(after) < float(before)


def test_dc_loops_follow_the_paper_and_refuse_unknown_sizes():
    assert matching.default_loops(1) == (1, 1)
    assert matching.default_loops(10) == (10, 50)
    assert matching.default_loops(50) == (50, 10)
    with pytest.raises(Exception, match="outer-loop"):
        matching.default_loops(7)


# --------------------------------------------------------------------------- whole runs

RUN = ["distill", "--dataset", "digits", "--ipc", "1", "--width", "8", "--real-batch", "8", "--no-progress",
       "--precision", "float32"]


def _images(out):
    return np.asarray(io.read_npz(os.path.join(out, "distilled.npz"))["images"])


@pytest.mark.parametrize("method, periods", [("dc", ["--eval-every", "2"]), ("dm", ["--eval-every", "4", "--checkpoint-every", "2"])])
def test_a_run_resumes_to_the_uninterrupted_result(tmp_path, method, periods):
    """Interrupted after 2 of 4 steps (at an evaluation, or at a checkpoint between evaluations),
    then resumed: the images of one uninterrupted run (evaluated every 2 steps / at the end only)."""
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    assert cli.main(RUN + ["--method", method, "--steps", "4", "--eval-every", periods[1], "--out", whole]) == 0
    assert cli.main(RUN + ["--method", method, "--steps", "2", *periods, "--out", split]) == 0
    assert cli.main(RUN + ["--method", method, "--steps", "4", *periods, "--out", split, "--resume"]) == 0
    np.testing.assert_array_equal(_images(whole), _images(split))
    for f in ("distilled.npz", "metrics.json", "support.png", "curve.png", "checkpoint.npz"):
        assert os.path.exists(os.path.join(whole, f))
    metrics = json.load(open(os.path.join(whole, "metrics.json")))
    assert metrics["method"] == method and metrics["steps"] == 4 and len(metrics["losses"]) == 4
    arrays = io.read_npz(os.path.join(whole, "distilled.npz"))
    assert str(arrays["kernel"]) == "convnet3" and arrays["labels"].shape == (10, 10)


def test_val_size_holds_rows_out_of_the_real_data_a_method_reads(tmp_path, monkeypatch):
    """--val-size with a network method: that many training rows, none of the set's sources, leave
    the real data its steps draw from (the rows given to `distill.train_data`), are named in
    distilled.npz and judge the set (val_accuracy, best_val); the start is the run's without them."""
    from kip import data, distill

    seen = []
    train_data = distill.train_data
    monkeypatch.setattr(distill, "train_data", lambda images, labels, *a, **k: seen.append(np.asarray(images))
                        or train_data(images, labels, *a, **k))
    held, plain = str(tmp_path / "held"), str(tmp_path / "plain")
    assert cli.main(RUN + ["--method", "dm", "--steps", "2", "--eval-every", "1", "--val-size", "150", "--out", held]) == 0
    assert cli.main(RUN + ["--method", "dm", "--steps", "0", "--out", plain]) == 0
    ds = data.load("digits")
    arrays, start = io.read_npz(os.path.join(held, "distilled.npz")), io.read_npz(os.path.join(plain, "distilled.npz"))
    val = arrays["val_indices"]
    assert len(np.unique(val)) == 150 and not np.isin(arrays["initial_indices"], val).any()
    np.testing.assert_array_equal(arrays["initial_indices"], start["initial_indices"])
    assert len(seen[0]) == len(ds.y_train) - 150 and len(seen[1]) == len(ds.y_train)
    from kip import preprocess

    x = preprocess.fit(ds.x_train, "standardize").apply(ds.x_train)
    kept = np.setdiff1d(np.arange(len(ds.y_train)), val)  # the rows read are exactly the others, in order
    np.testing.assert_allclose(seen[0], x[kept], rtol=1e-6, atol=1e-6)
    metrics = json.load(open(os.path.join(held, "metrics.json")))
    assert [e["step"] for e in metrics["evals"]] == [0, 1, 2] and all(0 <= e["val_accuracy"] <= 1 for e in metrics["evals"])
    best = max(metrics["evals"], key=lambda e: e["val_accuracy"])
    assert metrics["best_val"]["step"] == best["step"] and metrics["val_accuracy"] == metrics["evals"][-1]["val_accuracy"]


def test_zero_steps_keep_the_real_images_they_start_from(tmp_path):
    out = str(tmp_path / "zero")
    assert cli.main(RUN + ["--method", "dsa", "--steps", "0", "--out", out]) == 0
    arrays = io.read_npz(os.path.join(out, "distilled.npz"))
    from kip import data, preprocess

    ds = data.load("digits")
    real = preprocess.fit(ds.x_train, "standardize").apply(ds.x_train[arrays["initial_indices"]])
    np.testing.assert_allclose(arrays["images"], real, rtol=1e-6, atol=1e-6)
    assert list(np.argmax(arrays["labels"], 1)) == list(ds.y_train[arrays["initial_indices"]])


@pytest.mark.parametrize("argv, message", [
    (["--method", "dm", "--target-batch", "5"], "--target-batch applies to --method kip"),
    (["--method", "kip", "--real-batch", "5"], "--real-batch applies to --method dc / dsa / dm / dd / frepo"),
    (["--method", "dc", "--strategy", "crop"], "--strategy applies to --method dsa / dm"),
    (["--method", "dm", "--outer-loop", "2"], "--outer-loop applies to --method dc / dsa"),
    (["--method", "label-solve", "--steps", "5"], "--steps applies to"),
    (["--method", "dsa", "--strategy", "crop_spin"], "unknown: 'spin'"),
    (["--method", "dm", "--real-batch", "0"], "--real-batch must be at least 1"),
    (["--method", "dc", "--ipc", "3"], "pass --outer-loop and --inner-loop"),
    (["--method", "dm", "--eval-protocol", "nope"], "nope"),
])
def test_bad_matching_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    out = str(tmp_path / "bad")
    assert cli.main(["distill", "--dataset", "digits", "--no-progress", "--out", out] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not os.path.exists(os.path.join(out, "distilled.npz"))

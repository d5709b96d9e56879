"""Dataset Distillation (kip.unrolled) and FRePo (kip.frepo): their maths against independent
references (closed forms, finite differences, kip.krr), their steps, and whole runs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kip import cli, distill, frepo, io, krr, models, unrolled

# --------------------------------------------------------------------------- DD


def test_unrolled_gradient_descent_matches_its_closed_form_on_a_quadratic():
    """loss(p) = a p^2 / 2: each step multiplies p by (1 - lr_t a), so after T steps
    p_T = p_0 prod_t (1 - lr_t a), and d p_T / d lr_s = -a p_T / (1 - lr_s a)."""
    a, p0 = 1.7, 0.9
    lrs = jnp.array([0.1, 0.25, 0.05])
    loss = lambda p, batch: 0.5 * a * batch * p["w"] ** 2  # batch: a factor 1 each step
    run = lambda lrs: unrolled.unroll_sgd(loss, {"w": jnp.asarray(p0)}, jnp.ones(3), lrs)["w"]
    want = p0 * np.prod(1 - np.asarray(lrs) * a)
    np.testing.assert_allclose(float(run(lrs)), want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.grad(run)(lrs)), -a * want / (1 - np.asarray(lrs) * a), rtol=1e-10)


def _dd_problem(ipc=2, width=4, unroll=1, epochs=2):
    model = models.build("convnet3", 3, width, norm="instance", weight_init="torch", param_dtype=jnp.float64, im2col=True)
    key = jax.random.PRNGKey(0)
    syn = jax.random.normal(key, (3 * ipc, 8, 8, 1), jnp.float64)
    real = jax.random.normal(jax.random.fold_in(key, 1), (12, 8, 8, 1), jnp.float64)
    settings = unrolled.Settings(ipc, 3, 4, unroll, epochs)
    params = {"images": syn, "raw_step_sizes": jnp.array([0.3, -0.5], jnp.float64)[: settings.steps]}
    return model, model.init(key, syn[:1]), params, settings, real, jnp.repeat(jnp.arange(3), 4)


def test_dd_hypergradient_through_two_unrolled_steps_matches_finite_differences():
    model, variables, params, settings, real, real_labels = _dd_problem()
    loss = jax.jit(lambda p: unrolled.dd_loss(model, variables, p, settings, real, real_labels))
    grads = jax.jit(jax.grad(loss))(params)
    rng = np.random.default_rng(1)
    for _ in range(2):
        d = {k: jnp.asarray(rng.normal(size=v.shape)) for k, v in params.items()}
        eps = 1e-5
        shift = lambda s: {k: params[k] + s * eps * d[k] for k in params}
        fd = (loss(shift(1)) - loss(shift(-1))) / (2 * eps)
        directional = sum(float(jnp.sum(grads[k] * d[k])) for k in params)
        np.testing.assert_allclose(directional, float(fd), rtol=1e-5, atol=1e-9)
    assert float(jnp.abs(grads["raw_step_sizes"]).min()) > 0  # both step sizes are learned


def test_dd_step_batches_split_every_class_and_repeat_per_epoch():
    settings = unrolled.Settings(ipc=4, num_classes=3, unroll=2, epochs=3)
    images = jnp.arange(12.0).reshape(12, 1, 1, 1)  # class c owns rows 4c .. 4c + 3
    batches, labels = unrolled.step_batches(images, settings)
    assert batches.shape == (6, 6, 1, 1, 1) and settings.steps == 6
    np.testing.assert_array_equal(np.asarray(batches[0, :, 0, 0, 0]), [0, 1, 4, 5, 8, 9])
    np.testing.assert_array_equal(np.asarray(batches[1, :, 0, 0, 0]), [2, 3, 6, 7, 10, 11])
    np.testing.assert_array_equal(np.asarray(batches[2]), np.asarray(batches[0]))
    np.testing.assert_array_equal(np.asarray(labels[1]), [0, 0, 1, 1, 2, 2])
    assert unrolled.default_unroll(1) == 1 and unrolled.default_unroll(10) == 10 and unrolled.default_unroll(50) == 10
    assert unrolled.default_unroll(12) == 6
    with pytest.raises(Exception, match="--unroll must divide"):
        unrolled.Settings(ipc=3, num_classes=2, unroll=2).check()


def test_dd_starts_from_the_initial_step_size():
    settings = unrolled.Settings(ipc=1, num_classes=2, unroll=1, epochs=4)
    state = unrolled.init_state(jnp.zeros((2, 4, 4, 1)), settings, unrolled.image_optimizer(), jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(unrolled.step_sizes(state.params)), [unrolled.STEP_SIZE] * 4, rtol=1e-6)


def test_a_dd_step_lowers_its_loss_on_a_small_problem():
    """The fixed-initialisation variant on a fixed real set (the whole of it each step): the outer
    loss falls over a few steps."""
    model, _, params, _, real, real_labels = _dd_problem(ipc=1)
    settings = unrolled.Settings(1, 3, real_batch=4, unroll=1, epochs=2, init="fixed")
    data = distill.train_data(real, real_labels, 3, jnp.float64)
    optimizer = unrolled.image_optimizer(0.05)
    state = unrolled.init_state(params["images"], settings, optimizer, jax.random.PRNGKey(1))
    step = jax.jit(unrolled.make_step(settings, model, optimizer))
    losses = []
    for _ in range(6):
        state, metrics = step(state, data)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- FRePo


def test_feature_regression_is_kip_krr_under_the_linear_kernel_of_the_features():
    rng = np.random.default_rng(2)
    f_s, f_t, y = (jnp.asarray(rng.normal(size=s)) for s in ((6, 9), (5, 9), (6, 3)))
    linear = lambda a, b: a @ (a if b is None else b).T
    want = krr.predict(linear, f_s, y, f_t, reg=frepo.RIDGE)
    np.testing.assert_allclose(np.asarray(frepo.feature_regression(f_s, y, f_t)), np.asarray(want), rtol=1e-10)
    # ... and by hand: (F_t F_s^T)(F_s F_s^T + 1e-6 tr/n I)^-1 y
    k = np.asarray(f_s @ f_s.T)
    by_hand = np.asarray(f_t @ f_s.T) @ np.linalg.solve(k + 1e-6 * np.trace(k) / 6 * np.eye(6), np.asarray(y))
    np.testing.assert_allclose(np.asarray(want), by_hand, rtol=1e-8)


def test_frepo_labels_start_centred_and_their_margin_term_is_capped():
    y = frepo.initial_labels(10, 2)
    assert y.shape == (20, 10)
    np.testing.assert_allclose(np.asarray(y[0]), [0.9] + [-0.1] * 9, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(y.sum(1)), 0, atol=1e-6)
    # margins 1 (capped at 1/C = 0.1) and 0.05: the term is -(0.1 + 0.05) / 2
    labels = jnp.array([[1.0, 0.0, 0.0] + [0.0] * 7, [0.3, 0.25, 0.0] + [0.0] * 7])
    np.testing.assert_allclose(float(frepo.label_margin(labels)), -0.075, rtol=1e-6)


def _frepo_problem(pool_size=2, max_age=3):
    model = models.build("convnet3", 3, 4, weight_init="torch", param_dtype=jnp.float64)
    key = jax.random.PRNGKey(3)
    images = jax.random.normal(key, (24, 8, 8, 1), jnp.float64)
    labels = jnp.repeat(jnp.arange(3), 8)
    data = distill.train_data(images, labels, 3, jnp.float64)
    settings = frepo.Settings(ipc=1, num_classes=3, real_batch=8, pool_size=pool_size, max_age=max_age)
    return model, data, settings, images[::8]


def test_frepo_steps_lower_the_loss_and_renew_old_networks():
    model, data, settings, start = _frepo_problem()
    optimizer = frepo.image_optimizer(0.05)
    state = frepo.init_state(model, settings, start, frepo.initial_labels(3, 1), optimizer, jax.random.PRNGKey(4))
    np.testing.assert_array_equal(np.asarray(state.ages), [0, 1])  # staggered: max_age // pool_size * i
    step = jax.jit(frepo.make_step(settings, model.clone(), model.clone(head=False), optimizer))
    losses, ages = [], []
    for _ in range(12):
        state, metrics = step(state, data)
        losses.append(float(metrics["loss"]))
        ages.append(np.asarray(state.ages))
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert max(a.max() for a in ages) <= settings.max_age + 1
    assert any(a.min() == 0 for a in ages[1:])  # some network was re-initialised
    assert not np.allclose(np.asarray(state.params["labels"]), np.asarray(frepo.initial_labels(3, 1)))  # learned


def test_frepo_pool_networks_with_batch_norm_keep_their_running_statistics_in_the_pool():
    # FRePo's Conv in the pool: the network a step trains updates its running statistics (train mode),
    # a renewed one starts from the initial ones (mean 0), and the features read them
    _, data, settings, start = _frepo_problem(pool_size=2, max_age=3)
    model = models.build("convnet3", 3, 4, norm="batch", weight_init="lecun", growth=2, param_dtype=jnp.float64)
    optimizer = frepo.image_optimizer(0.05)
    state = frepo.init_state(model, settings, start, frepo.initial_labels(3, 1), optimizer, jax.random.PRNGKey(4))
    mean = lambda s: np.asarray(s.pool.variables["batch_stats"]["BatchNorm_0"]["mean"])  # (pool, channels)
    assert not mean(state).any()
    step = jax.jit(frepo.make_step(settings, model.clone(), model.clone(head=False), optimizer))
    for _ in range(8):
        before = state
        state, metrics = step(state, data)
        assert np.isfinite(float(metrics["loss"]))
        changed = np.flatnonzero(np.any(mean(state) != mean(before), axis=1))
        assert len(changed) == 1  # one member per step
        i = changed[0]
        assert (int(state.ages[i]) == 0) == (not mean(state)[i].any())  # renewed <=> initial statistics


def test_frepo_cosine_decay_scales_each_lamb_update_by_the_closed_form():
    # LAMB's update is linear in its lr given the same moments, so the decayed optimiser's update over
    # the constant one's is the schedule: 0.1 + 0.9 * (1 + cos(pi t / N)) / 2 up to N, then 0.1
    decay_steps, lr = 4, 0.01
    decayed, constant = frepo.image_optimizer(lr, decay_steps), frepo.image_optimizer(lr)
    params = {"images": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
    s_decayed, s_constant = decayed.init(params), constant.init(params)
    for t in range(7):
        grads = {"images": jnp.sin(params["images"] * (t + 1))}
        u_decayed, s_decayed = decayed.update(grads, s_decayed, params)
        u_constant, s_constant = constant.update(grads, s_constant, params)
        want = 0.1 + 0.9 * (1 + np.cos(np.pi * min(t, decay_steps) / decay_steps)) / 2
        np.testing.assert_allclose(np.asarray(u_decayed["images"]), want * np.asarray(u_constant["images"]), rtol=1e-5)


def test_frepo_features_are_the_pool_network_without_its_head():
    model, _, _, start = _frepo_problem()
    variables = model.init(jax.random.PRNGKey(5), start)
    embed = model.clone(head=False)
    embed_params = embed.init(jax.random.PRNGKey(5), start)["params"]
    features = embed.apply(frepo.head_free(variables, embed_params), start)
    head = variables["params"][(set(variables["params"]) - set(embed_params)).pop()]
    np.testing.assert_allclose(np.asarray(features @ head["kernel"] + head["bias"]), np.asarray(model.apply(variables, start)),
                               rtol=1e-10)


# --------------------------------------------------------------------------- whole runs

RUN = ["distill", "--dataset", "digits", "--ipc", "1", "--width", "8", "--real-batch", "8", "--no-progress",
       "--precision", "float32"]


def _arrays(out):
    return io.read_npz(os.path.join(out, "distilled.npz"))


# DD's resume is the shared loop's (tests/test_matching.py, FRePo here): slow, for completeness
@pytest.mark.parametrize("method", [pytest.param("dd", marks=pytest.mark.slow), "frepo", "frepo-conv"])
def test_a_dd_or_frepo_run_resumes_to_the_uninterrupted_result(tmp_path, method):
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    # FRePo's with its cosine lr decay: the schedule's step count must come back from the checkpoint; with
    # its own Conv, the pool's batch-norm statistics too
    extra = ["--unroll-epochs", "2"] if method == "dd" else ["--pool-size", "2", "--max-age", "2", "--lr-decay-steps", "3"]
    if method == "frepo-conv":
        method, extra = "frepo", extra + ["--pool-net", "frepo", "--width", "4"]
    assert cli.main(RUN + extra + ["--method", method, "--steps", "4", "--eval-every", "4", "--out", whole]) == 0
    assert cli.main(RUN + extra + ["--method", method, "--steps", "2", "--eval-every", "2", "--out", split]) == 0
    assert cli.main(RUN + extra + ["--method", method, "--steps", "4", "--eval-every", "2", "--out", split, "--resume"]) == 0
    a, b = _arrays(whole), _arrays(split)
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
    metrics = json.load(open(os.path.join(whole, "metrics.json")))
    assert metrics["method"] == method and metrics["steps"] == 4 and len(metrics["losses"]) == 4
    if method == "dd":
        assert a["step_sizes"].shape == (2,)
    else:  # learned labels are what the set is judged with
        assert not np.allclose(a["labels"], np.asarray(frepo.initial_labels(10, 1)))


@pytest.mark.parametrize("argv, message", [
    (["--method", "dd", "--pool-size", "2"], "--pool-size applies to --method frepo"),
    (["--method", "frepo", "--unroll", "2"], "--unroll applies to --method dd"),
    (["--method", "dm", "--fixed-labels"], "--learn-labels applies to --method kip / frepo"),
    (["--method", "dd", "--ipc", "3", "--unroll", "2"], "--unroll must divide"),
    (["--method", "frepo", "--max-age", "0"], "--max-age must be at least 1"),
    (["--method", "frepo", "--lr-decay-steps", "0"], "--lr-decay-steps must be at least 1"),
    (["--method", "dm", "--lr-decay-steps", "10"], "--lr-decay-steps applies to --method frepo"),
    (["--method", "dc", "--pool-net", "frepo"], "--pool-net applies to --method frepo"),
    (["--method", "frepo", "--pool-net", "resnet"], "--pool-net must be one of dc, frepo"),
])
def test_bad_dd_or_frepo_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    out = str(tmp_path / "bad")
    assert cli.main(["distill", "--dataset", "digits", "--no-progress", "--out", out] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not os.path.exists(os.path.join(out, "distilled.npz"))


# --------------------------------------------------------------------------- MTT


def test_mtt_distance_is_normalised_by_the_expert_move():
    rng = np.random.default_rng(6)
    start, target = (jnp.asarray(rng.normal(size=50)) for _ in range(2))
    for t in (0.0, 0.3, 1.0, 1.5):
        end = start + t * (target - start)
        np.testing.assert_allclose(float(unrolled.trajectory_loss(start, end, target)), (1 - t) ** 2, rtol=1e-12, atol=1e-15)
    end = start + jnp.asarray(rng.normal(size=50))
    scaled = unrolled.trajectory_loss(3 * start, 3 * end, 3 * target)  # invariant to the parameters' scale
    np.testing.assert_allclose(float(scaled), float(unrolled.trajectory_loss(start, end, target)), rtol=1e-12)


def test_mtt_synthetic_batches_visit_every_image_once_per_permutation():
    idx = np.asarray(unrolled.synthetic_batches(jax.random.PRNGKey(0), 12, 4, 7))
    assert idx.shape == (7, 4)
    for first in (0, 3):
        np.testing.assert_array_equal(np.sort(idx[first:first + 3].ravel()), np.arange(12))


def _mtt_problem(ipc=1, width=4):
    from jax.flatten_util import ravel_pytree

    model = models.build("convnet3", 3, width, norm="instance", weight_init="torch", param_dtype=jnp.float64, im2col=True)
    key = jax.random.PRNGKey(7)
    images = jax.random.normal(key, (3 * ipc, 8, 8, 1), jnp.float64)
    flat, unravel = ravel_pytree(model.init(key, images[:1])["params"])
    return model, images, flat, unravel


def test_mtt_loss_is_zero_when_the_synthetic_steps_reproduce_the_expert_segment():
    """An 'expert' made by hand: 3 full-batch SGD steps at lr 0.05 on the synthetic set itself
    (plain jax.grad, no augmentation). MTT's unroll of the same steps lands on it: loss 0."""
    model, images, start, unravel = _mtt_problem()
    labels = jnp.arange(3)

    def xent(flat):
        logits = model.apply({"params": unravel(flat)}, images, train=True)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(3), labels])

    target = start
    for _ in range(3):
        target = target - 0.05 * jax.grad(xent)(target)
    settings = unrolled.MttSettings(ipc=1, num_classes=3, syn_steps=3)
    params = {"images": images, "lr": jnp.asarray(0.05, jnp.float64)}
    loss = unrolled.mtt_loss(model, unravel, params, start, target, settings, jax.random.PRNGKey(8))
    assert float(loss) < 1e-20
    params["lr"] = jnp.asarray(0.04, jnp.float64)  # another lr misses the expert
    assert float(unrolled.mtt_loss(model, unravel, params, start, target, settings, jax.random.PRNGKey(8))) > 1e-4


def test_an_mtt_step_lowers_its_loss_on_a_small_problem():
    """The expert: 2 SGD steps on other images; one MTT step on the synthetic images (full batch,
    no augmentation: the loss does not depend on the step's draws) brings its unroll closer."""
    model, images, start, unravel = _mtt_problem()
    others = jax.random.normal(jax.random.PRNGKey(11), images.shape, jnp.float64)
    xent = lambda flat: unrolled.cross_entropy(model, unravel(flat), {}, others, jnp.arange(3))
    target = start
    for _ in range(2):
        target = target - 0.05 * jax.grad(xent)(target)
    experts = jnp.stack([start, target])[None]  # one expert, epochs 0 and 1
    settings = unrolled.MttSettings(ipc=1, num_classes=3, syn_steps=2, expert_epochs=1, max_start_epoch=1)
    optimizer = unrolled.mtt_optimizer(1e-2, 1e-5)
    state = unrolled.init_mtt_state(images, 0.05, optimizer, jax.random.PRNGKey(10))
    loss = lambda params: float(unrolled.mtt_loss(model, unravel, params, start, target, settings, jax.random.PRNGKey(0)))
    before = loss(state.params)
    state, metrics = jax.jit(unrolled.make_mtt_step(settings, model, unravel, optimizer))(state, experts)
    np.testing.assert_allclose(float(metrics["loss"]), before, rtol=1e-10)
    assert loss(state.params) < before


TRAJ = ["trajectories", "--dataset", "digits", "--width", "4", "--no-progress"]


def test_trajectories_resume_to_the_uninterrupted_recording_and_feed_mtt(tmp_path):
    from kip import trajectories

    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    assert cli.main(TRAJ + ["--experts", "2", "--epochs", "2", "--out", whole]) == 0
    assert cli.main(TRAJ + ["--experts", "1", "--epochs", "1", "--out", split]) == 0
    assert cli.main(TRAJ + ["--experts", "2", "--epochs", "2", "--out", split]) == 0
    for i in range(2):
        a, b = (io.read_npz(os.path.join(d, f"expert_{i:03d}.npz")) for d in (whole, split))
        assert a["params"].shape[0] == 3 and a["test_accuracy"].shape == (2,)
        np.testing.assert_array_equal(a["params"], b["params"])
    experts, model = trajectories.load(whole, 10, (8, 8, 1))
    assert experts.params.shape[:2] == (2, 3) and model.width == 4
    first = experts.unravel(jnp.asarray(experts.params[0, 0]))  # epoch 0 is the initialisation
    np.testing.assert_array_equal(np.asarray(jax.tree_util.tree_leaves(first)[0]),
                                  np.asarray(jax.tree_util.tree_leaves(model.init(jax.random.fold_in(
                                      jax.random.fold_in(jax.random.PRNGKey(0), 0), 0), jnp.zeros((1, 8, 8, 1)))["params"])[0]))
    # an MTT run on them resumes to its uninterrupted result
    run = RUN[:-2] + ["--method", "mtt", "--expert-dir", whole, "--syn-steps", "2", "--expert-epochs", "1",
                      "--max-start-epoch", "1", "--lr", "10"]
    run = [a for a in run if a not in ("--width", "8", "--real-batch")]
    a_out, b_out = str(tmp_path / "mtt-whole"), str(tmp_path / "mtt-split")
    assert cli.main(run + ["--steps", "4", "--eval-every", "4", "--snapshots", "--out", a_out]) == 0
    assert cli.main(run + ["--steps", "2", "--eval-every", "2", "--out", b_out]) == 0
    assert cli.main(run + ["--steps", "4", "--eval-every", "2", "--out", b_out, "--resume"]) == 0
    np.testing.assert_array_equal(_arrays(a_out)["images"], _arrays(b_out)["images"])
    assert float(_arrays(a_out)["learned_lr"]) != 0.01
    # a kept snapshot carries the lr learned with its set (MTT's own evaluation trains at it)
    snapshots = {s: io.read_npz(os.path.join(a_out, "snapshots", f"step-{s:07d}.npz"))["learned_lr"] for s in (0, 4)}
    assert float(snapshots[0]) == pytest.approx(0.01) and float(snapshots[4]) == float(_arrays(a_out)["learned_lr"])
    # other options in the same folder are refused
    assert cli.main(TRAJ + ["--experts", "2", "--epochs", "2", "--lr", "0.02", "--out", whole]) == 2


def test_mtt_validates_on_rows_its_experts_never_trained_on(tmp_path):
    """`kip trajectories --val-size` records experts without those rows (and says which); MTT's
    --val-size draws its validation from them (none of its sources); experts that saw every row
    are refused for it in one line, before anything is written."""
    from kip import trajectories

    held, seen = str(tmp_path / "held"), str(tmp_path / "seen")
    assert cli.main(TRAJ + ["--experts", "1", "--epochs", "2", "--val-size", "250", "--out", held]) == 0
    assert cli.main(TRAJ + ["--experts", "1", "--epochs", "1", "--out", seen]) == 0
    rows = trajectories.held_out(held)
    assert len(rows) == 250 and len(np.unique(rows)) == 250 and trajectories.held_out(seen) is None
    # the held-out rows change what the experts trained on: the same seed's first epoch differs
    first = [io.read_npz(os.path.join(d, "expert_000.npz"))["params"] for d in (held, seen)]
    np.testing.assert_array_equal(first[0][0], first[1][0])  # the same initialisation
    assert not np.array_equal(first[0][1], first[1][1])
    run = RUN[:-2] + ["--method", "mtt", "--syn-steps", "2", "--expert-epochs", "1", "--max-start-epoch", "1", "--lr", "10",
                      "--steps", "2", "--eval-every", "2", "--val-size", "100"]
    run = [a for a in run if a not in ("--width", "8", "--real-batch")]
    out = str(tmp_path / "mtt")
    assert cli.main(run + ["--expert-dir", held, "--out", out]) == 0
    arrays = _arrays(out)
    val, sources = arrays["val_indices"], arrays["initial_indices"]
    assert len(val) == 100 and set(val) <= set(rows) and not set(val) & set(sources)
    assert 0 <= io.read_json(os.path.join(out, "metrics.json"))["val_accuracy"] <= 1
    refused = str(tmp_path / "mtt-seen")
    assert cli.main(run + ["--expert-dir", seen, "--out", refused]) == 2 and not os.path.exists(refused)
    # more held-out rows than the experts have: refused too
    too_many = [a if a != "100" else "251" for a in run]
    assert cli.main(too_many + ["--expert-dir", held, "--out", refused]) == 2 and not os.path.exists(refused)


@pytest.mark.parametrize("argv, message", [
    (["--method", "mtt"], "--method mtt needs --expert-dir"),
    (["--method", "mtt", "--expert-dir", "/nonexistent"], "holds no expert trajectories"),
    (["--method", "dd", "--syn-steps", "3"], "--syn-steps applies to --method mtt"),
    (["--method", "mtt", "--real-batch", "3"], "--real-batch applies to --method dc / dsa / dm / dd / frepo"),
])
def test_bad_mtt_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    out = str(tmp_path / "bad")
    assert cli.main(["distill", "--dataset", "digits", "--no-progress", "--out", out] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not os.path.exists(os.path.join(out, "distilled.npz"))


def test_snapshots_are_the_sets_shorter_runs_end_with(tmp_path):
    """--snapshots keeps the set of every checkpoint: the one at step 2 of a 4-step run is what a
    2-step run writes, the last is the run's own distilled.npz (equal-compute tables read these)."""
    long, short = str(tmp_path / "long"), str(tmp_path / "short")
    extra = RUN + ["--method", "frepo", "--pool-size", "2", "--max-age", "2"]
    assert cli.main(extra + ["--steps", "4", "--eval-every", "2", "--snapshots", "--out", long]) == 0
    assert cli.main(extra + ["--steps", "2", "--eval-every", "2", "--out", short]) == 0
    assert sorted(os.listdir(os.path.join(long, "snapshots"))) == [f"step-{s:07d}.npz" for s in (0, 2, 4)]
    for step, other in ((2, _arrays(short)), (4, _arrays(long))):
        kept = io.read_npz(os.path.join(long, "snapshots", f"step-{step:07d}.npz"))
        for key in ("images", "labels", "initial_indices", "preprocess_mean", "preprocess_std"):
            np.testing.assert_array_equal(kept[key], other[key])


def test_a_time_budget_stops_at_the_first_chunk_end_past_it_and_extends_on_resume(tmp_path):
    out = str(tmp_path / "budget")
    argv = RUN + ["--method", "frepo", "--pool-size", "2", "--max-age", "2", "--steps", "100", "--eval-every", "100",
                  "--checkpoint-every", "2", "--snapshots", "--out", out]
    assert cli.main(argv + ["--max-seconds", "1e-6"]) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["steps"] == 2 and [e["step"] for e in metrics["evals"]] == [0, 2]
    assert metrics["evals"][-1]["seconds"] == pytest.approx(metrics["seconds"]) and metrics["seconds"] > 0
    kept = io.read_npz(os.path.join(out, "snapshots", "step-0000002.npz"))
    assert float(kept["seconds"]) == pytest.approx(metrics["seconds"])
    # a larger budget on resume continues the same run (the budget may change, as --steps may)
    assert cli.main(argv + ["--max-seconds", "1e9", "--steps", "4", "--resume"]) == 0
    assert json.load(open(os.path.join(out, "metrics.json")))["steps"] == 4


def test_dd_outer_loss_in_blocks_equals_the_whole_batch_and_its_gradient():
    model, variables, _, _, real, real_labels = _dd_problem()
    params, rest = variables["params"], {}
    whole = jax.jit(lambda p: unrolled.cross_entropy(model, p, rest, real, real_labels))
    blocked = jax.jit(lambda p: unrolled.blocked_cross_entropy(model, p, rest, real, real_labels, block=5))  # 12 = 3 blocks of 4
    np.testing.assert_allclose(float(blocked(params)), float(whole(params)), rtol=1e-12)
    grads = [jax.tree_util.tree_leaves(jax.jit(jax.grad(f))(params)) for f in (blocked, whole)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_the_cpu_clock_counts_the_steps_compute_not_the_time_they_wait():
    """`loop.optimise`'s budget by `clock`: a chunk that waits 0.3 s (as a step does while another
    job holds the core) spends 0.3 s of wall time and almost no CPU time, so a CPU budget of 0.1 s
    is not used up by it and a wall budget is."""
    import time
    from typing import NamedTuple

    from kip import loop

    class State(NamedTuple):
        params: jnp.ndarray
        step: int

    def make_chunk(n):
        def chunk(state):
            time.sleep(0.3)
            return State(state.params, state.step + n), {"loss": np.zeros(n)}
        return chunk

    spent = {}
    for clock in ("wall", "cpu"):
        _, history = loop.optimise(State(jnp.zeros(2), 0), make_chunk, 3, 1, lambda s: {"test_accuracy": 0.0},
                                   lambda s, h: None, loop.History(), "unused", progress=False, max_seconds=0.1, clock=clock)
        spent[clock] = (history.evals[-1]["step"], history.seconds)
    assert spent["wall"][0] == 1 and spent["wall"][1] >= 0.3  # stopped after the first chunk
    assert spent["cpu"][0] == 3 and spent["cpu"][1] < 0.1  # three chunks, within the budget
    elapsed = loop.stopwatch()  # what Label Solve and the experts' epochs record: both clocks at once
    time.sleep(0.2)
    waited = elapsed()
    assert set(waited) == set(loop.CLOCKS) and waited["wall"] >= 0.2 and waited["cpu"] < 0.1


def test_an_unknown_clock_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(RUN + ["--method", "frepo", "--clock", "gpu", "--out", str(tmp_path / "x")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

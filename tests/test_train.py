"""kip.train: the loop learns, is deterministic, and each option does what its formula says
(schedule and weight decay, mixup, label smoothing, augmentation), checked by hand."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kip import InputError, augment, data, models, optim, train

C = 3


def tiny_problem(n=24, seed=0):
    """n random 4x4x1 images with random labels: a network of width 128 can memorise them."""
    rng = np.random.RandomState(seed)
    x = rng.randn(n, 4, 4, 1).astype(np.float32)
    labels = rng.randint(0, C, n)
    return x, labels, np.asarray(data.one_hot(labels, C))


FC = models.build("fc1", num_classes=C, width=128)
QUICK = train.TrainConfig(steps=60, batch_size=8, lr=0.1, weight_decay=0.0)


def test_loss_falls_and_the_network_memorises_a_tiny_problem():
    x, labels, y = tiny_problem()
    result = train.fit(FC, x, y, train.TrainConfig(steps=300, batch_size=8, lr=0.1), jax.random.PRNGKey(0))
    assert result.losses.shape == (300,) and not result.diverged
    assert result.losses[-10:].mean() < 0.01 * result.losses[:10].mean()
    assert train.accuracy(FC, result.variables, x, labels) == 1.0


def test_same_seed_gives_identical_training_and_another_seed_does_not():
    x, _, y = tiny_problem()
    config = train.TrainConfig(steps=30, batch_size=8, lr=0.1, augment=("flip", "crop"), mixup=0.5, label_smoothing=0.1)
    a, b, c = (train.fit(FC, x, y, config, jax.random.PRNGKey(s)) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.losses, b.losses)
    for leaf_a, leaf_b in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)):
        np.testing.assert_array_equal(leaf_a, leaf_b)
    assert not np.array_equal(a.losses, c.losses)


def params_distance(a, b):
    leaves = zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables))
    return max(float(jnp.max(jnp.abs(p - q)) / jnp.max(jnp.abs(q))) for p, q in leaves)


def test_mixup_alpha_to_zero_is_plain_training():
    x, _, y = tiny_problem()
    key = jax.random.PRNGKey(3)
    plain = train.fit(FC, x, y, QUICK, key)
    off = train.fit(FC, x, y, train.TrainConfig(**{**QUICK.__dict__, "mixup": 0.0}), key)
    np.testing.assert_array_equal(off.losses, plain.losses)  # alpha = 0 is off
    # Beta(a, a) -> {0, 1} as a -> 0: each batch is then itself, or itself re-paired (the same
    # mean loss), so training matches plain training up to float rounding ...
    tiny = train.fit(FC, x, y, train.TrainConfig(**{**QUICK.__dict__, "mixup": 1e-4}), key)
    assert params_distance(tiny, plain) < 1e-4
    np.testing.assert_allclose(tiny.losses, plain.losses, rtol=1e-4)
    # ... which a real alpha does not
    assert params_distance(train.fit(FC, x, y, train.TrainConfig(**{**QUICK.__dict__, "mixup": 1.0}), key), plain) > 1e-2


def test_mixup_mixes_images_and_labels_with_one_beta_coefficient():
    alpha = 0.4
    # Two images whose single pixel equals the class-1 weight of their label: any mix keeps
    # pixel == label[1] only if images and labels share the coefficient and the pairing.
    x = jnp.array([1.0, 0.0]).reshape(2, 1, 1, 1)
    y = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    mx, my = jax.vmap(lambda k: augment.mixup(k, x, y, alpha))(jax.random.split(jax.random.PRNGKey(0), 20000))
    np.testing.assert_allclose(mx[..., 0, 0, 0], my[..., 1], atol=1e-6)
    np.testing.assert_allclose(my.sum(-1), 1, atol=1e-6)
    assert np.all((my >= 0) & (my <= 1))
    # Image 0 (pixel 1) paired with image 1 (pixel 0) becomes lam: Beta(a, a) has mean 1/2
    # and variance 1 / (4 (2a + 1)).
    first = np.asarray(mx[:, 0, 0, 0, 0])
    lam = first[first < 1 - 1e-6]  # pairs with itself (pixel 1) half the time
    assert 0.45 < len(lam) / len(first) < 0.55
    np.testing.assert_allclose(lam.mean(), 0.5, atol=0.015)
    np.testing.assert_allclose(lam.var(), 1 / (4 * (2 * alpha + 1)), rtol=0.05)


def test_label_smoothing_targets_sum_to_one_and_equal_the_formula():
    eps, labels = 0.1, np.array([0, 2, 1, 2])
    hot = np.asarray(data.one_hot(labels, C, centred=False))
    smooth = np.asarray(augment.smooth_labels(hot, eps))
    np.testing.assert_allclose(smooth.sum(-1), 1, rtol=1e-6)
    np.testing.assert_allclose(smooth, np.where(hot == 1, 1 - eps + eps / C, eps / C), rtol=1e-6)
    # centred labels (KIP's targets): the centred version of the smoothed distribution
    centred = np.asarray(augment.smooth_labels(data.one_hot(labels, C), eps))
    np.testing.assert_allclose(centred, smooth - 1 / C, atol=1e-6)


def test_label_smoothing_changes_training():
    x, _, y = tiny_problem()
    key = jax.random.PRNGKey(0)
    smooth = train.fit(FC, x, y, train.TrainConfig(**{**QUICK.__dict__, "label_smoothing": 0.2}), key)
    assert params_distance(smooth, train.fit(FC, x, y, QUICK, key)) > 1e-3


def test_flip_and_crop_give_flipped_or_shifted_copies():
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 8, 8, 2))
    flipped = np.asarray(augment.standard(jax.random.PRNGKey(1), x, ("flip",)))
    same = np.all(flipped == np.asarray(x), axis=(1, 2, 3))
    mirrored = np.all(flipped == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored) and 16 < same.sum() < 48
    cropped = np.asarray(augment.standard(jax.random.PRNGKey(2), x, ("crop",)))
    pad = 1  # 8 // 8
    padded = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = {(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)}
    found = [next((o for o in windows if np.array_equal(cropped[k], padded[k, o[0]:o[0] + 8, o[1]:o[1] + 8])), None)
             for k in range(len(x))]
    assert None not in found and len(set(found)) > 4


def test_cosine_schedule_momentum_and_coupled_weight_decay_by_hand():
    lr, wd, mom, steps = 0.5, 0.1, 0.9, 4
    opt = optim.make_optimizer(train.TrainConfig(steps=steps, lr=lr, weight_decay=wd, momentum=mom))
    w, state, trace = jnp.array(2.0), None, 0.0
    state = opt.init(w)
    expected = 2.0
    for t in range(3):
        g = jnp.array(0.3)
        updates, state = opt.update(g, state, w)
        w = optax.apply_updates(w, updates)
        lr_t = lr * 0.5 * (1 + math.cos(math.pi * t / steps))  # cosine decay to 0 over `steps`
        trace = mom * trace + (0.3 + wd * expected)  # gradient + coupled decay, heavy-ball momentum
        expected -= lr_t * trace
        np.testing.assert_allclose(float(w), expected, rtol=1e-6)


def test_example_losses_match_their_formulas():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    targets = jnp.array([[0.7, 0.2, 0.1]])
    np.testing.assert_allclose(train.example_losses(logits, targets, "mse"), [0.5 * (1.3**2 + 0.2**2 + 1.1**2) / 3], rtol=1e-6)
    log_z = math.log(math.exp(2) + 1 + math.exp(-1))
    np.testing.assert_allclose(train.example_losses(logits, targets, "xent"), [-(0.7 * 2 - 0.1) + log_z], rtol=1e-6)


def test_each_epoch_visits_every_example_once_and_the_hook_sees_per_example_stats():
    x, _, y = tiny_problem(n=24)
    seen = []
    train.fit(FC, x, y, train.TrainConfig(steps=6, batch_size=8, lr=0.1), jax.random.PRNGKey(0),
              on_step=lambda t, idx, m: seen.append((np.asarray(idx), np.asarray(m["example_loss"]), np.asarray(m["example_correct"]))))
    epochs = [np.sort(np.concatenate([s[0] for s in seen[e * 3:(e + 1) * 3]])) for e in (0, 1)]
    for visited in epochs:
        np.testing.assert_array_equal(visited, np.arange(24))
    assert not np.array_equal(np.concatenate([s[0] for s in seen[:3]]), np.concatenate([s[0] for s in seen[3:]]))
    assert all(s[1].shape == (8,) and s[2].dtype == bool for s in seen)


def test_validation_accuracy_is_recorded():
    x, labels, y = tiny_problem()
    result = train.fit(FC, x, y, train.TrainConfig(steps=40, batch_size=8, lr=0.1, eval_every=20), jax.random.PRNGKey(0),
                       val_images=x, val_labels=labels)
    assert [v["step"] for v in result.val] == [20, 40]
    assert result.val[-1]["accuracy"] == train.accuracy(FC, result.variables, x, labels)


class _BatchNormNet(nn.Module):
    """Not a preset: checks that state such as BatchNorm statistics is carried by the step."""

    num_classes: int = C

    def check_input_shape(self, shape):
        pass

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x.reshape(len(x), -1))
        return nn.Dense(self.num_classes)(h)


def test_model_state_is_updated_in_train_mode():
    x, _, y = tiny_problem()
    net = _BatchNormNet()
    result = train.fit(net, x + 5.0, y, train.TrainConfig(steps=20, batch_size=24, lr=0.01), jax.random.PRNGKey(0))
    mean = result.variables["batch_stats"]["BatchNorm_0"]["mean"]
    np.testing.assert_allclose(mean, (x + 5.0).reshape(24, -1).mean(0), rtol=1e-4)  # 20 halvings from 0


@pytest.mark.parametrize(
    "model, images, targets, config, message",
    [
        (FC, np.zeros((0, 4, 4, 1)), np.zeros((0, C)), QUICK, "empty"),
        (FC, np.zeros((5, 4, 4, 1)), np.zeros((5, C + 1)), QUICK, "4 classes but the network has 3"),
        (FC, np.zeros((5, 4, 4, 1)), np.zeros((4, C)), QUICK, "one row"),
        (FC, np.zeros((5, 4, 4, 1)), np.zeros(5), QUICK, "one row"),
        (models.build("convnet", num_classes=C, width=2), np.zeros((5, 4, 4, 1)), np.zeros((5, C)), QUICK, "at least 8x8"),
        (models.build("convnet", num_classes=C, width=2), np.zeros((5, 64)), np.zeros((5, C)), QUICK, "H x W x C"),
        (FC, np.full((5, 4, 4, 1), np.nan), np.zeros((5, C)), QUICK, "NaN"),
        (FC, np.zeros((5, 4, 4, 1)), np.zeros((5, C)), train.TrainConfig(loss="xent"), "probability vectors"),
        (FC, np.zeros((5, 4, 4, 1)), np.zeros((5, C)), train.TrainConfig(lr=0), "lr must be a positive"),
        (FC, np.zeros((5, 4, 4, 1)), np.zeros((5, C)), train.TrainConfig(augment=("rotate",)), "augmentation"),
        (FC, np.zeros((5, 4, 4, 1)), np.zeros((5, C)), train.TrainConfig(label_smoothing=1.0), "label smoothing"),
        (FC, np.zeros((5, 4, 4, 1)), np.zeros((5, C)), train.TrainConfig(optimizer="lbfgs"), "optimizer"),
    ],
)
def test_bad_training_input_raises_input_error(model, images, targets, config, message):
    with pytest.raises(InputError, match=message):
        train.fit(model, images, targets, config, jax.random.PRNGKey(0))


def test_predict_refuses_images_of_the_wrong_shape():
    x, _, y = tiny_problem()
    net = models.build("convnet3", num_classes=C, width=2)
    with pytest.raises(InputError, match="at least 8x8"):
        train.predict(net, {}, x)


def test_step_schedule_drops_by_0_2_at_30_60_80_percent_of_the_steps():
    # The Data Diet recipe: lr 0.1 x 0.2 at epochs 60 / 120 / 160 of 200 (390 steps each)
    lr = optim.learning_rate(train.DATA_DIET)
    epoch = lambda e: e * 390  # noqa: E731
    got = [float(lr(t)) for t in (0, epoch(60) - 1, epoch(60), epoch(120) - 1, epoch(120), epoch(160), epoch(200) - 1)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.02, 0.02, 0.004, 0.0008, 0.0008], rtol=1e-6)


def test_nesterov_momentum_by_hand():
    # optax's Nesterov SGD: v_t = g_t + mu v_{t-1}, w -= lr (g_t + mu v_t). With a constant
    # gradient g: first step lr (1 + mu) g, second lr (1 + mu + mu^2) g (heavy ball: (1 + mu) g).
    lr, mu, g = 0.1, 0.9, 0.3
    for nesterov, factors in ((True, (1 + mu, 1 + mu + mu**2)), (False, (1, 1 + mu))):
        opt = optim.make_optimizer(train.TrainConfig(steps=100, lr=lr, momentum=mu, nesterov=nesterov, weight_decay=0.0,
                                                     schedule="step"))
        w, state = jnp.array(1.0), opt.init(jnp.array(1.0))
        for f in factors:
            updates, state = opt.update(jnp.array(g), state, w)
            np.testing.assert_allclose(float(updates), -lr * f * g, rtol=1e-6)
            w = optax.apply_updates(w, updates)


def test_stop_after_runs_the_first_steps_of_the_same_schedule():
    x, _, y = tiny_problem()
    config = train.TrainConfig(steps=12, batch_size=8, lr=0.1)
    full = train.fit(FC, x, y, config, jax.random.PRNGKey(0))
    part = train.fit(FC, x, y, config, jax.random.PRNGKey(0), stop_after=5)
    np.testing.assert_array_equal(part.losses, full.losses[:5])
    # the same as a run of 5 steps only if the schedule were 5 steps long: it is not (cosine over 12)
    short = train.fit(FC, x, y, train.TrainConfig(steps=5, batch_size=8, lr=0.1), jax.random.PRNGKey(0))
    assert not np.array_equal(short.losses, part.losses)
    untrained = train.fit(FC, x, y, config, jax.random.PRNGKey(0), stop_after=0)
    assert untrained.losses.shape == (0,)
    with pytest.raises(InputError, match="stop_after must lie in 0..12"):
        train.fit(FC, x, y, config, jax.random.PRNGKey(0), stop_after=13)
    with pytest.raises(InputError, match="schedule"):
        train.fit(FC, x, y, train.TrainConfig(schedule="linear"), jax.random.PRNGKey(0))

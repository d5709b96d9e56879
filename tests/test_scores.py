"""kip.scores: EL2N by hand, GraNd against a loop of single-example gradients, jax.jacrev and
(last layer) its closed form, forgetting on hand-made sequences, and both scores finding
flipped labels on real digits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from kip import InputError, data, models, scores, train

IDENTITY = lambda variables, x: x  # noqa: E731  the "network" whose logits are its inputs


def test_el2n_of_fixed_logits_by_hand():
    # zero logits: p = 1/C everywhere, || p - e_y || = sqrt((1 - 1/C)^2 + (C - 1) / C^2) = sqrt(1 - 1/C)
    for c in (2, 3, 10):
        got = scores.el2n(IDENTITY, {}, jnp.zeros((4, c)), jnp.arange(4) % c)
        np.testing.assert_allclose(got, np.sqrt(1 - 1 / c), rtol=1e-12)
    # logits (0, log 3): p = (1/4, 3/4); label 1: ||(1/4, -1/4)|| = sqrt(2) / 4; label 0: ||(-3/4, 3/4)||
    logits = jnp.array([[0.0, np.log(3.0)]] * 2)
    np.testing.assert_allclose(scores.el2n(IDENTITY, {}, logits, jnp.array([1, 0])),
                               [np.sqrt(2) / 4, 3 * np.sqrt(2) / 4], rtol=1e-12)


def test_el2n_lies_in_0_sqrt2_and_reaches_both_ends():
    logits = 30 * jax.random.normal(jax.random.PRNGKey(0), (500, 10))
    y = jax.random.randint(jax.random.PRNGKey(1), (500,), 0, 10)
    got = np.asarray(scores.el2n(IDENTITY, {}, logits, y))
    assert np.all(got >= 0) and np.all(got <= np.sqrt(2) + 1e-12)
    confident = 50.0 * jax.nn.one_hot(jnp.array([0, 1]), 3)
    np.testing.assert_allclose(scores.el2n(IDENTITY, {}, confident, jnp.array([0, 2])), [0, np.sqrt(2)], atol=1e-12)


def test_el2n_does_not_depend_on_batch_size_or_batch_composition():
    model = models.build("convnet", num_classes=4, width=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (37, 8, 8, 1))
    y = jnp.arange(37) % 4
    variables = model.init(jax.random.PRNGKey(1), x[:1])
    full = np.asarray(scores.el2n(model.apply, variables, x, y, batch_size=1000))
    for batch in (1, 5, 37):
        np.testing.assert_allclose(scores.el2n(model.apply, variables, x, y, batch_size=batch), full, rtol=1e-5)
    perm = np.random.RandomState(0).permutation(37)[:11]
    np.testing.assert_allclose(scores.el2n(model.apply, variables, x[perm], y[perm], batch_size=4), full[perm], rtol=1e-5)


class ConvBN(nn.Module):
    """A small net with every kind of state GraNd must handle: conv, BatchNorm (running statistics
    in eval mode), bias-free and biased layers."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(3, (3, 3), use_bias=False, param_dtype=jnp.float64)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(x))
        return nn.Dense(4, param_dtype=jnp.float64)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def convbn():
    model = ConvBN()
    x = jax.random.normal(jax.random.PRNGKey(0), (9, 5, 5, 2), jnp.float64)
    y = jnp.arange(9) % 4
    variables = model.init(jax.random.PRNGKey(1), x)
    # non-trivial running statistics, as after training
    _, state = model.apply(variables, 3 * x + 1, train=True, mutable=["batch_stats"])
    return model, {**variables, **state}, x, y


def test_grand_equals_a_loop_of_single_example_gradients_and_jacrev(convbn):
    model, variables, x, y = convbn
    params, rest = variables["params"], {"batch_stats": variables["batch_stats"]}

    def one(p, i):  # the loss of example i alone
        logits = model.apply({"params": p, **rest}, x[i:i + 1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[i:i + 1])[0]

    def norm(tree, axis=None):
        return np.sqrt(sum(np.sum(np.asarray(g) ** 2, axis=axis) for g in jax.tree_util.tree_leaves(tree)))

    loop = [norm(jax.grad(one)(params, i)) for i in range(len(x))]
    jac = jax.jacrev(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p, **rest}, x), y))(params)  # leaves (n, *shape)
    by_jacrev = norm(jax.tree_util.tree_map(lambda g: g.reshape(len(x), -1), jac), axis=1)
    got = np.asarray(scores.grand(model.apply, variables, x, y, batch_size=4))
    np.testing.assert_allclose(got, loop, rtol=1e-10)
    np.testing.assert_allclose(got, by_jacrev, rtol=1e-10)
    assert np.all(got > 0)


def test_grand_last_layer_only_has_the_closed_form():
    # For softmax cross-entropy through a last layer z = h W + b (standard parameterization):
    # dL/dW = h (p - y)^T, dL/db = p - y, so the norm is ||p - y|| * sqrt(1 + ||h||^2).
    model = models.build("fc1", num_classes=5, width=16, param_dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 3, 3, 1), jnp.float64)
    y = jnp.array([0, 1, 2, 3, 4, 0, 1])
    variables = model.init(jax.random.PRNGKey(1), x)
    first = variables["params"]["Dense_0"]
    h = jax.nn.relu(x.reshape(7, -1) @ first["kernel"] + first["bias"])
    p = jax.nn.softmax(model.apply(variables, x))
    expected = jnp.linalg.norm(p - jax.nn.one_hot(y, 5), axis=1) * jnp.sqrt(1 + jnp.sum(h**2, axis=1))
    assert scores.last_layer(variables["params"]) == "Dense_1"
    got = scores.grand(model.apply, variables, x, y, last_layer_only=True)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert np.all(scores.grand(model.apply, variables, x, y) > got)  # the full gradient holds more


def replay(sequences, never_learned="inf"):
    """Forgetting scores of examples whose correctness at successive presentations is given;
    all examples are presented together, in shuffled batches of two."""
    n = len(sequences)
    state = scores.forgetting_init(n)
    rng = np.random.RandomState(0)
    for t in range(max(map(len, sequences))):
        present = rng.permutation([i for i in range(n) if t < len(sequences[i])])
        for batch in np.array_split(present, max(1, len(present) // 2)):
            state = scores.forgetting_update(state, jnp.asarray(batch), jnp.asarray([sequences[i][t] for i in batch]))
    return scores.forgetting_scores(state, never_learned)


def test_forgetting_counts_correct_to_incorrect_transitions():
    sequences = [[0, 1, 0, 1, 1, 0], [1, 1, 1], [0, 0, 0], [0, 1], [1, 0, 0], [0, 0, 1, 0]]
    np.testing.assert_array_equal(replay(sequences), [2, 0, np.inf, 0, 1, 1])
    # Toneva et al.'s convention: a never-learned example counts its presentations
    np.testing.assert_array_equal(replay(sequences, "presentations"), [2, 0, 3, 0, 1, 1])
    with pytest.raises(InputError, match="never_learned"):
        replay(sequences, "nan")


@pytest.fixture(scope="module")
def noisy_digits():
    """The embedded digits with 10% of the training labels flipped to another class, and an
    FC1 of width 256 trained on them for 8 of 30 epochs, scored: EL2N, GraNd, mean over 2 runs."""
    ds = data.load("digits")
    rng = np.random.RandomState(0)
    x = (ds.x_train - ds.x_train.mean()) / ds.x_train.std()
    flipped = rng.permutation(len(x))[: len(x) // 10]
    labels = ds.y_train.copy()
    labels[flipped] = (labels[flipped] + rng.randint(1, 10, len(flipped))) % 10
    model = models.build("fc1", num_classes=10, width=256)
    config = train.TrainConfig(steps=30 * train.epoch_steps(len(x), 64), batch_size=64, lr=0.05, momentum=0.9,
                               weight_decay=5e-4, loss="xent")
    runs = [scores.score_network(model, x, labels, config, jax.random.PRNGKey(i), ("el2n", "grand"), epoch=8)
            for i in range(2)]
    mean = {k: np.mean([r[k] for r in runs], axis=0) for k in ("el2n", "grand")}
    is_flipped = np.zeros(len(x), bool)
    is_flipped[flipped] = True
    return mean, is_flipped


def test_el2n_ranks_flipped_labels_on_top_and_agrees_with_grand(noisy_digits):
    mean, is_flipped = noisy_digits
    assert roc_auc_score(is_flipped, mean["el2n"]) > 0.9
    assert roc_auc_score(is_flipped, mean["grand"]) > 0.9
    assert stats.spearmanr(mean["el2n"], mean["grand"]).statistic > 0.9


def test_score_network_rejects_bad_input():
    x, y = np.zeros((20, 4, 4, 1), np.float32), np.arange(20) % 2
    model = models.build("fc1", num_classes=2, width=4)
    config = train.TrainConfig(steps=10, batch_size=10, loss="xent")
    with pytest.raises(InputError, match="scores must be among"):
        scores.score_network(model, x, y, config, jax.random.PRNGKey(0), ("margin",))
    with pytest.raises(InputError, match="epoch must lie in 0..5"):
        scores.score_network(model, x, y, config, jax.random.PRNGKey(0), epoch=6)
    with pytest.raises(InputError, match="cross-entropy"):
        scores.score_network(model, x, y, train.TrainConfig(steps=10, batch_size=10), jax.random.PRNGKey(0), epoch=1)

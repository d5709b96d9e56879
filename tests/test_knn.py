"""kip.knn: SLaPkNN on hand-made prototypes, against hand-derived decision boundaries."""

import numpy as np
import pytest

from kip import InputError, knn


def test_two_prototypes_separate_three_classes():
    # LO-shot's Figure 1 set-up: two soft-label prototypes on a line, three classes. With
    # p0 = 0 labelled (0.6, 0.4, 0) and p1 = 1 labelled (0, 0.4, 0.6), a query at t in (0, 1)
    # scores (0.6/t, 0.4/t + 0.4/(1-t), 0.6/(1-t)): class 1, the mixed label no prototype
    # carries as its own argmax, wins exactly on (1/3, 2/3); class 0 below, class 2 above.
    prototypes = np.array([[0.0], [1.0]])
    labels = np.array([[0.6, 0.4, 0.0], [0.0, 0.4, 0.6]])
    t = np.array([0.05, 0.2, 0.32, 0.34, 0.5, 0.66, 0.68, 0.9])
    predicted = np.argmax(knn.slapknn_scores(prototypes, labels, t[:, None], k=2), axis=1)
    np.testing.assert_array_equal(predicted, [0, 0, 0, 1, 1, 1, 2, 2])
    scores = knn.slapknn_scores(prototypes, labels, np.array([[0.25]]), k=2)
    np.testing.assert_allclose(scores, [[0.6 / 0.25, 0.4 / 0.25 + 0.4 / 0.75, 0.6 / 0.75]], rtol=1e-12)
    # Outside the segment as well: at t = -0.5 (distances 0.5, 1.5) class 0 wins, 1.2 > 0.8 + 0.27.
    assert np.argmax(knn.slapknn_scores(prototypes, labels, np.array([[-0.5]]), k=2)) == 0


def test_only_the_k_nearest_vote_and_hard_labels_give_weighted_knn():
    # In 2-D, with one-hot labels SLaPkNN is distance-weighted kNN.
    prototypes = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [10.0, 10.0]])
    labels = np.eye(3)[[0, 1, 2, 1]]
    query = np.array([[1.0, 0.0]])  # distances 1, 2, sqrt(17), ~14.2
    np.testing.assert_allclose(knn.slapknn_scores(prototypes, labels, query, k=2), [[1.0, 0.5, 0.0]], rtol=1e-12)
    np.testing.assert_allclose(knn.slapknn_scores(prototypes, labels, query, k=3),
                               [[1.0, 0.5, 1 / np.sqrt(17)]], rtol=1e-12)
    all_four = knn.slapknn_scores(prototypes, labels, query, k=100)  # k capped at m
    np.testing.assert_allclose(all_four[0, 1], 0.5 + 1 / np.hypot(9, 10), rtol=1e-12)


def test_query_on_a_prototype_takes_its_label_and_centring_changes_nothing():
    rng = np.random.RandomState(0)
    prototypes = rng.randn(6, 4, 4, 1)
    labels = rng.rand(6, 5)
    scores = knn.slapknn_scores(prototypes, labels, prototypes, k=3)
    np.testing.assert_allclose(scores, labels)
    queries = rng.randn(50, 4, 4, 1)
    np.testing.assert_array_equal(np.argmax(knn.slapknn_scores(prototypes, labels, queries, k=3), 1),
                                  np.argmax(knn.slapknn_scores(prototypes, labels - 0.2, queries, k=3), 1))
    # blocked evaluation agrees with one block
    np.testing.assert_allclose(knn.slapknn_scores(prototypes, labels, queries, k=3, block_size=7),
                               knn.slapknn_scores(prototypes, labels, queries, k=3), rtol=1e-12)
    y = np.argmax(labels, 1)
    assert knn.slapknn_accuracy(prototypes, labels, prototypes, y, k=2) == 1.0


@pytest.mark.parametrize(
    "prototypes, labels, x, k, message",
    [
        (np.zeros((0, 2)), np.zeros((0, 3)), np.zeros((1, 2)), 1, "at least one prototype"),
        (np.zeros((2, 2)), np.zeros((3, 3)), np.zeros((1, 2)), 1, "one label row"),
        (np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((1, 3)), 1, "queries are"),
        (np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((1, 2)), 0, "k must be"),
    ],
)
def test_bad_input(prototypes, labels, x, k, message):
    with pytest.raises(InputError, match=message):
        knn.slapknn_scores(prototypes, labels, x, k)

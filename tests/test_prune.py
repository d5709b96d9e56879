"""kip.prune: which examples are kept, checked on hand-made scores and against per-class brute force."""

import numpy as np
import pytest

from kip import InputError, prune


def test_keeps_the_highest_scores_after_the_offset():
    s = np.array([0.1, 0.9, 0.5, 0.3, 0.7])
    np.testing.assert_array_equal(prune.keep_highest(s, 0.4), [1, 4])
    np.testing.assert_array_equal(prune.keep_highest(s, 0.4, offset=0.2), [2, 4])  # the hardest (1) dropped
    np.testing.assert_array_equal(prune.keep_highest(s, 1.0), np.arange(5))
    np.testing.assert_array_equal(prune.keep_highest(s, 0.01), [1])  # at least one example
    # never-learned examples (inf) are the hardest
    np.testing.assert_array_equal(prune.keep_highest(np.array([1.0, np.inf, 3.0, 0.0]), 0.5), [1, 2])


def test_ties_are_broken_at_random_not_by_position():
    s = np.zeros(1000)
    kept = [prune.keep_highest(s, 0.5, seed=k) for k in range(40)]
    assert all(len(k) == 500 for k in kept) and not np.array_equal(kept[0], kept[1])
    frequency = np.bincount(np.concatenate(kept), minlength=1000) / 40
    assert abs(frequency[:500].mean() - 0.5) < 0.03  # the first half is not favoured
    np.testing.assert_array_equal(prune.keep_highest(s, 0.5, seed=3), prune.keep_highest(s, 0.5, seed=3))


@pytest.mark.parametrize("keep, offset", [(0.5, 0.0), (0.3, 0.0), (0.37, 0.1), (0.9, 0.1), (0.05, 0.0)])
def test_class_balanced_keeps_each_class_in_proportion_and_its_hardest(keep, offset):
    rng = np.random.RandomState(0)
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    s = rng.rand(100) + 2 * (labels == 0)  # class 0 is the hardest: plain pruning keeps it first
    kept = prune.keep_highest(s, keep, offset, labels=labels)
    assert len(kept) == round(keep * 100)
    for c, size in enumerate((50, 30, 20)):
        mine = kept[labels[kept] == c]
        assert abs(len(mine) - keep * size) <= 1
        # within the class: the window of its hardest after dropping its share of the offset
        order = np.flatnonzero(labels == c)[np.argsort(-s[labels == c])]
        start = np.flatnonzero(np.isin(order, mine))[0]
        assert abs(start - offset * size) <= 1
        np.testing.assert_array_equal(np.sort(order[start:start + len(mine)]), mine)
    if offset == 0 and keep <= 0.5:
        assert np.all(labels[prune.keep_highest(s, keep)] == 0)


def test_random_pruning_is_uniform_and_class_balanced_random_is_proportional():
    labels = np.repeat([0, 1], [300, 100])
    kept = [prune.keep_highest(prune.random_scores(400, seed), 0.25, seed=seed) for seed in range(200)]
    frequency = np.bincount(np.concatenate(kept), minlength=400) / 200
    assert abs(frequency.mean() - 0.25) < 1e-12 and frequency.std() < 0.06  # binomial std: 0.031
    balanced = prune.keep_highest(prune.random_scores(400, 7), 0.25, labels=labels, seed=7)
    assert np.bincount(labels[balanced]).tolist() == [75, 25]


@pytest.mark.parametrize("keep, offset, message", [
    (0.0, 0.0, "must lie in"), (1.5, 0.0, "must lie in"), (float("nan"), 0.0, "must lie in"),
    (0.5, 1.0, "offset"), (0.5, -0.1, "offset"), (0.6, 0.5, "must not exceed 1"),
])
def test_bad_fractions_are_rejected(keep, offset, message):
    with pytest.raises(InputError, match=message):
        prune.keep_highest(np.arange(10.0), keep, offset)


def test_bad_scores_are_rejected():
    with pytest.raises(InputError, match="NaN"):
        prune.keep_highest(np.array([1.0, np.nan]), 0.5)
    with pytest.raises(InputError, match="differ in length"):
        prune.keep_highest(np.arange(4.0), 0.5, labels=np.zeros(3, int))

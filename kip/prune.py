"""Data pruning by score (Paul et al. 2021): keep the highest-scoring fraction of a training set,
optionally after an offset that drops the very hardest too; random and class-balanced variants."""

from __future__ import annotations

import numpy as np

from kip import InputError


def counts(n: int, keep: float, offset: float = 0.0) -> tuple[int, int]:
    """(examples kept, hardest examples dropped before them) for fractions `keep` in (0, 1]
    and `offset` in [0, 1) of n: round(keep n) (at least 1) and round(offset n)."""
    if not (np.isfinite(keep) and 0 < keep <= 1):
        raise InputError(f"the fraction kept must lie in (0, 1], got {keep}")
    if not (np.isfinite(offset) and 0 <= offset < 1):
        raise InputError(f"the offset must be a fraction in [0, 1), got {offset}")
    kept, dropped = max(1, round(keep * n)), round(offset * n)
    if kept + dropped > n:
        raise InputError(f"keeping {kept} examples after the {dropped} hardest needs {kept + dropped}, "
                         f"but there are only {n} (keep + offset must not exceed 1)")
    return kept, dropped


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """(n,) uniform noise: ranking by it and keeping the highest is random pruning."""
    return np.random.default_rng(seed).random(n)


def ranking(scores: np.ndarray, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """All n indices, hardest (highest score) first; ties in random order (from `seed`).

    With int `labels` (n,), class-balanced: examples are ordered by their rank within their
    class as a fraction of the class size, so every prefix holds each class in proportion
    to its size (within one example)."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1 or len(scores) == 0 or np.any(np.isnan(scores)):
        raise InputError(f"scores must be a non-empty vector without NaN, got shape {scores.shape}")
    tiebreak = np.random.default_rng(seed).permutation(len(scores))
    order = np.lexsort((tiebreak, -scores))  # last key first: score descending, then the tiebreak
    if labels is None:
        return order
    labels = np.asarray(labels)
    if labels.shape != scores.shape:
        raise InputError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    rank = np.empty(len(order))
    for c in np.unique(labels):
        members = order[labels[order] == c]  # class c, hardest first
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((tiebreak, rank))


def keep_highest(scores: np.ndarray, keep: float, offset: float = 0.0, labels: np.ndarray | None = None,
                 seed: int = 0) -> np.ndarray:
    """Indices (sorted) of the examples kept: in `ranking(scores, labels, seed)` order, skip the
    first round(offset n) (the hardest: an offset window) and keep the next round(keep n).
    labels (n,) makes it class-balanced; scores = random_scores(n) makes it random pruning."""
    order = ranking(scores, labels, seed)
    kept, dropped = counts(len(order), keep, offset)
    return np.sort(order[dropped:dropped + kept])

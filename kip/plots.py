"""Figures a run writes: the support set as a labelled grid, several sets side by side (one row
each), learning curves, and for the Data Diet a histogram of scores and the pruning curve (test
accuracy against the fraction kept)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from kip import io

MAX_PER_CLASS_SHOWN = 10


def _displayable(images: np.ndarray) -> np.ndarray:
    """Each image scaled to [0, 1] on its own range (works for any preprocessing)."""
    x = np.asarray(images, np.float64)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    x = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    return x[..., 0] if x.shape[-1] == 1 else x


def support_grid(path: str, distilled: np.ndarray, labels: np.ndarray, initial: np.ndarray, title: str) -> None:
    """Rows: classes (by argmax of the label); columns: initial | distilled image pairs.

    distilled, initial: (n, H, W, C) in the same order; labels (n, C).
    """
    classes = np.argmax(labels, axis=1)
    num_classes = labels.shape[1]
    per_class = min(MAX_PER_CLASS_SHOWN, max(np.bincount(classes, minlength=num_classes).max(), 1))
    shown_d, shown_i = _displayable(distilled), _displayable(initial)
    cmap = "gray" if shown_d.ndim == 3 else None
    fig = Figure(figsize=(1.0 * 2 * per_class, 1.05 * num_classes))
    axes = fig.subplots(num_classes, 2 * per_class, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for c in range(num_classes):
        members = np.flatnonzero(classes == c)[:per_class]
        for j, i in enumerate(members):
            axes[c, 2 * j].imshow(shown_i[i], cmap=cmap)
            axes[c, 2 * j + 1].imshow(shown_d[i], cmap=cmap)
            axes[c, 2 * j + 1].set_title(f"{labels[i, c]:+.2f}", fontsize=6, pad=1)
        axes[c, 0].text(-0.3, 0.5, str(c), transform=axes[c, 0].transAxes, ha="right", va="center")
    fig.suptitle(f"{title}\n(pairs: initial real image | distilled; number: learned label weight of its class)", fontsize=8)
    io.save_figure(path, fig)


def set_rows(path: str, sets: dict[str, tuple[np.ndarray, np.ndarray]], title: str, max_shown: int = 20) -> None:
    """One row per named set: its images (n, H, W, C) ordered by the class of their labels (n, C)
    (argmax), at most `max_shown` of them; each image scaled on its own range."""
    cols = min(max_shown, max(len(images) for images, _ in sets.values()))
    fig = Figure(figsize=(0.75 * cols + 1.6, 0.8 * len(sets) + 0.5))
    axes = fig.subplots(len(sets), cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (name, (images, labels)) in enumerate(sets.items()):
        order = np.argsort(np.argmax(labels, axis=1), kind="stable")[:cols]
        shown = _displayable(np.asarray(images)[order])
        for j, image in enumerate(shown):
            axes[r, j].imshow(image, cmap="gray" if image.ndim == 2 else None)
        axes[r, 0].text(-0.15, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=1.5 / (0.75 * cols + 1.6), wspace=0.05, hspace=0.1)
    io.save_figure(path, fig)


def learning_curve(path: str, losses: list, evals: list[dict], title: str, loss_label: str = "KIP loss (target batch)") -> None:
    """Training loss per step (losses: [step, loss, ...] rows) and test accuracy at
    evaluation steps (evals: {'step', 'test_accuracy'} dicts)."""
    fig = Figure(figsize=(9, 3.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    if losses:
        ax_loss.semilogy([r[0] for r in losses], [r[1] for r in losses], lw=0.8)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(loss_label)
    ax_acc.plot([h["step"] for h in evals], [100 * h["test_accuracy"] for h in evals], "o-", ms=3)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("KRR test accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    io.save_figure(path, fig)


def score_histogram(path: str, scores: np.ndarray, title: str, xlabel: str) -> None:
    """Histogram of per-example scores (n,); infinite ones (never learned) are counted in the legend."""
    scores = np.asarray(scores, np.float64)
    finite = scores[np.isfinite(scores)]
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    ax.hist(finite, bins=60, color="tab:blue", alpha=0.85,
            label=f"{len(finite)} examples" + (f" ({len(scores) - len(finite)} infinite, not shown)"
                                               if len(finite) < len(scores) else ""))
    ax.set_yscale("log")
    _save_axes(path, fig, ax, xlabel, "training examples", title)


def accuracy_curves(path: str, curves: dict[str, list], xlabel: str, title: str,
                    full: tuple[float, float] | None = None, x_scale: float = 1.0, log_x: bool = False,
                    reference: str = "full data") -> None:
    """Test accuracy (%) against x: curves {label: [(x, accuracy mean, std), ...]} (accuracies
    as fractions; x multiplied by `x_scale` for display); full (mean, std) draws a reference
    accuracy (`reference`: the full data set's, or random real subsets') as a band. A log x
    axis is labelled at the curves' x values, in plain numbers."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    if full is not None:
        ax.axhline(100 * full[0], color="k", lw=0.8, label=f"{reference} {100 * full[0]:.2f}%")
        ax.axhspan(100 * (full[0] - full[1]), 100 * (full[0] + full[1]), color="k", alpha=0.1)
    for label, points in curves.items():
        x, m, s = (np.asarray(v, np.float64) for v in zip(*sorted(points)))
        ax.errorbar(x_scale * x, 100 * m, yerr=100 * s, marker="o", ms=4, capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
        ticks = sorted({x_scale * float(p[0]) for points in curves.values() for p in points})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    _save_axes(path, fig, ax, xlabel, "test accuracy (%)", title)


def pruning_curve(path: str, curves: dict[str, list], full: tuple[float, float] | None, title: str) -> None:
    """Test accuracy against the fraction of the training set kept: curves {label: [(fraction,
    accuracy mean, std), ...]}; full (mean, std) draws the full-data accuracy as a band."""
    accuracy_curves(path, curves, "training data kept (%)", title, full, x_scale=100.0)


def _save_axes(path: str, fig, ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, legend, grid and title of a one-panel figure; saves it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    io.save_figure(path, fig)

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


def mosaic(tiles: list[list[np.ndarray | None]], gap: tuple[int, int] = (1, 1), group: int = 1,
           group_gap: int = 0) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """One image of a grid of equal-sized tiles (H, W) or (H, W, 3) with values in [0, 1]; None
    leaves its place blank (white). Tiles are `gap` (rows, columns) pixels apart, with `group_gap`
    more after every `group` columns. Returns the image and each tile's top-left corner (y, x).

    One image in one axes instead of an axes per tile: matplotlib's cost is per axes, and a
    support grid of 10 classes had 200 of them (4 s a figure, half of a quick run's time)."""
    first = next(t for row in tiles for t in row if t is not None)
    h, w = first.shape[:2]
    cols = max(len(row) for row in tiles)
    x0 = [c * (w + gap[1]) + (c // group) * group_gap for c in range(cols)]
    canvas = np.ones((len(tiles) * (h + gap[0]) - gap[0], x0[-1] + w) + first.shape[2:])
    corners = []
    for r, row in enumerate(tiles):
        y0 = r * (h + gap[0])
        corners.append([(y0, x0[c]) for c in range(len(row))])
        for c, tile in enumerate(row):
            if tile is not None:
                canvas[y0:y0 + h, x0[c]:x0[c] + w] = tile
    return canvas, corners


def _show(fig: Figure, canvas: np.ndarray):
    """The canvas in one frameless axes filling the figure; returns the axes (pixel coordinates)."""
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    return ax


def support_grid(path: str, distilled: np.ndarray, labels: np.ndarray, initial: np.ndarray, title: str) -> None:
    """Rows: classes (by argmax of the label); columns: initial | distilled image pairs, each
    distilled image under its learned label weight of its class.

    distilled, initial: (n, H, W, C) in the same order; labels (n, C).
    """
    classes = np.argmax(labels, axis=1)
    num_classes = labels.shape[1]
    per_class = min(MAX_PER_CLASS_SHOWN, max(np.bincount(classes, minlength=num_classes).max(), 1))
    shown_d, shown_i = _displayable(distilled), _displayable(initial)
    members = [np.flatnonzero(classes == c)[:per_class] for c in range(num_classes)]
    tiles = [[t for i in m for t in (shown_i[i], shown_d[i])] or [None] for m in members]
    h, w = shown_d.shape[1:3]
    label_room = max(2, h // 2)  # above each row: the label weights
    canvas, corners = mosaic(tiles, gap=(label_room, 1), group=2, group_gap=max(2, w // 4))
    canvas = np.concatenate([np.ones((label_room,) + canvas.shape[1:]), canvas])  # room for the first row's labels
    fig = Figure(figsize=(1.0 * 2 * per_class, 1.05 * num_classes))
    ax = _show(fig, canvas)
    for c, m in enumerate(members):
        y0 = corners[c][0][0] + label_room
        ax.text(-w / 4, y0 + h / 2, str(c), ha="right", va="center")
        for j, i in enumerate(m):
            _, x0 = corners[c][2 * j + 1]
            ax.text(x0 + w / 2, y0 - 0.5, f"{labels[i, c]:+.2f}", ha="center", va="bottom", fontsize=6)
    fig.suptitle(f"{title}\n(pairs: initial real image | distilled; number: learned label weight of its class)",
                 fontsize=8, y=1.0, va="bottom")
    io.save_figure(path, fig)


def set_rows(path: str, sets: dict[str, tuple[np.ndarray, np.ndarray]], title: str, max_shown: int = 20) -> None:
    """One row per named set: its images (n, H, W, C) ordered by the class of their labels (n, C)
    (argmax), at most `max_shown` of them; each image scaled on its own range."""
    cols = min(max_shown, max(len(images) for images, _ in sets.values()))
    rows = []
    for images, labels in sets.values():
        order = np.argsort(np.argmax(labels, axis=1), kind="stable")[:cols]
        rows.append(list(_displayable(np.asarray(images)[order])))
    gray = [r and r[0].ndim == 2 for r in rows]
    if any(gray) and not all(gray):  # one canvas: grey sets shown in RGB beside colour ones
        rows = [[np.repeat(t[..., None], 3, -1) if t.ndim == 2 else t for t in r] for r in rows]
    h, w = rows[0][0].shape[:2]
    canvas, corners = mosaic(rows, gap=(max(1, h // 8), max(1, w // 16)))
    fig = Figure(figsize=(0.75 * cols + 1.6, 0.8 * len(sets) + 0.5))
    ax = _show(fig, canvas)
    for (name, _), row in zip(sets.items(), corners):
        ax.text(-w / 8, row[0][0] + h / 2, name, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
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

"""Every matplotlib figure of the project (Agg backend: files only, no display).

Evaluate: learning curves, data size, clean vs noisy labels, the reference variant's confusion matrix,
misclassified digits and reliability diagram, every variant's per-class weights, deskewing. Review:
experiment comparison. Studies: weight rows of L1 vs L2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from mnistlr import atomic

if TYPE_CHECKING:  # pandas only for annotations: evaluate draws without importing it
    import pandas as pd


def _margins(
    fig: Figure,
    left: float = 0.7,
    right: float = 0.2,
    bottom: float = 0.6,
    top: float = 0.45,
    wspace: float = 0.25,
    hspace: float = 0.2,
) -> None:
    """Fixed margins in inches (wspace/hspace: fractions of an axes). tight_layout would find them by
    drawing the figure once more: a third of a figure's cost here, paid on every run."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h, wspace=wspace, hspace=hspace
    )


def save(fig: Figure, path: str | Path) -> None:
    """Write the figure atomically (reproducible PNG bytes), then free its memory."""
    atomic.save_figure(fig, path)
    plt.close(fig)


def confusion_figure(cm: np.ndarray, title: str = "Confusion matrix (test set)") -> Figure:
    """Counts in every cell; rows = true class, columns = predicted."""
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    # Colour the errors, not the diagonal, so the confusions stand out.
    im = ax.imshow(off, cmap="Blues")
    fig.colorbar(im, ax=ax, label="errors (off-diagonal)")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(n),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if off[i, j] > off.max() * 0.6 else "black",
            fontweight="bold" if i == j else "normal",
        )
    ax.set(xticks=range(cm.shape[1]), yticks=range(cm.shape[0]), xlabel="Predicted", ylabel="True", title=title)
    _margins(fig, left=0.7, right=0.2, bottom=0.6, top=0.45)
    return fig


def learning_curves_figure(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Loss and accuracy against epoch: solid = validation, dashed = train, one colour per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for color, (name, rows) in zip(plt.cm.tab10.colors, histories.items(), strict=False):
        epochs = [r["epoch"] for r in rows]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.plot(epochs, [r[f"val_{key}"] for r in rows], color=color, label=f"{name} val")
            ax.plot(epochs, [r[f"train_{key}"] for r in rows], color=color, ls="--", alpha=0.7, label=f"{name} train")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax_acc.legend(fontsize=7, ncol=2)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    _margins(fig, left=0.7, right=0.2, bottom=0.6, top=0.4, wspace=0.2)
    return fig


def data_size_figure(
    points: Sequence[tuple[float, float]], expected: Mapping[float, tuple[float, float]], train_size: int
) -> Figure:
    """Test accuracy (%) against training fraction, with the tutorial's expected band per fraction."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, (frac, (lo, hi)) in enumerate(sorted(expected.items())):
        ax.plot(
            [frac * 100] * 2,
            [lo, hi],
            color="tab:gray",
            lw=8,
            alpha=0.35,
            solid_capstyle="butt",
            label="tutorial's expected range" if i == 0 else None,
        )
    xs, ys = zip(*sorted(points), strict=True) if points else ((), ())
    ax.plot([x * 100 for x in xs], ys, "o-", color="tab:blue", label="measured")
    ax.set(
        xscale="log",
        xlabel=f"training data used (% of {train_size})",
        ylabel="test accuracy (%)",
        title="Effect of training-set size",
    )
    ax.set_xticks([10, 25, 50, 100], ["10", "25", "50", "100"])
    ax.grid(alpha=0.3)
    ax.legend()
    _margins(fig, left=0.7, right=0.2, bottom=0.6, top=0.4)
    return fig


def comparison_figure(
    labels: Sequence[str], values: Sequence[float], metric: str, curves: Mapping[str, pd.DataFrame]
) -> Figure:
    """Bars of `metric` per run, then validation loss and accuracy of every run overlaid against epoch."""
    fig, (ax_bar, ax_loss, ax_acc) = plt.subplots(1, 3, figsize=(15, max(3.5, 0.45 * len(labels) + 1.5)), dpi=100)
    y = np.arange(len(labels))
    ax_bar.barh(y, values, color="tab:blue")
    for yi, v in zip(y, values, strict=True):
        ax_bar.text(v, yi, f" {v:.4f}", va="center", fontsize=8)
    lo = min(values) if len(values) else 0.0
    ax_bar.set(yticks=y, yticklabels=labels, xlabel=metric, title=f"{metric} per run")
    ax_bar.set_xlim(max(0.0, lo - 0.05 * max(abs(lo), 1e-3)), max(values) * 1.02 if len(values) else 1)
    ax_bar.invert_yaxis()
    for color, (name, df) in zip(plt.cm.tab10.colors * 10, curves.items(), strict=False):
        ax_loss.plot(df["epoch"], df["val_loss"], color=color, label=name)
        ax_acc.plot(df["epoch"], df["val_accuracy"], color=color, label=name)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Validation loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy")
    ax_acc.legend(fontsize=7, loc="best")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    _margins(fig, left=1.8, right=0.3, bottom=0.6, top=0.4, wspace=0.3)
    return fig


def noise_figure(rows: Sequence[Mapping]) -> Figure:
    """Grouped bars: val and test accuracy (%) of each clean/noisy variant pair; rows carry "variant",
    "label noise", "val acc (%)" and "test acc (%)"."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    x = np.arange(len(rows))
    val, test = [r["val acc (%)"] for r in rows], [r["test acc (%)"] for r in rows]
    ax.bar(x - 0.2, val, 0.4, label="val", color="tab:gray")
    ax.bar(x + 0.2, test, 0.4, label="test", color="tab:blue")
    for xi, v in zip(x, test, strict=True):
        ax.text(xi + 0.2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    lo = float(min(val + test))
    ax.set_ylim(max(0.0, lo - 3), 100)
    ax.set_xticks(x, [f"{r['variant']}\n({r['label noise']:.0%} noise)" for r in rows])
    ax.set(ylabel="accuracy (%)", title="Clean vs noisy training labels")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    _margins(fig, left=0.7, right=0.2, bottom=0.75, top=0.4)
    return fig


def _mosaic(rows: Sequence[Sequence[np.ndarray]], cols: int, side: int = 28, pad: int = 2) -> np.ndarray:
    """Images laid out row by row into one array, NaN between and where a row has fewer than `cols`.

    A grid of digits drawn as one image in one axes, not one axes per digit: matplotlib spends tens of
    milliseconds on every axes it lays out and draws."""
    step = side + pad
    out = np.full((len(rows) * step - pad, cols * step - pad), np.nan)
    for r, images in enumerate(rows):
        for c, image in enumerate(images[:cols]):
            out[r * step : r * step + side, c * step : c * step + side] = np.asarray(image).reshape(side, side)
    return out


def _image_grid(
    mosaic: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str] | None,
    cmap: str,
    vmin: float,
    vmax: float,
    width: float,
    title: str,
    side: int = 28,
    pad: int = 2,
) -> Figure:
    """A mosaic from _mosaic in one axes: row labels on the left, column labels (if any) on top."""
    n_rows = len(row_labels)
    fig, ax = plt.subplots(figsize=(width, 1.3 * n_rows + 0.8), dpi=100)
    colors = plt.get_cmap(cmap).with_extremes(bad="white")
    ax.imshow(mosaic, cmap=colors, vmin=vmin, vmax=vmax, interpolation="nearest")
    centers = np.arange(n_rows) * (side + pad) + side / 2 - 0.5
    ax.set_yticks(centers, row_labels)
    if col_labels is None:
        ax.set_xticks([])
    else:
        ax.set_xticks(np.arange(len(col_labels)) * (side + pad) + side / 2 - 0.5, col_labels)
        ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title)
    _margins(fig, left=1.0, right=0.15, bottom=0.15, top=0.6 if col_labels else 0.45)
    return fig


def confusion_examples_figure(examples: Sequence[tuple[int, int, np.ndarray]], per_pair: int) -> Figure:
    """One row per (true, predicted) pair: up to `per_pair` misclassified digits as 28x28 grey images."""
    mosaic = _mosaic([images for _, _, images in examples], per_pair)
    return _image_grid(
        mosaic,
        [f"{t} → {p}" for t, p, _ in examples],
        None,
        "gray_r",
        0,
        1,
        1.2 * per_pair + 1.2,
        "Misclassified test digits (true → predicted)",
    )


def deskew_figure(plain: np.ndarray, deskewed: np.ndarray) -> Figure:
    """Digits [k, 28, 28] as scanned (top row) and deskewed (bottom row), any intensity scale."""
    vmax = max(float(np.max(plain)), float(np.max(deskewed)), 1e-9)
    return _image_grid(
        _mosaic([plain, deskewed], len(plain)),
        ["as scanned", "deskewed"],
        None,
        "gray_r",
        0,
        vmax,
        0.9 * len(plain) + 1.6,
        "The first test digits before and after deskewing",
    )


def message_figure(text: str) -> Figure:
    """A small figure holding one line of text (stands in for a figure with nothing to show)."""
    fig, ax = plt.subplots(figsize=(5, 1), dpi=100)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig


def reliability_figure(bins: Mapping[str, list], ece: float, title: str) -> Figure:
    """Accuracy per confidence bin against the diagonal, with the share of samples per bin below."""
    lo, hi = np.asarray(bins["lower"]), np.asarray(bins["upper"])
    acc, conf, count = np.asarray(bins["accuracy"]), np.asarray(bins["confidence"]), np.asarray(bins["count"])
    centers, width = (lo + hi) / 2, hi - lo
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = count > 0
    ax.bar(
        centers[filled],
        acc[filled],
        width=width[filled],
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy",
    )
    ax.bar(
        centers[filled],
        (conf - acc)[filled],
        bottom=acc[filled],
        width=width[filled],
        edgecolor="tab:red",
        color="tab:red",
        alpha=0.25,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title}\nECE = {ece:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centers, count / max(count.sum(), 1), width=width, color="tab:gray", edgecolor="black")
    ax_n.set(xlabel="confidence (max softmax probability)", ylabel="share", yscale="log")
    _margins(fig, left=0.7, right=0.2, bottom=0.6, top=0.65, hspace=0.08)
    return fig


def weight_rows_figure(weights: Mapping[str, np.ndarray], title: str) -> Figure:
    """One row of ten 28x28 class templates per named weight matrix [10, 784], each image on its own
    symmetric scale (red +, blue -, white 0)."""
    rows = []
    for w in weights.values():
        w = np.asarray(w, dtype=np.float64)
        scale = np.abs(w).max(axis=1, keepdims=True)
        rows.append(w / np.where(scale > 0, scale, 1.0))
    return _image_grid(_mosaic(rows, 10), list(weights), [str(c) for c in range(10)], "seismic", -1, 1, 13, title)

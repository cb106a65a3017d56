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
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mnistlr import atomic  # noqa: E402

if TYPE_CHECKING:  # pandas only for annotations: evaluate draws without importing it
    import pandas as pd


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
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                color="white" if off[i, j] > off.max() * 0.6 else "black",
                fontweight="bold" if i == j else "normal")
    ax.set(xticks=range(cm.shape[1]), yticks=range(cm.shape[0]), xlabel="Predicted", ylabel="True", title=title)
    fig.tight_layout()
    return fig


def weight_grid_figure(weight: np.ndarray, title: str = "Per-class weights") -> Figure:
    """A 2x5 grid of 28x28 weight images; seismic colormap, limits symmetric about zero."""
    weight = np.asarray(weight)
    fig, axes = plt.subplots(2, 5, figsize=(10, 4.4), dpi=100)
    for cls, ax in enumerate(axes.flat):
        img = weight[cls].reshape(28, 28)
        vmax = float(np.abs(img).max()) or 1.0
        ax.imshow(img, cmap="seismic", vmin=-vmax, vmax=vmax)
        ax.set_title(f"Class {cls}")
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def learning_curves_figure(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Loss and accuracy against epoch: solid = validation, dashed = train, one colour per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for color, (name, rows) in zip(plt.cm.tab10.colors, histories.items()):
        epochs = [r["epoch"] for r in rows]
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ax.plot(epochs, [r[f"val_{key}"] for r in rows], color=color, label=f"{name} val")
            ax.plot(epochs, [r[f"train_{key}"] for r in rows], color=color, ls="--", alpha=0.7, label=f"{name} train")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    ax_acc.legend(fontsize=7, ncol=2)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def data_size_figure(
    points: Sequence[tuple[float, float]], expected: Mapping[float, tuple[float, float]], train_size: int
) -> Figure:
    """Test accuracy (%) against training fraction, with the seed's expected band per fraction."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, (frac, (lo, hi)) in enumerate(sorted(expected.items())):
        ax.plot([frac * 100] * 2, [lo, hi], color="tab:gray", lw=8, alpha=0.35, solid_capstyle="butt",
                label="tutorial's expected range" if i == 0 else None)
    xs, ys = zip(*sorted(points)) if points else ((), ())
    ax.plot([x * 100 for x in xs], ys, "o-", color="tab:blue", label="measured")
    ax.set(xscale="log", xlabel=f"training data used (% of {train_size})", ylabel="test accuracy (%)",
           title="Effect of training-set size")
    ax.set_xticks([10, 25, 50, 100], ["10", "25", "50", "100"])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def comparison_figure(labels: Sequence[str], values: Sequence[float], metric: str,
                      curves: Mapping[str, pd.DataFrame]) -> Figure:
    """Bars of `metric` per run, then validation loss and accuracy of every run overlaid against epoch."""
    fig, (ax_bar, ax_loss, ax_acc) = plt.subplots(1, 3, figsize=(15, max(3.5, 0.45 * len(labels) + 1.5)), dpi=100)
    y = np.arange(len(labels))
    ax_bar.barh(y, values, color="tab:blue")
    for yi, v in zip(y, values):
        ax_bar.text(v, yi, f" {v:.4f}", va="center", fontsize=8)
    lo = min(values) if len(values) else 0.0
    ax_bar.set(yticks=y, yticklabels=labels, xlabel=metric, title=f"{metric} per run")
    ax_bar.set_xlim(max(0.0, lo - 0.05 * max(abs(lo), 1e-3)), max(values) * 1.02 if len(values) else 1)
    ax_bar.invert_yaxis()
    for color, (name, df) in zip(plt.cm.tab10.colors * 10, curves.items()):
        ax_loss.plot(df["epoch"], df["val_loss"], color=color, label=name)
        ax_acc.plot(df["epoch"], df["val_accuracy"], color=color, label=name)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Validation loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Validation accuracy")
    ax_acc.legend(fontsize=7, loc="best")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def noise_figure(rows: Sequence[Mapping]) -> Figure:
    """Grouped bars: val and test accuracy (%) of each clean/noisy variant pair; rows carry "variant",
    "label noise", "val acc (%)" and "test acc (%)"."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    x = np.arange(len(rows))
    val, test = [r["val acc (%)"] for r in rows], [r["test acc (%)"] for r in rows]
    ax.bar(x - 0.2, val, 0.4, label="val", color="tab:gray")
    ax.bar(x + 0.2, test, 0.4, label="test", color="tab:blue")
    for xi, v in zip(x, test):
        ax.text(xi + 0.2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    lo = float(min(val + test))
    ax.set_ylim(max(0.0, lo - 3), 100)
    ax.set_xticks(x, [f"{r['variant']}\n({r['label noise']:.0%} noise)" for r in rows])
    ax.set(ylabel="accuracy (%)", title="Clean vs noisy training labels")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def confusion_examples_figure(examples: Sequence[tuple[int, int, np.ndarray]], per_pair: int) -> Figure:
    """One row per (true, predicted) pair: up to `per_pair` misclassified digits as 28x28 grey images."""
    n = max(1, len(examples))
    fig, axes = plt.subplots(n, per_pair, figsize=(1.3 * per_pair + 1.2, 1.4 * n), dpi=100, squeeze=False)
    for row, (true, pred, images) in enumerate(examples):
        for col in range(per_pair):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(images):
                ax.imshow(images[col], cmap="gray_r", vmin=0, vmax=1)
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(f"{true} → {pred}", rotation=0, ha="right", va="center", fontsize=11)
    fig.suptitle("Misclassified test digits (true → predicted)")
    fig.tight_layout()
    return fig


def deskew_figure(plain: np.ndarray, deskewed: np.ndarray) -> Figure:
    """Digits [k, 28, 28] as scanned (top row) and deskewed (bottom row), any intensity scale."""
    k = len(plain)
    fig, axes = plt.subplots(2, k, figsize=(1.0 * k + 1.4, 2.6), dpi=100, squeeze=False)
    for row, (images, label) in enumerate(((plain, "as scanned"), (deskewed, "deskewed"))):
        for col in range(k):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(images[col], cmap="gray_r", vmin=0, vmax=max(float(np.max(images)), 1e-9))
        axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle("The first test digits before and after deskewing")
    fig.tight_layout()
    return fig


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
    ax.bar(centers[filled], acc[filled], width=width[filled], edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
    ax.bar(centers[filled], (conf - acc)[filled], bottom=acc[filled], width=width[filled], edgecolor="tab:red",
           color="tab:red", alpha=0.25, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title}\nECE = {ece:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centers, count / max(count.sum(), 1), width=width, color="tab:gray", edgecolor="black")
    ax_n.set(xlabel="confidence (max softmax probability)", ylabel="share", yscale="log")
    fig.tight_layout()
    return fig


def weight_rows_figure(weights: Mapping[str, np.ndarray], title: str) -> Figure:
    """One row of ten 28x28 class images per named weight matrix; one symmetric scale per row."""
    fig, axes = plt.subplots(len(weights), 10, figsize=(13, 1.6 * len(weights) + 0.6), dpi=100, squeeze=False)
    for row, (name, w) in zip(axes, weights.items()):
        vmax = float(np.abs(w).max()) or 1.0
        for cls, ax in enumerate(row):
            ax.imshow(np.asarray(w)[cls].reshape(28, 28), cmap="seismic", vmin=-vmax, vmax=vmax)
            ax.set_xticks([]), ax.set_yticks([])
            if cls == 0:
                ax.set_ylabel(name, fontsize=9)
            ax.set_title(str(cls), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig

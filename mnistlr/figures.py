"""Matplotlib figures (Agg backend: files only, no display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


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
    points: Sequence[tuple[float, float]], expected: Mapping[float, tuple[float, float]]
) -> Figure:
    """Test accuracy (%) against training fraction, with the seed's expected band per fraction."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, (frac, (lo, hi)) in enumerate(sorted(expected.items())):
        ax.plot([frac * 100] * 2, [lo, hi], color="tab:gray", lw=8, alpha=0.35, solid_capstyle="butt",
                label="tutorial's expected range" if i == 0 else None)
    xs, ys = zip(*sorted(points)) if points else ((), ())
    ax.plot([x * 100 for x in xs], ys, "o-", color="tab:blue", label="measured")
    ax.set(xscale="log", xlabel="training data used (% of 50k)", ylabel="test accuracy (%)",
           title="Effect of training-set size")
    ax.set_xticks([10, 25, 50, 100], ["10", "25", "50", "100"])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    """Free a figure's memory."""
    plt.close(fig)

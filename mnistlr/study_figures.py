"""Figures of calibration and of the studies (matplotlib Agg, imported only when drawing)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from mnistlr import figures  # noqa: F401 - selects the Agg backend
import matplotlib.pyplot as plt  # noqa: E402


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

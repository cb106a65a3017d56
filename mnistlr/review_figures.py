"""Figures for experiment comparison and the review-oriented report sections (Agg backend, files only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


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


def noise_figure(rows: pd.DataFrame) -> Figure:
    """Grouped bars: val and test accuracy (%) of each clean/noisy variant pair."""
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, rows["val acc (%)"], 0.4, label="val", color="tab:gray")
    ax.bar(x + 0.2, rows["test acc (%)"], 0.4, label="test", color="tab:blue")
    for xi, v in zip(x, rows["test acc (%)"]):
        ax.text(xi + 0.2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    lo = float(min(rows["val acc (%)"].min(), rows["test acc (%)"].min()))
    ax.set_ylim(max(0.0, lo - 3), 100)
    ax.set_xticks(x, [f"{v}\n({n:.0%} noise)" for v, n in zip(rows["variant"], rows["label noise"])])
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


def close(fig: Figure) -> None:
    plt.close(fig)


def message_figure(text: str) -> Figure:
    """A small figure holding one line of text (stands in for a figure with nothing to show)."""
    fig, ax = plt.subplots(figsize=(5, 1), dpi=100)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig

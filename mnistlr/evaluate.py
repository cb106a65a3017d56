"""The evaluate stage: score one trained variant on validation and test, in numpy.

Writes the headline metrics (what `dvc metrics diff` shows), a details file (per-class scores,
weight norms, reliability bins), the test predictions (DVC's confusion plot) and three figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnistlr import atomic, metrics
from mnistlr.data import load_preprocessing, load_split
from mnistlr.errors import MnistlrError
from mnistlr.model import load_model
from mnistlr.params import Params


def headline(model_logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], weight: np.ndarray,
             params: Params) -> dict:
    """The six numbers a reviewer compares: test accuracy, loss and ECE, validation accuracy and loss,
    weight sparsity."""
    test_probs = metrics.softmax(model_logits["test"])
    out: dict = {}
    for split in ("test", "val"):
        loss, acc = metrics.loss_and_accuracy(model_logits[split], labels[split])
        out[split] = {"accuracy": metrics.rounded(acc), "loss": metrics.rounded(loss)}
    out["test"]["ece"] = metrics.rounded(
        metrics.expected_calibration_error(test_probs, labels["test"], params.evaluate.ece_bins))
    out["weights"] = {"sparsity": metrics.rounded(metrics.weight_sparsity(weight, params.evaluate.sparsity_threshold))}
    return out


def evaluate(
    params: Params,
    variant: str,
    prepared: str | Path,
    model_path: str | Path,
    metrics_path: str | Path,
    details_path: str | Path,
    predictions_path: str | Path,
    figures_dir: str | Path,
) -> dict:
    """Score the model on val and test; write metrics, details, test predictions and figures."""
    params.variant(variant)  # fail early on an unknown name
    model = load_model(model_path)
    prepared_with = load_preprocessing(prepared)
    if model.preprocessing != prepared_with:
        raise MnistlrError(f"{model_path} was trained on inputs with {model.preprocessing.describe()}, but {prepared} "
                           f"holds inputs with {prepared_with.describe()}; rerun the pipeline (dvc repro)")
    logits, labels = {}, {}
    for split in ("test", "val"):
        x, labels[split] = load_split(prepared, split)
        logits[split] = model.logits(x)
    scores = headline(logits, labels, model.weight, params)
    predicted = logits["test"].argmax(axis=1)
    cm = metrics.confusion_matrix(labels["test"], predicted)
    bins = metrics.reliability_bins(metrics.softmax(logits["test"]), labels["test"], params.evaluate.ece_bins)
    details = {
        "classes": metrics.per_class_metrics(cm),
        "weights": {"l1_norm": metrics.rounded(np.abs(model.weight).sum()),
                    "l2_norm": metrics.rounded(np.linalg.norm(model.weight))},
        "test_reliability": bins,
    }
    atomic.write_json(metrics_path, scores)
    atomic.write_json(details_path, details)
    lines = ["actual,predicted"] + [f"{a},{p}" for a, p in zip(labels["test"].tolist(), predicted.tolist())]
    atomic.write_text(predictions_path, "\n".join(lines) + "\n")
    _write_figures(cm, model.weight, bins, scores["test"]["ece"], variant, Path(figures_dir))
    return scores


def _write_figures(cm: np.ndarray, weight: np.ndarray, bins: dict, ece: float, variant: str, figures_dir: Path) -> None:
    from mnistlr import figures  # matplotlib costs about a second to import: only when drawing

    figures.save(figures.confusion_figure(cm, title=f"Confusion matrix, test set ({variant})"),
                 figures_dir / "confusion.png")
    figures.save(figures.weight_grid_figure(weight, title=f"Per-class weights ({variant}); red +, blue -"),
                 figures_dir / "weights.png")
    figures.save(figures.reliability_figure(bins, ece, title=f"Reliability diagram, test set ({variant})"),
                 figures_dir / "reliability.png")

"""Scores of a model's logits against labels, in numpy: the one place every number of the project is computed.

Accuracy and cross-entropy (training's per-epoch log, evaluate, the studies), the confusion matrix
and per-class scores, calibration (expected calibration error), weight sparsity, and which
metrics are better when lower.
"""

from __future__ import annotations

import numpy as np

from mnistlr.data import NUM_CLASSES
from mnistlr.errors import MnistlrError

# Metric names (the last part of a dotted key such as test.ece) for which a smaller value is better.
LOWER_IS_BETTER = ("loss", "ece")
DECIMALS = 6  # metrics are written as these many decimals: no float32 tails in JSON
EXAMPLES_PER_PAIR = 6  # misclassified test digits shown per top confusion (evaluate draws them, the report counts)


def higher_is_better(metric: str) -> bool:
    """False for losses and calibration errors (they fall when a model improves), True for the rest."""
    return metric.rsplit(".", 1)[-1] not in LOWER_IS_BETTER


def rounded(value: float) -> float:
    """A metric as the decimal it is (0.925, not 0.925000011920929)."""
    return round(float(value), DECIMALS)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, stable for large logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise class probabilities in float64."""
    return np.exp(log_softmax(logits))


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (what CrossEntropyLoss computes)."""
    y = np.asarray(y)
    return float(-log_softmax(logits)[np.arange(len(y)), y].mean())


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose highest score is the true class."""
    return float((np.asarray(logits).argmax(axis=1) == np.asarray(y)).mean())


def loss_and_accuracy(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy)."""
    return cross_entropy(logits, y), accuracy(logits, y)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """[C, C] int64 counts; row = true class, column = predicted class."""
    flat = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_metrics(cm: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per class from a confusion matrix (0 where undefined)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        str(c): {"precision": rounded(precision[c]), "recall": rounded(recall[c]), "f1": rounded(f1[c])}
        for c in range(cm.shape[0])
    }


def top_confusions(cm: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal cells as (true, predicted, count), largest first (ties in row order)."""
    off = np.array(cm, dtype=np.int64)
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    c = off.shape[0]
    return [(int(i) // c, int(i) % c, int(flat[i])) for i in order if flat[i] > 0]


def weight_sparsity(weight: np.ndarray, threshold: float) -> float:
    """Share of weights with |w| < threshold."""
    return float((np.abs(weight) < threshold).mean())


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, list]:
    """Per equal-width confidence bin: bounds, sample count, accuracy and mean confidence (0 when empty)."""
    if n_bins < 1:
        raise MnistlrError(f"evaluate.ece_bins = {n_bins} is not accepted; accepted: an integer >= 1")
    probs = np.asarray(probs, dtype=np.float64)
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == np.asarray(y)).astype(np.float64)
    # bin i holds (i/n, (i+1)/n]; confidence 0 (impossible for a softmax) would go to bin 0
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    safe = np.maximum(count, 1)
    edges = np.linspace(0, 1, n_bins + 1)
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": count.astype(np.int64).tolist(),
        "accuracy": (np.bincount(idx, weights=correct, minlength=n_bins) / safe).tolist(),
        "confidence": (np.bincount(idx, weights=conf, minlength=n_bins) / safe).tolist(),
    }


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE (Guo et al., 2017): sum over confidence bins of (bin size / N) * |accuracy - mean confidence|."""
    b = reliability_bins(probs, y, n_bins)
    n = sum(b["count"])
    return float(sum(c / n * abs(a - f) for c, a, f in zip(b["count"], b["accuracy"], b["confidence"], strict=True)))

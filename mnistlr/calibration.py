"""Calibration: does a predicted probability of 0.9 come true 90 % of the time?

Expected calibration error (Guo et al., 2017): the max-softmax confidences are put in equal-width
bins over [0, 1]; ECE = sum over bins of (bin size / N) * |accuracy(bin) - mean confidence(bin)|.
NLL is the mean negative log-likelihood of the true class (the cross-entropy).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mnistlr.errors import MnistlrError


def reliability_bins(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> dict[str, list]:
    """Per equal-width confidence bin: bounds, sample count, accuracy and mean confidence (0 when empty)."""
    if n_bins < 1:
        raise MnistlrError(f"evaluate.ece_bins = {n_bins} is not accepted; accepted: an integer >= 1")
    conf, pred = probs.max(dim=1)
    correct = (pred == y).to(torch.float64)
    conf = conf.to(torch.float64)
    # bin i holds (i/n, (i+1)/n]; confidence 0 (impossible for a softmax) would go to bin 0
    idx = (torch.ceil(conf * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    safe = count.clamp(min=1)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": count.long().tolist(),
        "accuracy": (acc_sum / safe).tolist(),
        "confidence": (conf_sum / safe).tolist(),
    }


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> float:
    """ECE of class probabilities [N, C] against labels [N]."""
    b = reliability_bins(probs, y, n_bins)
    n = sum(b["count"])
    return float(sum(c / n * abs(a - f) for c, a, f in zip(b["count"], b["accuracy"], b["confidence"])))


def calibration_metrics(logits: torch.Tensor, y: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """{'ece': ..., 'nll': ...} of raw logits against labels."""
    probs = F.softmax(logits.to(torch.float64), dim=1)
    return {"ece": expected_calibration_error(probs, y, n_bins), "nll": float(F.cross_entropy(logits.double(), y))}

"""Evaluation: batched forward passes in eval mode without autograd, and metrics from a confusion matrix."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mnistlr.idx import NUM_CLASSES


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits for all of x in one pass, in eval mode, without building a graph."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    return logits


def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy (0-dim tensors on x's device; no host sync here)."""
    logits = predict_logits(model, x)
    return F.cross_entropy(logits, y), (logits.argmax(dim=1) == y).float().mean()


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """[C, C] int64 counts; row = true class, column = predicted class."""
    flat = y_true.to(torch.int64) * num_classes + y_pred.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_metrics(cm: torch.Tensor) -> dict[str, dict[str, float]]:
    """Precision, recall and F1 per class from a confusion matrix (0 where undefined)."""
    cm = cm.to(torch.float64)
    tp = cm.diag()
    predicted = cm.sum(dim=0)
    actual = cm.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return {
        str(c): {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c])}
        for c in range(cm.shape[0])
    }


def top_confusions(cm: torch.Tensor, k: int) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal cells as (true, predicted, count), largest first."""
    off = cm.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().sort(descending=True, stable=True)
    c = cm.shape[0]
    return [(int(i) // c, int(i) % c, int(n)) for n, i in zip(counts[:k], flat[:k]) if n > 0]


def weight_sparsity(weight: torch.Tensor, threshold: float) -> float:
    """Share of weights with |w| < threshold."""
    return float((weight.abs() < threshold).float().mean())

"""Training criteria on raw logits, and the regularized objective every optimizer minimizes.

ce  - cross-entropy: multinomial logistic regression.
mse - least squares on one-hot targets: the same linear layer fitted as a linear regression
      (LeCun et al.'s "linear classifier" baseline); predictions are still the argmax.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mnistlr.errors import MnistlrError
from mnistlr.idx import NUM_CLASSES

LOSSES = ("ce", "mse")


class OneHotMSELoss(nn.Module):
    """mean over samples of 0.5 * sum_k (z_k - onehot(y)_k)^2: its gradient is the least-squares one."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return 0.5 * (logits - target).pow(2).sum(dim=1).mean()


def make_criterion(loss: str) -> nn.Module:
    """The criterion named by train.loss."""
    if loss == "ce":
        return nn.CrossEntropyLoss()
    if loss == "mse":
        return OneHotMSELoss()
    raise MnistlrError(f"train.loss = {loss!r} is not accepted; accepted: {', '.join(LOSSES)}")


def regularized_objective(
    model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, l1: float = 0.0, weight_decay: float = 0.0
) -> torch.Tensor:
    """criterion + l1 * sum|W| + weight_decay / 2 * ||W||^2 (the bias is not penalized).

    SGD and Adam with `weight_decay` add weight_decay * W to the gradient, which is exactly the
    gradient of the last term: all three optimizers minimize this same function.
    """
    w = model.fc.weight
    loss = criterion(model(x), y)
    if l1 > 0:
        loss = loss + l1 * w.abs().sum()
    if weight_decay > 0:
        loss = loss + 0.5 * weight_decay * w.pow(2).sum()
    return loss


@torch.no_grad()
def objective_value(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", l1: float = 0.0, weight_decay: float = 0.0
) -> float:
    """The regularized training objective of a fitted model, as a float."""
    return float(regularized_objective(model, make_criterion(loss), x, y, l1, weight_decay))

"""Full-batch L-BFGS: the minimum of the (convex) regularized objective, not an approximation of it.

Every "epoch" is one LBFGS.step of train.lbfgs_iters iterations over the whole training set
(the optimizer keeps its curvature history across steps), so the learning-curve log has the same
shape as for SGD/Adam. The step size is train.lr.lbfgs, scaled by a strong-Wolfe line search.
"""

from __future__ import annotations

import math

import torch

from mnistlr.errors import MnistlrError
from mnistlr.evaluation import loss_and_accuracy
from mnistlr.losses import make_criterion, regularized_objective
from mnistlr.model import LogisticRegression
from mnistlr.params import TrainParams


def fit_lbfgs(
    x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, cfg: TrainParams, lr: float, seed: int
) -> tuple[LogisticRegression, list]:
    from mnistlr.trainer import EpochRecord  # the trainer dispatches here: import late

    torch.manual_seed(seed)  # weight init, as for SGD/Adam
    model = LogisticRegression().to(x.device)
    criterion = make_criterion(cfg.loss)
    opt = torch.optim.LBFGS(
        model.parameters(), lr=lr, max_iter=cfg.lbfgs_iters, history_size=20,
        tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = regularized_objective(model, criterion, x, y, cfg.l1, cfg.weight_decay)
        loss.backward()
        return loss

    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        value = float(opt.step(closure))
        if not math.isfinite(value):
            raise MnistlrError(
                f"training diverged: objective became {value} at epoch {epoch} with train.lr.lbfgs = {lr}; "
                "lower the learning rate"
            )
        train_loss, train_acc = loss_and_accuracy(model, x, y)
        val_loss, val_acc = loss_and_accuracy(model, val_x, val_y)
        history.append(EpochRecord(epoch, float(train_loss), float(train_acc), float(val_loss), float(val_acc), lr))
    return model.eval(), history

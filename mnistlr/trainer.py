"""Training: whole tensors on the device, a seeded permutation per epoch, batches sliced from it.

No DataLoader and no per-sample Python: each step is a handful of tensor ops,
and nothing in the inner loop reads a value back to the host.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mnistlr.dataset import generator
from mnistlr.errors import MnistlrError
from mnistlr.evaluation import loss_and_accuracy
from mnistlr.losses import make_criterion
from mnistlr.model import LogisticRegression
from mnistlr.params import TrainParams

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class EpochRecord:
    """One row of the learning-curve log."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float

    def as_dict(self) -> dict:
        return asdict(self)


def make_optimizer(
    model: LogisticRegression, name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD or Adam; L2 (weight_decay) applies to the weight matrix, not the bias."""
    groups = [
        {"params": [model.fc.weight], "weight_decay": weight_decay},
        {"params": [model.fc.bias], "weight_decay": 0.0},
    ]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise MnistlrError(f"optimizer {name!r} is not accepted; accepted: {', '.join(OPTIMIZERS)}")


def training_loss(
    model: LogisticRegression, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, l1: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, loss): cross-entropy on raw logits, plus l1 * sum|W| when l1 > 0."""
    logits = model(x)
    loss = criterion(logits, y)
    if l1 > 0:
        loss = loss + l1 * model.fc.weight.abs().sum()
    return logits, loss


def fit(
    x: torch.Tensor,
    y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    cfg: TrainParams,
    optimizer: str,
    lr: float,
    seed: int,
) -> tuple[LogisticRegression, list[EpochRecord]]:
    """Train a fresh model on (x, y), which live on the device to train on; log each epoch."""
    if optimizer == "lbfgs":  # full batch, its own loop (mnistlr/lbfgs.py)
        from mnistlr.lbfgs import fit_lbfgs

        return fit_lbfgs(x, y, val_x, val_y, cfg, lr, seed)
    device = x.device
    torch.manual_seed(seed)  # weight init
    model = LogisticRegression().to(device)
    criterion = make_criterion(cfg.loss)
    opt = make_optimizer(model, optimizer, lr, cfg.momentum, cfg.weight_decay)
    n = x.shape[0]
    bs = min(cfg.batch_size, n)
    steps = math.ceil(n / bs)
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
        if cfg.schedule == "cosine"
        else None
    )
    order = generator(seed, "batches")  # on the CPU, so batch order is the same on every device
    step_losses = torch.empty(steps, device=device)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=order).to(device)
        xs, ys = x[perm], y[perm]
        for step in range(steps):
            _, loss = training_loss(model, criterion, xs[step * bs : (step + 1) * bs], ys[step * bs : (step + 1) * bs], cfg.l1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
            step_losses[step] = loss.detach()
        _raise_if_diverged(step_losses, epoch, optimizer, lr)
        train_loss, train_acc = loss_and_accuracy(model, x, y)
        val_loss, val_acc = loss_and_accuracy(model, val_x, val_y)
        history.append(
            EpochRecord(epoch, float(train_loss), float(train_acc), float(val_loss), float(val_acc), opt.param_groups[0]["lr"])
        )
    return model.eval(), history


def _raise_if_diverged(step_losses: torch.Tensor, epoch: int, optimizer: str, lr: float) -> None:
    finite = torch.isfinite(step_losses)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0, 0]) + 1
        raise MnistlrError(
            f"training diverged: loss became {float(step_losses[step - 1])} at epoch {epoch}, step {step} "
            f"with train.lr.{optimizer} = {lr}; lower the learning rate"
        )

"""Training: whole tensors on the device, a seeded permutation per epoch, batches sliced from it.

No DataLoader and no per-sample Python: each step is a handful of tensor ops,
and nothing in the inner loop reads a value back to the host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mnistlr.dataset import generator
from mnistlr.early_stopping import EarlyStopping
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
    # Wall time of the epoch (steps and both evaluation passes). Not logged and not compared:
    # it varies run to run, and the log and metrics must not.
    seconds: float = field(default=0.0, compare=False)

    def as_dict(self) -> dict:
        """The loggable fields (everything but the wall time)."""
        row = asdict(self)
        del row["seconds"]
        return row


def make_optimizer(
    model: LogisticRegression,
    name: str,
    lr: float | torch.Tensor,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """SGD or Adam; L2 (weight_decay) applies to the weight matrix, not the bias.

    fused: one kernel per step on CUDA, and safe to capture in a CUDA graph (with a tensor lr).
    """
    groups = [
        {"params": [model.fc.weight], "weight_decay": weight_decay},
        {"params": [model.fc.bias], "weight_decay": 0.0},
    ]
    # foreach: one op for both tensors instead of a Python loop over them (a few % off a CPU epoch)
    extra = {"fused": True} if fused else {"foreach": True}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **extra)
    if name == "adam":
        # capturable keeps Adam's step count on the device, as graph capture requires
        return torch.optim.Adam(groups, lr=lr, **({"fused": True, "capturable": True} if fused else extra))
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


def lr_schedule(schedule: str, lr: float, total_steps: int) -> list[float]:
    """The learning rate before each step (plus the one after the last), from torch's own scheduler.

    Precomputed so the loop only reads a table: no scheduler call per step, and
    a CUDA graph can replay an epoch with the right rates.
    """
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, T_max=total_steps) if schedule == "cosine" else None
    rates = []
    for _ in range(total_steps + 1):
        rates.append(dummy.param_groups[0]["lr"])
        if sched is not None:
            dummy.step()  # no grads: a no-op that keeps the scheduler's call-order check quiet
            sched.step()
    return rates


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
    """Train a fresh model on (x, y), which live on the device to train on; log each epoch.

    cfg.grad_clip > 0 clips each step's global gradient norm; cfg.patience > 0 stops after that
    many epochs without a val-accuracy gain and returns the best epoch's weights.

    On CUDA (with train.cuda_graph) the first epoch runs eagerly, then one whole
    epoch is captured as a CUDA graph and replayed for the others: one launch per
    epoch instead of ~10 per step. The arithmetic is the same either way.
    """
    if optimizer == "lbfgs":  # full batch, its own loop (mnistlr/lbfgs.py)
        from mnistlr.lbfgs import fit_lbfgs

        return fit_lbfgs(x, y, val_x, val_y, cfg, lr, seed)
    device = x.device
    torch.manual_seed(seed)  # weight init
    model = LogisticRegression().to(device)
    criterion = make_criterion(cfg.loss)
    n = x.shape[0]
    bs = min(cfg.batch_size, n)
    steps = math.ceil(n / bs)
    rates = lr_schedule(cfg.schedule, lr, cfg.epochs * steps)
    graphed = device.type == "cuda" and cfg.cuda_graph
    # A graph replays kernels with the arguments they were captured with, so the rate must live in a tensor.
    lr_now = torch.tensor(lr, device=device) if graphed else None
    opt = make_optimizer(model, optimizer, lr_now if graphed else lr, cfg.momentum, cfg.weight_decay,
                         fused=device.type == "cuda")
    order = generator(seed, "batches")  # on the CPU, so batch order is the same on every device
    xs, ys = torch.empty_like(x), torch.empty_like(y)
    step_losses = torch.empty(steps, device=device)
    epoch_rates = torch.empty(steps, device=device) if graphed else None
    graph = None
    history = []
    stopper = EarlyStopping(cfg.patience)

    def run_epoch(set_lr) -> None:
        for step in range(steps):
            set_lr(step)
            _, loss = training_loss(model, criterion, xs[step * bs : (step + 1) * bs], ys[step * bs : (step + 1) * bs], cfg.l1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                # The returned norm stays unread: reading it would sync with the device every step.
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
            opt.step()
            step_losses[step] = loss.detach()

    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        base = (epoch - 1) * steps
        perm = torch.randperm(n, generator=order).to(device)
        torch.index_select(x, 0, perm, out=xs)
        torch.index_select(y, 0, perm, out=ys)
        if graph is not None:
            epoch_rates.copy_(torch.tensor(rates[base : base + steps]))
            graph.replay()
        elif graphed:
            run_epoch(lambda s: lr_now.fill_(rates[base + s]))
        else:
            with _threads(1):  # batch-64 ops are too small to share: OpenMP hand-offs cost more than they save
                run_epoch(lambda s: _set_lr(opt, rates[base + s]))
        if graphed and graph is None and epoch < cfg.epochs:
            # Capturing records kernels without running them: the weights stay as epoch `epoch` left them.
            graph = torch.cuda.CUDAGraph()
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                run_epoch(lambda s: lr_now.copy_(epoch_rates[s]))
        _raise_if_diverged(step_losses, epoch, optimizer, lr)
        train_loss, train_acc = loss_and_accuracy(model, x, y)
        val_loss, val_acc = loss_and_accuracy(model, val_x, val_y)
        scores = [float(v) for v in (train_loss, train_acc, val_loss, val_acc)]  # the epoch's one wait for the device
        history.append(EpochRecord(epoch, *scores, rates[epoch * steps], time.perf_counter() - started))
        if stopper.update(epoch, history[-1].val_accuracy, model):
            break
    stopper.restore(model)
    return model.eval(), history


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _set_lr(opt: torch.optim.Optimizer, value: float) -> None:
    for group in opt.param_groups:
        group["lr"] = value


def _raise_if_diverged(step_losses: torch.Tensor, epoch: int, optimizer: str, lr: float) -> None:
    finite = torch.isfinite(step_losses)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0, 0]) + 1
        raise MnistlrError(
            f"training diverged: loss became {float(step_losses[step - 1])} at epoch {epoch}, step {step} "
            f"with train.lr.{optimizer} = {lr}; "
            "lower the learning rate or set train.grad_clip (e.g. 1.0)"
        )

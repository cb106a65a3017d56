"""The train stage: fit `nn.Linear(784, 10)` on every training-set variant, in one process.

The only module (with mnistlr.studies) that imports torch. Read top to bottom:

1. the model and what it minimizes: `LogisticRegression`, the criteria, the regularized objective;
2. the gradient, written out: cross-entropy and least squares have closed-form gradients, so a step is
   two matrix products and a softmax instead of a trip through autograd;
3. the optimizers: SGD (momentum) and Adam with the update rules of torch.optim;
4. fitting: K models that share their input batches train as one program (`fit_models`), one epoch at a
   time, each epoch replayed as a CUDA graph on a GPU; `fit` and `fit_batched` are its two uses;
5. L-BFGS (full batch, through autograd: not a hot loop);
6. learning curves and early stopping;
7. the stage: every variant, models and curves written once all trained.

Whole tensors live on the device, each epoch draws a seeded permutation and slices batches from it (no
DataLoader), and nothing in the inner loop reads a value back to the host.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mnistlr import atomic, metrics
from mnistlr.data import (
    IN_FEATURES,
    NUM_CLASSES,
    Preprocessing,
    derive_seed,
    load_preprocessing,
    load_split,
    load_variant_index,
)
from mnistlr.errors import MnistlrError
from mnistlr.model import Model
from mnistlr.params import Params, TrainParams

OPTIMIZERS = ("sgd", "adam", "lbfgs")
LOSSES = ("ce", "mse")
# A model's parameters in one [10, 785] block: the weight matrix, then the bias as its last column, so
# that one product with inputs carrying a trailing 1 gives the logits, and one more gives both gradients.
COLS = IN_FEATURES + 1


# --- 1. the model and what it minimizes ---------------------------------------------------------


class LogisticRegression(nn.Module):
    """Multinomial logistic regression. Returns raw logits: CrossEntropyLoss applies log-softmax itself."""

    def __init__(self, in_features: int = IN_FEATURES, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, 28, 28] or [B, 784] -> [B, 784]; a view, no copy.
        return self.fc(x.flatten(1))

    def to_model(self, pre: Preprocessing) -> Model:
        """The trained weights as a plain-array Model carrying its inputs' preprocessing."""
        w, b = (t.detach().cpu().numpy().astype(np.float32) for t in (self.fc.weight, self.fc.bias))
        return Model(weight=w, bias=b, mean=pre.mean, std=pre.std, image_side=pre.image_side, deskew=pre.deskew)


class OneHotMSELoss(nn.Module):
    """mean over samples of 0.5 * sum_k (z_k - onehot(y)_k)^2: least squares on one-hot targets.

    The same linear layer fitted as a linear regression (LeCun et al.'s "linear classifier"
    baseline); predictions are still the argmax.
    """

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return 0.5 * (logits - target).pow(2).sum(dim=1).mean()


def make_criterion(loss: str) -> nn.Module:
    """The criterion named by train.loss: ce (logistic regression) or mse (least squares)."""
    if loss == "ce":
        return nn.CrossEntropyLoss()
    if loss == "mse":
        return OneHotMSELoss()
    raise MnistlrError(f"train.loss = {loss!r} is not accepted; accepted: {', '.join(LOSSES)}")


def regularized_objective(
    model: LogisticRegression,
    criterion: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    l1: float = 0.0,
    weight_decay: float = 0.0,
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
    model: LogisticRegression,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str = "ce",
    l1: float = 0.0,
    weight_decay: float = 0.0,
) -> float:
    """The regularized training objective of a fitted model, as a float."""
    return float(regularized_objective(model, make_criterion(loss), x, y, l1, weight_decay))


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits for all of x in one pass, in eval mode, without building a graph."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    return logits


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy, accuracy) of the model on (x, y), computed by mnistlr.metrics like every other score."""
    return metrics.loss_and_accuracy(predict_logits(model, x).cpu().numpy(), y.cpu().numpy())


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MnistlrError("train.device = 'cuda' but no CUDA device is available; accepted here: auto, cpu")
    if name not in ("cpu", "cuda"):
        raise MnistlrError(f"device {name!r} is not accepted; accepted: auto, cpu, cuda")
    return torch.device(name)


def lr_schedule(schedule: str, lr: float, total_steps: int) -> list[float]:
    """The learning rate before each step (plus the one after the last): constant, or cosine
    annealing to 0 over all steps (CosineAnnealingLR's closed form)."""
    if schedule == "constant":
        return [lr] * (total_steps + 1)
    return [lr * (1 + math.cos(math.pi * t / total_steps)) / 2 for t in range(total_steps + 1)]


# --- 2. the gradient, written out -----------------------------------------------------------------


def gradient(
    theta: torch.Tensor,
    xb: torch.Tensor,
    targets: torch.Tensor,
    yb: torch.Tensor,
    loss: str,
    out: torch.Tensor,
    nll: torch.Tensor,
    top: torch.Tensor,
    predicted: torch.Tensor,
) -> torch.Tensor:
    """The gradient of the mean loss over the batch, for K models at once, into `out` [K * 10, 785]; and
    the batch's running scores: each example's log-probability of its label into `nll` [K, 1, B], its
    predicted class into `predicted` [K, B] (its top logit into `top`), read once at the epoch's end.

    theta: [K * 10, 785] (weights | bias); xb: [B, 785] (inputs | 1); targets: [K, 10, B] one-hot of the
    labels yb [K, B]. With logits Z = theta · xbᵀ, cross-entropy's gradient by Z is softmax(Z) - onehot(y)
    and least squares' is Z - onehot(y); either way the gradient by theta is that residual · xb / B.
    Stored [10, 785] and multiplied this way round, both products are the fast layouts of these skinny
    shapes (with the weight transposed MKL takes about twice the time here).
    """
    k, b = targets.shape[0], xb.shape[0]
    z = torch.mm(theta, xb.t()).view(k, NUM_CLASSES, b)
    logp = torch.log_softmax(z, dim=1)
    torch.gather(logp, 1, yb.unsqueeze(1), out=nll)
    torch.max(z, dim=1, out=(top, predicted))  # argmax's first maximum, at half argmax()'s cost here
    residual = (logp.exp_() if loss == "ce" else z).sub_(targets)
    return out.addmm_(residual.view(k * NUM_CLASSES, b), xb, beta=0, alpha=1.0 / b)


def add_penalties(
    grad: torch.Tensor, theta: torch.Tensor, l1: float | torch.Tensor | None, clip: float, k: int
) -> None:
    """L1's subgradient l1 * sign(W) (0 at 0, as autograd's abs; l1 None: off), then each model's gradient
    clipped to a global norm of `clip` (torch.nn.utils.clip_grad_norm_'s rule), in place. The bias is not
    penalized."""
    if l1 is not None:
        _add_scaled(grad[:, :IN_FEATURES], torch.sign(theta[:, :IN_FEATURES]), l1)
    if clip > 0:
        per_model = grad.view(k, -1)
        norms = torch.linalg.vector_norm(per_model, dim=1, keepdim=True)
        # no host read: the coefficient is min(1, clip / norm) on the device
        per_model.mul_((clip / (norms + 1e-6)).clamp_(max=1.0))


def _add_scaled(target: torch.Tensor, update: torch.Tensor, scale: float | torch.Tensor, alpha: float = 1.0) -> None:
    """target += alpha * scale * update, where scale is a number or a per-row column [rows, 1]."""
    if isinstance(scale, torch.Tensor):
        target.addcmul_(update, scale, value=alpha)
    else:
        target.add_(update, alpha=alpha * scale)


# --- 3. the optimizers ------------------------------------------------------------------------------


def fused_adam_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    step: torch.Tensor,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One Adam step of torch.optim.Adam(fused=True) on CPU tensors, in place: each tensor of `params` with
    its gradient and moments, at step `step` (a 0-d float tensor, counted from 1, already advanced).

    The project's one private torch call: torch.optim.Adam(fused=True) runs this kernel, but its step() imports
    torch's dynamo compiler (seconds per process), and the same update in public tensor operations takes seven passes
    over the parameters instead of one (the train stage with optimizer adam: about a fifth more time).
    tests/test_train.py checks it against torch.optim.Adam(fused=True) and fails, naming this function, when a
    torch release changes it.
    """
    torch._fused_adam_(
        list(params),
        list(grads),
        list(exp_avgs),
        list(exp_avg_sqs),
        [],
        [step] * len(params),  # the kernel only reads the counter: one tensor serves every block
        lr=lr,
        beta1=betas[0],
        beta2=betas[1],
        weight_decay=0.0,
        eps=eps,
        amsgrad=False,
        maximize=False,
    )


class Optimizer:
    """SGD (with momentum) or Adam on a block of parameters, with torch.optim.SGD's and Adam's update rules
    (L2 as weight decay added to the gradient of the weights, not the bias).

    Per-model settings are numbers when all K models share them, else [K * 10, 1] columns. Each step
    takes its scalars (the schedule's factor and Adam's two bias corrections, see `scalars`) as numbers in
    eager mode, or as 0-d device tensors when a CUDA graph replays the step (a graph reads its arguments
    from fixed addresses).
    """

    BETAS, EPS = (0.9, 0.999), 1e-8  # Adam's defaults in torch.optim.Adam

    def __init__(
        self,
        theta: torch.Tensor,
        name: str,
        lr: float | torch.Tensor,
        momentum: float = 0.0,
        weight_decay: float | torch.Tensor = 0.0,
    ) -> None:
        if name not in ("sgd", "adam"):
            raise MnistlrError(f"optimizer {name!r} is not accepted here; accepted: sgd, adam (lbfgs has its own loop)")
        self.theta, self.name, self.lr, self.momentum = theta, name, lr, momentum
        self.weight_decay = weight_decay if isinstance(weight_decay, torch.Tensor) or weight_decay > 0 else None
        self.buffer: torch.Tensor | None = None  # SGD momentum
        if name == "adam":
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(theta), torch.zeros_like(theta)
            # the fused kernel takes each model's block as its own tensor, so that no model's rounding depends
            # on how many models it trains beside (a vectorized loop ends each tensor on a scalar tail)
            self.blocks = [t.split(NUM_CLASSES) for t in (theta, self.exp_avg, self.exp_avg_sq)]
            self.step_count = torch.zeros((), dtype=torch.float32)  # the fused kernel's step counter, t

    def scalars(self, factor: float, step: int) -> tuple[float, float, float]:
        """(schedule factor, 1 - beta1^t, sqrt(1 - beta2^t)) of step t (counted from 1), in float64 on the host."""
        b1, b2 = self.BETAS
        return factor, 1 - b1**step, math.sqrt(1 - b2**step)

    @torch.no_grad()
    def step(
        self,
        grad: torch.Tensor,
        factor: float | torch.Tensor,
        bc1: float | torch.Tensor = 1.0,
        bc2_sqrt: float | torch.Tensor = 1.0,
    ) -> None:
        theta, eager = self.theta, not isinstance(factor, torch.Tensor)
        if self.weight_decay is not None:
            _add_scaled(grad[:, :IN_FEATURES], theta[:, :IN_FEATURES], self.weight_decay)
        if self.name == "sgd":
            update = grad
            if self.momentum > 0:
                if self.buffer is None:  # torch.optim.SGD: the first buffer is the gradient itself
                    self.buffer = grad.clone()
                else:
                    self.buffer.mul_(self.momentum).add_(grad)
                update = self.buffer
            if eager:
                _add_scaled(theta, update, self.lr, alpha=-factor)
            else:
                theta.sub_(update * (factor * self.lr))
            return
        b1, b2 = self.BETAS
        if eager and not isinstance(self.lr, torch.Tensor) and theta.device.type == "cpu":
            self.step_count.add_(1)  # the kernel corrects the bias from the step counter, advanced first
            params, exp_avgs, exp_avg_sqs = self.blocks
            fused_adam_step(params, grad.split(NUM_CLASSES), exp_avgs, exp_avg_sqs, self.step_count, self.lr * factor)
            return
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / bc2_sqrt).add_(self.EPS)
        theta.sub_(self.exp_avg / denom * (factor / bc1 * self.lr))


# --- 4. fitting --------------------------------------------------------------------------------------


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _per_model(values: Sequence[float], device: torch.device) -> float | torch.Tensor:
    """One number when every model has it, else a [K * 10, 1] column (each model's 10 rows)."""
    if len(set(values)) <= 1:
        return float(values[0])
    return torch.tensor(values, dtype=torch.float32, device=device).repeat_interleave(NUM_CLASSES).view(-1, 1)


def initial_parameters(seed: int) -> torch.Tensor:
    """The [10, 785] block nn.Linear(784, 10) starts from under torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    fc = LogisticRegression().fc
    return torch.cat([fc.weight.detach(), fc.bias.detach()[:, None]], 1)


def to_module(block: torch.Tensor) -> LogisticRegression:
    """A [10, 785] parameter block as a LogisticRegression in eval mode, on the block's device."""
    model = LogisticRegression().to(block.device)
    with torch.no_grad():
        model.fc.weight.copy_(block[:, :IN_FEATURES])
        model.fc.bias.copy_(block[:, IN_FEATURES])
    return model.eval()


def _diverged(epoch: int, loss: float, optimizer: str, lr: float) -> MnistlrError:
    return MnistlrError(
        f"training diverged: the training loss became {loss} at epoch {epoch} with "
        f"train.lr.{optimizer} = {lr}; lower the learning rate or set train.grad_clip (e.g. 1.0)"
    )


@dataclass
class Fitted:
    """One model of a fit_models program: its parameters and learning curve."""

    model: LogisticRegression
    history: list[EpochRecord]


def fit_models(
    x: torch.Tensor,
    labels: torch.Tensor,
    val_x: torch.Tensor | None,
    val_y: torch.Tensor | None,
    cfg: TrainParams,
    optimizer: str,
    rates: Sequence[float],
    weight_decays: Sequence[float] | None = None,
    l1s: Sequence[float] | None = None,
    seed: int = 0,
    rows: torch.Tensor | None = None,
) -> list[Fitted]:
    """K models trained at once on the same inputs in the same batch order, each with its own labels
    (labels [K, N]), learning rate, weight decay and L1: what K calls of `fit` compute, with one product per
    step for all of them. Same initial weights and seeded batch order as `fit`. The training inputs are
    x [N, 784], or with `rows` the rows of x at those positions (no copy of the subset is made).

    Each epoch's learning-curve row has the running mean of the training loss and accuracy over its
    batches, each scored before its update (the tutorial's train_epoch), and with val_x the validation
    scores after the epoch; cfg.patience > 0 stops each model after that many epochs without a val-accuracy
    gain, keeping its best epoch's weights.
    """
    if optimizer not in ("sgd", "adam"):
        raise MnistlrError(f"optimizer {optimizer!r} is not accepted; accepted: {', '.join(OPTIMIZERS)}")
    k = labels.shape[0]
    weight_decays = [cfg.weight_decay] * k if weight_decays is None else list(weight_decays)
    l1s = [cfg.l1] * k if l1s is None else list(l1s)
    if not k == len(rates) == len(weight_decays) == len(l1s):
        raise MnistlrError(
            f"fit_models needs one label row, learning rate, weight decay and L1 per model; got "
            f"{k}, {len(rates)}, {len(weight_decays)} and {len(l1s)}"
        )
    if cfg.patience > 0 and val_x is None:
        raise MnistlrError("train.patience needs validation data to stop on; none was given")
    device, x = x.device, x.flatten(1)
    theta = initial_parameters(seed).to(device).repeat(k, 1)  # [K * 10, 785]
    opt = Optimizer(theta, optimizer, _per_model(rates, device), cfg.momentum, _per_model(weight_decays, device))
    l1 = _per_model(l1s, device)
    l1 = l1 if isinstance(l1, torch.Tensor) or l1 > 0 else None
    n = x.shape[0] if rows is None else rows.shape[0]
    bs = min(cfg.batch_size, n)
    steps = math.ceil(n / bs)
    factors = lr_schedule(cfg.schedule, 1.0, cfg.epochs * steps)
    order = torch.Generator().manual_seed(derive_seed(seed, "batches"))  # on the CPU: the same on every device
    xs = torch.empty(n, COLS, dtype=x.dtype, device=device)  # this epoch's inputs in batch order, and a 1
    xs[:, IN_FEATURES] = 1
    ys = torch.empty(k, n, dtype=torch.int64, device=device)
    targets = torch.empty(k, NUM_CLASSES, n, dtype=x.dtype, device=device)
    nll = torch.empty(k, 1, n, dtype=x.dtype, device=device)
    top = torch.empty(k, n, dtype=x.dtype, device=device)
    predicted = torch.empty(k, n, dtype=torch.int64, device=device)
    # every step's slices of the epoch buffers, made once: the buffers are refilled, never reallocated
    batches = [
        (xs[lo:hi], targets[:, :, lo:hi], ys[:, lo:hi], nll[:, :, lo:hi], top[:, lo:hi], predicted[:, lo:hi])
        for lo, hi in ((s * bs, min((s + 1) * bs, n)) for s in range(steps))
    ]
    grad = torch.empty_like(theta)
    graph = _EpochGraph(steps, device) if device.type == "cuda" and cfg.cuda_graph else None
    val_y_np = None if val_y is None else val_y.cpu().numpy()
    histories: list[list[EpochRecord]] = [[] for _ in range(k)]
    stoppers = [EarlyStopping(cfg.patience) for _ in range(k)]
    active = list(range(k))

    def run_step(s: int, *scalars) -> None:
        xb, tb, yb, nb, topb, pb = batches[s]
        gradient(theta, xb, tb, yb, cfg.loss, grad, nb, topb, pb)
        add_penalties(grad, theta, l1, cfg.grad_clip, k)
        opt.step(grad, *scalars)

    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        base = (epoch - 1) * steps
        perm = torch.randperm(n, generator=order).to(device)
        # one permuted copy per epoch, on every thread: gathering each batch's rows at its step instead
        # waits on memory every time (measured here: 37 us a batch, against 15 for its share of this copy)
        torch.index_select(x, 0, perm if rows is None else rows[perm], out=xs[:, :IN_FEATURES])
        torch.index_select(labels, 1, perm, out=ys)
        targets.zero_().scatter_(1, ys.unsqueeze(1), 1.0)
        scalars = [opt.scalars(factors[base + s], base + s + 1) for s in range(steps)]
        if graph is not None:
            graph.run(scalars, run_step)
        else:
            with _threads(1):  # batch-sized products are too small to share: OpenMP hand-offs cost more than they save
                for s, step_scalars in enumerate(scalars):
                    run_step(s, *step_scalars)
        train_loss, train_accuracy = _running_scores(nll, predicted == ys)
        val = _val_scores(theta, val_x, val_y_np) if val_x is not None else None
        seconds = time.perf_counter() - started
        for i in list(active):
            if not (
                math.isfinite(train_loss[i])
                and bool(torch.isfinite(theta[i * NUM_CLASSES : (i + 1) * NUM_CLASSES]).all())
            ):
                raise _diverged(epoch, train_loss[i], optimizer, rates[i])
            if val is None:
                continue
            record = EpochRecord(
                epoch, train_loss[i], train_accuracy[i], *val[i], factors[epoch * steps] * rates[i], seconds
            )
            histories[i].append(record)
            if stoppers[i].update(epoch, record.val_accuracy, theta[i * NUM_CLASSES : (i + 1) * NUM_CLASSES]):
                active.remove(i)
        if not active:
            break
    fitted = []
    for i in range(k):
        block = stoppers[i].best(theta[i * NUM_CLASSES : (i + 1) * NUM_CLASSES])
        fitted.append(Fitted(to_module(block), histories[i]))
    return fitted


def _running_scores(nll: torch.Tensor, correct: torch.Tensor) -> tuple[list[float], list[float]]:
    """Each model's mean training loss and accuracy over the epoch's batches, summed in float64, model by
    model (the same sums as alone): the epoch's one wait for the device."""
    n = correct.shape[1]
    return [-float(row.double().sum()) / n for row in nll], [int(row.sum()) / n for row in correct]


def _val_scores(theta: torch.Tensor, val_x: torch.Tensor, val_y: np.ndarray) -> list[tuple[float, float]]:
    """(cross-entropy, accuracy) of each of the K models on the validation set, by mnistlr.metrics."""
    scores = []
    for block in theta.split(NUM_CLASSES):  # one product per model: its scores never depend on the others
        logits = torch.addmm(block[:, IN_FEATURES], val_x.flatten(1), block[:, :IN_FEATURES].t())
        scores.append(metrics.loss_and_accuracy(logits.cpu().numpy(), val_y))
    return scores


class _EpochGraph:
    """On CUDA: the first epoch runs eagerly (it also warms up the kernels), then one epoch of steps is
    captured as a CUDA graph and replayed for every later epoch, with each step's scalars copied into a
    device table first. Capturing records kernels without running them, so capture costs no epoch."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self.table = torch.empty(steps, 3, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def run(self, scalars: list[tuple[float, float, float]], run_step) -> None:
        self.table.copy_(torch.tensor(scalars, dtype=torch.float32))
        if self.graph is not None:
            self.graph.replay()
            return
        for s in range(len(scalars)):  # eager, reading the same table the graph will read
            run_step(s, *self.table[s])
        self.graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(self.graph):
            for s in range(len(scalars)):
                run_step(s, *self.table[s])


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
    """
    if optimizer == "lbfgs":
        return fit_lbfgs(x, y, val_x, val_y, cfg, lr, seed)
    (one,) = fit_models(x, y[None], val_x, val_y, cfg, optimizer, [lr], seed=seed)
    return one.model, one.history


def batchable(cfg: TrainParams, optimizer: str) -> bool:
    """Whether fit_batched trains these settings as fit would: SGD or Adam without early stopping
    (fit_batched scores nothing to stop on)."""
    return optimizer in ("sgd", "adam") and cfg.patience == 0


def fit_batched(
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainParams,
    optimizer: str,
    rates: Sequence[float],
    weight_decays: Sequence[float],
    seed: int,
    l1s: Sequence[float] | None = None,
) -> list[LogisticRegression]:
    """K models on the same data, each its own lr, weight decay and L1, trained at once: the studies'
    grids. No learning curves: the studies score the results once."""
    if not batchable(cfg, optimizer):
        raise MnistlrError(
            f"batched training takes sgd or adam without patience; got optimizer {optimizer!r} "
            f"with patience {cfg.patience}"
        )
    k = len(rates)
    l1s = [0.0] * k if l1s is None else list(l1s)
    return [
        f.model
        for f in fit_models(x, y[None].expand(k, -1), None, None, cfg, optimizer, rates, weight_decays, l1s, seed)
    ]


# --- 5. L-BFGS -------------------------------------------------------------------------------------


def fit_lbfgs(
    x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, cfg: TrainParams, lr: float, seed: int
) -> tuple[LogisticRegression, list[EpochRecord]]:
    """Full-batch L-BFGS: the minimum of the (convex) regularized objective, not an approximation of it.

    Every "epoch" is one LBFGS.step of cfg.lbfgs_iters iterations over the whole training set
    (the optimizer keeps its curvature history across steps), so the learning-curve log has the
    same shape as for SGD/Adam. The step size is lr, scaled by a strong-Wolfe line search;
    cfg.patience works as for SGD/Adam; gradient clipping does not apply.
    """
    if cfg.grad_clip > 0:
        raise MnistlrError(
            f"train.grad_clip = {cfg.grad_clip} does not apply to optimizer lbfgs "
            "(its line search sets each step's length); accepted with lbfgs: 0"
        )
    model = to_module(initial_parameters(seed).to(x.device)).train()  # the initial weights of SGD/Adam
    criterion = make_criterion(cfg.loss)
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=lr,
        max_iter=cfg.lbfgs_iters,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = regularized_objective(model, criterion, x, y, cfg.l1, cfg.weight_decay)
        loss.backward()
        return loss.detach()  # L-BFGS reads only the value and the parameters' .grad

    history = []
    stopper = EarlyStopping(cfg.patience)
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        value = float(opt.step(closure))
        if not math.isfinite(value):
            raise MnistlrError(
                f"training diverged: objective became {value} at epoch {epoch} with train.lr.lbfgs = {lr}; "
                "lower the learning rate"
            )
        history.append(
            EpochRecord(epoch, *score(model, x, y), *score(model, val_x, val_y), lr, time.perf_counter() - started)
        )
        if stopper.update(epoch, history[-1].val_accuracy, model.fc.weight, model.fc.bias):
            break
    best = stopper.best(model.fc.weight.detach(), model.fc.bias.detach())
    if stopper.enabled:
        with torch.no_grad():
            model.fc.weight.copy_(best[0]), model.fc.bias.copy_(best[1])
    return model.eval(), history


# --- 6. learning curves and early stopping ------------------------------------------------------------


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


class EarlyStopping:
    """Tracks the best validation accuracy; `patience` epochs without a strict gain means stop.

    patience = 0 turns it off: `update` never asks to stop and `best` gives back the last weights.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_accuracy = float("-inf")
        self.best_epoch = 0
        self._best: tuple[torch.Tensor, ...] | None = None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def update(self, epoch: int, val_accuracy: float, *tensors: torch.Tensor) -> bool:
        """Record one epoch of the weights `tensors`; True when training should stop now."""
        if not self.enabled:
            return False
        if val_accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = val_accuracy, epoch
            # A device-side copy: no host transfer, and later steps cannot alias it.
            self._best = tuple(t.detach().clone() for t in tensors)
        return epoch - self.best_epoch >= self.patience

    def best(self, *last: torch.Tensor):
        """The best epoch's copy of the weights (the last weights `last` when off); one tensor or a tuple,
        as passed."""
        kept = self._best if self._best is not None else last
        return kept[0] if len(kept) == 1 else kept


def best_epoch(history: Sequence[EpochRecord]) -> int:
    """The first epoch with the highest val accuracy: the one early stopping keeps."""
    return max(history, key=lambda r: r.val_accuracy).epoch


def history_csv(history: Sequence[EpochRecord], best: int | None = None) -> str:
    """The learning curve as CSV text, one row per epoch (DVC plots it with x = epoch).

    With `best` (early stopping on) a `best` column marks the epoch whose weights were kept.
    """
    buf = io.StringIO()
    fields = list(history[0].as_dict()) + (["best"] if best is not None else [])
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in history:
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.as_dict().items()}
        if best is not None:
            row["best"] = int(record.epoch == best)
        writer.writerow(row)
    return buf.getvalue()


def write_history(path: str | Path, history: Sequence[EpochRecord], best: int | None = None) -> None:
    """history_csv, written atomically."""
    atomic.write_text(path, history_csv(history, best))


# --- 7. the stage ----------------------------------------------------------------------------------------


def to_device(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    """numpy arrays from the prepared folder as tensors on `device`."""
    return [torch.from_numpy(a).to(device) for a in arrays]


def train_variants(params: Params, prepared: str | Path) -> dict[str, tuple[LogisticRegression, list[EpochRecord]]]:
    """Every variant of params.yaml fitted with the params' optimizer, in params order.

    Variants that train on the same images in the same order (e.g. a noisy copy of `full`) share their
    input batches and train as one program; each still has its own labels, curve and weights.
    """
    device = resolve_device(params.train.device)
    pixels, _ = load_split(prepared, "train")  # the train split, read once: each variant is a set of its rows
    val_x, val_y = to_device(device, *load_split(prepared, "val"))
    groups: list[tuple[np.ndarray, list[tuple[str, np.ndarray]]]] = []
    for name in params.variants:
        index, labels = load_variant_index(prepared, name)
        same = next((g for g in groups if np.array_equal(g[0], index)), None)
        if same is None:
            groups.append((index, [(name, labels)]))
        else:
            same[1].append((name, labels))
    fitted: dict[str, tuple[LogisticRegression, list[EpochRecord]]] = {}
    x = torch.from_numpy(pixels).to(device)
    for index, members in groups:
        rows = torch.from_numpy(index).to(device)
        if params.optimizer == "lbfgs":  # full batch: the subset itself
            for name, labels in members:
                fitted[name] = fit_lbfgs(
                    x[rows], torch.from_numpy(labels).to(device), val_x, val_y, params.train, params.lr, params.seed
                )
            continue
        labels = torch.from_numpy(np.stack([labels for _, labels in members])).to(device)
        programs = fit_models(
            x,
            labels,
            val_x,
            val_y,
            params.train,
            params.optimizer,
            [params.lr] * len(members),
            seed=params.seed,
            rows=rows,
        )
        for (name, _), one in zip(members, programs, strict=True):
            fitted[name] = (one.model, one.history)
    return {name: fitted[name] for name in params.variants}


def train(
    params: Params, prepared: str | Path, models_dir: str | Path, curves_dir: str | Path
) -> dict[str, list[EpochRecord]]:
    """Train every variant; then write models/<variant>.npz and its learning curve <variant>.csv.

    Nothing is written until every variant has trained, so a failure leaves no partial set.
    """
    pre = load_preprocessing(prepared)  # every model file carries it
    fitted = train_variants(params, prepared)
    for name, (model, history) in fitted.items():
        model.to_model(pre).save(Path(models_dir) / f"{name}.npz")
        # Only with early stopping are the saved weights the best epoch's rather than the last's.
        write_history(
            Path(curves_dir) / f"{name}.csv", history, best_epoch(history) if params.train.patience > 0 else None
        )
    return {name: history for name, (_, history) in fitted.items()}

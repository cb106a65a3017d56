"""The train stage: fit `nn.Linear(784, 10)` on every training-set variant, in one process; and grids of
points (a sweep's) in one pass.

The only module (with mnistlr.studies) that imports torch. Read top to bottom:

1. the model and what it minimizes: `LogisticRegression`, the criteria, the regularized objective;
2. the gradient, written out: cross-entropy and least squares have closed-form gradients, so a step is
   two matrix products and a softmax instead of a trip through autograd;
3. the optimizers: SGD (momentum) and Adam with the update rules of torch.optim;
4. fitting: K models that share their input batches train as programs (`fit_models`), one per CPU thread,
   one epoch at a time, each epoch replayed as a CUDA graph on a GPU; each model's bits are those it gets
   trained alone; `fit` and `fit_batched` are two uses;
5. L-BFGS (full batch, through autograd: not a hot loop);
6. learning curves and early stopping;
7. the stage and grids: `train` (every variant of params.yaml), `train_grid` (every variant of many points
   that share `group_key`, which a sweep calls, then `save_fitted` per point).

Whole tensors live on the device, each epoch draws a seeded permutation and slices batches from it (no
DataLoader), and nothing in the inner loop reads a value back to the host.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mnistlr import atomic
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
from mnistlr.params import Params, TrainParams, group_key

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

# K models train as one program: each model's parameters are 10 rows of a [K * 10, STRIDE] tensor, its
# [10, 785] block (weights | bias) and then zeros. The zeros make each model's share of the tensor a whole
# number of vector registers (8000 floats), so an elementwise pass treats every model's floats alike, never
# some through the vector code and others through a scalar tail: a model's bits do not depend on how many
# models train beside it (tests/test_train.py checks that).
STRIDE = 800


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """Inputs [N, 784] (or images) as [N + 1, 785] rows (pixels | 1), the 1 multiplying the bias column, and a
    zero row last. A lone input is multiplied with the zero row beside it: a product with a single column goes
    another BLAS way (a matrix-vector product), whose rounding of each model's row depends on how many models
    there are."""
    n = x.shape[0]
    out = torch.zeros(n + 1, COLS, dtype=torch.float32, device=x.device)
    out[:n, :IN_FEATURES] = x.flatten(1)
    out[:n, IN_FEATURES] = 1
    return out


def logits_t(theta: torch.Tensor, xp: torch.Tensor, n: int) -> torch.Tensor:
    """Every model's logits, transposed, [K, 10, n], of theta [K * 10, 785] on the first n rows of xp (with_ones,
    at least n + 1 rows when n = 1).

    One product for all K models; each row of theta is multiplied on its own, so a model's logits are the same
    bits for any K (the BLAS this project pins does not change a row's rounding with the number of rows)."""
    z = torch.mm(theta, xp[: max(n, 2)].t())
    return (z if z.shape[1] == n else z[:, :n]).reshape(-1, NUM_CLASSES, n)


@dataclass(frozen=True)
class Batch:
    """One step's tensors for K models, views made once per program (its buffers are refilled each epoch, never
    reallocated), so that a step does no slicing: the B inputs `xb` [B, 785] (with_ones) and the rows `xz` the
    logits product multiplies (xb, or xb and a zero row when B = 1); each model's labels [K, 1, B] and a -1 for
    each; and where the step writes: the logits `z` [K * 10, rows of xz] (seen as [K, 10, B] by `z3`), each
    example's log-probability of its label `nll` [K, 1, B], its top logit and predicted class [K, B]."""

    xb: torch.Tensor
    xz: torch.Tensor
    labels: torch.Tensor
    minus_one: torch.Tensor
    z: torch.Tensor
    z3: torch.Tensor
    nll: torch.Tensor
    top: torch.Tensor
    predicted: torch.Tensor

    @staticmethod
    def of(
        xp: torch.Tensor,
        ys: torch.Tensor,
        nll: torch.Tensor | None = None,
        top: torch.Tensor | None = None,
        predicted: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
    ) -> Batch:
        """The batch of inputs xp (with_ones: its first B rows, and a zero row after them when B = 1) and labels
        ys [K, B], writing into the given buffers (new ones where None)."""
        k, b = ys.shape
        device = ys.device
        xz = xp[: max(b, 2)]
        z = torch.empty(k * NUM_CLASSES, xz.shape[0], device=device) if z is None else z
        return Batch(
            xb=xz[:b],
            xz=xz,
            labels=ys.unsqueeze(1),
            minus_one=torch.full((k, 1, b), -1.0, device=device),
            z=z,
            z3=(z if z.shape[1] == b else z[:, :b]).view(k, NUM_CLASSES, b),
            nll=torch.empty(k, 1, b, device=device) if nll is None else nll,
            top=torch.empty(k, b, device=device) if top is None else top,
            predicted=torch.empty(k, b, dtype=torch.int64, device=device) if predicted is None else predicted,
        )


def gradient(theta: torch.Tensor, batch: Batch, loss: str, out: torch.Tensor) -> torch.Tensor:
    """The gradient of the mean loss over the batch, for K models at once, into `out` [K * 10, 785]; and
    the batch's running scores into batch.nll, batch.top and batch.predicted, read once at the epoch's end.

    theta: [K * 10, 785] (weights | bias). With logits Z = theta · xbᵀ, cross-entropy's gradient by Z is
    softmax(Z) - onehot(y) and least squares' is Z - onehot(y); either way the gradient by theta is that
    residual · xb / B. Stored [10, 785] and multiplied this way round, both products are the fast layouts of
    these skinny shapes (with the weight transposed MKL takes about twice the time here). Every other
    operation is one per model and example (the softmaxes run over the 10 classes of one model and example),
    so no model's result depends on the others.
    """
    z = batch.z3
    torch.mm(theta, batch.xz.t(), out=batch.z)
    torch.gather(torch.log_softmax(z, dim=1), 1, batch.labels, out=batch.nll)
    torch.max(z, dim=1, out=(batch.top, batch.predicted))  # argmax's first maximum, at half argmax()'s cost here
    residual = torch.softmax(z, dim=1) if loss == "ce" else z
    # - onehot(y): minus 1 at each label, the same rounding as subtracting the one-hot matrix
    residual.scatter_add_(1, batch.labels, batch.minus_one)
    b = residual.shape[2]
    return out.addmm_(residual.view(-1, b), batch.xb, beta=0, alpha=1.0 / b)


def add_penalties(grad: torch.Tensor, theta: torch.Tensor, l1: torch.Tensor | None, clip: float, k: int) -> None:
    """On padded [K * 10, STRIDE] tensors, in place: L1's subgradient l1 * sign(W) (0 at 0, as autograd's abs)
    with each model's l1 from the column `l1` [K * 10, 1] (None: off), then each model's gradient clipped to a
    global norm of `clip` (torch.nn.utils.clip_grad_norm_'s rule; 0: off). The bias is not penalized."""
    if l1 is not None:
        grad[:, :IN_FEATURES].addcmul_(torch.sign(theta[:, :IN_FEATURES]), l1)
    if clip > 0:
        per_model = grad.view(k, -1)
        norms = torch.linalg.vector_norm(per_model, dim=1, keepdim=True)
        # no host read: the coefficient is min(1, clip / norm) on the device
        per_model.mul_((clip / (norms + 1e-6)).clamp_(max=1.0))


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
    torch's dynamo compiler (seconds per process), and the same update in public tensor operations (Optimizer
    with fused=False) takes eight passes over the parameters instead of one: 1.6 to 2 times as long a step
    (bench/results/trainer_adam_fused.md), and about 5 % more for the train stage with optimizer adam (the
    median of quiet runs here; single runs vary by 10 %).
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
    """SGD (with momentum) or Adam on K models' padded parameters [K * 10, STRIDE], with torch.optim.SGD's and
    Adam's update rules (L2 as weight decay added to the gradient of the weights, not the bias), each model
    with its own learning rate and weight decay.

    `rates(factors, first_step)` gives each model's signed step size [S, K, 1] for a run of S steps (the
    schedule's factor times its learning rate, for Adam divided by the first bias correction), and Adam's
    second bias correction; `step` reads one row of those tables, so that a CUDA graph can replay it. On the
    CPU, Adam runs as torch's fused kernel (fused_adam_step), one call per distinct learning rate; `fused`
    False (or a GPU) runs the same update as tensor operations. Every pass covers whole models' rows, so a
    model's update is the same bits for any K.
    """

    BETAS, EPS = (0.9, 0.999), 1e-8  # Adam's defaults in torch.optim.Adam

    def __init__(
        self,
        params: torch.Tensor,
        name: str,
        lrs: Sequence[float],
        momentum: float = 0.0,
        weight_decays: Sequence[float] | None = None,
        fused: bool | None = None,
    ) -> None:
        if name not in ("sgd", "adam"):
            raise MnistlrError(f"optimizer {name!r} is not accepted here; accepted: sgd, adam (lbfgs has its own loop)")
        k = params.shape[0] // NUM_CLASSES
        weight_decays = [0.0] * k if weight_decays is None else list(weight_decays)
        self.params, self.name, self.lrs, self.momentum, self.k = params, name, list(lrs), momentum, k
        self.flat = params.view(k, -1)  # a model per row
        self.weight_decay = per_model_column(weight_decays, params.device) if any(weight_decays) else None
        self.buffer: torch.Tensor | None = None  # SGD momentum
        self.fused = name == "adam" and (params.device.type == "cpu" if fused is None else fused)
        if name == "adam":
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(params), torch.zeros_like(params)
            self.denom = torch.empty_like(params)
            # the fused kernel takes each model's [10, STRIDE] block as its own tensor, and the models that
            # share a learning rate in one call
            blocks = [t.split(NUM_CLASSES) for t in (params, self.exp_avg, self.exp_avg_sq)]
            self.groups = {lr: [i for i in range(k) if self.lrs[i] == lr] for lr in dict.fromkeys(self.lrs)}
            self.blocks = {lr: [[b[i] for i in idx] for b in blocks] for lr, idx in self.groups.items()}
            self.step_count = torch.zeros((), dtype=torch.float32)  # the fused kernel's step counter, t

    def rates(self, factors: Sequence[float], first_step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([S, K, 1] signed step sizes, [S] sqrt of Adam's second bias correction or None) for steps first_step,
        first_step + 1, ... (counted from 1) with the schedule's `factors`, as float32 on the device: each
        product computed in float64 and rounded once, as torch rounds a Python scalar."""
        lrs = np.asarray(self.lrs, dtype=np.float64)
        factors = np.asarray(factors, dtype=np.float64)[:, None]
        if self.name == "sgd":
            return torch.from_numpy(-(factors * lrs)[:, :, None]).float().to(self.params.device), None
        b1, b2 = self.BETAS
        t = np.arange(first_step, first_step + len(factors), dtype=np.float64)[:, None]
        size = (-(factors * lrs) / (1 - b1**t))[:, :, None]
        bc2 = np.sqrt(1 - b2 ** t[:, 0])
        return torch.from_numpy(size).float().to(self.params.device), torch.from_numpy(bc2).float().to(
            self.params.device
        )

    def step(self, grad: torch.Tensor, rate: torch.Tensor, bc2: torch.Tensor | None, factor: float) -> None:
        """One step with each model's signed step size `rate` [K, 1] and Adam's sqrt(second bias correction)
        `bc2` (0-d) from the tables of `rates`; the fused kernel takes the schedule's `factor` instead."""
        params, k = self.params, self.k
        if self.weight_decay is not None:
            grad[:, :IN_FEATURES].addcmul_(params[:, :IN_FEATURES], self.weight_decay)
        flat = self.flat
        if self.name == "sgd":
            update = grad
            if self.momentum > 0:
                if self.buffer is None:  # torch.optim.SGD: the first buffer is the gradient itself
                    self.buffer = grad.clone()
                else:
                    self.buffer.mul_(self.momentum).add_(grad)
                update = self.buffer
            flat.addcmul_(update.view(k, -1), rate)
            return
        b1, b2 = self.BETAS
        if self.fused:
            self.step_count.add_(1)  # the kernel corrects the bias from the step counter, advanced first
            grads = grad.split(NUM_CLASSES)
            for lr, idx in self.groups.items():
                params_g, exp_avgs, exp_avg_sqs = self.blocks[lr]
                fused_adam_step(params_g, [grads[i] for i in idx], exp_avgs, exp_avg_sqs, self.step_count, lr * factor)
            return
        self.exp_avg.lerp_(grad, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = torch.sqrt(self.exp_avg_sq, out=self.denom).div_(bc2).add_(self.EPS)
        flat.addcmul_(torch.div(self.exp_avg, denom, out=denom).view(k, -1), rate)


# --- 4. fitting --------------------------------------------------------------------------------------


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def per_model_column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """Each model's value on its 10 rows: a [K * 10, 1] float32 column."""
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


class Diverged(MnistlrError):
    """A model's training loss or weights became nan or infinite."""


def _diverged(epoch: int, loss: float, optimizer: str, lr: float) -> str:
    return (
        f"training diverged: the training loss became {loss} at epoch {epoch} with "
        f"train.lr.{optimizer} = {lr}; lower the learning rate or set train.grad_clip (e.g. 1.0)"
    )


@dataclass
class Fitted:
    """One model of a fit_models program: its parameters and learning curve; or, when it diverged, no model,
    its curve up to then and `error`, one line naming the epoch and its learning rate."""

    model: LogisticRegression | None
    history: list[EpochRecord]
    error: str | None = None


class Program:
    """K models that train on one thread: their parameters, gradients and optimizer state as padded
    [K * 10, STRIDE] tensors, their labels in this epoch's batch order and their running scores. Each step is
    one product for the logits of all K models, one for their gradients, and elementwise passes."""

    def __init__(
        self,
        init: torch.Tensor,
        labels: torch.Tensor,
        xs: torch.Tensor,
        bounds: Sequence[tuple[int, int]],
        cfg: TrainParams,
        optimizer: str,
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        l1s: Sequence[float],
    ) -> None:
        """K models from the [10, 785] block `init`, with labels [K, N], stepping over the batches `bounds` of the
        epoch's inputs `xs` [N + 1, 785] (with_ones, a zero row last)."""
        k, n = labels.shape
        device = init.device
        self.k, self.labels, self.cfg = k, labels, cfg
        self.storage = torch.zeros(k * NUM_CLASSES, STRIDE, device=device)
        self.theta = self.storage[:, :COLS]  # the product's view: rows of 785 at a stride of STRIDE
        self.theta.copy_(init.expand(k, -1, -1).reshape(k * NUM_CLASSES, COLS))
        self.grad_storage = torch.zeros_like(self.storage)
        self.grad = self.grad_storage[:, :COLS]
        self.opt = Optimizer(self.storage, optimizer, lrs, cfg.momentum, weight_decays)
        self.l1 = per_model_column(l1s, device) if any(l1s) else None
        self.ys = torch.empty(k, n, dtype=torch.int64, device=device)
        self.nll = torch.empty(k, 1, n, device=device)
        self.top = torch.empty(k, n, device=device)
        self.predicted = torch.empty(k, n, dtype=torch.int64, device=device)
        logits: dict[int, torch.Tensor] = {}  # one logits buffer per batch width
        self.batches = [
            Batch.of(
                xs[lo : max(hi, lo + 2)],
                self.ys[:, lo:hi],
                self.nll[:, :, lo:hi],
                self.top[:, lo:hi],
                self.predicted[:, lo:hi],
                logits.setdefault(max(hi - lo, 2), torch.empty(k * NUM_CLASSES, max(hi - lo, 2), device=device)),
            )
            for lo, hi in bounds
        ]

    def block(self, i: int) -> torch.Tensor:
        """Model i's [10, 785] parameters (a view)."""
        return self.theta[i * NUM_CLASSES : (i + 1) * NUM_CLASSES]

    def run_step(self, s: int, rate: torch.Tensor, bc2: torch.Tensor | None, factor: float) -> None:
        """Step s of the epoch, with each model's signed step size `rate` [K, 1] (and Adam's `bc2`, `factor`)."""
        gradient(self.theta, self.batches[s], self.cfg.loss, self.grad)
        add_penalties(self.grad_storage, self.storage, self.l1, self.cfg.grad_clip, self.k)
        self.opt.step(self.grad_storage, rate, bc2, factor)

    def epoch(
        self, perm: torch.Tensor, factors: Sequence[float], first_step: int, graph: _EpochGraph | None
    ) -> tuple[list[float], list[float], list[bool]]:
        """One epoch of steps over the epoch's inputs (filled in the order `perm`), the schedule's `factors`
        from step `first_step` (counted from 1): each model's running training loss and accuracy, and whether
        its parameters are all finite."""
        torch.index_select(self.labels, 1, perm, out=self.ys)
        rates, bc2 = self.opt.rates(factors, first_step)
        if graph is not None:
            graph.run(self, rates, bc2)
        else:
            bc2s = [None] * len(factors) if bc2 is None else bc2.unbind(0)
            for s, (rate, bc2_s, factor) in enumerate(zip(rates.unbind(0), bc2s, factors, strict=True)):
                self.run_step(s, rate, bc2_s, factor)
        loss, accuracy = _running_scores(self.nll, self.predicted == self.ys)
        finite = torch.isfinite(self.storage).view(self.k, -1).all(dim=1).tolist()
        return loss, accuracy, finite

    def scores(self, xp: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        """(cross-entropy, accuracy) of each model on (xp, y), by `scores`."""
        return scores(self.theta, xp, y)


SCORE_ROWS = 1024  # inputs per product when scoring: the product packs each input once for all K models


def scores(theta: torch.Tensor, xp: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
    """(cross-entropy, accuracy) of each model of theta [K * 10, 785] on inputs xp (with_ones) with labels y:
    the mean of each example's float32 log-probability of its label, summed in float64 model by model (the
    training curve's own rule), and the share whose first top logit is the label. The inputs go SCORE_ROWS at a
    time through one product for all K models; a model's scores are the same bits for any K."""
    n, k = y.shape[0], theta.shape[0] // NUM_CLASSES
    nll = torch.empty(k, 1, n, device=theta.device)
    correct = torch.empty(k, n, dtype=torch.bool, device=theta.device)
    for lo in range(0, n, SCORE_ROWS):
        hi = min(lo + SCORE_ROWS, n)
        z = logits_t(theta, xp[lo:], hi - lo)
        labels = y[lo:hi].view(1, 1, -1).expand(k, 1, -1)
        torch.gather(torch.log_softmax(z, dim=1), 1, labels, out=nll[:, :, lo:hi])
        torch.eq(torch.max(z, dim=1).indices, labels[:, 0], out=correct[:, lo:hi])
    loss, accuracy = _running_scores(nll, correct)
    return list(zip(loss, accuracy, strict=True))


def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(cross-entropy, accuracy) of the model on (x, y) by `scores`: the same bits as the validation columns of
    the learning curve that trained it."""
    block = torch.cat([model.fc.weight.detach(), model.fc.bias.detach()[:, None]], 1)
    return scores(block, with_ones(x), y)[0]


def _running_scores(nll: torch.Tensor, correct: torch.Tensor) -> tuple[list[float], list[float]]:
    """Each model's mean loss (from each example's log-probability of its label, nll [K, 1, N]) and accuracy
    (correct [K, N]), summed in float64 model by model (the same sums as alone): the epoch's one wait for the
    device."""
    n = correct.shape[1]
    return [-float(row.double().sum()) / n for row in nll], [int(row.sum()) / n for row in correct]


class _EpochGraph:
    """On CUDA: the first epoch runs eagerly (it also warms up the kernels), then one epoch of steps is
    captured as a CUDA graph and replayed for every later epoch, with each step's rates copied into device
    tables first. Capturing records kernels without running them, so capture costs no epoch."""

    def __init__(self) -> None:
        self.tables: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def run(self, program: Program, rates: torch.Tensor, bc2: torch.Tensor | None) -> None:
        if self.tables is None:
            self.tables = (rates.clone(), None if bc2 is None else bc2.clone())
        table, bc2_table = self.tables
        table.copy_(rates)
        if bc2_table is not None:
            bc2_table.copy_(bc2)

        def steps() -> None:
            for s in range(table.shape[0]):
                program.run_step(s, table[s], None if bc2_table is None else bc2_table[s], 1.0)

        if self.graph is not None:
            self.graph.replay()
            return
        steps()  # eager, reading the same tables the graph will read
        self.graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        with torch.cuda.graph(self.graph):
            steps()


PROGRAM_MODELS = 48  # the most models one CPU program holds (their [480, 800] floats: 1.5 MB a tensor)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    """0..n in `parts` contiguous ranges of near-equal length."""
    return [(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


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
    patiences: Sequence[int] | None = None,
    on_divergence: str = "raise",
) -> list[Fitted]:
    """K models trained at once on the same inputs in the same batch order, each with its own labels
    (labels [K, N]), learning rate, weight decay, L1 and patience (PER_MODEL_KEYS; None: cfg's for every
    model): each model's weights and curve are the bits that `fit` gives it alone. Same initial weights and
    seeded batch order as `fit`; everything else (epochs, batch size, schedule, momentum, loss, gradient
    clipping, device) is cfg's for all. The training inputs are x [N, 784], or with `rows` the rows of x at
    those positions (no copy of the subset is made).

    Each epoch's learning-curve row has the running mean of the training loss and accuracy over its
    batches, each scored before its update (the tutorial's train_epoch), and with val_x the validation
    scores after the epoch; a patience > 0 stops its model after that many epochs without a val-accuracy
    gain, keeping its best epoch's weights.

    On the CPU the models are split into one program per torch thread (torch.get_num_threads()), each
    stepping on its own thread with single-threaded kernels: a model's arithmetic is then the same at any
    thread count and beside any other models. A model whose loss or weights become nan or infinite raises
    Diverged (on_divergence "raise"), or (on_divergence "report") stops with its Fitted.error set while the
    others train on.
    """
    if optimizer not in ("sgd", "adam"):
        raise MnistlrError(f"optimizer {optimizer!r} is not accepted; accepted: {', '.join(OPTIMIZERS)}")
    if on_divergence not in ("raise", "report"):
        raise MnistlrError(f"on_divergence {on_divergence!r} is not accepted; accepted: raise, report")
    k = labels.shape[0]
    weight_decays = [cfg.weight_decay] * k if weight_decays is None else list(weight_decays)
    l1s = [cfg.l1] * k if l1s is None else list(l1s)
    patiences = [cfg.patience] * k if patiences is None else list(patiences)
    if not k == len(rates) == len(weight_decays) == len(l1s) == len(patiences):
        raise MnistlrError(
            f"fit_models needs one label row, learning rate, weight decay, L1 and patience per model; got "
            f"{k}, {len(rates)}, {len(weight_decays)}, {len(l1s)} and {len(patiences)}"
        )
    if any(patiences) and val_x is None:
        raise MnistlrError("train.patience needs validation data to stop on; none was given")
    device, x = x.device, x.flatten(1)
    n = x.shape[0] if rows is None else rows.shape[0]
    bs = min(cfg.batch_size, n)
    steps = math.ceil(n / bs)
    bounds = [(s * bs, min((s + 1) * bs, n)) for s in range(steps)]
    factors = lr_schedule(cfg.schedule, 1.0, cfg.epochs * steps)
    order = torch.Generator().manual_seed(derive_seed(seed, "batches"))  # on the CPU: the same on every device
    cuda = device.type == "cuda"
    workers = 1 if cuda else max(1, min(torch.get_num_threads(), k))
    # on the CPU, programs of at most PROGRAM_MODELS, as many for each worker: a program's parameters and
    # gradients stay closer in cache through its epoch (120 models as one program: 26-28 ms a model-epoch
    # here, as programs of 48: 23.5-25.5)
    parts = _split(k, 1 if cuda else workers * math.ceil(k / (workers * PROGRAM_MODELS)))
    xs = torch.zeros(n + 1, COLS, device=device)  # this epoch's inputs in batch order (with_ones), a zero row last
    xs[:n, IN_FEATURES] = 1
    init = initial_parameters(seed).to(device)
    programs = [
        Program(init, labels[lo:hi], xs, bounds, cfg, optimizer, rates[lo:hi], weight_decays[lo:hi], l1s[lo:hi])
        for lo, hi in parts
    ]
    graphs = [_EpochGraph() if cuda and cfg.cuda_graph else None for _ in programs]
    val_xp = None if val_x is None else with_ones(val_x)
    histories: list[list[EpochRecord]] = [[] for _ in range(k)]
    stoppers = [EarlyStopping(p) for p in patiences]
    errors: list[str | None] = [None] * k
    active = set(range(k))

    def fill(rows_range: tuple[int, int], src: torch.Tensor) -> None:
        lo, hi = rows_range
        torch.index_select(x, 0, src[lo:hi], out=xs[lo:hi, :IN_FEATURES])

    def train_epoch(j: int, perm: torch.Tensor, first: int) -> tuple | None:
        program, lo = programs[j], parts[j][0]
        if not any(lo + i in active for i in range(program.k)):
            return None  # every model of this program has stopped
        loss, accuracy, finite = program.epoch(perm, factors[first - 1 : first - 1 + steps], first, graphs[j])
        val = program.scores(val_xp, val_y) if val_xp is not None else []
        return loss, accuracy, finite, val

    with ExitStack() as stack:
        if not cuda:
            stack.enter_context(_threads(1))  # each program on one thread, its kernels single-threaded
        # each worker sets its own thread count: a new thread's first BLAS calls otherwise run MKL's default
        # threading, several times slower on these small products (measured here: 180 us against 26)
        pool = (
            stack.enter_context(ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)))
            if workers > 1
            else None
        )

        def run(f, items) -> list:
            return list(pool.map(f, items)) if pool is not None else [f(item) for item in items]

        for epoch in range(1, cfg.epochs + 1):
            started = time.perf_counter()
            base = (epoch - 1) * steps
            perm = torch.randperm(n, generator=order).to(device)
            src = perm if rows is None else rows[perm]
            # one permuted copy per epoch, each worker a share of its rows, read by every program: no
            # program gathers its batches again
            run(partial(fill, src=src), _split(n, workers))
            results = run(partial(train_epoch, perm=perm, first=base + 1), range(len(programs)))
            seconds = time.perf_counter() - started
            for j, result in enumerate(results):
                if result is None:
                    continue
                loss, accuracy, finite, val = result
                for i in range(programs[j].k):
                    m = parts[j][0] + i
                    if m not in active:
                        continue
                    if not (math.isfinite(loss[i]) and finite[i]):
                        errors[m] = _diverged(epoch, loss[i], optimizer, rates[m])
                        if on_divergence == "raise":
                            raise Diverged(errors[m])
                        active.discard(m)
                        continue
                    if val_xp is None:
                        continue
                    record = EpochRecord(
                        epoch, loss[i], accuracy[i], *val[i], factors[epoch * steps] * rates[m], seconds
                    )
                    histories[m].append(record)
                    if stoppers[m].update(epoch, record.val_accuracy, programs[j].block(i)):
                        active.discard(m)
            if not active:
                break
    fitted = []
    for j, program in enumerate(programs):
        for i in range(program.k):
            m = parts[j][0] + i
            model = None if errors[m] else to_module(stoppers[m].best(program.block(i)))
            fitted.append(Fitted(model, histories[m], errors[m]))
    return fitted


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
            raise Diverged(
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


# --- 7. the stage, and grids of points -------------------------------------------------------------------


def to_device(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    """numpy arrays from the prepared folder as tensors on `device`."""
    return [torch.from_numpy(a).to(device) for a in arrays]


def train_grid(
    points: Sequence[Params], prepared: str | Path, on_divergence: str = "report"
) -> list[dict[str, Fitted]]:
    """Every variant of every point fitted with the points' optimizer: for each point, its variants in params
    order. The points must share group_key; each model's weights and curve are the bits that training its
    point alone (train_variants) gives.

    Variants that train on the same images in the same order (e.g. a noisy copy of `full`), of every point,
    share their input batches and train as one program (fit_models); each still has its own labels, learning
    rate, weight decay, L1, patience, curve and weights. A model that diverges has its Fitted.error set
    (on_divergence "report") or raises Diverged ("raise").
    """
    if not points:
        return []
    keys = [group_key(p) for p in points]
    differ = sorted(
        {name for key in keys for (name, value), (_, first) in zip(key, keys[0], strict=True) if value != first}
    )
    if differ:
        raise MnistlrError(
            f"train_grid trains points that share params.group_key; these points differ in {', '.join(differ)}"
        )
    params = points[0]
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
    fitted: list[dict[str, Fitted]] = [{} for _ in points]
    x = torch.from_numpy(pixels).to(device)

    def train_group(index: np.ndarray, members: list[tuple[str, np.ndarray]]) -> None:
        rows = torch.from_numpy(index).to(device)
        models = [(point, name, labels) for point in points for name, labels in members]
        if params.optimizer == "lbfgs":  # full batch: the subset itself, one model at a time
            for i, (point, name, labels) in enumerate(models):
                y = torch.from_numpy(labels).to(device)
                try:
                    fitted[i // len(members)][name] = Fitted(
                        *fit_lbfgs(x[rows], y, val_x, val_y, point.train, point.lr, point.seed)
                    )
                except Diverged as exc:
                    if on_divergence == "raise":
                        raise
                    fitted[i // len(members)][name] = Fitted(None, [], str(exc))
            return
        programs = fit_models(
            x,
            torch.from_numpy(np.stack([labels for _, _, labels in models])).to(device),
            val_x,
            val_y,
            params.train,
            params.optimizer,
            [point.lr for point, _, _ in models],
            [point.train.weight_decay for point, _, _ in models],
            [point.train.l1 for point, _, _ in models],
            seed=params.seed,
            rows=rows,
            patiences=[point.train.patience for point, _, _ in models],
            on_divergence=on_divergence,
        )
        for i, ((_, name, _), one) in enumerate(zip(models, programs, strict=True)):
            fitted[i // len(members)][name] = one

    # A group of at least as many models as threads trains on all of them; smaller groups (a point's
    # subsets, one model each) train side by side, one thread each, the largest first.
    threads = torch.get_num_threads() if device.type == "cpu" and params.optimizer != "lbfgs" else 1
    small = [g for g in groups if len(points) * len(g[1]) < threads]
    for group in groups:
        if len(points) * len(group[1]) >= threads:
            train_group(*group)
    if small:
        small.sort(key=lambda g: -len(g[0]) * len(g[1]))
        with ThreadPoolExecutor(min(threads, len(small)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            list(pool.map(lambda group: train_group(*group), small))
    return [{name: f[name] for name in params.variants} for f in fitted]


def train_variants(params: Params, prepared: str | Path) -> dict[str, tuple[LogisticRegression, list[EpochRecord]]]:
    """Every variant of params.yaml fitted with the params' optimizer, in params order: train_grid of one
    point; a diverging variant raises Diverged."""
    (fitted,) = train_grid([params], prepared, on_divergence="raise")
    return {name: (one.model, one.history) for name, one in fitted.items()}


def save_fitted(
    params: Params, fitted: dict[str, Fitted], pre: Preprocessing, models_dir: str | Path, curves_dir: str | Path
) -> None:
    """models/<variant>.npz and its learning curve <variant>.csv for each fitted variant of one point."""
    for name, one in fitted.items():
        one.model.to_model(pre).save(Path(models_dir) / f"{name}.npz")
        # Only with early stopping are the saved weights the best epoch's rather than the last's.
        best = best_epoch(one.history) if params.train.patience > 0 else None
        write_history(Path(curves_dir) / f"{name}.csv", one.history, best)


def train(
    params: Params, prepared: str | Path, models_dir: str | Path, curves_dir: str | Path
) -> dict[str, list[EpochRecord]]:
    """Train every variant; then write models/<variant>.npz and its learning curve <variant>.csv.

    Nothing is written until every variant has trained, so a failure leaves no partial set.
    """
    pre = load_preprocessing(prepared)  # every model file carries it
    (fitted,) = train_grid([params], prepared, on_divergence="raise")
    save_fitted(params, fitted, pre, models_dir, curves_dir)
    return {name: one.history for name, one in fitted.items()}

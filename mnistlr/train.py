"""The train stage: fit `nn.Linear(784, 10)` on one training-set variant with SGD, Adam or L-BFGS.

The only module that imports torch. Whole tensors live on the device, each epoch draws a seeded
permutation and slices batches from it (no DataLoader, no per-sample Python), and nothing in
the inner loop reads a value back to the host. On CUDA, after the first (eager) epoch, each
epoch is captured once as a CUDA graph and replayed. L-BFGS runs full batch. The learning
curve is scored with mnistlr.metrics, the model written as mnistlr.model's plain arrays.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.adam import adam as adam_step
from torch.optim.sgd import sgd as sgd_step

from mnistlr import atomic, metrics
from mnistlr.data import IN_FEATURES, NUM_CLASSES, Preprocessing, derive_seed, load_preprocessing, load_split, load_variant
from mnistlr.errors import MnistlrError
from mnistlr.model import Model
from mnistlr.params import Params, TrainParams

OPTIMIZERS = ("sgd", "adam", "lbfgs")
LOSSES = ("ce", "mse")


# --- the model and what it minimizes ---------------------------------------------------------


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
    model: LogisticRegression, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor,
    l1: float = 0.0, weight_decay: float = 0.0,
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
def objective_value(model: LogisticRegression, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                    l1: float = 0.0, weight_decay: float = 0.0) -> float:
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


# --- devices, optimizers, schedules --------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MnistlrError("train.device = 'cuda' but no CUDA device is available; accepted here: auto, cpu")
    if name not in ("cpu", "cuda"):
        raise MnistlrError(f"device {name!r} is not accepted; accepted: auto, cpu, cuda")
    return torch.device(name)


class Optimizer:
    """SGD or Adam stepping through torch.optim's functional kernels (`torch.optim.sgd.sgd`,
    `torch.optim.adam.adam`): the functions torch.optim.SGD and Adam call, with the same state.

    The classes' step() imports torch._dynamo on first use (about 3 s per process here, more than
    a whole training run of a small variant); the functions do not. L2 (weight_decay) applies to
    the weight matrix, not the bias. `fused` (CUDA): one kernel per step, safe to capture in a
    CUDA graph with a tensor lr.
    """

    BETAS, EPS = (0.9, 0.999), 1e-8  # Adam's defaults in torch.optim.Adam

    def __init__(self, model: LogisticRegression, name: str, lr: float | torch.Tensor, momentum: float = 0.0,
                 weight_decay: float = 0.0, fused: bool = False) -> None:
        if name not in ("sgd", "adam"):
            raise MnistlrError(f"optimizer {name!r} is not accepted here; accepted: sgd, adam (lbfgs has its own loop)")
        self.name, self.lr, self.momentum, self.fused = name, lr, momentum, fused
        self.groups = [([model.fc.weight], weight_decay), ([model.fc.bias], 0.0)]
        self.momentum_buffers: list[list[torch.Tensor | None]] = [[None] for _ in self.groups]
        if name == "adam":
            # capturable (steps on the device) whenever fused, as graph capture requires
            step_device = model.fc.weight.device if fused else torch.device("cpu")
            self.exp_avgs = [[torch.zeros_like(p) for p in params] for params, _ in self.groups]
            self.exp_avg_sqs = [[torch.zeros_like(p) for p in params] for params, _ in self.groups]
            self.steps = [[torch.tensor(0.0, device=step_device) for _ in params] for params, _ in self.groups]

    def zero_grad(self) -> None:
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        kernel = {"fused": True} if self.fused else {"foreach": True}
        for i, (params, weight_decay) in enumerate(self.groups):
            grads = [p.grad for p in params]
            if self.name == "sgd":
                sgd_step(params, grads, self.momentum_buffers[i], weight_decay=weight_decay,
                         momentum=self.momentum, lr=self.lr, dampening=0.0, nesterov=False, maximize=False, **kernel)
            else:
                adam_step(params, grads, self.exp_avgs[i], self.exp_avg_sqs[i], [], self.steps[i],
                          capturable=self.fused, amsgrad=False, beta1=self.BETAS[0], beta2=self.BETAS[1],
                          lr=self.lr, weight_decay=weight_decay, eps=self.EPS, maximize=False, **kernel)


def lr_schedule(schedule: str, lr: float, total_steps: int) -> list[float]:
    """The learning rate before each step (plus the one after the last): constant, or cosine
    annealing to 0 over all steps (CosineAnnealingLR's closed form).

    Precomputed so the loop only reads a table, and a CUDA graph can replay an epoch with the right rates.
    """
    if schedule == "constant":
        return [lr] * (total_steps + 1)
    return [lr * (1 + math.cos(math.pi * t / total_steps)) / 2 for t in range(total_steps + 1)]


def training_loss(
    model: LogisticRegression, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, l1: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, loss): the criterion on raw logits, plus l1 * sum|W| when l1 > 0."""
    logits = model(x)
    loss = criterion(logits, y)
    if l1 > 0:
        loss = loss + l1 * model.fc.weight.abs().sum()
    return logits, loss


# --- the learning curve and early stopping ----------------------------------------------------------


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

    patience = 0 turns it off: `update` never asks to stop and `restore` keeps the last weights.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_accuracy = float("-inf")
        self.best_epoch = 0
        self._best_state: dict | None = None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def update(self, epoch: int, val_accuracy: float, model: nn.Module) -> bool:
        """Record one epoch; True when training should stop now."""
        if not self.enabled:
            return False
        if val_accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = val_accuracy, epoch
            # A device-side copy: no host transfer, and later steps cannot alias it.
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return epoch - self.best_epoch >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights back into `model` (no-op when off)."""
        if self._best_state is not None:
            model.load_state_dict(self._best_state)


def _record(model: nn.Module, epoch: int, lr: float, started: float, x, y, val_x, val_y) -> EpochRecord:
    """Score the epoch on train and val: the epoch's one wait for the device."""
    return EpochRecord(epoch, *score(model, x, y), *score(model, val_x, val_y), lr, time.perf_counter() - started)


# --- fitting ---------------------------------------------------------------------------------------


def fit(
    x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    cfg: TrainParams, optimizer: str, lr: float, seed: int,
) -> tuple[LogisticRegression, list[EpochRecord]]:
    """Train a fresh model on (x, y), which live on the device to train on; log each epoch.

    cfg.grad_clip > 0 clips each step's global gradient norm; cfg.patience > 0 stops after that
    many epochs without a val-accuracy gain and returns the best epoch's weights.
    """
    if optimizer == "lbfgs":
        return fit_lbfgs(x, y, val_x, val_y, cfg, lr, seed)
    if optimizer not in OPTIMIZERS:
        raise MnistlrError(f"optimizer {optimizer!r} is not accepted; accepted: {', '.join(OPTIMIZERS)}")
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
    opt = Optimizer(model, optimizer, lr_now if graphed else lr, cfg.momentum, cfg.weight_decay,
                    fused=device.type == "cuda")
    # on the CPU, so batch order is the same on every device
    order = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    xs, ys = torch.empty_like(x), torch.empty_like(y)
    step_losses = torch.empty(steps, device=device)
    epoch_rates = torch.empty(steps, device=device) if graphed else None
    graph = None
    history = []
    stopper = EarlyStopping(cfg.patience)

    def run_epoch(set_lr: Callable[[int], object]) -> None:
        for step in range(steps):
            set_lr(step)
            _, loss = training_loss(model, criterion, xs[step * bs : (step + 1) * bs],
                                    ys[step * bs : (step + 1) * bs], cfg.l1)
            opt.zero_grad()
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
                run_epoch(lambda s: setattr(opt, "lr", rates[base + s]))
        if graphed and graph is None and epoch < cfg.epochs:
            # Capturing records kernels without running them: the weights stay as epoch `epoch` left them.
            graph = torch.cuda.CUDAGraph()
            torch.cuda.synchronize()
            with torch.cuda.graph(graph):
                run_epoch(lambda s: lr_now.copy_(epoch_rates[s]))
        _raise_if_diverged(step_losses, epoch, optimizer, lr)
        history.append(_record(model, epoch, rates[epoch * steps], started, x, y, val_x, val_y))
        if stopper.update(epoch, history[-1].val_accuracy, model):
            break
    stopper.restore(model)
    return model.eval(), history


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
        raise MnistlrError(f"train.grad_clip = {cfg.grad_clip} does not apply to optimizer lbfgs "
                           "(its line search sets each step's length); accepted with lbfgs: 0")
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
        return loss.detach()  # L-BFGS reads only the value and the parameters' .grad

    history = []
    stopper = EarlyStopping(cfg.patience)
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        value = float(opt.step(closure))
        if not math.isfinite(value):
            raise MnistlrError(
                f"training diverged: objective became {value} at epoch {epoch} with train.lr.lbfgs = {lr}; "
                "lower the learning rate"
            )
        history.append(_record(model, epoch, lr, started, x, y, val_x, val_y))
        if stopper.update(epoch, history[-1].val_accuracy, model):
            break
    stopper.restore(model)
    return model.eval(), history


def batchable(cfg: TrainParams, optimizer: str) -> bool:
    """Whether fit_batched trains these settings exactly as fit would (it has no L1, clipping, momentum,
    early stopping or least squares)."""
    return (optimizer in ("sgd", "adam") and cfg.loss == "ce" and cfg.l1 == 0 and cfg.grad_clip == 0
            and cfg.momentum == 0 and cfg.patience == 0)


def fit_batched(
    x: torch.Tensor, y: torch.Tensor, cfg: TrainParams, optimizer: str, rates: Sequence[float],
    weight_decays: Sequence[float], seed: int, l1s: Sequence[float] | None = None,
) -> list[LogisticRegression]:
    """K models that share an optimizer, batch size and epochs, trained at once: the same updates as K
    calls of `fit` (same initial weights, same batch order, each its own lr, weight decay and L1), but
    every step is one product of the batch with the K weight matrices side by side, [784, K * 10].

    Small linear models leave a core mostly idle per step; K of them fill it. No learning curves: the
    studies score the results once.
    """
    if not batchable(cfg, optimizer):
        raise MnistlrError(f"batched training takes sgd or adam with loss ce and no l1, grad_clip, momentum or "
                           f"patience; got optimizer {optimizer!r} with {cfg.model_dump()}")
    l1s = [0.0] * len(rates) if l1s is None else list(l1s)
    if not rates or not len(rates) == len(weight_decays) == len(l1s):
        raise MnistlrError(f"batched training needs one weight decay and one L1 per learning rate; got "
                           f"{len(rates)}, {len(weight_decays)} and {len(l1s)}")
    device, k = x.device, len(rates)
    torch.manual_seed(seed)  # the initial weights fit() starts every model from
    init = LogisticRegression()
    w = init.fc.weight.detach().T.unsqueeze(1).repeat(1, k, 1).to(device).requires_grad_()  # [784, K, 10]
    b = init.fc.bias.detach().repeat(k, 1).to(device).requires_grad_()  # [K, 10]
    lr = torch.tensor(rates, dtype=x.dtype, device=device)
    decay = torch.tensor(weight_decays, dtype=x.dtype, device=device).view(1, k, 1)
    l1 = torch.tensor(l1s, dtype=x.dtype, device=device).view(1, k, 1)
    any_l1 = any(v > 0 for v in l1s)
    n = x.shape[0]
    bs = min(cfg.batch_size, n)
    steps = math.ceil(n / bs)
    factors = lr_schedule(cfg.schedule, 1.0, cfg.epochs * steps)
    beta1, beta2 = Optimizer.BETAS
    moments = [torch.zeros_like(t) for t in (w, b, w, b)]  # Adam: first and second moments of w and b
    order = torch.Generator().manual_seed(derive_seed(seed, "batches"))  # fit's batch order
    t = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=order).to(device)
        xs, ys = x[perm], y[perm]
        for step in range(steps):
            xb, yb = xs[step * bs : (step + 1) * bs], ys[step * bs : (step + 1) * bs]
            logits = (xb @ w.view(IN_FEATURES, -1)).view(len(xb), k, NUM_CLASSES) + b
            # the sum over models of each one's mean cross-entropy: each gradient is its own model's
            loss = F.cross_entropy(logits.transpose(1, 2), yb[:, None].expand(-1, k)) * k
            gw, gb = torch.autograd.grad(loss, (w, b))
            rate = lr * factors[t]
            t += 1
            with torch.no_grad():
                gw = gw + decay * w  # L2 on the weights, not the bias, as in fit
                if any_l1:  # the gradient of l1 * sum|W| (0 at 0, as autograd's abs)
                    gw = gw + l1 * torch.sign(w)
                if optimizer == "sgd":
                    w -= rate.view(1, k, 1) * gw
                    b -= rate.view(k, 1) * gb
                    continue
                for param, grad, m, v, shape in ((w, gw, moments[0], moments[2], (1, k, 1)),
                                                 (b, gb, moments[1], moments[3], (k, 1))):
                    m.lerp_(grad, 1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(Optimizer.EPS)
                    param -= (rate / (1 - beta1**t)).view(shape) * m / denom
    models = []
    for i in range(k):
        model = LogisticRegression().to(device)
        with torch.no_grad():
            model.fc.weight.copy_(w[:, i, :].T)
            model.fc.bias.copy_(b[i])
        models.append(model.eval())
    return models


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _raise_if_diverged(step_losses: torch.Tensor, epoch: int, optimizer: str, lr: float) -> None:
    finite = torch.isfinite(step_losses)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0, 0]) + 1
        raise MnistlrError(
            f"training diverged: loss became {float(step_losses[step - 1])} at epoch {epoch}, step {step} "
            f"with train.lr.{optimizer} = {lr}; "
            "lower the learning rate or set train.grad_clip (e.g. 1.0)"
        )


# --- the stage ---------------------------------------------------------------------------------------


def to_device(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    """numpy arrays from the prepared folder as tensors on `device`."""
    return [torch.from_numpy(a).to(device) for a in arrays]


def best_epoch(history: Sequence[EpochRecord]) -> int:
    """The first epoch with the highest val accuracy: the one early stopping keeps."""
    return max(history, key=lambda r: r.val_accuracy).epoch


def write_history(path: str | Path, history: Sequence[EpochRecord], best: int | None = None) -> None:
    """The learning curve as CSV, one row per epoch (DVC plots it with x = epoch).

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
    atomic.write_text(path, buf.getvalue())


def train(params: Params, variant: str, prepared: str | Path, model_path: str | Path,
          log_path: str | Path) -> list[EpochRecord]:
    """Train on `variant` with the params' optimizer; write the model and the per-epoch log."""
    params.variant(variant)
    pre = load_preprocessing(prepared)  # the model file carries it
    device = resolve_device(params.train.device)
    x, y = to_device(device, *load_variant(prepared, variant))
    val_x, val_y = to_device(device, *load_split(prepared, "val"))
    model, history = fit(x, y, val_x, val_y, params.train, params.optimizer, params.lr, params.seed)
    model.to_model(pre).save(model_path)
    # Only with early stopping are the saved weights the best epoch's rather than the last's.
    write_history(log_path, history, best_epoch(history) if params.train.patience > 0 else None)
    return history

"""mnistlr.train: the model, its criteria, the optimizers and schedules, fit (SGD, Adam, L-BFGS)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from mnistlr import metrics
from mnistlr.data import MD5SUMS_ENV, MIRROR_ENV, derive_seed
from mnistlr.errors import MnistlrError
from mnistlr.params import PER_MODEL_KEYS, TrainParams, group_key, parse_params
from mnistlr.train import (
    STRIDE,
    Batch,
    Diverged,
    LogisticRegression,
    OneHotMSELoss,
    Optimizer,
    add_penalties,
    best_epoch,
    fit,
    fit_models,
    gradient,
    initial_parameters,
    lr_schedule,
    make_criterion,
    objective_value,
    per_model_column,
    predict_logits,
    regularized_objective,
    resolve_device,
    score,
    scores,
    train_grid,
    train_variants,
    with_ones,
)
from tests.conftest import REPO


def blobs(n: int = 600, seed: int = 0, spread: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """n points around 10 fixed class centres in 784 dimensions: separable, learnt in an epoch."""
    centers = torch.randn(10, 784, generator=torch.Generator().manual_seed(123)) * spread
    y = torch.arange(n) % 10
    return centers[y] + torch.randn(n, 784, generator=torch.Generator().manual_seed(seed)), y


# --- the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 28, 28), (5, 784), (5, 1, 28, 28)])
def test_output_is_batch_by_10_from_images_or_flat_vectors(shape):
    model = LogisticRegression()
    assert model(torch.randn(shape)).shape == (5, 10)


def test_forward_returns_raw_logits_not_probabilities():
    torch.manual_seed(0)
    model = LogisticRegression()
    x = torch.randn(8, 784) * 5
    logits = model(x)
    assert torch.allclose(logits, x @ model.fc.weight.T + model.fc.bias, atol=1e-5)
    assert not torch.allclose(logits.sum(1), torch.ones(8))  # no softmax inside
    assert (logits < 0).any()


def test_prediction_uses_eval_mode_without_grad_and_score_is_metrics():
    model = LogisticRegression().train()
    seen = {}

    def hook(module, inputs, output):
        seen["training"], seen["grad"] = module.training, torch.is_grad_enabled()

    model.register_forward_hook(hook)
    x, y = torch.randn(10, 784), torch.randint(0, 10, (10,))
    logits = predict_logits(model, x)
    assert seen == {"training": False, "grad": False} and not logits.requires_grad
    assert model.training  # restored afterwards
    loss, acc = score(model, x, y)
    assert acc == float((logits.argmax(dim=1) == y).float().mean())
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits.double(), y)), abs=1e-6)


# --- criteria and the objective ------------------------------------------------------------------


def test_ce_criterion_is_cross_entropy_on_raw_logits_by_hand():
    logits = torch.tensor([[2.0, 0.0] + [0.0] * 8, [0.0, 1.0] + [0.0] * 8])
    y = torch.tensor([0, 0])
    p0, p1 = math.exp(2) / (math.exp(2) + 9), 1 / (math.e + 9)  # softmax probability of the true class
    loss = make_criterion("ce")(logits, y)
    assert float(loss) == pytest.approx(-(math.log(p0) + math.log(p1)) / 2, rel=1e-6)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_the_written_out_gradient_is_autograds_for_every_model_of_a_batch(loss):
    """gradient() for K = 2 models with their own labels: each model's block is the autograd gradient of
    its criterion, and the per-example scores are its cross-entropy and correctness."""
    x, y = blobs(48, spread=0.3)
    y2 = (y + 3) % 10
    torch.manual_seed(0)
    models = [LogisticRegression(), LogisticRegression()]
    theta = torch.cat([torch.cat([m.fc.weight.detach(), m.fc.bias.detach()[:, None]], 1) for m in models])
    labels = torch.stack([y, y2])
    out, batch = torch.empty_like(theta), Batch.of(with_ones(x), labels)
    gradient(theta, batch, loss, out)
    nll, predicted = batch.nll, batch.predicted
    for i, (model, labels_i) in enumerate(zip(models, labels, strict=True)):
        make_criterion(loss)(model(x), labels_i).backward()
        block = out[10 * i : 10 * (i + 1)]
        torch.testing.assert_close(block[:, :784], model.fc.weight.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(block[:, 784], model.fc.bias.grad, atol=1e-6, rtol=1e-5)
        logits = model(x).detach()
        torch.testing.assert_close(
            -nll[i, 0], nn.functional.cross_entropy(logits, labels_i, reduction="none"), atol=1e-5, rtol=1e-5
        )
        assert torch.equal(predicted[i], logits.argmax(1))


def test_penalties_add_each_models_l1_sign_to_its_weights_and_clip_each_model_to_its_norm():
    torch.manual_seed(0)
    theta = torch.zeros(20, STRIDE)
    theta[:, :785] = torch.randn(20, 785)
    theta[0, 0] = 0.0  # sign(0) = 0, as autograd's abs
    grad = torch.zeros(20, STRIDE)
    grad[:, :785] = torch.randn(20, 785) * 10
    before = grad.clone()
    add_penalties(grad, theta, per_model_column([1e-3, 1e-2], torch.device("cpu")), 0.0, 2)
    l1 = torch.tensor([1e-3] * 10 + [1e-2] * 10)[:, None]
    torch.testing.assert_close(grad[:, :784] - before[:, :784], l1 * torch.sign(theta[:, :784]))
    assert torch.equal(grad[:, 784:], before[:, 784:]) and grad[0, 0] == before[0, 0]  # no penalty on the bias
    add_penalties(grad, theta, None, 1.0, 2)
    norms = grad.view(2, -1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(2), atol=1e-5)  # each model clipped to its own norm 1
    small = torch.full((10, STRIDE), 1e-4)
    add_penalties(small, theta[:10], None, 1.0, 1)
    assert torch.equal(small, torch.full((10, STRIDE), 1e-4))  # under the norm: untouched


def test_mse_gradient_is_least_squares_on_one_hot():
    x, y = blobs(64, spread=0.3)
    torch.manual_seed(0)
    model = LogisticRegression()
    criterion = make_criterion("mse")
    assert isinstance(criterion, OneHotMSELoss)
    loss = criterion(model(x), y)
    loss.backward()
    t = torch.nn.functional.one_hot(y, 10).float()
    residual = model(x).detach() - t  # [N, 10]
    assert torch.allclose(model.fc.weight.grad, residual.T @ x / len(x), atol=1e-5)
    assert torch.allclose(model.fc.bias.grad, residual.mean(0), atol=1e-6)
    assert float(loss.detach()) == pytest.approx(0.5 * float(residual.pow(2).sum(1).mean()), rel=1e-6)


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(MnistlrError, match=r"^train\.loss = 'hinge' is not accepted; accepted: ce, mse$"):
        make_criterion("hinge")


def test_weight_decay_term_matches_sgd_weight_decay():
    # SGD's weight_decay adds wd * W to the gradient: the gradient of wd / 2 * ||W||^2
    x, y = blobs(32)
    torch.manual_seed(0)
    m = LogisticRegression()
    regularized_objective(m, make_criterion("ce"), x, y, 0.0, 0.5).backward()
    g_reg, b_reg = m.fc.weight.grad.clone(), m.fc.bias.grad.clone()
    m.zero_grad()
    make_criterion("ce")(m(x), y).backward()
    assert torch.allclose(g_reg - m.fc.weight.grad, 0.5 * m.fc.weight.detach(), atol=1e-6)
    assert torch.equal(b_reg, m.fc.bias.grad)  # the bias is not penalized


def test_objective_value_adds_both_penalties():
    x, y = blobs(32)
    torch.manual_seed(0)
    m = LogisticRegression()
    w = m.fc.weight.detach()
    plain = objective_value(m, x, y, "ce")
    full = objective_value(m, x, y, "ce", l1=1e-3, weight_decay=0.1)
    assert full - plain == pytest.approx(1e-3 * float(w.abs().sum()) + 0.05 * float(w.pow(2).sum()), rel=1e-4)


# --- optimizers and schedules ---------------------------------------------------------------------


def reference_fit(x, y, cfg: TrainParams, optimizer: str, lr: float, seed: int):
    """The same training as `fit` through nn.Linear, the criterion, autograd and torch.optim's own classes
    (same initial weights, batch order and schedule): (model, the running mean loss and accuracy of each epoch)."""
    torch.manual_seed(seed)
    model = LogisticRegression()
    groups = [
        {"params": [model.fc.weight], "weight_decay": cfg.weight_decay},
        {"params": [model.fc.bias], "weight_decay": 0.0},
    ]  # L2 on the weights only
    opt = (
        torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum) if optimizer == "sgd" else torch.optim.Adam(groups, lr=lr)
    )
    criterion = make_criterion(cfg.loss)
    n, bs = len(x), cfg.batch_size
    steps = math.ceil(n / bs)
    rates = lr_schedule(cfg.schedule, lr, cfg.epochs * steps)
    order = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    t, curve = 0, []
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=order)
        xs, ys = x[perm], y[perm]
        seen_loss, seen_correct = 0.0, 0
        for s in range(steps):
            for group in opt.param_groups:
                group["lr"] = rates[t]
            t += 1
            xb, yb = xs[s * bs : (s + 1) * bs], ys[s * bs : (s + 1) * bs]
            opt.zero_grad()
            logits = model(xb)
            loss = criterion(logits, yb)
            if cfg.l1:
                loss = loss + cfg.l1 * model.fc.weight.abs().sum()
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            seen_loss += float(nn.functional.cross_entropy(logits.detach().double(), yb, reduction="sum"))
            seen_correct += int((logits.argmax(1) == yb).sum())
        curve.append((seen_loss / n, seen_correct / n))
    return model, curve


# Every feature of the trainer against torch.optim and autograd on the same batches. Tolerance: the
# products run in another order than autograd's, so float32 weights after 3 epochs of 19 steps agree to
# 2e-6; with L1, a weight that rounds to the other side of 0 takes lr * l1 the other way: 2e-5.
TRAINER_CASES = {
    "sgd": ("sgd", 0.1, {}),
    "sgd-momentum-l2-clip": ("sgd", 0.1, dict(momentum=0.9, weight_decay=1e-2, grad_clip=1.0)),
    "sgd-l1": ("sgd", 0.1, dict(l1=1e-3, schedule="constant")),
    "adam-l2": ("adam", 1e-2, dict(weight_decay=1e-2)),
    "adam-l1-clip": ("adam", 1e-3, dict(l1=1e-4, grad_clip=0.5, schedule="constant")),
    "mse": ("sgd", 0.003, dict(loss="mse")),
}


@pytest.mark.parametrize("case", TRAINER_CASES)
def test_fit_makes_the_updates_of_autograd_and_torch_optim(case):
    optimizer, lr, extra = TRAINER_CASES[case]
    x, y = blobs(600)
    x = x * 3  # big enough inputs that clipping binds
    cfg = TrainParams(epochs=3, batch_size=32, **extra)  # 600 = 18 batches of 32 and one of 24
    ours, history = fit(x, y, x[:50], y[:50], cfg, optimizer, lr, seed=3)
    ref, curve = reference_fit(x, y, cfg, optimizer, lr, seed=3)
    start = initial_parameters(3)
    assert (ours.fc.weight - start[:, :784]).abs().max() > 1e-2  # the steps did move the weights
    atol = 2e-5 if cfg.l1 else 2e-6
    torch.testing.assert_close(ours.fc.weight, ref.fc.weight, atol=atol, rtol=1e-5)
    torch.testing.assert_close(ours.fc.bias, ref.fc.bias, atol=atol, rtol=1e-5)
    # the logged training scores are the running means over each epoch's batches, before each update
    for record, (loss, accuracy) in zip(history, curve, strict=True):
        assert record.train_loss == pytest.approx(loss, abs=1e-5) and record.train_accuracy == accuracy


def test_models_trained_together_are_bit_identical_to_each_trained_alone():
    """fit_models with K label sets: each model's weights and curve are exactly those of training it alone,
    whatever it trains beside (so adding a variant never changes another's results)."""
    x, y = blobs(300)
    labels = torch.stack([y, (y + 1) % 10, torch.flip(y, [0])])
    for optimizer, lr in (("sgd", 0.1), ("adam", 1e-2)):
        cfg = TrainParams(epochs=2, batch_size=32, momentum=0.9 if optimizer == "sgd" else 0.0, weight_decay=1e-3)
        together = fit_models(x, labels, x[:40], y[:40], cfg, optimizer, [lr] * 3, seed=1)
        for i, one in enumerate(together):
            (alone,) = fit_models(x, labels[i : i + 1], x[:40], y[:40], cfg, optimizer, [lr], seed=1)
            assert torch.equal(one.model.fc.weight, alone.model.fc.weight), (optimizer, i)
            assert torch.equal(one.model.fc.bias, alone.model.fc.bias) and one.history == alone.history


def test_rows_select_the_training_inputs_without_a_copy_and_train_as_the_subset():
    x, y = blobs(200)
    rows = torch.randperm(200, generator=torch.Generator().manual_seed(5))[:120]
    cfg = TrainParams(epochs=2, batch_size=16)
    (by_rows,) = fit_models(x, y[rows][None], x[:20], y[:20], cfg, "sgd", [0.1], seed=0, rows=rows)
    subset, _ = fit(x[rows], y[rows], x[:20], y[:20], cfg, "sgd", 0.1, seed=0)
    assert torch.equal(by_rows.model.fc.weight, subset.fc.weight)


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(MnistlrError, match=r"optimizer 'rmsprop' is not accepted here; accepted: sgd, adam"):
        Optimizer(torch.zeros(10, STRIDE), "rmsprop", [0.1])
    x, y = blobs(20)
    with pytest.raises(MnistlrError, match=r"^optimizer 'rmsprop' is not accepted; accepted: sgd, adam, lbfgs$"):
        fit(x, y, x, y, TrainParams(epochs=1), "rmsprop", 0.1, seed=0)


def test_params_pick_the_learning_rate_of_the_chosen_optimizer():
    assert parse_params({"optimizer": "sgd"}).lr == 0.1
    assert parse_params({"optimizer": "adam"}).lr == 1e-3
    assert parse_params({"optimizer": "adam", "train": {"lr": {"adam": 0.02}}}).lr == 0.02
    p = parse_params({"optimizer": "lbfgs", "train": {"loss": "mse", "lbfgs_iters": 5, "lr": {"lbfgs": 0.5}}})
    assert p.lr == 0.5 and p.train.loss == "mse" and p.train.lbfgs_iters == 5
    with pytest.raises(MnistlrError, match="train.loss = 'hinge' is not accepted; accepted: 'ce' or 'mse'"):
        parse_params({"train": {"loss": "hinge"}})
    with pytest.raises(MnistlrError, match="optimizer = 'newton' is not accepted"):
        parse_params({"optimizer": "newton"})


def test_the_one_private_torch_call_is_torch_optims_fused_adam():
    """fused_adam_step wraps torch's private fused Adam kernel: three steps of it on two blocks (one shared step
    counter) are bit for bit those of torch.optim.Adam(fused=True) on the same tensors. A torch release that
    renames, re-signs or changes the kernel fails here, by name."""
    from mnistlr.train import fused_adam_step

    torch.manual_seed(0)
    blocks = [torch.randn(10, 785), torch.randn(10, 785)]
    grads = [[torch.randn(10, 785) for _ in blocks] for _ in range(3)]
    ours = [b.clone() for b in blocks]
    moments = [[torch.zeros_like(b) for b in blocks] for _ in range(2)]
    step = torch.zeros(())
    ref = [b.clone().requires_grad_() for b in blocks]
    opt = torch.optim.Adam(ref, lr=0.01, fused=True)
    try:
        for g in grads:
            step.add_(1)
            fused_adam_step(ours, g, *moments, step, lr=0.01)
            for p, gi in zip(ref, g, strict=True):
                p.grad = gi.clone()
            opt.step()
    except (AttributeError, TypeError, RuntimeError) as exc:
        pytest.fail(
            f"torch {torch.__version__} changed torch._fused_adam_ ({type(exc).__name__}: {exc}); "
            "mnistlr.train.fused_adam_step must follow it, or give way to the public tensor math"
        )
    for mine, theirs in zip(ours, ref, strict=True):
        assert torch.equal(mine, theirs.detach()), (
            f"torch {torch.__version__}: fused_adam_step no longer makes torch.optim.Adam(fused=True)'s update; "
            "check torch._fused_adam_'s arguments in mnistlr.train.fused_adam_step"
        )
    assert not torch.equal(ours[0], blocks[0])


def test_l2_weight_decay_adds_lambda_times_w_to_the_weight_step_only():
    torch.manual_seed(0)
    theta, grad = torch.randn(10, STRIDE), torch.randn(10, STRIDE)
    plain, decayed = theta.clone(), theta.clone()
    for params, decay in ((plain, 0.0), (decayed, 0.1)):
        opt = Optimizer(params, "sgd", [1.0], weight_decays=[decay])
        rates, _ = opt.rates([1.0], 1)
        opt.step(grad.clone(), rates[0], None, 1.0)
    # SGD with lr 1: w' = w - (g + wd * w); the bias column gets b' = b - g
    torch.testing.assert_close(plain[:, :784] - decayed[:, :784], 0.1 * theta[:, :784])
    assert torch.equal(plain[:, 784], decayed[:, 784])


def test_cosine_schedule_matches_torch_cosine_annealing():
    total = 10 * 782  # the default params' steps: 10 epochs of 50k images in batches of 64
    rates = lr_schedule("cosine", 0.1, total)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    expected = [sched.get_last_lr()[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": no step is needed here
        for _ in range(total):
            sched.step()
            expected.append(sched.get_last_lr()[0])
    assert len(rates) == total + 1
    assert max(abs(a - b) for a, b in zip(rates, expected, strict=True)) < 1e-12
    assert rates[0] == 0.1 and rates[-1] == pytest.approx(0.0, abs=1e-15)


def test_constant_schedule_is_constant():
    assert lr_schedule("constant", 0.05, 37) == [0.05] * 38


def test_fit_logs_the_scheduled_rate_after_each_epoch():
    x, y = blobs(100)
    _, cos = fit(x, y, x, y, TrainParams(epochs=2, batch_size=10, schedule="cosine"), "sgd", 0.1, 0)
    _, const = fit(x, y, x, y, TrainParams(epochs=2, batch_size=10, schedule="constant"), "sgd", 0.1, 0)
    assert cos[0].lr == pytest.approx(0.05, abs=1e-12)  # halfway through the cosine
    assert math.isclose(cos[-1].lr, 0.0, abs_tol=1e-12) and [h.lr for h in const] == [0.1, 0.1]


# One process: the dynamo modules loaded after the trainer's fit (SGD and Adam with every feature), then
# after one step of torch.optim.SGD, which imports torch._dynamo (seconds per process): why Optimizer exists,
# and the proof that the probe sees an import when one happens.
DYNAMO_PROBE = """
import sys, torch
from mnistlr.params import TrainParams
from mnistlr.train import fit
dynamo = lambda: sorted(m for m in sys.modules if m.startswith("torch._dynamo"))
x, y = torch.randn(64, 784), torch.arange(64) % 10
for opt, lr in (("sgd", 0.1), ("adam", 1e-3)):
    cfg = TrainParams(epochs=2, batch_size=16, momentum=0.9, weight_decay=1e-4, grad_clip=1.0, patience=1, device="cpu")
    fit(x, y, x, y, cfg, opt, lr, seed=0)
print("after fit:", dynamo())
m = torch.nn.Linear(2, 2)
step = torch.optim.SGD(m.parameters(), lr=0.1)
m(torch.ones(1, 2)).sum().backward()
step.step()
print("after torch.optim:", dynamo())
"""


def test_training_never_imports_torch_dynamo_and_torch_optim_does():
    # the repo first, then whatever the caller had (where dependencies were installed with --target)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-c", DYNAMO_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    after_fit, after_optim = proc.stdout.strip().splitlines()[-2:]
    assert after_fit == "after fit: []"
    assert "'torch._dynamo'" in after_optim, after_optim


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MnistlrError, match="device 'tpu' is not accepted; accepted: auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(MnistlrError, match="train.device = 'cuda' but no CUDA device is available"):
            resolve_device("cuda")


# --- fit: SGD and Adam ---------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 1e-2)])
def test_fit_learns_and_logs_every_epoch(optimizer, lr):
    x, y = blobs()
    vx, vy = blobs(200, seed=1)
    cfg = TrainParams(epochs=3, batch_size=32)
    model, history = fit(x, y, vx, vy, cfg, optimizer, lr, seed=0)
    assert [h.epoch for h in history] == [1, 2, 3]
    assert history[-1].val_accuracy > 0.9
    assert history[-1].train_loss < history[0].train_loss or history[0].train_accuracy > 0.99
    assert not model.training
    loss, acc = score(model, vx, vy)
    assert (history[-1].val_loss, history[-1].val_accuracy) == (loss, acc)  # the log scores the returned model


def test_fit_is_deterministic_for_a_seed_and_changes_with_it():
    x, y = blobs()
    cfg = TrainParams(epochs=2, batch_size=50)
    a, ha = fit(x, y, x, y, cfg, "sgd", 0.05, seed=1)
    b, hb = fit(x, y, x, y, cfg, "sgd", 0.05, seed=1)
    c, _ = fit(x, y, x, y, cfg, "sgd", 0.05, seed=2)
    assert torch.equal(a.fc.weight, b.fc.weight) and ha == hb
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_divergence_names_the_epoch_and_the_remedies():
    x, y = blobs(200)
    with pytest.raises(
        MnistlrError,
        match=r"training diverged: the training loss became (nan|inf) at epoch 1 with "
        r"train\.lr\.sgd = 10000\.0; lower the learning rate or set train\.grad_clip",
    ):
        fit(x * 1e30, y, x, y, TrainParams(epochs=1, batch_size=20, schedule="constant"), "sgd", 1e4, 0)


# --- fit: L-BFGS ---------------------------------------------------------------------------------


def test_mse_training_matches_exact_least_squares():
    x, y = blobs(600, spread=0.3)
    cfg = TrainParams(epochs=30, loss="mse", device="cpu", lbfgs_iters=100)
    model, _ = fit(x, y, x, y, cfg, "lbfgs", 1.0, 0)
    a = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    sol = torch.linalg.lstsq(a, torch.nn.functional.one_hot(y, 10).double()).solution
    exact = LogisticRegression()
    with torch.no_grad():
        exact.fc.weight.copy_(sol[:-1].T.float())
        exact.fc.bias.copy_(sol[-1].float())
    assert objective_value(model, x, y, "mse") == pytest.approx(objective_value(exact, x, y, "mse"), abs=1e-3)


def test_lbfgs_beats_one_epoch_sgd_on_the_same_objective():
    x, y = blobs(600)
    wd = 1e-3
    sgd, _ = fit(x, y, x, y, TrainParams(epochs=1, weight_decay=wd, device="cpu"), "sgd", 0.1, 0)
    lb, hist = fit(x, y, x, y, TrainParams(epochs=2, lbfgs_iters=100, weight_decay=wd, device="cpu"), "lbfgs", 1.0, 0)
    f_sgd, f_lb = objective_value(sgd, x, y, "ce", 0, wd), objective_value(lb, x, y, "ce", 0, wd)
    assert f_lb < f_sgd
    # at the optimum the gradient of the regularized objective vanishes
    lb.zero_grad()
    regularized_objective(lb, make_criterion("ce"), x, y, 0.0, wd).backward()
    assert float(lb.fc.weight.grad.abs().max()) < 1e-3
    assert len(hist) == 2 and hist[-1].train_accuracy > 0.9 and not lb.training


def test_lbfgs_refuses_gradient_clipping_in_one_line():
    x, y = blobs(50)
    with pytest.raises(MnistlrError) as info:
        fit(x, y, x, y, TrainParams(epochs=1, grad_clip=1.0), "lbfgs", 1.0, seed=0)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg == (
        "train.grad_clip = 1.0 does not apply to optimizer lbfgs (its line search sets each step's length); "
        "accepted with lbfgs: 0"
    )


def test_lbfgs_patience_stops_early_and_keeps_the_best_epochs_weights():
    x, y = blobs(200)
    # One validation image, classified right after epoch 1: no later epoch can do strictly better.
    vx, vy = x[:1], y[:1]
    cfg = dict(lbfgs_iters=5, device="cpu")
    model, history = fit(x, y, vx, vy, TrainParams(epochs=20, patience=2, **cfg), "lbfgs", 1.0, seed=0)
    assert [h.epoch for h in history] == [1, 2, 3] and history[0].val_accuracy == 1.0
    one, _ = fit(x, y, vx, vy, TrainParams(epochs=1, **cfg), "lbfgs", 1.0, seed=0)
    three, _ = fit(x, y, vx, vy, TrainParams(epochs=3, **cfg), "lbfgs", 1.0, seed=0)
    assert torch.equal(model.fc.weight, one.fc.weight)  # epoch 1's weights were restored...
    assert not torch.equal(model.fc.weight, three.fc.weight)  # ...not the last epoch's


def test_validation_scores_are_what_metrics_computes_on_the_returned_model():
    x, y = blobs(100)
    model, history = fit(x, y, x, y, TrainParams(epochs=1, batch_size=25), "sgd", 0.1, seed=0)
    logits = predict_logits(model, x).numpy()
    assert history[0].val_loss == pytest.approx(metrics.cross_entropy(logits, y.numpy()), abs=1e-6)
    assert history[0].val_accuracy == float(np.mean(logits.argmax(1) == y.numpy()))


# --- batched training (the studies' grids) ---------------------------------------------------------


@pytest.mark.parametrize("optimizer,rates", [("adam", [0.001, 0.005, 0.02]), ("sgd", [0.1, 0.05, 0.3])])
def test_batched_models_train_as_each_would_alone(optimizer, rates):
    from mnistlr.train import fit_batched

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(700, 784, generator=g), torch.randint(0, 10, (700,), generator=g)  # 700: a short last batch
    cfg = TrainParams(epochs=2, batch_size=128, device="cpu")
    decays, l1s = [0.0, 1e-3, 1e-2], [1e-3, 0.0, 1e-4]
    models = fit_batched(x, y, cfg, optimizer, rates, decays, seed=3, l1s=l1s)
    for model, lr, wd, l1 in zip(models, rates, decays, l1s, strict=True):
        alone, _ = fit(x, y, x[:10], y[:10], cfg.model_copy(update={"weight_decay": wd, "l1": l1}), optimizer, lr, 3)
        assert torch.equal(model.fc.weight, alone.fc.weight) and torch.equal(model.fc.bias, alone.fc.bias)
    assert not torch.equal(models[0].fc.weight, models[1].fc.weight)  # each its own lr, weight decay and L1


@contextmanager
def torch_threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def same_fit(a, b) -> bool:
    """Bit for bit the same weights and bias, and the same learning curve."""
    return (
        torch.equal(a.model.fc.weight, b.model.fc.weight)
        and torch.equal(a.model.fc.bias, b.model.fc.bias)
        and a.history == b.history
    )


# Everything a batched program shares (cfg), with models that differ in learning rate, weight decay and L1.
IDENTITY_CASES = {
    "sgd-momentum-clip-cosine": ("sgd", [0.1, 0.05, 0.2, 0.1, 0.03, 0.1, 0.07, 0.3], dict(momentum=0.9, grad_clip=1.0)),
    "sgd-mse-constant": (
        "sgd",
        [2e-3, 1e-3, 3e-3, 2e-3, 5e-4, 1e-3, 2e-3, 3e-3],
        dict(loss="mse", schedule="constant"),
    ),
    "adam-clip-cosine": ("adam", [1e-2, 3e-3, 1e-2, 2e-2, 1e-3, 5e-3, 1e-2, 3e-2], dict(grad_clip=0.5)),
    "adam-mse-constant": (
        "adam",
        [1e-3, 3e-3, 1e-3, 2e-3, 5e-4, 1e-3, 2e-3, 3e-4],
        dict(loss="mse", schedule="constant"),
    ),
}


@pytest.mark.parametrize("k", [3, 8])
@pytest.mark.parametrize("case", IDENTITY_CASES)
def test_each_model_of_a_batch_is_bit_for_bit_the_model_trained_alone(case, k):
    """K models on shared batches, each its own learning rate, weight decay and L1: every model, at every
    position, has exactly the weights and learning curve it gets trained alone, at one or two torch threads.
    257 images in batches of 32: the last batch holds a single image."""
    optimizer, rates, extra = IDENTITY_CASES[case]
    x, y = blobs(257)
    x = x * 2  # inputs large enough that clipping binds
    labels = torch.stack([torch.roll(y, i) for i in range(k)])  # each model its own labels
    decays, l1s = [0.0, 1e-3, 1e-2, 0.0, 1e-4, 0.0, 3e-3, 1e-3][:k], [0.0, 0.0, 1e-4, 1e-3, 0.0, 1e-5, 0.0, 1e-4][:k]
    cfg = TrainParams(epochs=2, batch_size=32, **extra)
    args = (x[:40], y[:40], cfg, optimizer)
    for threads in (1, 2):
        with torch_threads(threads):
            together = fit_models(x, labels, *args, rates[:k], decays, l1s, seed=1)
        for i in range(k):
            with torch_threads(2 - i % 2):
                (alone,) = fit_models(x, labels[i : i + 1], *args, [rates[i]], [decays[i]], [l1s[i]], seed=1)
            assert same_fit(together[i], alone), (threads, i)
    assert not torch.equal(together[0].model.fc.weight, together[1].model.fc.weight)


def test_models_split_into_many_programs_train_as_in_one(monkeypatch):
    """Eight models as programs of at most three (several per thread) are the bits of one program."""
    from mnistlr import train as trainer

    x, y = blobs(200)
    labels = torch.stack([torch.roll(y, i) for i in range(8)])
    cfg = TrainParams(epochs=2, batch_size=32, momentum=0.9)
    args = (x, labels, x[:30], y[:30], cfg, "sgd", [0.1, 0.2, 0.05, 0.1, 0.3, 0.1, 0.02, 0.1])
    with torch_threads(1):
        one = fit_models(*args, weight_decays=[0, 1e-3] * 4)
    monkeypatch.setattr(trainer, "PROGRAM_MODELS", 3)
    with torch_threads(2):
        many = fit_models(*args, weight_decays=[0, 1e-3] * 4)
    assert all(same_fit(a, b) for a, b in zip(one, many, strict=True))


@pytest.mark.parametrize("b", [1, 2, 20, 64])
def test_a_models_products_are_the_same_bits_beside_any_number_of_models(b):
    """What batched training rests on: on one thread, a model's gradient, logits and scores are the same bits
    whether it is multiplied alone or as any row block of 2 to 120 models, at any position (the BLAS might block
    the product by its number of rows; this one does not). A batch of one input takes the padded path
    (with_ones); the validation set of 1100 inputs goes through scores in two chunks, the second of 76."""
    torch.manual_seed(0)
    theta = torch.randn(1200, STRIDE)[:, :785] * 0.1  # 120 models, laid out as in training
    xp, labels = with_ones(torch.randn(b, 784)), torch.randint(0, 10, (120, b))
    val_xp, val_y = with_ones(torch.randn(1100, 784)), torch.randint(0, 10, (1100,))

    def products(lo: int, k: int):
        out, batch = torch.zeros(k * 10, STRIDE)[:, :785], Batch.of(xp, labels[lo : lo + k])
        block = theta[lo * 10 : (lo + k) * 10]
        gradient(block, batch, "ce", out)
        return out, batch.nll, batch.predicted, scores(block, val_xp, val_y)

    with torch_threads(1):
        alone = [products(i, 1) for i in range(120)]
        for k in (2, 3, 5, 8, 16, 24, 40, 120):
            for lo in sorted({0, 1, 7, 120 - k} - set(range(121 - k, 121))):
                out, nll, predicted, found = products(lo, k)
                for i in range(k):
                    grad, nll_i, predicted_i, found_i = alone[lo + i]
                    assert torch.equal(out[i * 10 : (i + 1) * 10], grad), (k, lo, i)
                    assert torch.equal(nll[i], nll_i[0]) and torch.equal(predicted[i], predicted_i[0])
                    assert found[i] == found_i[0]


def test_each_model_stops_on_its_own_patience_as_it_would_alone():
    x, y = blobs(300)
    vx, vy = x[:20], y[:20]  # all right from an early epoch on: no later epoch can do strictly better
    cfg = TrainParams(epochs=8, batch_size=50, schedule="constant")
    patiences, rates = [0, 1, 3], [0.1, 0.05, 0.1]
    together = fit_models(x, y.expand(3, -1), vx, vy, cfg, "sgd", rates, patiences=patiences, seed=0)
    for i, (patience, lr) in enumerate(zip(patiences, rates, strict=True)):
        alone, history = fit(x, y, vx, vy, cfg.model_copy(update={"patience": patience}), "sgd", lr, seed=0)
        assert torch.equal(together[i].model.fc.weight, alone.fc.weight) and together[i].history == history
    assert [len(f.history) for f in together] == [
        8,
        best_epoch(together[1].history) + 1,
        best_epoch(together[2].history) + 3,
    ]


def test_a_diverging_model_is_reported_alone_and_the_others_train_on():
    x, y = blobs(200)
    cfg = TrainParams(epochs=2, batch_size=20)
    rates = [0.1, 1e38, 0.05]  # the second overflows float32 in its first steps
    together = fit_models(x, y.expand(3, -1), x[:20], y[:20], cfg, "sgd", rates, on_divergence="report")
    assert together[1].model is None and together[1].history == []
    assert together[1].error == (
        "training diverged: the training loss became nan at epoch 1 with train.lr.sgd = 1e+38; "
        "lower the learning rate or set train.grad_clip (e.g. 1.0)"
    )
    for i in (0, 2):
        (alone,) = fit_models(x, y[None], x[:20], y[:20], cfg, "sgd", [rates[i]])
        assert together[i].error is None and same_fit(together[i], alone)
    with pytest.raises(Diverged, match=r"^training diverged: .* train\.lr\.sgd = 1e\+38;"):
        fit_models(x, y.expand(3, -1), x[:20], y[:20], cfg, "sgd", rates)


def test_batched_training_refuses_what_it_cannot_do():
    from mnistlr.train import batchable, fit_batched

    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    cfg = TrainParams(device="cpu", patience=2)
    assert not batchable(cfg, "adam")
    with pytest.raises(MnistlrError, match="batched training takes sgd or adam without patience"):
        fit_batched(x, y, cfg, "adam", [0.001], [0.0], 0)
    assert not batchable(TrainParams(), "lbfgs") and batchable(TrainParams(momentum=0.9, l1=1e-4), "sgd")


# --- grids of points (train_grid) ----------------------------------------------------------------------


def test_group_key_separates_what_one_pass_cannot_vary():
    base = parse_params({})
    key = group_key(base)
    per_model = {"train": {"lr": {"sgd": 0.5}, "weight_decay": 1e-5, "l1": 1e-6, "patience": 2}}
    unread = [{"train": {"lr": {"adam": 0.01}}}, {"evaluate": {"ece_bins": 10}}, {"report": {"top_confusions": 3}}]
    assert PER_MODEL_KEYS == ("lr", "weight_decay", "l1", "patience")
    assert all(group_key(parse_params(raw)) == key for raw in [per_model, *unread])
    shared = [
        {"seed": 1},
        {"optimizer": "adam"},
        {"data": {"deskew": True}},
        {"variants": {"full": {}, "half": {"fraction": 0.5}}},
        {"train": {"batch_size": 32}},
        {"train": {"epochs": 3}},
        {"train": {"momentum": 0.9}},
        {"train": {"schedule": "constant"}},
        {"train": {"loss": "mse"}},
        {"train": {"grad_clip": 1.0}},
    ]
    assert all(group_key(parse_params(raw)) != key for raw in shared)


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory, synthetic_mirror):
    """A prepared folder of the synthetic mirror: 1000 training images, variants full, half (a subset) and
    noisy (full's images, other labels)."""
    from mnistlr.prepare import prepare

    raw = {
        "data": {"val_size": 200},
        "variants": {"full": {}, "half": {"fraction": 0.5}, "noisy": {"noise": 0.2}},
        "train": {"epochs": 2, "batch_size": 64},
    }
    folder = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MIRROR_ENV, str(synthetic_mirror))
        mp.setenv(MD5SUMS_ENV, str(synthetic_mirror / "MD5SUMS"))
        prepare(parse_params(raw), folder / "prepared", folder / "raw")
    return raw, folder / "prepared"


def test_a_grid_trains_in_one_pass_and_writes_each_points_files_as_training_it_alone(small_prepared, tmp_path):
    """Four points differing in every per-model key: each point's models and curves from the grid are byte for
    byte the files `train` writes for that point alone, at another thread count."""
    from mnistlr.data import load_preprocessing
    from mnistlr.train import save_fitted, train

    raw, prepared = small_prepared
    grid = [(0.1, 0.0, 0.0, 0), (0.2, 1e-4, 0.0, 0), (0.05, 0.0, 1e-5, 1), (0.1, 1e-5, 1e-6, 0)]
    points = [
        parse_params({**raw, "train": {**raw["train"], "lr": {"sgd": lr}, "weight_decay": wd, "l1": l1, "patience": p}})
        for lr, wd, l1, p in grid
    ]
    with torch_threads(1):  # one program per set of images
        fitted = train_grid(points, prepared)
    pre = load_preprocessing(prepared)
    for i, (point, variants) in enumerate(zip(points, fitted, strict=True)):
        assert list(variants) == ["full", "half", "noisy"]
        alone = tmp_path / f"alone{i}"
        with torch_threads(2):  # full and noisy as two programs, half beside them on its own thread
            train(point, prepared, alone / "models", alone / "curves")
        together = tmp_path / f"together{i}"
        save_fitted(point, variants, pre, together / "models", together / "curves")
        for name in variants:
            for sub, suffix in (("models", "npz"), ("curves", "csv")):
                a, b = (root / sub / f"{name}.{suffix}" for root in (alone, together))
                assert a.read_bytes() == b.read_bytes(), (i, name, sub)
    assert (tmp_path / "together0/models/full.npz").read_bytes() != (
        tmp_path / "together1/models/full.npz"
    ).read_bytes()
    one = train_variants(points[1], prepared)
    assert torch.equal(one["noisy"][0].fc.weight, fitted[1]["noisy"].model.fc.weight)


def test_a_grid_refuses_points_that_cannot_share_a_pass(small_prepared):
    raw, prepared = small_prepared
    points = [parse_params(raw), parse_params({**raw, "train": {**raw["train"], "batch_size": 32}})]
    differ = r"^train_grid trains points that share params\.group_key; these points differ in train\.batch_size$"
    with pytest.raises(MnistlrError, match=differ):
        train_grid(points, prepared)
    assert train_grid([], prepared) == []

"""The mse loss is least squares on one-hot targets; L-BFGS finds the regularized optimum."""

from __future__ import annotations

import pytest
import torch

from mnistlr.errors import MnistlrError
from mnistlr.losses import OneHotMSELoss, make_criterion, objective_value, regularized_objective
from mnistlr.model import LogisticRegression
from mnistlr.params import TrainParams, parse_params
from mnistlr.trainer import fit


def blobs(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    centers = torch.randn(10, 784, generator=g)
    return centers[y] * 0.3 + torch.randn(n, 784, generator=g), y


def test_mse_gradient_is_least_squares_on_one_hot():
    x, y = blobs(64)
    torch.manual_seed(0)
    model = LogisticRegression()
    loss = OneHotMSELoss()(model(x), y)
    loss.backward()
    t = torch.nn.functional.one_hot(y, 10).float()
    residual = model(x).detach() - t  # [N, 10]
    assert torch.allclose(model.fc.weight.grad, residual.T @ x / len(x), atol=1e-5)
    assert torch.allclose(model.fc.bias.grad, residual.mean(0), atol=1e-6)
    assert float(loss.detach()) == pytest.approx(0.5 * float(residual.pow(2).sum(1).mean()), rel=1e-6)


def test_mse_training_matches_exact_least_squares_accuracy():
    x, y = blobs(600)
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
    assert len(hist) == 2 and hist[-1].train_accuracy > 0.9


def test_weight_decay_term_matches_sgd_weight_decay():
    # SGD's weight_decay adds wd * W to the gradient: the gradient of wd / 2 * ||W||^2
    x, y = blobs(32)
    torch.manual_seed(0)
    m = LogisticRegression()
    regularized_objective(m, make_criterion("ce"), x, y, 0.0, 0.5).backward()
    g_reg = m.fc.weight.grad.clone()
    m.zero_grad()
    make_criterion("ce")(m(x), y).backward()
    assert torch.allclose(g_reg - m.fc.weight.grad, 0.5 * m.fc.weight.detach(), atol=1e-6)


def test_new_params_are_validated():
    p = parse_params({"optimizer": "lbfgs", "train": {"loss": "mse", "lbfgs_iters": 5, "lr": {"lbfgs": 0.5}}})
    assert p.lr == 0.5 and p.train.loss == "mse"
    with pytest.raises(MnistlrError, match="train.loss = 'hinge' is not accepted; accepted: 'ce' or 'mse'"):
        parse_params({"train": {"loss": "hinge"}})
    with pytest.raises(MnistlrError, match="optimizer = 'newton'"):
        parse_params({"optimizer": "newton"})
    with pytest.raises(MnistlrError, match="accepted: ce, mse"):
        make_criterion("hinge")

import math

import pytest
import torch
from torch import nn

from mnistlr.errors import MnistlrError
from mnistlr.evaluation import loss_and_accuracy, predict_logits
from mnistlr.model import LogisticRegression, load_model, save_model
from mnistlr.params import TrainParams
from mnistlr.trainer import fit, make_optimizer, training_loss


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


def test_loss_is_cross_entropy_on_raw_logits():
    torch.manual_seed(0)
    model, x, y = LogisticRegression(), torch.randn(16, 784), torch.randint(0, 10, (16,))
    _, loss = training_loss(model, nn.CrossEntropyLoss(), x, y, l1=0.0)
    manual = -torch.log_softmax(model(x), 1)[torch.arange(16), y].mean()
    assert torch.allclose(loss, manual, atol=1e-6)


def test_prediction_uses_argmax_in_eval_mode_without_grad():
    model = LogisticRegression().train()
    seen = {}

    def hook(module, inputs, output):
        seen["training"], seen["grad"] = module.training, torch.is_grad_enabled()

    model.register_forward_hook(hook)
    x, y = torch.randn(10, 784), torch.randint(0, 10, (10,))
    logits = predict_logits(model, x)
    assert seen == {"training": False, "grad": False} and not logits.requires_grad
    assert model.training  # restored afterwards
    _, acc = loss_and_accuracy(model, x, y)
    assert float(acc) == float((logits.argmax(dim=1) == y).float().mean())


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_optimizer_selection(name, cls):
    opt = make_optimizer(LogisticRegression(), name, lr=0.01, weight_decay=1e-3)
    assert isinstance(opt, cls)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-3, 0.0]  # L2 on the weights, not the bias


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(MnistlrError, match="optimizer 'rmsprop' is not accepted; accepted: sgd, adam"):
        make_optimizer(LogisticRegression(), "rmsprop", lr=0.1)


def test_params_pick_the_learning_rate_of_the_chosen_optimizer():
    from mnistlr.params import parse_params

    assert parse_params({"optimizer": "sgd"}).lr == 0.1
    assert parse_params({"optimizer": "adam"}).lr == 1e-3
    assert parse_params({"optimizer": "adam", "train": {"lr": {"adam": 0.02}}}).lr == 0.02


def _grads(l1=0.0, weight_decay=0.0):
    torch.manual_seed(0)
    model = LogisticRegression()
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    _, loss = training_loss(model, nn.CrossEntropyLoss(), x, y, l1)
    loss.backward()
    opt = make_optimizer(model, "sgd", lr=1.0, weight_decay=weight_decay)
    before = model.fc.weight.detach().clone()
    grad = model.fc.weight.grad.clone()
    opt.step()
    return before, grad, model.fc.weight.detach(), model.fc.bias


def test_l1_adds_lambda_times_sign_of_w_to_the_gradient():
    w, g0, _, _ = _grads()
    _, g1, _, _ = _grads(l1=1e-3)
    assert torch.allclose(g1 - g0, 1e-3 * torch.sign(w), atol=1e-7)


def test_l2_weight_decay_adds_lambda_times_w_to_the_step():
    w, g, after0, _ = _grads()
    _, _, after1, _ = _grads(weight_decay=0.1)
    # SGD with lr 1: w' = w - (g + wd * w)
    assert torch.allclose(after0 - after1, 0.1 * w, atol=1e-6)


def _blobs(n=600, seed=0):
    centers = torch.randn(10, 784, generator=torch.Generator().manual_seed(123)) * 0.5
    y = torch.arange(n) % 10
    return centers[y] + torch.randn(n, 784, generator=torch.Generator().manual_seed(seed)), y


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 1e-2)])
def test_fit_learns_and_logs_every_epoch(optimizer, lr):
    x, y = _blobs()
    vx, vy = _blobs(200, seed=1)
    cfg = TrainParams(epochs=3, batch_size=32)
    model, history = fit(x, y, vx, vy, cfg, optimizer, lr, seed=0)
    assert [h.epoch for h in history] == [1, 2, 3]
    assert history[-1].val_accuracy > 0.9
    assert history[-1].train_loss < history[0].train_loss or history[0].train_accuracy > 0.99
    assert not model.training


def test_fit_is_deterministic_for_a_seed_and_changes_with_it():
    x, y = _blobs()
    cfg = TrainParams(epochs=2, batch_size=50)
    a, ha = fit(x, y, x, y, cfg, "sgd", 0.05, seed=1)
    b, hb = fit(x, y, x, y, cfg, "sgd", 0.05, seed=1)
    c, _ = fit(x, y, x, y, cfg, "sgd", 0.05, seed=2)
    assert torch.equal(a.fc.weight, b.fc.weight) and ha == hb
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_cosine_schedule_decays_to_zero_and_constant_stays():
    x, y = _blobs(100)
    _, cos = fit(x, y, x, y, TrainParams(epochs=2, batch_size=10, schedule="cosine"), "sgd", 0.1, 0)
    _, const = fit(x, y, x, y, TrainParams(epochs=2, batch_size=10, schedule="constant"), "sgd", 0.1, 0)
    assert math.isclose(cos[-1].lr, 0.0, abs_tol=1e-12) and const[-1].lr == 0.1


def test_divergence_names_epoch_and_step():
    x, y = _blobs(200)
    with pytest.raises(MnistlrError, match=r"training diverged: loss became (nan|inf) at epoch 1, step \d+"):
        fit(x * 1e30, y, x, y, TrainParams(epochs=1, batch_size=20, schedule="constant"), "sgd", 1e4, 0)


def test_checkpoint_roundtrip_and_weights_only(tmp_path):
    model = LogisticRegression()
    save_model(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert torch.equal(loaded.fc.weight, model.fc.weight) and not loaded.training


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_crafted_pickle_checkpoint_is_refused(tmp_path):
    torch.save({"fc.weight": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(MnistlrError, match="not a loadable weights-only checkpoint"):
        load_model(tmp_path / "evil.pt")

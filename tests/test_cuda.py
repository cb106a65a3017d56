"""CUDA code paths: CUDA graphs, no host sync per step, the same updates as torch.optim. Skipped without a GPU."""

from __future__ import annotations

import warnings

import pytest
import torch

from mnistlr.params import TrainParams
from mnistlr.train import fit
from tests.test_train import TRAINER_CASES, blobs, reference_fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _data(n=2000, device="cuda"):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 784, generator=g) * 0.3
    y = torch.arange(n) % 10
    x = centers[y] + torch.randn(n, 784, generator=g)
    return x.to(device), y.to(device)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 1e-3)])
def test_cuda_graph_matches_eager_and_cpu(optimizer, lr):
    x, y = _data()
    cfg = dict(epochs=4, batch_size=64, schedule="cosine", momentum=0.0)
    graph_model, graph_hist = fit(x, y, x, y, TrainParams(**cfg, cuda_graph=True), optimizer, lr, seed=3)
    eager_model, eager_hist = fit(x, y, x, y, TrainParams(**cfg, cuda_graph=False), optimizer, lr, seed=3)
    cpu_model, cpu_hist = fit(x.cpu(), y.cpu(), x.cpu(), y.cpu(), TrainParams(**cfg), optimizer, lr, seed=3)
    assert graph_model.fc.weight.is_cuda
    assert torch.allclose(graph_model.fc.weight, eager_model.fc.weight, atol=1e-5)
    assert torch.allclose(graph_model.fc.weight.cpu(), cpu_model.fc.weight, atol=1e-3)
    assert [h.lr for h in graph_hist] == [h.lr for h in eager_hist]
    assert abs(graph_hist[-1].val_accuracy - cpu_hist[-1].val_accuracy) < 0.01


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_no_host_sync_per_step(cuda_graph):
    """Host-device syncs per epoch must not grow with the number of steps."""

    def syncs(n):
        x, y = _data(n)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fit(x, y, x, y, TrainParams(epochs=3, batch_size=16, cuda_graph=cuda_graph), "sgd", 0.05, seed=0)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(320) == syncs(3200)  # 20 vs 200 steps per epoch


def test_cuda_graph_with_clipping_early_stopping_and_l1_matches_eager():
    x, y = _data()
    cfg = dict(epochs=5, batch_size=64, grad_clip=0.5, patience=2, l1=1e-5, weight_decay=1e-4)
    graph_model, graph_hist = fit(x, y, x, y, TrainParams(**cfg, cuda_graph=True), "sgd", 0.1, seed=5)
    eager_model, eager_hist = fit(x, y, x, y, TrainParams(**cfg, cuda_graph=False), "sgd", 0.1, seed=5)
    assert len(graph_hist) == len(eager_hist)
    assert torch.allclose(graph_model.fc.weight, eager_model.fc.weight, atol=1e-5)


@pytest.mark.parametrize("case", TRAINER_CASES)
@pytest.mark.parametrize("cuda_graph", [True, False])
def test_the_trainer_on_cuda_makes_the_updates_of_autograd_and_torch_optim(case, cuda_graph):
    optimizer, lr, extra = TRAINER_CASES[case]
    x, y = (t.cuda() for t in blobs(600))
    x = x * 3
    cfg = TrainParams(epochs=3, batch_size=32, cuda_graph=cuda_graph, **extra)
    ours, _ = fit(x, y, x[:50], y[:50], cfg, optimizer, lr, seed=3)
    ref, _ = reference_fit(x, y, cfg, optimizer, lr, seed=3)
    assert ours.fc.weight.is_cuda
    # a replayed graph reads each step's rate from a float32 table: 1e-5 on top of the CPU test's tolerance
    atol = 3e-5 if cfg.l1 else 1e-5
    torch.testing.assert_close(ours.fc.weight, ref.fc.weight, atol=atol, rtol=1e-4)
    torch.testing.assert_close(ours.fc.bias, ref.fc.bias, atol=atol, rtol=1e-4)

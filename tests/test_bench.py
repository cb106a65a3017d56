"""The benchmark compares like with like: the trainer and the plain loop train on the same batches to the same model."""

import importlib.util
import sys

import pytest
import torch

from tests.conftest import REPO


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "bench" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = module
    spec.loader.exec_module(module)
    return module


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 784, generator=torch.Generator().manual_seed(0)) * 0.08
    y = torch.randint(0, 10, (n,), generator=g)
    return centers[y] + torch.randn(n, 784, generator=g), y  # overlapping classes: accuracy well below 1


def test_trainer_and_plain_loop_train_the_same_model_on_the_same_batches(benchmark):
    data = {"train": _data(1000, 1), "val": _data(200, 2), "test": _data(2000, 3)}
    trainer_s, trainer_acc = benchmark.trainer_run(data, 3, seed=7)
    plain_s, plain_acc = benchmark.plain_loop(data, 3, seed=7, threads=1)
    assert len(trainer_s) == len(plain_s) == 3
    assert 0.3 < trainer_acc < 0.95  # a test set with errors, so a different model would show
    assert abs(trainer_acc - plain_acc) <= 1 / 2000  # at most one test image, from float rounding


def test_another_batch_order_gives_another_model(benchmark):
    """The comparison above can fail: the plain loop with another seed lands elsewhere."""
    data = {"train": _data(1000, 1), "val": _data(200, 2), "test": _data(2000, 3)}
    _, trainer_acc = benchmark.trainer_run(data, 3, seed=7)
    accuracies = {benchmark.plain_loop(data, 3, seed=s, threads=1)[1] for s in (8, 9, 10)}
    assert any(abs(a - trainer_acc) > 1 / 2000 for a in accuracies)

"""Same params and seed: the same numbers, byte for byte; another seed: other numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from mnistlr import train
from mnistlr.data import build_variant, split_indices, subset_indices
from mnistlr.params import TrainParams
from tests.conftest import dvc, make_project, project_env

LABELS = np.arange(1000, dtype=np.int64) % 10
X = torch.randn(120, 784, generator=torch.Generator().manual_seed(5))
Y = torch.arange(120) % 10


def _init(seed: int) -> np.ndarray:
    # lr 0: the weights fit returns are exactly its seeded initialisation
    model, _ = train.fit(X, Y, X, Y, TrainParams(epochs=1, batch_size=120, schedule="constant"), "sgd", 0.0, seed)
    return model.fc.weight.detach().numpy().copy()


def _batch_order(seed: int, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    seen = []
    real = train.training_loss

    def spy(model, criterion, x, y, l1):
        seen.append(y.numpy().copy())
        return real(model, criterion, x, y, l1)

    monkeypatch.setattr(train, "training_loss", spy)
    train.fit(X, Y, X, Y, TrainParams(epochs=2, batch_size=7, schedule="constant"), "sgd", 0.0, seed)
    return np.concatenate(seen)


DRAWS = {
    "split": lambda s, mp: split_indices(1000, 100, s)[1],
    "subset": lambda s, mp: subset_indices(1000, 0.3, s),
    "noise": lambda s, mp: build_variant(LABELS, "noisy", 1.0, 0.2, s).labels,
    "init": lambda s, mp: _init(s),
    "batch order": _batch_order,
}


@pytest.mark.parametrize("what", DRAWS)
def test_the_seed_drives(what, monkeypatch):
    draw = DRAWS[what]
    first = draw(42, monkeypatch)
    assert isinstance(first, np.ndarray) and first.size > 0
    assert np.array_equal(first, draw(42, monkeypatch))
    assert not np.array_equal(first, draw(43, monkeypatch))


# One variant with a subset and label noise, so every seeded step feeds the metrics.
PARAMS = {
    "data": {"val_size": 200},
    "variants": {"half": {"fraction": 0.5, "noise": 0.1}},
    "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
}


def _metrics(project) -> dict[str, bytes]:
    files = [*sorted((project / "metrics").glob("*.json")), *sorted((project / "reports" / "details").glob("*.json")),
             *sorted((project / "plots").rglob("*.csv")), *sorted((project / "models").glob("*.npz"))]
    return {str(p.relative_to(project)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, synthetic_mirror):
    env = project_env(synthetic_mirror, synthetic=True)
    projects = [make_project(tmp_path_factory.mktemp(f"run{i}"), PARAMS) for i in range(2)]
    for project in projects:
        dvc("repro", "evaluate@half", cwd=project, env=env)  # the metrics; the report adds none
    return projects, env


def test_two_runs_give_bit_identical_metrics(two_runs):
    (a, b), _ = two_runs
    first, second = _metrics(a), _metrics(b)
    assert set(first) == {"metrics/half.json", "reports/details/half.json", "plots/train/half.csv",
                          "plots/predictions/half.csv", "models/half.npz"}
    assert first == second


def test_another_seed_gives_other_metrics(two_runs):
    (a, b), env = two_runs
    params = yaml.safe_load((b / "params.yaml").read_text())
    params["seed"] = 7
    (b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", "evaluate@half", cwd=b, env=env)
    assert _metrics(a)["metrics/half.json"] != _metrics(b)["metrics/half.json"]
    summary = [(p / "data/prepared/variants/half.json").read_text() for p in (a, b)]
    assert summary[0] != summary[1]  # the subset and noise draw changed too, not only training

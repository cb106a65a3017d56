"""Expected calibration error and NLL on hand-made probabilities; the evaluate stage reports them."""

from __future__ import annotations

import math

import pytest
import torch

from mnistlr.calibration import calibration_metrics, expected_calibration_error, reliability_bins
from mnistlr.errors import MnistlrError


def probs_with_confidence(conf: list[float], pred: list[int]) -> torch.Tensor:
    """Rows with max probability `conf` on class `pred`, the rest spread over the other 9 classes."""
    rows = []
    for c, k in zip(conf, pred):
        row = torch.full((10,), (1 - c) / 9, dtype=torch.float64)
        row[k] = c
        rows.append(row)
    return torch.stack(rows)


def test_perfectly_calibrated_bins_give_zero_ece():
    # 10 predictions at confidence 0.8 (bin 12 of 15: (0.733, 0.8]), 8 of them right
    p = probs_with_confidence([0.8] * 10, [0] * 10)
    y = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(p, y, 15) == pytest.approx(0.0, abs=1e-12)


def test_ece_by_hand():
    # bin (0.933, 1]: 2 samples at 0.95, one right -> |0.5 - 0.95| = 0.45, weight 2/4
    # bin (0.533, 0.6]: 2 samples at 0.6, both right -> |1 - 0.6| = 0.4, weight 2/4
    p = probs_with_confidence([0.95, 0.95, 0.6, 0.6], [3, 3, 5, 5])
    y = torch.tensor([3, 4, 5, 5])
    assert expected_calibration_error(p, y, 15) == pytest.approx(0.5 * 0.45 + 0.5 * 0.4)
    b = reliability_bins(p, y, 15)
    assert sum(b["count"]) == 4 and b["count"][14] == 2 and b["count"][8] == 2
    assert b["accuracy"][14] == 0.5 and b["confidence"][8] == pytest.approx(0.6)
    # one bin: ECE = |overall accuracy - mean confidence|
    assert expected_calibration_error(p, y, 1) == pytest.approx(abs(0.75 - (0.95 + 0.95 + 0.6 + 0.6) / 4))


def test_nll_is_cross_entropy_and_bad_bins_rejected():
    logits = torch.tensor([[2.0, 0.0] + [0.0] * 8, [0.0, 1.0] + [0.0] * 8])
    y = torch.tensor([0, 0])
    m = calibration_metrics(logits, y, 15)
    p0 = math.exp(2) / (math.exp(2) + 9)
    p1 = 1 / (math.e + 9)
    assert m["nll"] == pytest.approx(-(math.log(p0) + math.log(p1)) / 2, rel=1e-6)
    assert 0 <= m["ece"] <= 1
    with pytest.raises(MnistlrError, match="ece_bins"):
        reliability_bins(torch.softmax(logits, 1), y, 0)


def test_evaluate_writes_ece_nll_and_reliability(tmp_path):
    from mnistlr.evaluate import evaluate
    from mnistlr.model import LogisticRegression, save_model
    from mnistlr.params import parse_params

    g = torch.Generator().manual_seed(0)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split in ("val", "test"):
        torch.save({"x": torch.randn(50, 784, generator=g), "y": torch.arange(50) % 10}, prepared / f"{split}.pt")
    torch.manual_seed(0)
    save_model(LogisticRegression(), tmp_path / "m.pt")
    params = parse_params({"train": {"device": "cpu"}, "evaluate": {"ece_bins": 10}})
    m = evaluate(params, "full", prepared, tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "p.csv", tmp_path / "fig")
    for split in ("val", "test"):
        assert 0 <= m[split]["ece"] <= 1 and m[split]["nll"] == pytest.approx(m[split]["loss"], rel=1e-5)
    assert (tmp_path / "fig" / "reliability.png").stat().st_size > 1000

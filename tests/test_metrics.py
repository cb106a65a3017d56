"""mnistlr.metrics on hand-made inputs (numpy), and the evaluate stage that writes them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mnistlr import metrics
from mnistlr.errors import MnistlrError

# --- loss and accuracy -----------------------------------------------------------------------


def test_cross_entropy_by_hand():
    logits = np.array([[2.0, 0.0] + [0.0] * 8, [0.0, 1.0] + [0.0] * 8])
    y = np.array([0, 0])
    p0, p1 = math.exp(2) / (math.exp(2) + 9), 1 / (math.e + 9)
    assert metrics.cross_entropy(logits, y) == pytest.approx(-(math.log(p0) + math.log(p1)) / 2, rel=1e-12)


def test_cross_entropy_agrees_with_torch_on_random_logits():
    import torch

    rng = np.random.default_rng(0)
    for scale in (1.0, 30.0, 1000.0):  # large logits too: the log-softmax must not overflow
        logits = (rng.normal(size=(500, 10)) * scale).astype(np.float32)
        y = rng.integers(0, 10, 500)
        expected = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(y)))
        assert math.isfinite(metrics.cross_entropy(logits, y))
        assert abs(metrics.cross_entropy(logits, y) - expected) < 1e-6


def test_softmax_rows_are_probabilities():
    p = metrics.softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    assert p[0, 0] == 1.0 and p.dtype == np.float64


def test_accuracy_is_the_share_of_argmax_hits():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([1, 0, 0, 0])
    assert metrics.accuracy(logits, y) == 0.75
    loss, acc = metrics.loss_and_accuracy(logits, y)
    assert (loss, acc) == (metrics.cross_entropy(logits, y), 0.75)


# --- confusions, per-class scores, sparsity -------------------------------------------------------


def test_confusion_matrix_counts_rows_true_columns_predicted():
    cm = metrics.confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert metrics.confusion_matrix(np.array([9]), np.array([3])).shape == (10, 10)


def test_per_class_metrics_from_a_hand_made_matrix():
    cm = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    m = metrics.per_class_metrics(cm)
    assert m["0"]["precision"] == pytest.approx(8 / 9, abs=1e-6)
    assert m["0"]["recall"] == pytest.approx(8 / 10)
    assert m["0"]["f1"] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8), abs=1e-6)
    assert m["1"]["precision"] == pytest.approx(9 / 11, abs=1e-6) and m["1"]["recall"] == pytest.approx(0.9)
    assert m["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}  # undefined -> 0, not NaN
    assert m["0"]["precision"] == 0.888889  # rounded to 6 decimals for the JSON


def test_top_confusions_are_off_diagonal_largest_first():
    cm = np.array([[50, 3, 7], [1, 40, 0], [9, 2, 60]])
    assert metrics.top_confusions(cm, 3) == [(2, 0, 9), (0, 2, 7), (0, 1, 3)]
    assert metrics.top_confusions(np.diag([5, 5]), 3) == []  # no errors, no confusions


def test_weight_sparsity():
    assert metrics.weight_sparsity(np.array([0.0, 5e-4, -2e-3, 1.0]), 1e-3) == 0.5


@pytest.mark.parametrize(
    "metric,higher",
    [
        ("test.accuracy", True),
        ("test.loss", False),
        ("test.ece", False),
        ("val.loss", False),
        ("weights.sparsity", True),
    ],
)
def test_which_metrics_are_better_higher(metric, higher):
    assert metrics.higher_is_better(metric) is higher


# --- calibration ---------------------------------------------------------------------------------


def probs_with_confidence(conf: list[float], pred: list[int]) -> np.ndarray:
    """Rows with max probability `conf` on class `pred`, the rest spread over the other 9 classes."""
    rows = np.empty((len(conf), 10))
    for i, (c, k) in enumerate(zip(conf, pred, strict=True)):
        rows[i] = (1 - c) / 9
        rows[i, k] = c
    return rows


def test_perfectly_calibrated_bins_give_zero_ece():
    # 10 predictions at confidence 0.8 (bin 12 of 15: (0.733, 0.8]), 8 of them right
    p = probs_with_confidence([0.8] * 10, [0] * 10)
    y = np.array([0] * 8 + [1] * 2)
    assert metrics.expected_calibration_error(p, y, 15) == pytest.approx(0.0, abs=1e-12)


def test_ece_by_hand():
    # bin (0.933, 1]: 2 samples at 0.95, one right -> |0.5 - 0.95| = 0.45, weight 2/4
    # bin (0.533, 0.6]: 2 samples at 0.6, both right -> |1 - 0.6| = 0.4, weight 2/4
    p = probs_with_confidence([0.95, 0.95, 0.6, 0.6], [3, 3, 5, 5])
    y = np.array([3, 4, 5, 5])
    assert metrics.expected_calibration_error(p, y, 15) == pytest.approx(0.5 * 0.45 + 0.5 * 0.4)
    b = metrics.reliability_bins(p, y, 15)
    assert sum(b["count"]) == 4 and b["count"][14] == 2 and b["count"][8] == 2
    assert b["accuracy"][14] == 0.5 and b["confidence"][8] == pytest.approx(0.6)
    assert b["lower"][8] == pytest.approx(8 / 15) and b["upper"][8] == pytest.approx(9 / 15)
    assert b["accuracy"][0] == 0.0 and b["confidence"][0] == 0.0  # empty bins are 0, not NaN
    # one bin: ECE = |overall accuracy - mean confidence|
    assert metrics.expected_calibration_error(p, y, 1) == pytest.approx(abs(0.75 - (0.95 + 0.95 + 0.6 + 0.6) / 4))


def test_bad_bin_count_is_rejected():
    with pytest.raises(MnistlrError, match=r"evaluate\.ece_bins = 0 is not accepted; accepted: an integer >= 1"):
        metrics.reliability_bins(probs_with_confidence([0.9], [0]), np.array([0]), 0)


# --- the evaluate stage --------------------------------------------------------------------------


def fake_run(tmp_path, split_data, record=None, weight=None):
    """A prepared folder with val and test splits, a model and a learning curve for variant `full`."""
    from mnistlr import atomic
    from mnistlr.data import split_files
    from mnistlr.model import Model
    from mnistlr.train import EpochRecord, write_history

    prepared = tmp_path / "prepared"
    for split, (x, y) in split_data.items():
        x_path, y_path = split_files(prepared, split)
        atomic.write_array(x_path, x)
        atomic.write_array(y_path, y)
    atomic.write_json(
        prepared / "preprocessing.json",
        {**(record or {"deskew": False, "mean": 0.1307, "std": 0.3081}), "image_side": 28},
    )
    atomic.write_json(
        prepared / "variants" / "full.json",
        {"name": "full", "fraction": 1.0, "noise": 0.0, "size": 100, "labels_changed": 0, "class_histogram": [10] * 10},
    )
    atomic.write_arrays(
        prepared / "samples.npz", plain=np.zeros((3, 28, 28), np.uint8), deskewed=np.zeros((3, 28, 28)), y=np.arange(3)
    )
    weight = np.zeros((10, 784), np.float32) if weight is None else weight
    Model(weight=weight, bias=np.zeros(10, np.float32), mean=0.1307, std=0.3081).save(tmp_path / "models" / "full.npz")
    write_history(tmp_path / "curves" / "full.csv", [EpochRecord(1, 1.0, 0.5, 1.1, 0.4, 0.1)])
    return prepared


def run_evaluate(tmp_path, params, prepared):
    from mnistlr.evaluate import evaluate

    return evaluate(
        params,
        prepared,
        tmp_path / "models",
        tmp_path / "curves",
        tmp_path / "metrics",
        tmp_path / "predictions",
        tmp_path / "figures",
    )


def test_evaluate_writes_six_headline_numbers_predictions_and_figures(tmp_path):
    from mnistlr.model import load_model
    from mnistlr.params import parse_params

    rng = np.random.default_rng(0)
    split_data = {
        split: (rng.normal(size=(50, 784)).astype(np.float32), np.arange(50, dtype=np.int64) % 10)
        for split in ("val", "test")
    }
    weight = (rng.uniform(0.01, 0.1, size=(10, 784)) * rng.choice([-1, 1], size=(10, 784))).astype(np.float32)
    weight[:, :100] = 0.0  # 1000 of 7840 weights are zero, the rest at least 0.01 from it
    prepared = fake_run(tmp_path, split_data, weight=weight)
    model = load_model(tmp_path / "models" / "full.npz")
    params = parse_params({"evaluate": {"ece_bins": 10}, "variants": {"full": {"fraction": 1.0, "noise": 0.0}}})
    m = run_evaluate(tmp_path, params, prepared)["full"]

    written = json.loads((tmp_path / "metrics" / "full.json").read_text())
    assert written == m
    assert {k: sorted(v) for k, v in written.items()} == {
        "test": ["accuracy", "ece", "loss"],
        "val": ["accuracy", "loss"],
        "weights": ["sparsity"],
    }
    for split in ("val", "test"):
        x, y = split_data[split]
        loss, acc = metrics.loss_and_accuracy(model.logits(x), y)
        assert written[split] == {**written[split], "accuracy": round(acc, 6), "loss": round(loss, 6)}
    test_probs = metrics.softmax(model.logits(split_data["test"][0]))
    assert written["test"]["ece"] == round(metrics.expected_calibration_error(test_probs, split_data["test"][1], 10), 6)
    assert written["weights"]["sparsity"] == pytest.approx(1000 / 7840, abs=1e-6)

    lines = (tmp_path / "predictions" / "full.csv").read_text().splitlines()
    predicted = model.logits(split_data["test"][0]).argmax(1)
    assert lines[0] == "actual,predicted" and lines[1:] == [
        f"{a},{p}" for a, p in zip(split_data["test"][1], predicted, strict=True)
    ]
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert figures == [
        "confusion.png",
        "confusion_examples.png",
        "data_size.png",
        "deskew.png",
        "learning_curves.png",
        "noise.png",
        "reliability.png",
        "weights.png",
    ]
    for name in figures:
        assert (tmp_path / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_without_a_variants_model_writes_nothing(tmp_path):
    from mnistlr.params import parse_params

    zeros = {split: (np.zeros((10, 784), np.float32), np.arange(10)) for split in ("val", "test")}
    prepared = fake_run(tmp_path, zeros)
    params = parse_params(
        {"variants": {"full": {"fraction": 1.0, "noise": 0.0}, "half": {"fraction": 0.5, "noise": 0.0}}}
    )
    with pytest.raises(MnistlrError, match=r"^no model at \S*half\.npz; models in \S*: \S*full\.npz$"):
        run_evaluate(tmp_path, params, prepared)
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "figures").exists()


@pytest.mark.parametrize(
    "record",
    [{"deskew": True, "mean": 0.1307, "std": 0.3081}, {"deskew": False, "mean": 0.1305, "std": 0.289}],
    ids=["deskew", "mean-std"],
)
def test_evaluate_refuses_a_model_trained_on_other_inputs(tmp_path, record):
    """The model file says what its inputs went through; prepared data that went through something else is a
    one-line error, and nothing is written."""
    from mnistlr.params import parse_params

    zeros = {split: (np.zeros((10, 784), np.float32), np.arange(10)) for split in ("val", "test")}
    prepared = fake_run(tmp_path, zeros, record=record)
    with pytest.raises(MnistlrError) as info:
        run_evaluate(tmp_path, parse_params({}), prepared)
    msg = str(info.value)
    assert "\n" not in msg and "was trained on inputs with deskew off, mean 0.1307, std 0.3081" in msg
    assert msg.endswith("; rerun the pipeline (dvc repro)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves", "models", "prepared"]

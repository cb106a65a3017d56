import pytest
import torch

from mnistlr.evaluation import confusion_matrix, per_class_metrics, top_confusions, weight_sparsity


def test_confusion_matrix_counts_rows_true_columns_predicted():
    cm = confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2]), num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_metrics_from_a_hand_made_matrix():
    cm = torch.tensor([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    m = per_class_metrics(cm)
    assert m["0"]["precision"] == pytest.approx(8 / 9)
    assert m["0"]["recall"] == pytest.approx(8 / 10)
    assert m["0"]["f1"] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert m["1"]["precision"] == pytest.approx(9 / 11) and m["1"]["recall"] == pytest.approx(0.9)
    assert m["2"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}  # undefined -> 0, not NaN


def test_top_confusions_are_off_diagonal_largest_first():
    cm = torch.tensor([[50, 3, 7], [1, 40, 0], [9, 2, 60]])
    assert top_confusions(cm, 3) == [(2, 0, 9), (0, 2, 7), (0, 1, 3)]


def test_weight_sparsity():
    assert weight_sparsity(torch.tensor([0.0, 5e-4, -2e-3, 1.0]), 1e-3) == 0.5

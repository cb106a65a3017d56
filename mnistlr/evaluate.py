"""The evaluate stage: metrics JSON, confusion data and figures for one trained variant."""

from __future__ import annotations

from pathlib import Path

import torch

from mnistlr import atomic
from mnistlr.calibration import calibration_metrics, reliability_bins
from mnistlr.device import resolve_device
from mnistlr.evaluation import confusion_matrix, per_class_metrics, predict_logits, weight_sparsity
from mnistlr.model import load_model
from mnistlr.params import Params
from mnistlr.prepare import load_split
from torch.nn import functional as F


def split_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy and mean cross-entropy of logits against labels."""
    return {
        "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
        "loss": float(F.cross_entropy(logits, y)),
    }


def evaluate(
    params: Params,
    variant: str,
    prepared: str | Path,
    model_path: str | Path,
    metrics_path: str | Path,
    predictions_path: str | Path,
    figures_dir: str | Path,
) -> dict:
    """Score the model on val and test; write metrics, test predictions and figures."""
    params.variant(variant)  # fail early on an unknown name
    device = resolve_device(params.train.device)
    model = load_model(model_path, device)
    metrics: dict = {}
    for split in ("test", "val"):
        x, y = load_split(prepared, split, device)
        logits = predict_logits(model, x)
        metrics[split] = split_metrics(logits, y)
        metrics[split].update(calibration_metrics(logits, y, params.evaluate.ece_bins))
        if split == "test":
            y_test, pred_test = y.cpu(), logits.argmax(dim=1).cpu()
            bins_test = reliability_bins(torch.softmax(logits.double(), dim=1).cpu(), y_test, params.evaluate.ece_bins)
    cm = confusion_matrix(y_test, pred_test)
    weight = model.fc.weight.detach().cpu()
    metrics["classes"] = per_class_metrics(cm)
    metrics["weights"] = {
        "sparsity": weight_sparsity(weight, params.evaluate.sparsity_threshold),
        "l1_norm": float(weight.abs().sum()),
        "l2_norm": float(weight.norm()),
    }
    atomic.write_json(metrics_path, metrics)
    lines = ["actual,predicted"] + [f"{a},{p}" for a, p in zip(y_test.tolist(), pred_test.tolist())]
    atomic.write_text(predictions_path, "\n".join(lines) + "\n")
    _write_figures(cm, weight, variant, Path(figures_dir))
    _write_reliability(bins_test, metrics["test"]["ece"], variant, Path(figures_dir))
    return metrics


def _write_figures(cm: torch.Tensor, weight: torch.Tensor, variant: str, figures_dir: Path) -> None:
    from mnistlr import figures  # matplotlib costs ~1 s to import: only when drawing

    fig = figures.confusion_figure(cm.numpy(), title=f"Confusion matrix, test set ({variant})")
    atomic.save_figure(fig, figures_dir / "confusion.png")
    figures.close(fig)
    fig = figures.weight_grid_figure(weight.numpy(), title=f"Per-class weights ({variant}); red +, blue -")
    atomic.save_figure(fig, figures_dir / "weights.png")
    figures.close(fig)


def _write_reliability(bins: dict, ece: float, variant: str, figures_dir: Path) -> None:
    from mnistlr import figures, study_figures

    fig = study_figures.reliability_figure(bins, ece, title=f"Reliability diagram, test set ({variant})")
    atomic.save_figure(fig, figures_dir / "reliability.png")
    figures.close(fig)

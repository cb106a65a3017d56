"""The evaluate stage: score every trained variant on validation and test, in numpy, and draw the figures.

Writes each variant's headline metrics (what `dvc metrics diff` shows) and test predictions (DVC's
confusion plot), then the figures the report and a reviewer look at, drawn once per run: learning
curves, accuracy against training-set size, clean against noisy labels, the reference variant's
confusion matrix, misclassified digits and reliability diagram, every variant's per-class weights, and
digits before and after deskewing.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistlr import atomic, metrics
from mnistlr.data import IMAGE_SIDE, Preprocessing, load_preprocessing, load_split
from mnistlr.errors import MnistlrError
from mnistlr.model import Model, load_model
from mnistlr.params import Params
from mnistlr.reference import EXPECTED_BY_FRACTION, noise_rows


def headline(
    model_logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], weight: np.ndarray, params: Params
) -> dict:
    """The six numbers a reviewer compares: test accuracy, loss and ECE, validation accuracy and loss,
    weight sparsity."""
    test_probs = metrics.softmax(model_logits["test"])
    out: dict = {}
    for split in ("test", "val"):
        loss, acc = metrics.loss_and_accuracy(model_logits[split], labels[split])
        out[split] = {"accuracy": metrics.rounded(acc), "loss": metrics.rounded(loss)}
    out["test"]["ece"] = metrics.rounded(
        metrics.expected_calibration_error(test_probs, labels["test"], params.evaluate.ece_bins)
    )
    out["weights"] = {"sparsity": metrics.rounded(metrics.weight_sparsity(weight, params.evaluate.sparsity_threshold))}
    return out


@dataclass(frozen=True)
class Scored:
    """One variant's model and what evaluate measured of it."""

    model: Model
    scores: dict  # the headline metrics
    test_logits: np.ndarray


def score_variant(
    params: Params,
    name: str,
    model_path: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    prepared_with: Preprocessing,
    prepared: Path,
) -> Scored:
    """Load one variant's model, check it saw inputs prepared like these, and score it on val and test."""
    model = load_model(model_path)
    if model.preprocessing != prepared_with:
        raise MnistlrError(
            f"{model_path} was trained on inputs with {model.preprocessing.describe()}, but {prepared} "
            f"holds inputs with {prepared_with.describe()}; rerun the pipeline (dvc repro)"
        )
    logits = {split: model.logits(x) for split, (x, _) in splits.items()}
    labels = {split: y for split, (_, y) in splits.items()}
    return Scored(model, headline(logits, labels, model.weight, params), logits["test"])


def predictions_csv(actual: np.ndarray, predicted: np.ndarray) -> str:
    """The test predictions as DVC's confusion plot reads them: one `actual,predicted` row per image."""
    return "actual,predicted\n" + "".join(
        f"{a},{p}\n" for a, p in zip(actual.tolist(), predicted.tolist(), strict=True)
    )


def evaluate(
    params: Params,
    prepared: str | Path,
    models_dir: str | Path,
    curves_dir: str | Path,
    metrics_dir: str | Path,
    predictions_dir: str | Path,
    figures_dir: str | Path,
) -> dict[str, dict]:
    """Score every variant; write metrics/<variant>.json, its test predictions, then the figures.

    Every variant is scored before anything is written, so a bad model file leaves no partial set.
    """
    prepared = Path(prepared)
    prepared_with = load_preprocessing(prepared)
    splits = {split: load_split(prepared, split) for split in ("test", "val")}
    test_y = splits["test"][1]
    scored = {
        name: score_variant(params, name, Path(models_dir) / f"{name}.npz", splits, prepared_with, prepared)
        for name in params.variants
    }
    for name, s in scored.items():
        atomic.write_json(Path(metrics_dir) / f"{name}.json", s.scores)
        atomic.write_text(Path(predictions_dir) / f"{name}.csv", predictions_csv(test_y, s.test_logits.argmax(axis=1)))
    draw_figures(params, scored, splits["test"], prepared, prepared_with, Path(curves_dir), Path(figures_dir))
    return {name: s.scores for name, s in scored.items()}


def read_curve(path: Path) -> list[dict[str, float]]:
    """A learning-curve CSV written by the train stage, as rows of numbers."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def variant_sizes(prepared: Path, params: Params) -> dict[str, int]:
    """Training images per variant, from prepare's summaries."""
    return {n: json.loads((prepared / "variants" / f"{n}.json").read_text())["size"] for n in params.variants}


def misclassified_images(
    x: np.ndarray, y: np.ndarray, predicted: np.ndarray, pairs: list[tuple[int, int, int]], pre: Preprocessing
) -> list[tuple[int, int, np.ndarray]]:
    """For each (true, predicted, count): the first EXAMPLES_PER_PAIR such test digits, as [k, 28, 28] in [0, 1]."""
    out = []
    for true, pred, _ in pairs:
        idx = np.flatnonzero((y == true) & (predicted == pred))[: metrics.EXAMPLES_PER_PAIR]
        # the prepared pixels are (p - mean) / std: undo it to show the digit as the model saw it
        images = np.clip(np.asarray(x[idx]) * pre.std + pre.mean, 0, 1).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
        out.append((true, pred, images))
    return out


def draw_figures(
    params: Params,
    scored: dict[str, Scored],
    test: tuple[np.ndarray, np.ndarray],
    prepared: Path,
    pre: Preprocessing,
    curves_dir: Path,
    figures_dir: Path,
) -> None:
    """Every figure of the run, into figures_dir."""
    from mnistlr import figures  # matplotlib costs about a second to import: only here

    ref = params.reference_variant()
    scores = {name: s.scores for name, s in scored.items()}
    out = figures_dir
    figures.save(
        figures.learning_curves_figure({n: read_curve(curves_dir / f"{n}.csv") for n in params.variants}),
        out / "learning_curves.png",
    )
    sizes = variant_sizes(prepared, params)
    points = [(v.fraction, 100 * scores[n]["test"]["accuracy"]) for n, v in params.variants.items() if v.noise == 0]
    train_size = round(sizes[ref] / params.variants[ref].fraction)
    figures.save(figures.data_size_figure(points, EXPECTED_BY_FRACTION, train_size), out / "data_size.png")
    noisy = noise_rows(params, scores)
    figures.save(
        figures.noise_figure(noisy)
        if noisy
        else figures.message_figure("no noisy variant (with a clean one of the same size) in params.yaml"),
        out / "noise.png",
    )
    x, y = test
    predicted = scored[ref].test_logits.argmax(axis=1)
    cm = metrics.confusion_matrix(y, predicted)
    figures.save(figures.confusion_figure(cm, title=f"Confusion matrix, test set ({ref})"), out / "confusion.png")
    examples = misclassified_images(x, y, predicted, metrics.top_confusions(cm, params.report.top_confusions), pre)
    figures.save(
        figures.confusion_examples_figure(examples, metrics.EXAMPLES_PER_PAIR)
        if examples
        else figures.message_figure("no misclassified test digits"),
        out / "confusion_examples.png",
    )
    bins = metrics.reliability_bins(metrics.softmax(scored[ref].test_logits), y, params.evaluate.ece_bins)
    figures.save(
        figures.reliability_figure(bins, scores[ref]["test"]["ece"], f"Reliability diagram, test set ({ref})"),
        out / "reliability.png",
    )
    figures.save(
        figures.weight_rows_figure(
            {n: s.model.weight for n, s in scored.items()},
            "Per-class weights of every variant, each image on its own scale: red +, blue -",
        ),
        out / "weights.png",
    )
    with np.load(prepared / "samples.npz", allow_pickle=False) as samples:
        figures.save(figures.deskew_figure(samples["plain"], samples["deskewed"]), out / "deskew.png")

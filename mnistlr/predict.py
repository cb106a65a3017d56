"""`mnistlr predict IMAGE...`: classify digit images with a trained model (top 3 classes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer

from mnistlr.cli import app
from mnistlr.cli_support import user_errors
from mnistlr.errors import MnistlrError
from mnistlr.evaluation import predict_logits
from mnistlr.model import load_model
from mnistlr.params import load_params
from mnistlr.preprocess import preprocess_file

TOP_K = 3


def predict_files(paths: list[Path], model_path: Path, mean: float, std: float, top_k: int = TOP_K) -> list[dict]:
    """[{'image', 'prediction', 'top': [{'class', 'probability'}, ...]}] for each path, in order."""
    model = load_model(model_path, "cpu")
    x = torch.stack([preprocess_file(p, mean, std) for p in paths])
    probs = torch.softmax(predict_logits(model, x).double(), dim=1)
    values, classes = probs.topk(top_k, dim=1)
    return [
        {
            "image": str(p),
            "prediction": int(c[0]),
            "top": [{"class": int(k), "probability": round(float(v), 6)} for k, v in zip(c, val)],
        }
        for p, c, val in zip(paths, classes, values)
    ]


@app.command()
@user_errors
def predict(
    images: list[Path] = typer.Argument(..., help="PNG or JPEG digit images"),
    model: Path = typer.Option(Path("models/full.pt"), help="state_dict written by the train stage"),
    params: Path = typer.Option(Path("params.yaml"), help="params file (data.mean and data.std)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list instead of text"),
) -> None:
    """Classify digit images, MNIST-style preprocessed; print the top 3 classes with probabilities."""
    p = load_params(params)
    if not model.is_file():
        raise MnistlrError(f"no model at {model}; run `dvc repro` first or pass --model")
    results = predict_files(list(images), model, p.data.mean, p.data.std)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for r in results:
        top = ", ".join(f"{t['class']} ({t['probability']:.3f})" for t in r["top"])
        typer.echo(f"{r['image']}: {r['prediction']}  [top {TOP_K}: {top}]")

"""DVC stage: score every trained variant on the validation and test sets, and draw the run's figures."""

from pathlib import Path

import typer

from mnistlr.errors import user_errors
from mnistlr.evaluate import evaluate
from mnistlr.params import load_params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@user_errors
def main(
    params: Path = typer.Option("params.yaml", help="params file"),
    prepared: Path = typer.Option("data/prepared", help="output folder of the prepare stage"),
    models: Path = typer.Option("models", help="folder of <variant>.npz written by the train stage"),
    curves: Path = typer.Option(
        "plots/train", help="folder of <variant>.csv learning curves written by the train stage"
    ),
    metrics: Path = typer.Option(
        "metrics", help="folder for <variant>.json headline metrics (what dvc metrics diff shows)"
    ),
    predictions: Path = typer.Option(
        "plots/predictions", help="folder for <variant>.csv test predictions (actual,predicted)"
    ),
    figures: Path = typer.Option("reports/figures", help="folder for the run's PNG figures"),
) -> None:
    """Write metrics and test predictions of every variant, then the figures."""
    for name, m in evaluate(load_params(params), prepared, models, curves, metrics, predictions, figures).items():
        typer.echo(f"{name}: test accuracy {m['test']['accuracy']:.4f} test loss {m['test']['loss']:.4f}")


if __name__ == "__main__":
    app()

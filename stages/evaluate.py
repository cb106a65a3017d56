"""DVC stage: score one trained variant on the validation and test sets."""

from pathlib import Path

import typer

from mnistlr.errors import user_errors
from mnistlr.evaluate import evaluate
from mnistlr.params import load_params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@user_errors
def main(
    variant: str = typer.Option(..., help="variant name from params.yaml"),
    params: Path = typer.Option("params.yaml", help="params file"),
    prepared: Path = typer.Option("data/prepared", help="output folder of the prepare stage"),
    model: Path = typer.Option(..., help="model written by the train stage (.npz)"),
    metrics: Path = typer.Option(..., help="headline metrics JSON to write (what dvc metrics diff shows)"),
    details: Path = typer.Option(..., help="details JSON to write: per-class scores, weight norms, reliability bins"),
    predictions: Path = typer.Option(..., help="test-set actual,predicted CSV to write"),
    figures: Path = typer.Option(..., help="folder for confusion.png, weights.png and reliability.png"),
) -> None:
    """Write metrics and details JSON, test predictions, and the confusion, weight and reliability figures."""
    m = evaluate(load_params(params), variant, prepared, model, metrics, details, predictions, figures)
    typer.echo(f"{variant}: test accuracy {m['test']['accuracy']:.4f} test loss {m['test']['loss']:.4f}")


if __name__ == "__main__":
    app()

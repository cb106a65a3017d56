"""DVC stage: score one trained variant on the validation and test sets."""

from pathlib import Path

import typer

from mnistlr.cli_support import user_errors
from mnistlr.evaluate import evaluate
from mnistlr.params import load_params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@user_errors
def main(
    variant: str = typer.Option(..., help="variant name from params.yaml"),
    params: Path = typer.Option("params.yaml", help="params file"),
    prepared: Path = typer.Option("data/prepared", help="output folder of the prepare stage"),
    model: Path = typer.Option(..., help="state_dict written by the train stage"),
    metrics: Path = typer.Option(..., help="metrics JSON to write"),
    predictions: Path = typer.Option(..., help="test-set actual,predicted CSV to write"),
    figures: Path = typer.Option(..., help="folder for confusion.png, weights.png and reliability.png"),
) -> None:
    """Write metrics JSON, test predictions, a confusion-matrix figure and the weight grid."""
    m = evaluate(load_params(params), variant, prepared, model, metrics, predictions, figures)
    typer.echo(f"{variant}: test accuracy {m['test']['accuracy']:.4f} test loss {m['test']['loss']:.4f}")


if __name__ == "__main__":
    app()

"""DVC stage: train the logistic-regression model on every training-set variant, in one process."""

from pathlib import Path

import typer

from mnistlr.errors import user_errors
from mnistlr.params import load_params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@user_errors
def main(
    params: Path = typer.Option("params.yaml", help="params file"),
    prepared: Path = typer.Option("data/prepared", help="output folder of the prepare stage"),
    models: Path = typer.Option("models", help="folder for <variant>.npz (weights, bias, preprocessing)"),
    curves: Path = typer.Option("plots/train", help="folder for <variant>.csv, the per-epoch learning curves"),
) -> None:
    """Train every variant of params.yaml with its optimizer and hyperparameters."""
    checked = load_params(params)  # a bad param fails before torch loads (seconds)
    from mnistlr.train import train

    for name, history in train(checked, prepared, models, curves).items():
        last = history[-1]
        typer.echo(f"{name}: epoch {last.epoch} val accuracy {last.val_accuracy:.4f} val loss {last.val_loss:.4f}")


if __name__ == "__main__":
    app()

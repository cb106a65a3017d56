"""DVC stage: train the logistic-regression model on one training-set variant."""

from pathlib import Path

import typer

from mnistlr.errors import user_errors
from mnistlr.params import load_params
from mnistlr.train import train

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@user_errors
def main(
    variant: str = typer.Option(..., help="variant name from params.yaml"),
    params: Path = typer.Option("params.yaml", help="params file"),
    prepared: Path = typer.Option("data/prepared", help="output folder of the prepare stage"),
    model: Path = typer.Option(..., help="where to save the model (.npz: weights, bias, normalization)"),
    log: Path = typer.Option(..., help="per-epoch learning-curve CSV"),
) -> None:
    """Train on VARIANT with the optimizer and hyperparameters in params.yaml."""
    last = train(load_params(params), variant, prepared, model, log)[-1]
    typer.echo(f"{variant}: epoch {last.epoch} val accuracy {last.val_accuracy:.4f} val loss {last.val_loss:.4f}")


if __name__ == "__main__":
    app()

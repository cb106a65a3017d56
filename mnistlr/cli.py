"""The `mnistlr` command: tools around the pipeline (the DVC stages live in stages/)."""

from __future__ import annotations

import typer

from mnistlr import __version__

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Multinomial logistic regression on MNIST: tools around the DVC pipeline.")


@app.callback()
def main() -> None:
    # A callback keeps `mnistlr` a group: with one command Typer would make it the whole CLI.
    pass


@app.command()
def version() -> None:
    """Print the mnistlr version."""
    typer.echo(__version__)


# Subcommands register themselves on `app` from their own modules, one import line each.

from mnistlr import review_commands  # noqa: E402,F401  (gate, review, compare)
from mnistlr import predict as _predict  # noqa: E402,F401  (mnistlr predict)

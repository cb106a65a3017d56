"""DVC stage: raw MNIST -> (deskewed,) normalized train/val/test arrays and training-set variants."""

from pathlib import Path

import typer

from mnistlr.errors import user_errors
from mnistlr.params import load_params
from mnistlr.prepare import prepare

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@user_errors
def main(
    params: Path = typer.Option("params.yaml", help="params file"),
    out: Path = typer.Option("data/prepared", help="output folder (replaced atomically)"),
    raw: Path = typer.Option("data/raw", help="download folder, used when MNISTLR_MNIST_DIR is unset"),
    deskew: bool | None = typer.Option(None, "--deskew/--no-deskew", help="override params.yaml's data.deskew"),
) -> None:
    """Fetch (or read from the MNISTLR_MNIST_DIR mirror) and verify MNIST, split it, build the variants."""
    for name, s in prepare(load_params(params), out, raw, deskew).items():
        typer.echo(f"{name}: {s['size']} images, {s['labels_changed']} labels changed")


if __name__ == "__main__":
    app()

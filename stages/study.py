"""DVC stage of studies/dvc.yaml, run in studies/: one study (mse, optimum, l1l2, sweep, deskew) and its JSON."""

from pathlib import Path

import typer

from mnistlr.errors import user_errors
from mnistlr.params import load_params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@user_errors
def main(
    study: str = typer.Argument(..., help="mse | optimum | l1l2 | sweep | deskew"),
    params: Path = typer.Option("params.yaml", help="params file (reads studies.<study>)"),
    prepared: Path = typer.Option("data/prepared", help="prepared inputs (deskew: studies/data/prepared_deskewed)"),
    out: Path = typer.Option(..., help="result JSON to write"),
    figure: Path | None = typer.Option(None, help="l1l2: weight-grid PNG to write"),
    optimum: Path | None = typer.Option(None, help="sweep: the optimum study's JSON"),
) -> None:
    """Run STUDY with the studies section of params.yaml."""
    checked = load_params(params)  # a bad param fails before torch loads (seconds)
    from mnistlr.studies import run_study

    run_study(study, checked, prepared, out, figure, optimum)
    typer.echo(f"{study}: wrote {out}")


if __name__ == "__main__":
    app()

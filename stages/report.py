"""DVC stage: the markdown report over all variants."""

from pathlib import Path

import typer

from mnistlr.errors import user_errors
from mnistlr.params import load_params
from mnistlr.report import build_report

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@user_errors
def main(
    params: Path = typer.Option("params.yaml", help="params file"),
    metrics: Path = typer.Option("metrics", help="folder of <variant>.json headline metrics"),
    summaries: Path = typer.Option("data/prepared/variants", help="folder of <variant>.json data summaries"),
    predictions: Path = typer.Option("plots/predictions", help="folder of <variant>.csv test predictions"),
    out: Path = typer.Option("reports/report.md", help="report to write (it links the figures in reports/figures)"),
    prepared: Path = typer.Option(
        "data/prepared", help="prepare's output (preprocessing.json: what the inputs went through)"
    ),
    experiments: Path = typer.Option("experiments", help="folder of the committed `mnistlr compare` output"),
) -> None:
    """Write the report: results table against the tutorial's numbers, curves, confusions, weights."""
    build_report(
        load_params(params), metrics, summaries, predictions, out, prepared_dir=prepared, experiments_dir=experiments
    )
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()

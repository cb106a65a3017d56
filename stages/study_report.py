"""DVC stage of studies/dvc.yaml (run in studies/): studies/report.md from the studies' JSON results."""

from pathlib import Path

import typer

from mnistlr.errors import user_errors
from mnistlr.studies_page import write_studies_report

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
@user_errors
def main(
    results: Path = typer.Option("studies/results", help="folder of the studies' JSON"),
    out: Path = typer.Option("studies/report.md", help="markdown page to write"),
) -> None:
    """Write the studies report."""
    write_studies_report(results, out)
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()

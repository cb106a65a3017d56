"""`mnistlr gate`, `mnistlr review` and `mnistlr compare`: thin command wrappers over their modules."""

from __future__ import annotations

from pathlib import Path

import typer

from mnistlr.cli import app
from mnistlr.cli_support import user_errors


@app.command()
@user_errors
def gate(
    base: str = typer.Option("main", help="git revision to compare against"),
    metric: str = typer.Option("test.accuracy", help="key in metrics/<variant>.json (names ending in 'loss': lower is better)"),
    max_drop: float = typer.Option(0.002, help="largest allowed worsening of the metric, in its own units"),
) -> None:
    """Exit 1 with a one-line reason when METRIC of any variant worsens more than MAX_DROP against BASE."""
    from mnistlr.gate import run_gate

    passed, line = run_gate(base, metric, max_drop)
    typer.echo(line, err=not passed)
    if not passed:
        raise typer.Exit(1)


@app.command()
@user_errors
def review(
    base: str = typer.Option("main", help="git revision to compare against"),
    out: Path = typer.Option("reports/review.md", help="markdown page to write"),
    metric: str = typer.Option("test.accuracy", help="metric the gate checks"),
    max_drop: float = typer.Option(0.002, help="the gate's allowed worsening"),
) -> None:
    """Write the pull-request review page: params and metrics diffs against BASE, gate verdict, figures."""
    from mnistlr.review import build_review

    build_review(base, out, metric, max_drop)
    typer.echo(f"wrote {out}")


@app.command()
@user_errors
def compare(
    out: Path = typer.Option("experiments", help="folder for compare.md, compare.json and compare.png"),
    variant: str = typer.Option("full", help="variant whose metrics and curves are compared"),
    metric: str = typer.Option("test.accuracy", help="metric the table is sorted by and the bar chart shows"),
    rev: list[str] = typer.Option(None, help="git revisions whose experiments to include (default: HEAD)"),
    all_commits: bool = typer.Option(False, "--all-commits", help="experiments of every commit"),
) -> None:
    """Compare DVC experiments: a markdown table, a JSON of it, and a figure (metric bars and overlaid curves)."""
    from mnistlr.compare import compare_experiments

    table = compare_experiments(out, variant, metric, rev or [], all_commits)
    typer.echo(f"compared {len(table)} runs; wrote {out}/compare.md, compare.json, compare.png")

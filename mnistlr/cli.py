"""The `mnistlr` command: tools around the pipeline (the DVC stages live in stages/).

Every command imports what it runs inside its body, so `mnistlr --help` stays fast and no
command loads more than it uses (none of them imports torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mnistlr import __version__
from mnistlr.errors import user_errors
from mnistlr.metrics import LOWER_IS_BETTER

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Multinomial logistic regression on MNIST: tools around the DVC pipeline.")

METRIC_HELP = (f"key in metrics/<variant>.json: test.accuracy, test.loss, test.ece, val.accuracy, val.loss, "
               f"weights.sparsity; lower is better for names ending in {', '.join(LOWER_IS_BETTER)}")


@app.command()
def version() -> None:
    """Print the mnistlr version."""
    typer.echo(__version__)


@app.command()
@user_errors
def gate(
    base: str = typer.Option("main", help="git revision to compare against"),
    metric: str = typer.Option("test.accuracy", help=METRIC_HELP),
    max_drop: float = typer.Option(0.002, help="largest allowed worsening of the metric, in its own units"),
    significance: Optional[float] = typer.Option(
        None, help="e.g. 0.05: fail only when test accuracy drops more than MAX_DROP AND the drop is significant "
                   "(exact McNemar test on the per-image test predictions, p < SIGNIFICANCE)"),
) -> None:
    """Exit 1 with a one-line reason when METRIC of any variant worsens more than MAX_DROP against BASE."""
    from mnistlr.review import run_gate

    passed, line = run_gate(base, metric, max_drop, significance)
    typer.echo(line, err=not passed)
    if not passed:
        raise typer.Exit(1)


@app.command()
@user_errors
def review(
    base: str = typer.Option("main", help="git revision to compare against"),
    out: Path = typer.Option("reports/review.md", help="markdown page to write"),
    metric: str = typer.Option("test.accuracy", help="metric the gate checks; " + METRIC_HELP),
    max_drop: float = typer.Option(0.002, help="the gate's allowed worsening"),
    significance: Optional[float] = typer.Option(None, help="the gate's significance level (see `mnistlr gate --help`)"),
) -> None:
    """Write the pull-request review page: verdict; every variant's test accuracy with the change's 95 % interval,
    McNemar p and images fixed and broken; params and metrics diffs."""
    from mnistlr.review import build_review

    build_review(base, out, metric, max_drop, significance)
    typer.echo(f"wrote {out}")


@app.command()
@user_errors
def compare(
    out: Path = typer.Option("experiments", help="folder for compare.md, compare.json and compare.png"),
    variant: str = typer.Option("full", help="variant whose metrics and curves the files compare"),
    metric: str = typer.Option("test.accuracy", help="sorts the table (best first); " + METRIC_HELP),
    rev: list[str] = typer.Option(None, help="git revisions whose experiments to include (default: HEAD)"),
    all_commits: bool = typer.Option(False, "--all-commits", help="experiments of every commit"),
) -> None:
    """Compare DVC experiments: print every variant's METRIC per run; write a table, its JSON and a figure."""
    from mnistlr.review import compare_experiments

    table, summary = compare_experiments(out, variant, metric, rev or [], all_commits)
    typer.echo(summary)
    typer.echo(f"compared {len(table)} runs on {variant}; wrote {out}/compare.md, compare.json, compare.png")


@app.command()
@user_errors
def predict(
    images: list[Path] = typer.Argument(..., help="PNG or JPEG digit images"),
    model: Path = typer.Option(Path("models/full.npz"), help="model written by the train stage"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list instead of text"),
) -> None:
    """Classify digit images, MNIST-style preprocessed with the model's own normalization; print the top 3."""
    from mnistlr.predict import TOP_K, predict_files

    results = predict_files(list(images), model)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    for r in results:
        top = ", ".join(f"{t['class']} ({t['probability']:.3f})" for t in r["top"])
        typer.echo(f"{r['image']}: {r['prediction']}  [top {TOP_K}: {top}]")

"""The `mnistlr` command: tools around the pipeline (the DVC stages live in stages/).

Every command imports what it runs inside its body, so `mnistlr --help` stays fast and no
command loads more than it uses (none of them imports torch).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mnistlr import __version__
from mnistlr.errors import user_errors
from mnistlr.metrics import LOWER_IS_BETTER

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Multinomial logistic regression on MNIST: tools around the DVC pipeline.",
)

METRIC_HELP = (
    f"key in metrics/<variant>.json: test.accuracy, test.loss, test.ece, val.accuracy, val.loss, "
    f"weights.sparsity; lower is better for names ending in {', '.join(LOWER_IS_BETTER)}"
)


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
    significance: float | None = typer.Option(
        None,
        help="e.g. 0.05: fail only when test accuracy drops more than MAX_DROP AND the drop is significant "
        "(exact McNemar test on the per-image test predictions, p < SIGNIFICANCE)",
    ),
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
    significance: float | None = typer.Option(None, help="the gate's significance level (see `mnistlr gate --help`)"),
) -> None:
    """Write the pull-request review page: verdict; every variant's test accuracy with the change's 95 % interval,
    McNemar p and images fixed and broken; params and metrics diffs."""
    from mnistlr.review import build_review

    build_review(base, out, metric, max_drop, significance)
    typer.echo(f"wrote {out}")


@app.command()
@user_errors
def compare(
    out: Path | None = typer.Option(
        None,
        help="also write compare.md, compare.json and compare.png into this folder; `--out experiments` puts the "
        "comparison on record for the report stage (commit it)",
    ),
    variant: str = typer.Option("full", help="variant whose metrics and curves the files compare"),
    metric: str = typer.Option("test.accuracy", help="sorts the table (best first); " + METRIC_HELP),
    rev: list[str] = typer.Option(None, help="git revisions whose experiments to include (default: HEAD)"),
    all_commits: bool = typer.Option(False, "--all-commits", help="experiments of every commit"),
) -> None:
    """Compare DVC experiments: print every variant's METRIC per run (queued, running and failed runs by their state,
    without numbers). Writes nothing unless given --out. Exit 1 when there is nothing to compare."""
    from mnistlr.review import compare_experiments

    table, summary = compare_experiments(out, variant, metric, rev or [], all_commits)
    typer.echo(summary)
    wrote = f"; wrote {out}/compare.md, compare.json, compare.png" if out is not None else ""
    typer.echo(f"compared {len(table)} runs on {variant}{wrote}")


DEFAULT_MODEL = Path("models/full.npz")


@app.command()
@user_errors
def predict(
    images: list[Path] = typer.Argument(..., help="PNG or JPEG digit images"),
    model: Path | None = typer.Option(
        None, help=f"model written by the train stage, e.g. models/frac10.npz  [default: {DEFAULT_MODEL}]"
    ),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list instead of text"),
) -> None:
    """Classify digit images, MNIST-style, with the model's own deskew and normalization; print the top 3.
    An image that cannot be read or holds no digit gets one 'error: FILE: reason' line on stderr and the
    others their answers, as `file` and `grep` do; the exit status is 1 when any image failed."""
    from mnistlr.errors import MnistlrError
    from mnistlr.model import missing_model
    from mnistlr.predict import TOP_K, predict_files

    if model is None and not DEFAULT_MODEL.is_file():
        raise MnistlrError(f"{missing_model(DEFAULT_MODEL)}; or pass --model")
    results = predict_files(list(images), model or DEFAULT_MODEL)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    for r in results:
        if "error" in r:
            typer.echo(f"error: {r['image']}: {r['error']}", err=True)
        elif not as_json:
            top = ", ".join(f"{t['class']} ({t['probability']:.3f})" for t in r["top"])
            typer.echo(f"{r['image']}: {r['prediction']}  [top {TOP_K}: {top}]")
    if any("error" in r for r in results):
        raise typer.Exit(1)


SET_HELP = "KEY=V1,V2,... of params.yaml, as `dvc exp run --queue -S`; repeat for a grid (the cartesian product)"
JOBS_HELP = (
    "processes that score and record the points (default: one per core, at most 4, each with 8 points at least; "
    "1: the sweep's own process)"
)


@app.command()
@user_errors
def sweep(
    set_param: list[str] = typer.Option(..., "--set-param", "-S", help=SET_HELP),
    yes: bool = typer.Option(False, "--yes", help="run a grid of more than 1000 points without asking"),
    jobs: int | None = typer.Option(None, min=1, help=JOBS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    show_plan: bool = typer.Option(
        False,
        "--plan",
        help="print the grid's tasks (its groups of points that share a training pass, cut into slices for "
        "--workers) and run nothing; `mnistlr sweep-point --group NAME` runs one",
    ),
    as_json: bool = typer.Option(False, "--json", help="with --plan: print the plan as JSON"),
    scheduler: str | None = typer.Option(
        None, help="run on this Dask scheduler instead of here, e.g. tcp://10.0.0.5:8786 (needs a git remote)"
    ),
    workers: int | None = typer.Option(
        None, min=1, help="run on a local Dask cluster of this many processes (the cluster path, tried on one machine)"
    ),
    name_prefix: str = typer.Option("sweep", help="experiment names are PREFIX-<hash of the params and commit>"),
    origin: str = typer.Option("origin", help="cluster path: git remote the workers clone from and push to"),
    out: Path = typer.Option("experiments", help="cluster path: folder for compare.md, compare.json, compare.png"),
    variant: str = typer.Option("full", help="cluster path: variant the comparison is of"),
    metric: str = typer.Option("test.accuracy", help="cluster path: sorts the comparison; " + METRIC_HELP),
    connect_timeout: float | None = typer.Option(
        None, min=0.1, help="cluster path: seconds to reach --scheduler before giving up (default: 10)"
    ),
) -> None:
    """Run a grid of DVC experiments in one pass on this machine: the points that share a training pass train
    together, each point is scored and recorded as an experiment of HEAD, the same as `dvc exp run -S <point>`
    records it (see them with `dvc exp show`). Points already recorded are skipped. The summary names the best
    point by validation accuracy and reports its test accuracy. With --scheduler or --workers, the grid runs on
    a Dask cluster instead (the optional cluster extra), one task per training pass. Exit status: the number of
    failed points (0: all passed)."""
    if show_plan:
        from mnistlr.grid import plan_json, plan_text
        from mnistlr.sweep import plan_tasks

        commit, tasks = plan_tasks(set_param, workers, name_prefix)
        typer.echo(json.dumps(plan_json(tasks), indent=2) if as_json else plan_text(tasks, commit))
        return
    if scheduler is None and workers is None:
        from mnistlr.grid import run_grid

        outcome = run_grid(set_param, ".", name_prefix, yes=yes, jobs=jobs, quiet=quiet, log=typer.echo)
        for o in outcome.failed:
            typer.echo(f"failed: {o.point.name} ({o.point.label}): {o.error}", err=True)
        ran = sum(o.status != "skipped" for o in outcome.outcomes)
        if ran:
            typer.echo(
                f"training: {ran} points in {outcome.train_seconds:.1f} s ({outcome.train_seconds / ran:.2f} s a point)"
            )
        typer.echo(outcome.summary)
        raise typer.Exit(min(len(outcome.failed), 100))

    from mnistlr.sweep import run_sweep

    outcome = run_sweep(
        set_param,
        scheduler,
        name_prefix,
        origin,
        workers or 2,
        out,
        variant,
        metric,
        log=lambda line: typer.echo(line),
        yes=yes,
        **({} if connect_timeout is None else {"connect_timeout_s": connect_timeout}),
    )
    if outcome.comparison:
        typer.echo(outcome.comparison)
        typer.echo(f"compared {outcome.compared} runs on {variant}; wrote {out}/compare.md, compare.json, compare.png")
    if outcome.summary:
        typer.echo(outcome.summary)
    failed = outcome.failed
    for r in failed:
        typer.echo(f"failed: {r.name} ({' '.join(r.overrides)}): {r.error}", err=True)
    typer.echo(
        f"sweep: {len(outcome.results) - len(failed)} of {len(outcome.results)} points passed, {len(failed)} failed",
        err=bool(failed),
    )
    raise typer.Exit(min(len(failed), 100))


@app.command("sweep-point")
def sweep_point(
    set_param: list[str] = typer.Option(
        [],
        "--set-param",
        "-S",
        help="KEY=VALUE of params.yaml (one point); with --group, the grid's KEY=V1,V2,... as given to `mnistlr sweep`",
    ),
    group: str | None = typer.Option(
        None,
        help="run this task of the grid: a group of points that share a training pass, or a slice of one "
        "(NAME.IofK), as `mnistlr sweep --plan` with the same -S names them",
    ),
    commit: str | None = typer.Option(None, help="commit to run (default: HEAD of this repository)"),
    name: str | None = typer.Option(
        None, help="experiment name of the one point (default: the one `mnistlr sweep` gives it)"
    ),
    name_prefix: str = typer.Option("sweep", help="prefix of the experiment names, as given to `mnistlr sweep`"),
    origin: str = typer.Option("origin", help="git remote name of this repository, or a URL"),
    config_local: Path | None = typer.Option(
        None,
        envvar="MNISTLR_DVC_CONFIG_LOCAL",
        show_envvar=True,
        help="a DVC config.local (credentials) on this machine, copied into the clone (default: this repository's "
        ".dvc/config.local; without either, dvc takes AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the "
        "environment)",
    ),
    workdir: Path | None = typer.Option(None, help="where the temporary clone goes (default: the temp folder)"),
    results: Path | None = typer.Option(None, help="also write each point's outcome to this JSON file"),
    jobs: int | None = typer.Option(None, min=1, help=JOBS_HELP),
) -> None:
    """Run one group of a sweep's points (or one point) in a fresh clone of the commit from the git remote: dvc pull
    of the prepared data, one training pass, each point recorded as an experiment (as `dvc exp run -S` records it),
    then the experiments' data pushed to the DVC remote and their refs to the git remote. Points already on the
    remote are skipped. Exit 1 when a point fails (the others are pushed), 75 when git or storage does (worth
    retrying)."""
    from mnistlr.errors import MnistlrError
    from mnistlr.sweep import TEMPFAIL, TransientError, point_from_here

    try:
        outcome = point_from_here(
            set_param,
            group,
            commit,
            name,
            name_prefix,
            origin,
            config_local,
            workdir,
            results,
            log=lambda line: typer.echo(line),
            jobs=jobs,
        )
    except TransientError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(TEMPFAIL) from None
    except MnistlrError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    failed = [r for r in outcome if r.status == "failed"]
    for r in failed:
        typer.echo(f"error: {r.name} ({' '.join(r.overrides)}): {r.error}", err=True)
    if failed:
        raise typer.Exit(1)

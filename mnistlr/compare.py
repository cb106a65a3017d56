"""Experiment comparison: `dvc exp show --json` -> a pandas table, markdown, JSON and a figure.

The outputs go to a committed folder (default experiments/) so the report
stage can depend on them like any file, instead of reading git-untracked
experiment refs.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mnistlr import atomic
from mnistlr.dvc_cli import dvc_json
from mnistlr.errors import MnistlrError

HEADLINE = ("test.accuracy", "test.loss", "val.accuracy")


@dataclass
class Run:
    """One committed baseline or experiment, with the params and one variant's metrics it recorded."""

    name: str
    rev: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _run(name: str, data: dict, variant: str) -> Run | None:
    metrics = (data.get("metrics") or {}).get(f"metrics/{variant}.json", {}).get("data")
    params = (data.get("params") or {}).get("params.yaml", {}).get("data")
    if not metrics or params is None:
        return None  # queued, failed, or without this variant: nothing to compare
    return Run(name=name, rev=data["rev"], params=flatten(params), metrics=flatten(metrics))


def runs_from_exp_show(show: list[dict], variant: str) -> list[Run]:
    """Baselines (commits) and their experiments from `dvc exp show --json`; the workspace is skipped
    because its curves are not in git."""
    runs = []
    for commit in show:
        if commit.get("rev") == "workspace":
            continue
        base = _run(commit.get("name") or commit["rev"][:7], commit.get("data") or {}, variant)
        if base:
            runs.append(base)
        for exp in commit.get("experiments") or []:
            for r in exp.get("revs") or []:
                run = _run(r.get("name") or r["rev"][:7], r.get("data") or {}, variant)
                if run:
                    runs.append(run)
    return runs


def param_text(v: Any) -> str:
    """A param value as text; numbers in %g so `-S x=0` (an int) and params.yaml's 0.0 read alike."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{float(v):g}"
    return str(v)


def differing_params(runs: list[Run]) -> list[str]:
    """Param keys whose value is not the same in every run (the variants list is left out)."""
    keys = sorted({k for r in runs for k in r.params if not k.startswith("variants.")})
    return [k for k in keys if len({param_text(r.params.get(k)) for r in runs}) > 1]


def comparison_table(runs: list[Run], metric: str) -> pd.DataFrame:
    """One row per run: name, rev, the differing params, the headline metrics; best `metric` first."""
    if not runs:
        raise MnistlrError("no experiments with metrics found; run some first, e.g. "
                           "dvc exp run --queue -S 'optimizer=sgd,adam' && dvc queue start")
    if not any(metric in r.metrics for r in runs):
        known = sorted({k for r in runs for k in r.metrics})
        raise MnistlrError(f"metric {metric!r} not in the experiments' metrics; accepted: {', '.join(known)}")
    diff = differing_params(runs)
    cols = list(dict.fromkeys([metric, *HEADLINE]))
    rows = [{"run": r.name, "rev": r.rev[:7], **{k: param_text(r.params.get(k)) for k in diff},
             **{m: r.metrics.get(m) for m in cols}} for r in runs]
    ascending = metric.endswith("loss")
    return pd.DataFrame(rows).sort_values(metric, ascending=ascending, kind="stable").reset_index(drop=True)


def curves_at(rev: str, variant: str, cwd: str | Path = ".") -> pd.DataFrame | None:
    """plots/train/<variant>.csv as committed in `rev` (experiments commit it: it is cache: false)."""
    proc = subprocess.run(["git", "show", f"{rev}:plots/train/{variant}.csv"], cwd=cwd, capture_output=True, text=True)
    return pd.read_csv(io.StringIO(proc.stdout)) if proc.returncode == 0 and proc.stdout.strip() else None


def run_label(row: pd.Series, diff: list[str]) -> str:
    """'name (optimizer=adam, train.weight_decay=0.0001)'."""
    shown = ", ".join(f"{k}={row[k]}" for k in diff)
    return f"{row['run']} ({shown})" if shown else str(row["run"])


def _md(df: pd.DataFrame) -> str:
    """Markdown with floats at 4 decimals and everything else verbatim (params stay as written)."""
    shown = df.apply(lambda col: col.map(lambda v: f"{v:.4f}" if isinstance(v, float) else v))
    return shown.to_markdown(index=False, disable_numparse=True)


def grid_markdown(table: pd.DataFrame, diff: list[str], metric: str) -> str | None:
    """For a two-param sweep: `metric` in a grid (rows: first param, columns: second); best run per cell."""
    if len(diff) != 2:
        return None
    best = max if not metric.endswith("loss") else min
    grid = table.pivot_table(index=diff[0], columns=diff[1], values=metric, aggfunc=best)
    grid.columns = [f"{diff[1]}={c}" for c in grid.columns]
    return _md(grid.reset_index())


def to_markdown(table: pd.DataFrame, diff: list[str], variant: str, metric: str, figure_name: str) -> str:
    """The comparison page."""
    return "\n".join([
        "# Experiment comparison",
        "",
        f"Variant `{variant}`, sorted by `{metric}` (best first). Params columns: those that differ between runs"
        f" ({', '.join(f'`{k}`' for k in diff) or 'none'}). Written by `mnistlr compare`.",
        "",
        _md(table),
        "",
        *([f"`{metric}` over the sweep grid:", "", grid, ""] if (grid := grid_markdown(table, diff, metric)) else []),
        f"![{metric} per run and validation curves overlaid]({figure_name})",
        "",
    ])


def compare_experiments(out_dir: str | Path, variant: str = "full", metric: str = "test.accuracy",
                        revs: list[str] | None = None, all_commits: bool = False, cwd: str | Path = ".") -> pd.DataFrame:
    """Read the experiments through dvc, write out_dir/compare.{md,json,png}; return the table."""
    from mnistlr import review_figures

    args = ["exp", "show"] + (["--all-commits"] if all_commits else [a for r in revs or [] for a in ("--rev", r)])
    runs = runs_from_exp_show(dvc_json(*args, cwd=cwd), variant)
    if not runs:
        raise MnistlrError(f"no committed run or experiment has metrics/{variant}.json; check --variant "
                           "(a name under `variants` in params.yaml) or run experiments first")
    table = comparison_table(runs, metric)
    diff = differing_params(runs)
    out_dir = Path(out_dir)
    labels = [run_label(row, diff) for _, row in table.iterrows()]
    by_name = {r.name: r for r in runs}
    curves = {lab: c for lab, name in zip(labels, table["run"])
              if (c := curves_at(by_name[name].rev, variant, cwd)) is not None}
    fig = review_figures.comparison_figure(labels, table[metric].tolist(), metric, curves)
    atomic.save_figure(fig, out_dir / "compare.png")
    review_figures.close(fig)
    atomic.write_json(out_dir / "compare.json", {"variant": variant, "metric": metric, "differing_params": diff,
                                                 "runs": table.to_dict("records")})
    atomic.write_text(out_dir / "compare.md", to_markdown(table, diff, variant, metric, "compare.png"))
    return table

"""The pull-request review page: params and metrics diffs against a base revision, the gate verdict, figures."""

from __future__ import annotations

import os
from pathlib import Path

from mnistlr import atomic
from mnistlr.dvc_cli import dvc_json, run_dvc
from mnistlr.gate import run_gate, variant_of

# Lets the CI find and update its one comment instead of adding a new one per push.
MARKER = "<!-- mnistlr-review -->"
HEADLINE_METRICS = ("test.accuracy", "test.loss", "val.accuracy")


def headline_table(diff: dict, base: str) -> str:
    """Markdown table of the headline metrics per variant: base, workspace, change."""
    rows = [f"| variant | metric | {base} | workspace | change |", "|---|---|---:|---:|---:|"]
    for path, entries in sorted(diff.items()):
        for key in HEADLINE_METRICS:
            e = entries.get(key)
            if e is None:
                continue
            old, new = e.get("old"), e.get("new")
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            change = "-" if old is None or new is None else f"{new - old:+.4f}"
            rows.append(f"| {variant_of(path)} | {key} | {fmt(old)} | {fmt(new)} | {change} |")
    return "\n".join(rows)


def figure_links(out_dir: Path, figures_dir: Path, reference: str) -> list[str]:
    """Image lines for the figures that exist, relative to the review page (CML uploads them)."""
    wanted = [("learning curves (all variants)", figures_dir / "learning_curves.png"),
              (f"confusion matrix of {reference}", figures_dir / reference / "confusion.png"),
              (f"per-class weights of {reference}", figures_dir / reference / "weights.png")]
    return [f"![{alt}]({Path(os.path.relpath(p, out_dir)).as_posix()})"
            for alt, p in wanted if Path(p).is_file()]


def build_review(base: str, out: str | Path, metric: str = "test.accuracy", max_drop: float = 0.002,
                 figures_dir: str | Path = "reports/figures", reference: str = "full", cwd: str | Path = ".") -> str:
    """Write the review markdown to `out` and return it (the gate verdict is reported, not raised)."""
    out = Path(out)
    params_md = run_dvc("params", "diff", base, "--md", cwd=cwd).strip()
    metrics_md = run_dvc("metrics", "diff", base, "--md", cwd=cwd).strip()
    diff_all = dvc_json("metrics", "diff", base, "--all", cwd=cwd)
    passed, gate_line = run_gate(base, metric, max_drop, cwd=cwd)
    lines = [
        MARKER,
        f"## mnistlr review against `{base}`",
        "",
        f"**Regression gate** ({'passed' if passed else 'FAILED'}): `{gate_line}`",
        "",
        f"### Params changed (`dvc params diff {base} --md`)",
        "",
        params_md or "No params changed.",
        "",
        f"### Headline metrics (workspace vs `{base}`)",
        "",
        headline_table(diff_all, base),
        "",
        f"### Metrics changed (`dvc metrics diff {base} --md`)",
        "",
        "<details><summary>every changed metric</summary>",
        "",
        metrics_md or "No metrics changed.",
        "",
        "</details>",
        "",
        "### Figures",
        "",
        *figure_links(out.parent, Path(figures_dir), reference),
        "",
    ]
    text = "\n".join(lines)
    atomic.write_text(out, text)
    return text

"""Reviewing results: experiment comparison, the regression gate and the pull-request review page.

All three read DVC's own view of the results through its command line (`dvc exp show`,
`dvc metrics diff`, `dvc params diff`), whose JSON output is its stable interface; mnistlr.repo runs
it, and mnistlr.stats tells whether a change of test accuracy is real.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mnistlr import atomic
from mnistlr.errors import MnistlrError
from mnistlr.metrics import higher_is_better
from mnistlr.repo import dvc_json, git_show, run_dvc
from mnistlr.stats import CONFIDENCE, PairedChange, paired_change, read_predictions

HEADLINE = ("test.accuracy", "test.loss", "val.accuracy")
# Lets the CI find and update its one comment instead of adding a new one per push.
MARKER = "<!-- mnistlr-review -->"


def variant_of(metrics_path: str) -> str:
    """'metrics/full.json' -> 'full'."""
    return Path(metrics_path).stem


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def fmt(value: float | None) -> str:
    """A metric value for a table: four decimals, '-' when absent."""
    return "-" if value is None else f"{value:.4f}"


# --- is a change real? two models' predictions on the same test images ---------------------------------


def predictions_at(rev: str | None, variant: str, cwd: str | Path = ".") -> tuple[np.ndarray, np.ndarray] | None:
    """plots/predictions/<variant>.csv as committed in `rev` (None: the workspace); None when absent."""
    rel = f"plots/predictions/{variant}.csv"
    if rev is None:
        path = Path(cwd) / rel
        return read_predictions(path.read_text(), str(path)) if path.is_file() else None
    text = git_show(rev, rel, cwd)
    return read_predictions(text, f"{rev}:{rel}") if text is not None else None


def paired_changes(base: str, variants: list[str], cwd: str | Path = ".") -> dict[str, PairedChange]:
    """Every variant with test predictions both in `base` and in the workspace."""
    out = {}
    for variant in variants:
        old, new = predictions_at(base, variant, cwd), predictions_at(None, variant, cwd)
        if old is not None and new is not None:
            out[variant] = paired_change(variant, old, new)
    return out


# --- compare ---------------------------------------------------------------------------------------


# What `dvc exp show --json` says of an experiment that has no results of its own: its executor's state.
# A running experiment's metrics there are those of the folder it runs in (the baseline's, or the workspace's
# left by another run), a failed one's are its baseline's, a queued one has none: none of them are its own.
UNFINISHED = ("queued", "running", "failed")
DONE = "done"


@dataclass
class Run:
    """One committed baseline or experiment: its params, every variant's metrics, and whether it has finished
    (`state`: done, or one of UNFINISHED; an unfinished run has no metrics)."""

    name: str
    rev: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> flat metrics
    state: str = DONE


def _run(name: str, entry: dict, state: str = DONE) -> Run | None:
    """A Run from one rev of `dvc exp show --json`; None for a finished rev without metrics (not a pipeline run)."""
    data = entry.get("data") or {}
    params = flatten((data.get("params") or {}).get("params.yaml", {}).get("data") or {})
    if state == DONE and entry.get("error"):
        state = "failed"  # dvc could not read what the run left
    if state != DONE:
        return Run(name=name, rev=entry.get("rev") or "", params=params, state=state)
    files = data.get("metrics") or {}
    by_variant = {variant_of(path): flatten(f["data"]) for path, f in files.items() if f.get("data")}
    if not by_variant or not params:
        return None
    return Run(name=name, rev=entry["rev"], params=params, metrics=by_variant)


def runs_from_exp_show(show: list[dict]) -> list[Run]:
    """Baselines (commits) and their experiments from `dvc exp show --json`, finished or not (see UNFINISHED);
    the workspace is skipped because its curves are not in git."""
    runs = []
    for commit in show:
        if commit.get("rev") == "workspace":
            continue
        base = _run(commit.get("name") or commit["rev"][:7], commit)
        if base:
            runs.append(base)
        for exp in commit.get("experiments") or []:
            state = ((exp.get("executor") or {}).get("state") or DONE).lower()
            state = state if state in UNFINISHED else DONE
            for r in exp.get("revs") or []:
                run = _run(r.get("name") or exp.get("name") or r["rev"][:7], r, state)
                if run:
                    runs.append(run)
    return runs


def finished(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.state == DONE]


def param_text(v: Any) -> str:
    """A param value as text; numbers in %g so `-S x=0` (an int) and params.yaml's 0.0 read alike."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{float(v):g}"
    return str(v)


def differing_params(runs: list[Run]) -> list[str]:
    """Param keys whose value is not the same in every run (the variants list is left out)."""
    keys = sorted({k for r in runs for k in r.params if not k.startswith("variants.")})
    return [k for k in keys if len({param_text(r.params.get(k)) for r in runs}) > 1]


def comparison_table(runs: list[Run], variant: str, metric: str) -> pd.DataFrame:
    """One row per run with `variant`'s metrics: name, rev, the differing params, the headline metrics;
    best `metric` first."""
    runs = [r for r in runs if variant in r.metrics]
    if not runs:
        raise MnistlrError(
            f"no committed run or experiment has metrics/{variant}.json; check --variant "
            "(a name under `variants` in params.yaml) or run experiments first, e.g. "
            "dvc exp run --queue -S 'optimizer=sgd,adam' && dvc queue start"
        )
    if not any(metric in r.metrics[variant] for r in runs):
        known = sorted({k for r in runs for k in r.metrics[variant]})
        raise MnistlrError(f"metric {metric!r} not in the experiments' metrics; accepted: {', '.join(known)}")
    diff = differing_params(runs)
    cols = list(dict.fromkeys([metric, *HEADLINE]))
    rows = [
        {
            "run": r.name,
            "rev": r.rev[:7],
            **{k: param_text(r.params.get(k)) for k in diff},
            **{m: r.metrics[variant].get(m) for m in cols},
        }
        for r in runs
    ]
    return (
        pd.DataFrame(rows)
        .sort_values(metric, ascending=not higher_is_better(metric), kind="stable", na_position="last")
        .reset_index(drop=True)
    )


def terminal_table(runs: list[Run], metric: str = "test.accuracy") -> str:
    """Plain text for the terminal: each run, the params that differ, and `metric` of every variant; a run that has
    not finished shows its state (queued, running, failed) instead of numbers."""
    diff = differing_params(runs)
    variants = sorted(dict.fromkeys(v for r in runs for v in r.metrics), key=lambda v: v != "full")  # full first
    rows = [
        {
            "run": r.name,
            **{k: param_text(r.params.get(k)) for k in diff},
            **{v: fmt(r.metrics.get(v, {}).get(metric)) if r.state == DONE else r.state for v in variants},
        }
        for r in runs
    ]
    text = f"{metric} of every variant:\n" + pd.DataFrame(rows).to_string(index=False)
    failed = [r.name for r in runs if r.state == "failed"]
    if failed:
        text += "\n" + "; ".join(f"{n} failed: `dvc queue logs {n}` shows why" for n in failed)
    return text


def unfinished_note(runs: list[Run]) -> str:
    """'third (running), bad (queued)'; '' when every run has finished."""
    return ", ".join(f"{r.name} ({r.state})" for r in runs if r.state != DONE)


def curves_at(rev: str, variant: str, cwd: str | Path = ".") -> pd.DataFrame | None:
    """plots/train/<variant>.csv as committed in `rev` (experiments commit it: it is cache: false)."""
    text = git_show(rev, f"plots/train/{variant}.csv", cwd)
    return pd.read_csv(io.StringIO(text)) if text is not None else None


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
    grid = table.pivot_table(
        index=diff[0], columns=diff[1], values=metric, aggfunc="max" if higher_is_better(metric) else "min"
    )
    grid.columns = [f"{diff[1]}={c}" for c in grid.columns]
    return _md(grid.reset_index())


def comparison_markdown(
    table: pd.DataFrame, diff: list[str], variant: str, metric: str, figure_name: str, n_test: int | str = ""
) -> str:
    """The comparison page."""
    grid = grid_markdown(table, diff, metric)
    return "\n".join(
        [
            "# Experiment comparison",
            "",
            f"Variant `{variant}`, sorted by `{metric}` (best first). Params columns: those that differ between runs"
            f" ({', '.join(f'`{k}`' for k in diff) or 'none'}). `p vs best`: exact McNemar p of each run's test "
            f"predictions against the run with the best test accuracy; `same as best`: the {n_test} test images cannot "
            f"tell the two apart (p >= {1 - CONFIDENCE:.2g}). Written by `mnistlr compare`.",
            "",
            _md(table),
            "",
            *([f"`{metric}` over the sweep grid:", "", grid, ""] if grid else []),
            f"![{metric} per run and validation curves overlaid]({figure_name})",
            "",
        ]
    )


def mark_indistinguishable(
    table: pd.DataFrame, runs: list[Run], variant: str, cwd: str | Path = ".", alpha: float = 1 - CONFIDENCE
) -> pd.DataFrame:
    """Add each run's exact McNemar p against the run with the best test accuracy (same test images,
    image by image) and whether the test set can tell them apart at `alpha`."""
    by_name = {r.name: r for r in runs}
    preds = {name: predictions_at(by_name[name].rev, variant, cwd) for name in table["run"]}
    best = table.loc[table["test.accuracy"].idxmax(), "run"] if table["test.accuracy"].notna().any() else None
    p_values = []
    for name in table["run"]:
        if best is None or preds[name] is None or preds[best] is None:
            p_values.append(None)
        else:
            c = paired_change(variant, preds[best], preds[name])
            p_values.append(round(c.p_value, 4))
    table = table.copy()
    table["p vs best"] = p_values
    table["same as best"] = ["-" if p is None else ("yes" if p >= alpha else "no") for p in p_values]
    return table


# While a queue runs, `dvc exp show` can read a queued run's temp folder (.dvc/tmp/exps/tmpXXXX) or its info file
# (.dvc/tmp/exps/run/REV/REV.run) as it comes or goes: "... .dvc/tmp/exps/tmpXXXX/.dvc does not exist" once the run
# removed it, "unexpected error - Empty git repo" before the run has fetched its commit, "No such file or directory:
# '.../.dvc/tmp/exps/run/...'" as a run ends. Asked again a moment later, it no longer meets them that way.
QUEUE_RACE = re.compile(r"\.dvc/tmp/exps/(tmp|run/)|Empty git repo")
QUEUE_RACE_TRIES = 4
NOTHING_TO_COMPARE = (
    "no experiments to compare: run some with dvc exp run, e.g. dvc exp run -S optimizer=adam, "
    "or a grid: dvc exp run --queue -S 'optimizer=sgd,adam' && dvc queue start"
)


def exp_show(args: list[str], cwd: str | Path = ".") -> list[dict]:
    """`dvc exp show ARGS --json`, asked again (up to QUEUE_RACE_TRIES times in all) when it met a queued run's
    temp folder as it came or went."""
    for attempt in range(1, QUEUE_RACE_TRIES):
        try:
            return dvc_json("exp", "show", *args, cwd=cwd)
        except MnistlrError as exc:
            if not QUEUE_RACE.search(str(exc)):
                raise
        time.sleep(0.5 * attempt)
    return dvc_json("exp", "show", *args, cwd=cwd)


def check_comparable(runs: list[Run]) -> None:
    """A one-line error unless at least two runs have finished (the baseline alone compares nothing)."""
    if len(finished(runs)) >= 2:
        return
    waiting = unfinished_note(runs)
    if waiting:
        raise MnistlrError(f"no finished experiment to compare yet: {waiting}; `dvc queue status` shows the queue")
    raise MnistlrError(NOTHING_TO_COMPARE)


def write_comparison(
    out_dir: Path, table: pd.DataFrame, runs: list[Run], variant: str, metric: str, n_test: int | str, cwd: str | Path
) -> None:
    """out_dir/compare.{md,json,png}: the table of the runs with `variant`, its JSON, and a figure with the curves."""
    from mnistlr import figures

    with_variant = [r for r in runs if variant in r.metrics]
    diff = differing_params(with_variant)
    labels = [run_label(row, diff) for _, row in table.iterrows()]
    by_name = {r.name: r for r in with_variant}
    curves = {
        lab: c
        for lab, name in zip(labels, table["run"], strict=True)
        if (c := curves_at(by_name[name].rev, variant, cwd)) is not None
    }
    figures.save(figures.comparison_figure(labels, table[metric].tolist(), metric, curves), out_dir / "compare.png")
    records = table.to_dict("records")
    for rec in records:  # every variant's `metric` too: the report sets plain and deskewed runs side by side
        rec["by_variant"] = {v: m.get(metric) for v, m in by_name[rec["run"]].metrics.items()}
    atomic.write_json(
        out_dir / "compare.json", {"variant": variant, "metric": metric, "differing_params": diff, "runs": records}
    )
    page = comparison_markdown(table, diff, variant, metric, "compare.png", n_test)
    waiting = unfinished_note(runs)
    if waiting:
        page += f"\nNot finished when compared, so not in the table: {waiting}.\n"
    atomic.write_text(out_dir / "compare.md", page)


def compare_experiments(
    out_dir: str | Path | None = None,
    variant: str = "full",
    metric: str = "test.accuracy",
    revs: list[str] | None = None,
    all_commits: bool = False,
    cwd: str | Path = ".",
) -> tuple[pd.DataFrame, str]:
    """Read the experiments through dvc; return the table of the finished runs with `variant` and the terminal
    summary (every run, every variant's `metric`, and which runs the test set cannot tell from the best). Writes
    files only when given `out_dir` (compare.{md,json,png}): reading results never changes what the pipeline
    depends on."""
    args = ["--all-commits"] if all_commits else [a for r in revs or [] for a in ("--rev", r)]
    runs = runs_from_exp_show(exp_show(args, cwd))
    check_comparable(runs)
    with_variant = [r for r in runs if variant in r.metrics]
    table = mark_indistinguishable(comparison_table(runs, variant, metric), with_variant, variant, cwd)
    first = predictions_at(with_variant[0].rev, variant, cwd)
    n_test = first[0].size if first is not None else ""
    if out_dir is not None:
        write_comparison(Path(out_dir), table, runs, variant, metric, n_test, cwd)
    same = [str(n) for n, flag in zip(table["run"], table["same as best"], strict=True) if flag == "yes"]
    note = (
        f"Runs the {n_test} test images of {variant} cannot tell from the best test accuracy "
        f"(exact McNemar p >= {1 - CONFIDENCE:.2g}): {', '.join(same) or 'none'}"
    )
    width = shutil.get_terminal_size((100, 24)).columns
    return table, terminal_table(runs, metric) + "\n\n" + textwrap.fill(note, width=min(width, 100))


# --- the gate --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One variant's metric, base against workspace."""

    variant: str
    old: float | None
    new: float | None
    higher_is_better: bool = True

    @property
    def compared(self) -> bool:
        return self.old is not None and self.new is not None

    @property
    def drop(self) -> float:
        """How much worse the new value is (negative: better); 0 when either side is missing."""
        if not self.compared:
            return 0.0
        return (self.old - self.new) if self.higher_is_better else (self.new - self.old)


def changes(diff: dict, metric: str) -> list[Change]:
    """One Change per metrics file that has `metric`, from `dvc metrics diff --all --json` output."""
    entries_by_path = diff.get("diff", diff)
    out = [
        Change(variant_of(path), e[metric].get("old"), e[metric].get("new"), higher_is_better(metric))
        for path, e in sorted(entries_by_path.items())
        if metric in e
    ]
    if not out:
        known = sorted({k for entries in entries_by_path.values() for k in entries})
        raise MnistlrError(f"metric {metric!r} is in no metrics file; accepted: {', '.join(known) or 'none found'}")
    return out


def gate_verdict(found: list[Change], metric: str, max_drop: float, base: str) -> tuple[bool, str]:
    """(passed, one-line reason). A variant new on the branch (no base value) passes and is named."""
    failed = sorted((c for c in found if c.drop > max_drop + 1e-12), key=lambda c: -c.drop)
    new = [c.variant for c in found if c.old is None and c.new is not None]
    gone = [c.variant for c in found if c.old is not None and c.new is None]
    new_note = (f"; new on this branch (no {base} value): {', '.join(new)}" if new else "") + (
        f"; missing on this branch (only {base} has it): {', '.join(gone)}" if gone else ""
    )
    if failed:
        parts = [
            f"{c.variant} {metric} worsened from {c.old:.4f} ({base}) to {c.new:.4f} (workspace), drop {c.drop:.4f}"
            for c in failed
        ]
        return False, f"gate FAILED (max drop {max_drop:g}): " + "; ".join(parts) + new_note
    compared = [c for c in found if c.compared]
    if compared:
        worst = max(compared, key=lambda c: c.drop)
        detail = f"largest drop {worst.variant} {worst.old:.4f} -> {worst.new:.4f}"
    else:
        detail = f"no variant has a {base} value to compare"
    return True, (
        f"gate passed: {metric} of {len(compared)} variant(s) within {max_drop:g} of {base} ({detail}){new_note}"
    )


def significance_verdict(paired: dict[str, PairedChange], max_drop: float, alpha: float, base: str) -> tuple[bool, str]:
    """(passed, one-line reason): test accuracy fails only where it drops more than max_drop AND the
    drop is significant (exact McNemar p < alpha); a drop that the test set cannot tell from noise passes."""
    if not paired:
        return True, f"gate passed: no variant has test predictions both in {base} and in the workspace"
    dropped = [c for c in paired.values() if -c.change > max_drop + 1e-12]
    failed = sorted((c for c in dropped if c.p_value < alpha), key=lambda c: c.change)
    rule = f"max drop {max_drop:g}, significance {alpha:g}"
    if failed:
        return False, f"gate FAILED ({rule}): " + "; ".join(c.describe() for c in failed)
    if dropped:
        return True, (f"gate passed ({rule}): drops not significant: " + "; ".join(c.describe() for c in dropped))
    worst = min(paired.values(), key=lambda c: c.change)
    return (
        True,
        f"gate passed ({rule}): test.accuracy of {len(paired)} variant(s) within {max_drop:g} of {base} "
        f"(largest drop: {worst.describe()})",
    )


def check_gate_args(metric: str, max_drop: float, significance: float | None) -> None:
    """One-line errors for gate settings that cannot work, before any dvc call."""
    if max_drop < 0:
        raise MnistlrError(f"--max-drop {max_drop} is negative; accepted: a number >= 0")
    if significance is not None:
        if not 0 < significance < 1:
            raise MnistlrError(
                f"--significance {significance} is not accepted; accepted: a number between 0 and 1, e.g. 0.05"
            )
        if metric != "test.accuracy":
            raise MnistlrError(
                f"--significance needs per-image predictions, which exist for test accuracy only; "
                f"--metric {metric!r} is not accepted with it; accepted: test.accuracy"
            )


def judge(
    diff: dict, base: str, metric: str, max_drop: float, significance: float | None, paired: dict[str, PairedChange]
) -> tuple[bool, str]:
    """The gate's verdict from `dvc metrics diff --all --json` output and, with `significance`, the
    variants' paired test predictions."""
    found = changes(diff, metric)
    if significance is None:
        return gate_verdict(found, metric, max_drop, base)
    return significance_verdict(
        {c.variant: paired[c.variant] for c in found if c.variant in paired}, max_drop, significance, base
    )


def run_gate(
    base: str, metric: str, max_drop: float, significance: float | None = None, cwd: str | Path = "."
) -> tuple[bool, str]:
    """Compare the workspace's metrics with `base`'s through `dvc metrics diff`; with `significance`,
    compare test predictions image by image and fail only on significant drops of test accuracy."""
    check_gate_args(metric, max_drop, significance)
    diff = dvc_json("metrics", "diff", base, "--all", cwd=cwd)
    paired = paired_changes(base, [c.variant for c in changes(diff, metric)], cwd) if significance is not None else {}
    return judge(diff, base, metric, max_drop, significance, paired)


# --- the review page -------------------------------------------------------------------------------


def accuracy_table(diff: dict, base: str, paired: dict[str, PairedChange] | None = None) -> str:
    """Markdown: every variant's test accuracy, base -> workspace, the change in points and, where both
    sides' test predictions exist, its 95 % interval, the exact McNemar p and the images fixed and broken."""
    paired = paired or {}
    rows = [
        f"| variant | test accuracy ({base}) | test accuracy (workspace) | change (points) | "
        f"{CONFIDENCE:.0%} CI (points) | McNemar p | fixed | broken |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path, entries in sorted(diff.items(), key=lambda kv: (variant_of(kv[0]) != "full", kv[0])):
        e = entries.get("test.accuracy")
        if e is None:
            continue
        old, new = e.get("old"), e.get("new")
        change = "-" if old is None or new is None else f"{100 * (new - old):+.2f}"
        p = paired.get(variant_of(path))
        stats = (
            f"[{100 * p.interval[0]:+.2f}, {100 * p.interval[1]:+.2f}] | {p.p_value:.3g} | {p.fixed} | {p.broken}"
            if p
            else "- | - | - | -"
        )
        rows.append(f"| {variant_of(path)} | {fmt(old)} | {fmt(new)} | {change} | {stats} |")
    return "\n".join(rows)


def headline_table(diff: dict, base: str) -> str:
    """Markdown table of every headline metric per variant: base, workspace, change."""
    rows = [f"| variant | metric | {base} | workspace | change |", "|---|---|---:|---:|---:|"]
    for path, entries in sorted(diff.items()):
        for key, e in sorted(entries.items()):  # dvc lists a file's metrics in no fixed order
            old, new = e.get("old"), e.get("new")
            change = "-" if old is None or new is None else f"{new - old:+.4f}"
            rows.append(f"| {variant_of(path)} | {key} | {fmt(old)} | {fmt(new)} | {change} |")
    return "\n".join(rows)


def figure_links(out_dir: Path, figures_dir: Path) -> list[str]:
    """Image lines for the pipeline's figures that exist, relative to the review page (CML uploads them).
    The evaluate stage draws each as one image: curves and weights of every variant, the confusion
    matrix of the reference variant (its title names it)."""
    wanted = [
        ("learning curves (all variants)", figures_dir / "learning_curves.png"),
        ("confusion matrix of the reference variant", figures_dir / "confusion.png"),
        ("per-class weights (all variants)", figures_dir / "weights.png"),
    ]
    return [f"![{alt}]({Path(os.path.relpath(p, out_dir)).as_posix()})" for alt, p in wanted if Path(p).is_file()]


def build_review(
    base: str,
    out: str | Path,
    metric: str = "test.accuracy",
    max_drop: float = 0.002,
    significance: float | None = None,
    figures_dir: str | Path = "reports/figures",
    cwd: str | Path = ".",
) -> str:
    """Write the review markdown to `out` and return it (the gate's verdict is reported, not raised)."""
    out = Path(out)
    check_gate_args(metric, max_drop, significance)
    params_md = run_dvc("params", "diff", base, "--md", cwd=cwd).strip()
    diff_all = dvc_json("metrics", "diff", base, "--all", cwd=cwd)
    diff_all = diff_all.get("diff", diff_all)
    paired = paired_changes(base, [variant_of(p) for p in diff_all], cwd)
    passed, gate_line = judge(diff_all, base, metric, max_drop, significance, paired)
    lines = [
        MARKER,
        f"**{'Passed' if passed else 'FAILED'}** against `{base}`: {gate_line}",
        "",
        accuracy_table(diff_all, base, paired),
        "",
        f"A change is a real one when its {CONFIDENCE:.0%} interval excludes 0 (McNemar p < {1 - CONFIDENCE:.2g}): "
        "the interval and p come from the test images the two models disagree on (fixed: wrong before, right now; "
        "broken: the reverse).",
        "",
        f"### Params changed (`dvc params diff {base}`)",
        "",
        params_md or "No params changed.",
        "",
        "<details><summary>every headline metric, base and workspace</summary>",
        "",
        headline_table(diff_all, base),
        "",
        "</details>",
        "",
        "### Figures",
        "",
        *figure_links(out.parent, Path(figures_dir)),
        "",
    ]
    text = "\n".join(lines)
    atomic.write_text(out, text)
    return text

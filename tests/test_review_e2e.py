"""Reviewing results end to end in a temp git + DVC project: plots render in headless Chromium,
`make review` on an Adam branch (with a variant main lacks) writes real diffs, the gate fails on a
worse branch and passes on main; `mnistlr compare` during a queue shows unfinished runs by their state,
and no compare changes what the pipeline depends on unless told to write."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnistlr import stats
from mnistlr.review import MARKER
from tests import html_render
from tests.conftest import SMALL_PARAMS, copy_project, dvc, run, skip_unless_ci

BIN = Path(sys.executable).parent


def set_params(project: Path, **dotted) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in dotted.items():
        *parents, last = key.split("__")
        node = params
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def git(project: Path, env: dict, *args: str) -> str:
    return run(["git", *args], project, env).stdout


def commit_all(project: Path, env: dict, message: str) -> None:
    git(project, env, "add", "-A")
    git(project, env, "commit", "-qm", message)


def back_to_main(project: Path, env: dict) -> None:
    """Check out main with its outputs (metrics are in git; models come back from the DVC cache)."""
    git(project, env, "checkout", "-q", "-f", "main")
    dvc("checkout", "-f", cwd=project, env=env)


def mnistlr(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return run([str(BIN / "mnistlr"), *args], project, env, check=False)


def local_vega(html: Path, cache: Path) -> Path | None:
    """The vega/vega-lite/vega-embed builds DVC's page names, fetched once with `npm pack`; None without npm."""
    npm = shutil.which("npm")
    if npm is None:
        return None
    js = cache / "js"
    js.mkdir(parents=True, exist_ok=True)
    for name, version in re.findall(r"cdn\.jsdelivr\.net/npm/(vega(?:-lite|-embed)?)@([\w.\-]+)", html.read_text()):
        target = js / f"{name}.min.js"
        if target.is_file():
            continue
        proc = subprocess.run(
            [npm, "pack", f"{name}@{version}", "--pack-destination", str(cache)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if proc.returncode != 0:
            return None
        with tarfile.open(cache / f"{name}-{version}.tgz") as tar:
            target.write_bytes(tar.extractfile(f"package/build/{name}.min.js").read())
    return js


def render_plots(project: Path, env: dict, args: list[str], out: str, cache: Path) -> tuple[html_render.Rendered, int]:
    """`dvc plots ARGS -o OUT`, then render OUT/index.html; returns the render and the number of vega charts."""
    if html_render.find_chromium() is None:
        skip_unless_ci("chromium not installed (.ci/run installs it)")
    dvc("plots", *args, "-o", out, cwd=project, env=env)
    page = project / out / "index.html"
    js = local_vega(page, cache)
    if js is not None:
        assert html_render.localize_scripts(page, js) == 3
    rendered = html_render.render(page, project / out / "screenshot.png")
    charts = len(re.findall(r'class="marks"', rendered.dom))
    if charts == 0 and js is None:
        pytest.skip("vega scripts unavailable: no npm to fetch them and the CDN is unreachable")
    return rendered, charts


@pytest.fixture(scope="module")
def project(tmp_path_factory, reproduced):
    """A project whose main branch holds a full pipeline run (metrics and curves committed): a copy of the
    session's reproduced project."""
    return copy_project(reproduced, tmp_path_factory.mktemp("review") / "p"), reproduced[1]


def test_plots_show_renders_in_headless_chromium(project, tmp_path_factory):
    proj, env = project
    rendered, charts = render_plots(proj, env, ["show"], "dvc_plots", tmp_path_factory.mktemp("vega"))
    assert rendered.errors() == [], rendered.console
    # loss, accuracy, val accuracy of all variants, confusion matrix
    assert charts >= 4, rendered.dom[:2000]
    source = (proj / "dvc_plots" / "index.html").read_text()  # charts draw on canvas: titles are in the specs
    for title in ("Loss of full (train vs val)", "Accuracy of full (train vs val)", "Confusion matrix (test set)"):
        assert title in source
    pngs = sorted((proj / "reports" / "figures").rglob("*.png"))
    assert len(pngs) >= 6 and rendered.dom.count("<img") >= len(pngs)
    assert rendered.screenshot.stat().st_size > 20_000


def test_make_review_on_an_adam_branch_writes_measured_diffs(project):
    proj, env = project
    git(proj, env, "checkout", "-q", "-b", "try-adam")
    set_params(proj, optimizer="adam", variants={**SMALL_PARAMS["variants"], "frac50": {"fraction": 0.5, "noise": 0.0}})
    # --no-print-directory: under `make test` (CI), make would add Entering/Leaving directory lines
    proc = run(["make", "--no-print-directory", "review", "BASE=main", f"BIN={BIN}", "STAMP="], proj, env, check=False)
    md = (proj / "reports" / "review.md").read_text()
    lines = md.splitlines()
    assert lines[0] == MARKER, proc.stdout + proc.stderr
    # the verdict first, in one line; make fails exactly when the gate does
    passed = proc.returncode == 0
    assert lines[1].startswith(
        "**Passed** against `main`: gate passed" if passed else "**FAILED** against `main`: gate FAILED"
    ), proc.stdout + proc.stderr
    assert lines[1].endswith("new on this branch (no main value): frac50"), lines[1]
    # then every variant's test accuracy, main -> workspace, `full` first
    acc = {
        v: json.loads((proj / "metrics" / f"{v}.json").read_text())["test"]["accuracy"]
        for v in ("full", "noise10", "frac50")
    }
    old = {
        v: json.loads(git(proj, env, "show", f"main:metrics/{v}.json"))["test"]["accuracy"] for v in ("full", "noise10")
    }
    assert lines[2:5] == [
        "",
        "| variant | test accuracy (main) | test accuracy (workspace) | change (points) | "
        "95% CI (points) | McNemar p | fixed | broken |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def paired(v: str) -> str:
        """The row's statistics, recomputed here from the two committed prediction files."""
        y_old, p_old = np.loadtxt(
            io.StringIO(git(proj, env, "show", f"main:plots/predictions/{v}.csv")),
            delimiter=",",
            skiprows=1,
            dtype=np.int64,
        ).T
        y_new, p_new = np.loadtxt(
            proj / "plots" / "predictions" / f"{v}.csv", delimiter=",", skiprows=1, dtype=np.int64
        ).T
        assert (y_old == y_new).all()
        fixed, broken = (
            int(((p_old != y_old) & (p_new == y_new)).sum()),
            int(((p_old == y_old) & (p_new != y_new)).sum()),
        )
        assert fixed - broken == round((acc[v] - old[v]) * y_new.size)
        lo, hi = stats.change_interval(fixed, broken, y_new.size)
        assert lo <= acc[v] - old[v] <= hi
        return f"[{100 * lo:+.2f}, {100 * hi:+.2f}] | {stats.mcnemar_p(fixed, broken):.3g} | {fixed} | {broken}"

    assert lines[5:8] == [
        f"| full | {old['full']:.4f} | {acc['full']:.4f} | {100 * (acc['full'] - old['full']):+.2f} "
        f"| {paired('full')} |",
        f"| frac50 | - | {acc['frac50']:.4f} | - | - | - | - | - |",
        f"| noise10 | {old['noise10']:.4f} | {acc['noise10']:.4f} | {100 * (acc['noise10'] - old['noise10']):+.2f} "
        f"| {paired('noise10')} |",
    ]
    assert lines[8] == ""
    assert re.search(r"\|\s*params\.yaml\s*\|\s*optimizer\s*\|\s*sgd\s*\|\s*adam\s*\|", md), md
    old_loss = json.loads(git(proj, env, "show", "main:metrics/full.json"))["test"]["loss"]
    new_loss = json.loads((proj / "metrics" / "full.json").read_text())["test"]["loss"]
    assert f"| full | test.loss | {old_loss:.4f} | {new_loss:.4f} |" in md, md
    assert "![learning curves (all variants)](figures/learning_curves.png)" in md
    assert "![confusion matrix of the reference variant](figures/confusion.png)" in md
    # the gate's own line (make's last step) says the same as the page
    gate_line = (proc.stdout if passed else proc.stderr).strip().splitlines()[-1]
    assert lines[1].endswith(gate_line), (lines[1], gate_line)
    commit_all(proj, env, "adam")
    back_to_main(proj, env)


def test_gate_fails_on_a_worse_branch_and_passes_on_main(project):
    proj, env = project
    git(proj, env, "checkout", "-q", "-b", "worse")
    set_params(proj, train__epochs=1, train__lr__sgd=1e-6)  # barely moves from the random init
    dvc("repro", cwd=proj, env=env)
    old = json.loads(git(proj, env, "show", "main:metrics/full.json"))["test"]["accuracy"]
    new = json.loads((proj / "metrics" / "full.json").read_text())["test"]["accuracy"]
    assert old - new > 0.002
    failed = mnistlr(proj, env, "gate", "--base", "main", "--metric", "test.accuracy", "--max-drop", "0.002")
    assert failed.returncode == 1
    line = failed.stderr.strip()
    assert "\n" not in line and "full" in line and f"{old:.4f}" in line and f"{new:.4f}" in line, line
    # with --significance it fails too (the drop is far beyond noise), naming the interval and p
    failed = mnistlr(proj, env, "gate", "--base", "main", "--max-drop", "0.002", "--significance", "0.05")
    line = failed.stderr.strip()
    assert failed.returncode == 1 and "\n" not in line, failed.stdout + failed.stderr
    assert line.startswith("gate FAILED (max drop 0.002, significance 0.05): ")
    assert re.search(
        rf"full test accuracy {old:.4f} -> {new:.4f} \(-[\d.]+ points, 95% CI \[-[\d.]+, -[\d.]+\], "
        r"McNemar p = [\d.e-]+; \d+ fixed, \d+ broken\)",
        line,
    ), line
    # the loss is lower-is-better: it rose, so the gate on it fails too
    old_loss = json.loads(git(proj, env, "show", "main:metrics/full.json"))["test"]["loss"]
    new_loss = json.loads((proj / "metrics" / "full.json").read_text())["test"]["loss"]
    assert new_loss - old_loss > 0.01
    failed = mnistlr(proj, env, "gate", "--base", "main", "--metric", "test.loss", "--max-drop", "0.01")
    line = failed.stderr.strip()
    assert failed.returncode == 1 and line.startswith("gate FAILED"), failed.stdout + failed.stderr
    assert f"full test.loss worsened from {old_loss:.4f} (main) to {new_loss:.4f} (workspace)" in line, line
    # `dvc plots diff main` overlays this branch's curves on main's
    shown = json.loads(dvc("plots", "diff", "main", "--json", cwd=proj, env=env).stdout)
    loss = shown["data"]["Loss of full (train vs val)"][0]
    assert set(loss["revisions"]) == {"main", "workspace"}
    assert {row["rev"] for row in loss["content"]["data"]["values"]} == {"main", "workspace"}
    commit_all(proj, env, "worse")
    back_to_main(proj, env)
    for metric in ("test.accuracy", "test.ece"):
        passed = mnistlr(proj, env, "gate", "--base", "main", "--metric", metric)
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert passed.stdout.startswith(f"gate passed: {metric} of 2 variant(s)"), passed.stdout


def stop_queue_workers(project: Path) -> None:
    """Kill the processes the queue left running in the project: its workers and the experiments they run (each
    runs in a folder of the project)."""
    inside = str(project.resolve())
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(inside):
                os.kill(int(proc.name), signal.SIGKILL)


def untouched(project: Path, env: dict) -> None:
    """git sees no change and `dvc status` of the pipeline says it is up to date."""
    assert git(project, env, "status", "--porcelain") == ""
    status = dvc("status", cwd=project, env=env).stdout
    assert "Data and pipelines are up to date." in status, status


def test_compare_changes_nothing_the_pipeline_reads_and_names_unfinished_runs_by_state(project):
    proj, env = project
    assert (proj / "experiments" / "compare.json").is_file()  # a committed comparison, a dep of the report stage
    # nothing to compare yet: one line, exit 1, nothing written
    alone = mnistlr(proj, env, "compare")
    assert alone.returncode == 1 and alone.stdout == "", alone.stdout + alone.stderr
    assert alone.stderr.startswith("error: no experiments to compare: run some with dvc exp run"), alone.stderr
    untouched(proj, env)  # a read-only command: the committed comparison and the pipeline are as they were

    dvc("exp", "run", "--queue", "-n", "slow-wd", "-S", "train.weight_decay=0.001", cwd=proj, env=env)
    with open(proj.parent / "queue.log", "w") as log:  # the worker keeps its output open: a file, not a pipe
        subprocess.run([str(BIN / "dvc"), "queue", "start"], cwd=proj, env=env, stdout=log, stderr=log, check=True)
    try:
        during = mnistlr(proj, env, "compare")
    finally:
        stop_queue_workers(proj)
    # the baseline alone has finished: nothing to compare yet, and the experiment is named with its state, not
    # with the numbers dvc shows for it (its folder's)
    assert during.returncode == 1, during.stdout + during.stderr
    assert re.match(r"error: no finished experiment to compare yet: slow-wd \((queued|running)\); ", during.stderr)
    untouched(proj, env)

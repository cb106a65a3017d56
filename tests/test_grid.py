"""`mnistlr sweep` on one machine: a grid trained in one pass, each point a real DVC experiment.

Every claim is checked through DVC's own commands on a copy of the reproduced synthetic project: the
experiment commit of a point is the one `dvc exp run -S <point>` makes (the same tree, byte for byte,
for points of different training passes), `dvc exp show/apply/status/checkout/push/pull` treat it
alike, a rerun records only what is missing, a killed sweep leaves no partial experiment, a diverging
point fails alone, and bad input is one line before any training. (The run cache holds every swept
point's train and evaluate runs: tests/test_docs.py checks it after docs/sweeps.md's `dvc exp run`.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnistlr.grid import default_jobs
from mnistlr.repo import exe
from tests.conftest import copy_project, dvc, run

# One epoch at small rates: the easy synthetic digits are learnt to about 95 % (sgd) and 92 % (adam), not
# 100 %, so the points' numbers differ and a number shown for the wrong point is caught.
SMALL = ["-S", "train.epochs=1", "-S", "train.lr.sgd=0.003", "-S", "train.lr.adam=0.0003"]
# two training passes (the optimizer cannot vary within one), two points in each
GRID = [*SMALL, "-S", "optimizer=sgd,adam", "-S", "train.weight_decay=0,1e-5"]


def sweep(project: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([exe("mnistlr"), "sweep", "--quiet", *args], project, env, check=check)


def exp_refs(project: Path, env: dict) -> dict[str, str]:
    """Experiment name -> commit, for every experiment of the project (not DVC's own bookkeeping refs)."""
    out = run(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"], project, env).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/(\S+) (\S+)$", out, re.M)}


def tree(project: Path, env: dict, commit: str) -> str:
    return run(["git", "rev-parse", f"{commit}^{{tree}}"], project, env).stdout.strip()


def shown(project: Path, env: dict) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> its params.yaml and metrics/full.json data."""
    out = {}
    for baseline in json.loads(dvc("exp", "show", "--json", cwd=project, env=env).stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                out[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    "full": data["metrics"]["metrics/full.json"]["data"],
                }
    return out


@pytest.fixture(scope="module")
def swept(tmp_path_factory, reproduced):
    """A copy of the reproduced project after `mnistlr sweep` of GRID: (project, env, the sweep's output)."""
    project = copy_project(reproduced, tmp_path_factory.mktemp("grid") / "proj")
    env = reproduced[1]
    proc = sweep(project, env, "--jobs", "2", *GRID)  # a pool (4 points would be scored in the sweep's process)
    return project, env, proc


def test_every_point_is_an_experiment_with_its_params_and_metrics(swept):
    project, env, proc = swept
    refs = exp_refs(project, env)
    assert len(refs) == 4, proc.stdout
    exps = shown(project, env)
    combos = sorted((e["params"]["optimizer"], e["params"]["train"]["weight_decay"]) for e in exps.values())
    assert combos == [("adam", 0), ("adam", 1e-05), ("sgd", 0), ("sgd", 1e-05)]  # 1e-05 is a number, as DVC wrote it
    accuracies = {e["full"]["test"]["accuracy"] for e in exps.values()}
    assert len(accuracies) >= 2 and all(0.5 < a <= 1 for a in accuracies)
    # the summary chooses on validation accuracy and reports the test accuracy of that point only
    best = re.search(r"^best: (\S+) ", proc.stdout, re.M).group(1)
    assert exps[best]["full"]["val"]["accuracy"] == max(e["full"]["val"]["accuracy"] for e in exps.values())
    assert f"test accuracy {exps[best]['full']['test']['accuracy']:.4f}" in proc.stdout
    assert "4 points compared" in proc.stdout and "4 recorded now, 0 before, 0 failed" in proc.stdout
    # the user's workspace is untouched, and the sweep leaves no worktree behind
    assert run(["git", "status", "--porcelain"], project, env).stdout.strip() == ""
    assert "sweeps" not in run(["git", "worktree", "list"], project, env).stdout


def test_a_point_is_byte_for_byte_what_dvc_exp_run_commits(tmp_path, swept, reproduced):
    """For one point of each training pass, `dvc exp run -S <point>` in another copy of the project (its
    own caches: it trains) commits the same tree as the sweep: params.yaml, dvc.lock, metrics, curves,
    predictions, figures and report, every byte."""
    project, env, _ = swept
    other = copy_project(reproduced, tmp_path / "other")
    trees = {tree(project, env, c) for c in exp_refs(project, env).values()}
    for point in (["optimizer=adam", "train.weight_decay=0"], ["optimizer=sgd", "train.weight_decay=1e-5"]):
        before = set(exp_refs(other, env))
        dvc("exp", "run", *SMALL, *[a for p in point for a in ("-S", p)], cwd=other, env=env)
        (name,) = set(exp_refs(other, env)) - before
        assert tree(other, env, exp_refs(other, env)[name]) in trees, point


def restore(project: Path, env: dict) -> None:
    """The workspace back at HEAD, for the next test of the module."""
    run(["git", "restore", "."], project, env)
    dvc("checkout", "--force", cwd=project, env=env)


def test_apply_status_checkout_push_and_pull_round_trip(tmp_path, swept):
    project, env, _ = swept
    try:
        round_trip(tmp_path, project, env)
    finally:
        restore(project, env)


def round_trip(tmp_path: Path, project: Path, env: dict) -> None:
    exps = shown(project, env)
    name = next(n for n, e in exps.items() if e["params"]["optimizer"] == "adam")
    dvc("exp", "apply", name, cwd=project, env=env)
    assert "up to date" in dvc("status", "dvc.yaml", cwd=project, env=env).stdout
    applied = json.loads((project / "metrics" / "full.json").read_text())
    assert applied == exps[name]["full"]
    model = (project / "models" / "full.npz").read_bytes()
    (project / "models" / "full.npz").unlink()
    dvc("checkout", "models", cwd=project, env=env)
    assert (project / "models" / "full.npz").read_bytes() == model
    # mnistlr compare reads the experiments too
    compared = run([exe("mnistlr"), "compare"], project, env, check=False)
    assert name in compared.stdout, compared.stdout + compared.stderr
    # push the experiment (git ref and DVC data) and pull it into a fresh clone
    remote_git, remote_dvc = tmp_path / "origin.git", tmp_path / "dvc-store"
    run(["git", "init", "-q", "--bare", str(remote_git)], tmp_path, env)
    run(["git", "remote", "add", "origin", str(remote_git)], project, env)
    run(["git", "push", "-q", "origin", "HEAD:main"], project, env)
    dvc("remote", "add", "--local", "-d", "store", str(remote_dvc), cwd=project, env=env)
    dvc("exp", "push", "origin", name, cwd=project, env=env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "-b", "main", str(remote_git), str(clone)], tmp_path, env)
    dvc("remote", "add", "--local", "-d", "store", str(remote_dvc), cwd=clone, env=env)
    dvc("exp", "pull", "origin", name, cwd=clone, env=env)
    dvc("exp", "apply", name, cwd=clone, env=env)
    assert (clone / "models" / "full.npz").read_bytes() == model


def test_a_small_grid_is_scored_in_the_sweeps_own_process(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert [default_jobs(n) for n in (1, 7, 15, 16, 100)] == [1, 1, 1, 2, 2]
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [default_jobs(n) for n in (8, 24, 100)] == [1, 3, 4]


def test_a_diverging_point_fails_alone(tmp_path, reproduced):
    project = copy_project(reproduced, tmp_path / "proj")
    env = reproduced[1]
    proc = sweep(project, env, "-S", "train.lr.sgd=0.01,1e38", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 1 and "train.lr.sgd=1e+38" in failed[0] and "diverged" in failed[0], proc.stderr
    assert len(exp_refs(project, env)) == 1
    assert "1 recorded now, 0 before, 1 failed" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-S", "train.weight_dacay=0,1"], "unknown param key 'train.weight_dacay'"),
        (["-S", "train.epochs=two"], "train.epochs"),
        (["-S", "train.lr=0.1,0.2"], "train.lr"),
        (["-S", "optimizer=sgd", "-S", "train.epochs=range(1,1002)"], "1001 points"),
    ],
)
def test_bad_input_is_one_line_before_any_training(tmp_path, reproduced, args, message):
    project = copy_project(reproduced, tmp_path / "proj")
    env = reproduced[1]
    started = time.monotonic()
    proc = sweep(project, env, *args, check=False)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0], proc.stderr
    assert exp_refs(project, env) == {}
    assert time.monotonic() - started < 30  # no training started


def test_a_killed_sweep_leaves_no_partial_experiment_and_the_rerun_records_the_rest(tmp_path, reproduced):
    project = copy_project(reproduced, tmp_path / "proj")
    env = reproduced[1]
    grid = ["-S", "train.weight_decay=0,1e-4", "-S", "train.lr.sgd=0.05,0.1"]
    proc = subprocess.Popen(
        [exe("mnistlr"), "sweep", "--quiet", "--jobs", "1", *grid],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not exp_refs(project, env) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = exp_refs(project, env)
    assert 0 < len(first) < 4, "kill the sweep halfway"
    for name, commit in first.items():  # each recorded experiment is whole
        files = run(["git", "ls-tree", "-r", "--name-only", commit], project, env).stdout.split()
        assert {"dvc.lock", "metrics/full.json", "reports/report.md", "plots/train/full.csv"} <= set(files), name
    rerun = sweep(project, env, *grid)
    assert f"{4 - len(first)} to run" in rerun.stdout, rerun.stdout
    assert len(exp_refs(project, env)) == 4
    assert {n: c for n, c in exp_refs(project, env).items() if n in first} == first
    assert "sweeps" not in run(["git", "worktree", "list"], project, env).stdout

    # One point is the baseline's params, written otherwise: params.yaml says `weight_decay: 0` where the
    # baseline has 0.0. Every stage equals the baseline's as values, so `dvc exp run` reruns nothing and commits
    # the baseline's dvc.lock as written; the sweep's experiment is that same tree.
    lock = (project / "dvc.lock").read_text()
    assert "weight_decay: 0.0" in (project / "params.yaml").read_text() and "sgd: 0.1\n" in lock
    swept = {run(["git", "show", f"{c}:params.yaml"], project, env).stdout: c for c in exp_refs(project, env).values()}
    dvc("exp", "run", "-S", "train.weight_decay=0", "-S", "train.lr.sgd=0.1", cwd=project, env=env)
    (theirs,) = set(exp_refs(project, env).values()) - set(swept.values())
    mine = swept[run(["git", "show", f"{theirs}:params.yaml"], project, env).stdout]
    assert run(["git", "show", f"{mine}:dvc.lock"], project, env).stdout == lock
    assert tree(project, env, mine) == tree(project, env, theirs)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))

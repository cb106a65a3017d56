"""A queued sweep compared by `mnistlr compare`: the terminal summary fits 120 columns and shows every
variant's measured accuracy, `dvc metrics diff` fits one screen, and committing the comparison reruns
only the report."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mnistlr.repo import exe
from tests.conftest import REPO, dvc, make_project, project_env, run

HEADLINE_METRICS = 6  # per variant: test accuracy, loss and ECE, val accuracy and loss, weight sparsity

PARAMS = {
    "data": {"val_size": 200},
    # two variants: enough to show every variant's numbers side by side, few enough to keep the runs short
    "variants": {"full": {"fraction": 1.0, "noise": 0.0}, "noise10": {"fraction": 1.0, "noise": 0.1}},
    # one epoch at small rates: the easy synthetic digits are learnt to about 95 % (sgd) and 92 % (adam), not 100 %,
    # so each run's and variant's accuracy differs from the next and a number shown in the wrong place is caught
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "lr": {"sgd": 0.003, "adam": 0.0003}},
}


def wait_for_queue(project: Path, env: dict, expected: int, timeout_s: float = 600) -> str:
    """Wait until the queue has run everything; returns `dvc queue status`. Each finished experiment adds a
    ref under refs/exps, which git lists in milliseconds: `dvc queue status` costs a second of CPU (taken from
    the experiments it waits for), so it is asked only every 10 s until `expected` refs exist, then until
    nothing is queued or running."""
    deadline = time.monotonic() + timeout_s
    asked, status = time.monotonic(), ""
    while True:
        # a finished experiment: refs/exps/<2 hex>/<rest of the baseline sha>/<name> (not the queue's own refs)
        refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], project, env).stdout
        done = re.findall(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/\S+$", refs, flags=re.M)
        if len(done) >= expected or time.monotonic() - asked > 10:
            status = dvc("queue", "status", cwd=project, env=env).stdout
            asked = time.monotonic()
            if not re.search(r"\b(Queued|Running)\b", status):
                return status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)


def stop_queue_workers(project: Path) -> None:
    """Stop every queue worker still alive, by the PID its JSON record in .dvc/tmp/exps/celery holds: SIGTERM
    to all, SIGKILL to any left after 2 s. Left alone, an idle worker waits 10 s for more work before it exits,
    and with two workers one can stay alive for good (its monitor shuts it down while it still runs a task, and
    the shutdown never completes: a race in dvc-task)."""
    alive = []
    for record in (project / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.json"):
        pid = json.loads(record.read_text()).get("pid")
        cmdline = Path(f"/proc/{pid}/cmdline")
        if pid and cmdline.exists() and b"queue-worker" in cmdline.read_bytes():  # not gone, PID not reused
            alive.append((pid, cmdline))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, _ in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while any(c.exists() for _, c in alive) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [(pid, c) for pid, c in alive if c.exists()]


def test_queued_sweep_then_compare_gives_a_grid_and_the_report_links_it(tmp_path, synthetic_mirror):
    project = make_project(tmp_path, PARAMS)
    env = project_env(synthetic_mirror, synthetic=True)
    dvc("repro", cwd=project, env=env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline"], project, env)

    # two points (how DVC expands longer grids, tests/test_sweep_dask.py checks); each differs from the
    # baseline in both params, one from the other in the optimizer
    queued = dvc(
        "exp", "run", "--queue", "-S", "optimizer=sgd,adam", "-S", "train.weight_decay=0.0001", cwd=project, env=env
    ).stdout
    assert queued.count("Queued experiment") == 2, queued
    # two queue workers, one per core. They run detached and keep the caller's output open, so their output
    # goes to a file, not to a pipe this test would wait on for as long as they live.
    with open(tmp_path / "queue-start.log", "w") as log:
        subprocess.run(
            [exe("dvc"), "queue", "start", "-j", "2"],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    try:
        status = wait_for_queue(project, env, expected=2)
    finally:
        stop_queue_workers(project)
    assert status.count("Success") == 2, status

    proc = run(
        [str(Path(sys.executable).with_name("mnistlr")), "compare", "--out", "experiments"],
        project,
        {**env, "COLUMNS": "120"},
    )
    printed = proc.stdout.splitlines()
    assert all(len(line) <= 120 for line in printed), proc.stdout
    assert "…" not in proc.stdout and "..." not in proc.stdout, proc.stdout
    assert printed[-1].startswith("compared 3 runs on full")  # the baseline and the two experiments
    # each run's test accuracy of every variant, to 4 decimals, as dvc recorded it
    shown = json.loads(dvc("exp", "show", "--json", cwd=project, env=env).stdout)
    baseline = next(c for c in shown if c["rev"] != "workspace")
    recorded = {
        r.get("name") or r["rev"][:7]: r for r in [baseline, *(r for e in baseline["experiments"] for r in e["revs"])]
    }
    assert len(recorded) == 3
    start = printed.index("test.accuracy of every variant:")
    header = printed[start + 1].split()
    assert header == ["run", "optimizer", "train.weight_decay", "full", "noise10"], printed
    end = printed.index("", start)
    rows = {line.split()[0]: line.split() for line in printed[start + 2 : end]}
    # then which runs the test set cannot tell from the best (the best itself among them)
    note = " ".join(printed[end + 1 : -1])
    assert note.startswith("Runs the 300 test images of full cannot tell from the best test accuracy"), note
    assert set(rows) == set(recorded), (rows, set(recorded))
    for name, r in recorded.items():
        for v in ("full", "noise10"):
            acc = r["data"]["metrics"][f"metrics/{v}.json"]["data"]["test"]["accuracy"]
            assert rows[name][header.index(v)] == f"{acc:.4f}", (name, v, rows[name])
        assert rows[name][1] == r["data"]["params"]["params.yaml"]["data"]["optimizer"]
    assert len({row[i] for row in rows.values() for i in (3, 4)}) >= 3  # distinct numbers: each in its place

    # `dvc metrics diff` between the baseline and an experiment: six numbers per variant, so even the
    # default five variants fit on one 35-line screen
    exp = next(n for n in recorded if n != baseline["name"])
    metrics_diff = dvc("metrics", "diff", baseline["rev"], exp, "--all", cwd=project, env=env).stdout
    diff_lines = metrics_diff.strip().splitlines()
    per_variant = {v: sum(f"metrics/{v}.json" in ln for ln in diff_lines) for v in ("full", "noise10")}
    assert per_variant == {"full": HEADLINE_METRICS, "noise10": HEADLINE_METRICS}, metrics_diff
    assert len(diff_lines) <= 35, metrics_diff
    default_variants = len(yaml.safe_load((REPO / "params.yaml").read_text())["variants"])
    header_lines = len(diff_lines) - sum(per_variant.values())
    assert header_lines + HEADLINE_METRICS * default_variants <= 35, metrics_diff

    page = (project / "experiments" / "compare.md").read_text()
    assert "| optimizer | train.weight_decay " in re.sub(r" +", " ", page), page
    assert "sweep grid" in page and "train.weight_decay=0.0001" in page
    data = json.loads((project / "experiments" / "compare.json").read_text())
    assert data["differing_params"] == ["optimizer", "train.weight_decay"]
    assert sorted((r["optimizer"], r["train.weight_decay"]) for r in data["runs"]) == [
        ("adam", "0.0001"),
        ("sgd", "0"),
        ("sgd", "0.0001"),
    ]  # the two experiments and the baseline
    assert all(0 <= r["test.accuracy"] <= 1 for r in data["runs"])
    # every variant's test accuracy per run, as dvc recorded it (the report's plain-vs-deskewed table reads it)
    assert all(
        sorted(r["by_variant"]) == ["full", "noise10"] and r["by_variant"]["full"] == r["test.accuracy"]
        for r in data["runs"]
    )
    assert (project / "experiments" / "compare.png").stat().st_size > 10_000

    # The comparison is a committed input of the report stage: only the report reruns, and shows it.
    repro = dvc("repro", cwd=project, env=env).stdout
    assert re.findall(r"Running stage '([^']+)'", repro) == ["report"], repro
    report = (project / "reports" / "report.md").read_text()
    assert "## Experiments" in report and "(../experiments/compare.md)" in report
    assert "| adam " in report and "| sgd " in report  # optimizer comparison

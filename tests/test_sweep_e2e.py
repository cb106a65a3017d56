"""A queued 2x2 sweep compared by `mnistlr compare`; committing the comparison reruns only the report."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from tests.conftest import dvc, make_project, project_env, run

PARAMS = {
    "data": {"val_size": 200},
    "variants": {"full": {"fraction": 1.0, "noise": 0.0}},  # one variant keeps the four runs short
    "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
}


def wait_for_queue(project: Path, env: dict, timeout_s: float = 900) -> str:
    """Poll `dvc queue status` until nothing is queued or running."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = dvc("queue", "status", cwd=project, env=env).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(3)


def test_queued_sweep_then_compare_gives_a_grid_and_the_report_links_it(tmp_path, synthetic_mirror):
    project = make_project(tmp_path, PARAMS)
    env = project_env(synthetic_mirror, synthetic=True)
    dvc("repro", cwd=project, env=env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline"], project, env)

    queued = dvc("exp", "run", "--queue", "-S", "optimizer=sgd,adam", "-S", "train.weight_decay=0,0.0001",
                 cwd=project, env=env).stdout
    assert queued.count("Queued experiment") == 4, queued
    dvc("queue", "start", cwd=project, env=env)
    status = wait_for_queue(project, env)
    assert status.count("Success") == 4, status

    proc = run([str(Path(sys.executable).with_name("mnistlr")), "compare"], project, env)
    assert "compared 5 runs" in proc.stdout  # the baseline and the four experiments
    page = (project / "experiments" / "compare.md").read_text()
    assert "| optimizer | train.weight_decay " in re.sub(r" +", " ", page), page
    assert "sweep grid" in page and "train.weight_decay=0.0001" in page
    data = json.loads((project / "experiments" / "compare.json").read_text())
    assert data["differing_params"] == ["optimizer", "train.weight_decay"]
    assert {(r["optimizer"], r["train.weight_decay"]) for r in data["runs"]} == {
        ("sgd", "0"), ("sgd", "0.0001"), ("adam", "0"), ("adam", "0.0001")}
    assert all(0 <= r["test.accuracy"] <= 1 for r in data["runs"])
    assert (project / "experiments" / "compare.png").stat().st_size > 10_000

    # The comparison is a committed input of the report stage: only the report reruns, and shows it.
    repro = dvc("repro", cwd=project, env=env).stdout
    assert re.findall(r"Running stage '([^']+)'", repro) == ["report"], repro
    report = (project / "reports" / "report.md").read_text()
    assert "## Experiments" in report and "(../experiments/compare.md)" in report
    assert "| adam " in report and "| sgd " in report  # optimizer comparison

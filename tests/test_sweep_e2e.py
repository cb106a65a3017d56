"""A swept grid compared by `mnistlr compare`: the terminal summary fits 120 columns and shows every
variant's measured accuracy, `dvc metrics diff` fits one screen, and committing the comparison reruns
only the report."""

from __future__ import annotations

import json
import re

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


def test_a_swept_grid_then_compare_gives_a_grid_and_the_report_links_it(tmp_path, synthetic_mirror):
    project = make_project(tmp_path, PARAMS)
    env = project_env(synthetic_mirror, synthetic=True)
    dvc("repro", cwd=project, env=env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline"], project, env)

    # two points, one per training pass (the optimizer cannot vary within one), each recorded as the experiment
    # `dvc exp run -S <point>` records (tests/test_grid.py; the README's docs test runs DVC's queue)
    swept = run(
        [exe("mnistlr"), "sweep", "-q", "-S", "optimizer=sgd,adam", "-S", "train.weight_decay=1e-4"],
        project,
        env,
    ).stdout
    assert "2 recorded now, 0 before, 0 failed" in swept, swept

    proc = run(
        [exe("mnistlr"), "compare", "--out", "experiments"],
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

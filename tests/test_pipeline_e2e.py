"""End to end through real `dvc` commands in a temporary git repo."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from mnistlr.model import load_model
from tests.conftest import copy_project, dvc, run

STAGE_RUN = re.compile(r"Running stage '([^']+)'")


def ran(proc) -> list[str]:
    return STAGE_RUN.findall(proc.stdout)


def set_param(project, dotted: str, value) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    *parents, last = dotted.split(".")
    node = params
    for p in parents:
        node = node[p]
    node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def commit(project, env, message: str) -> None:
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], project, env)


@pytest.fixture(scope="module")
def synthetic_project(tmp_path_factory, reproduced):
    """A copy of the session's reproduced project (SMALL_PARAMS: full and noise10) and its first repro's output."""
    project = copy_project(reproduced, tmp_path_factory.mktemp("proj") / "p")
    return project, reproduced[1], reproduced[2]


HEADLINE = {"test": {"accuracy", "loss", "ece"}, "val": {"accuracy", "loss"}, "weights": {"sparsity"}}


FIGURES = [
    "confusion.png",
    "confusion_examples.png",
    "data_size.png",
    "deskew.png",
    "learning_curves.png",
    "noise.png",
    "reliability.png",
    "weights.png",
]


def test_repro_runs_every_stage_once_and_writes_outputs(synthetic_project):
    project, _, first = synthetic_project
    variants = ["full", "noise10"]
    assert STAGE_RUN.findall(first) == ["prepare", "train", "evaluate", "report"]
    for v in variants:
        m = json.loads((project / "metrics" / f"{v}.json").read_text())
        # six headline numbers, written as the decimals they are
        assert {k: set(sub) for k, sub in m.items()} == HEADLINE
        values = [x for sub in m.values() for x in sub.values()]
        assert all(isinstance(x, float) and round(x, 6) == x for x in values), m
        assert 0 <= m["test"]["accuracy"] <= 1 and m["test"]["loss"] > 0 and 0 <= m["test"]["ece"] <= 1
        assert 0 <= m["val"]["accuracy"] <= 1 and 0 <= m["weights"]["sparsity"] <= 1
        model = load_model(project / "models" / f"{v}.npz")  # the normalization travels with the weights
        assert (model.mean, model.std) == (0.1307, 0.3081) and model.weight.shape == (10, 784)
        assert (project / "plots" / "train" / f"{v}.csv").read_text().startswith("epoch,train_loss")
        predictions = (project / "plots" / "predictions" / f"{v}.csv").read_text().splitlines()
        assert predictions[0] == "actual,predicted" and len(predictions) == 1 + 300
    assert sorted(p.name for p in (project / "reports" / "figures").iterdir()) == FIGURES
    for fig in FIGURES:
        png = (project / "reports" / "figures" / fig).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000
    summary = json.loads((project / "data/prepared/variants/noise10.json").read_text())
    assert summary["labels_changed"] == round(0.1 * summary["size"])
    report = (project / "reports" / "report.md").read_text()
    assert "| variant" in report and "92-93" in report and "figures/confusion.png" in report
    assert "### Per-class scores of `full` (test set)" in report
    # the synthetic digits are easy: the model must actually learn them
    assert json.loads((project / "metrics" / "full.json").read_text())["test"]["accuracy"] > 0.9


def test_nothing_changed_runs_nothing(synthetic_project):
    project, env, _ = synthetic_project
    again = dvc("repro", cwd=project, env=env)
    assert ran(again) == []
    # the root project only: the studies are a DVC project of their own (studies/)
    assert dvc("status", cwd=project, env=env).stdout.strip() == "Data and pipelines are up to date."


def test_a_figure_param_reruns_evaluate_and_report_and_a_train_param_never_prepare(synthetic_project):
    project, env, _ = synthetic_project
    set_param(project, "report.top_confusions", 3)  # the report's table and evaluate's misclassified digits
    assert ran(dvc("repro", cwd=project, env=env)) == ["evaluate", "report"]
    set_param(project, "train.epochs", 2)
    assert ran(dvc("repro", cwd=project, env=env)) == ["train", "evaluate", "report"]

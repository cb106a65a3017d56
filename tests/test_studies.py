"""The studies: each study on a tiny problem, its report, and their DVC project of its own in studies/."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from mnistlr.errors import MnistlrError
from mnistlr.params import parse_params
from mnistlr.repo import exe
from mnistlr.studies import run_study, study_deskew, study_l1l2, study_mse, study_optimum, study_sweep
from mnistlr.studies_page import write_studies_report
from tests.conftest import REPO, copy_project, dvc, run

TINY = {
    "train": {"device": "cpu", "epochs": 2, "batch_size": 32},
    "studies": {
        "mse": {"lr": 0.003, "epochs": 2},
        "optimum": {"weight_decays": [1.0e-3], "lbfgs_iters": 100, "epochs": 2},
        "l1l2": {"values": [0.0, 1.0e-3], "epochs": 2, "batch_size": 32, "lr": 0.1},
        "sweep": {
            "candidates": [
                {"optimizer": "sgd", "lr": 0.1, "epochs": 2, "batch_size": 32, "weight_decay": 0.0},
                {"optimizer": "adam", "lr": 0.001, "epochs": 2, "batch_size": 32, "weight_decay": 0.0},
            ]
        },
        "deskew": {
            "candidates": [
                {"optimizer": "adam", "lr": 0.001, "epochs": 2, "batch_size": 32, "weight_decay": 0.0},
                {"optimizer": "adam", "lr": 0.003, "epochs": 2, "batch_size": 32, "weight_decay": 0.0},
                {"optimizer": "sgd", "lr": 0.1, "epochs": 2, "batch_size": 32, "weight_decay": 0.0},
            ]
        },
    },
}


@pytest.fixture(scope="module")
def tiny_data():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 784, generator=g)
    out = {}
    for split, n in (("train", 400), ("val", 100), ("test", 100)):
        y = torch.arange(n) % 10
        out[split] = (centers[y] * 0.3 + torch.randn(n, 784, generator=g), y)
    return out


def test_studies_on_a_tiny_problem_and_their_report(tiny_data, tmp_path):
    params = parse_params(TINY)
    mse = study_mse(params, tiny_data)
    assert mse["linear_regression_exact"]["objective"] <= mse["linear_regression_sgd"]["objective"] + 1e-6
    opt = study_optimum(params, tiny_data)
    row = opt["rows"][0]
    assert row["sgd"]["objective_gap"] >= -1e-5 and row["adam"]["objective_gap"] >= -1e-5  # nothing beats the optimum
    l12 = study_l1l2(params, tiny_data, tmp_path / "w.png")
    assert [r["penalty"] for r in l12["rows"]] == ["none", "l1", "weight_decay"]
    assert (tmp_path / "w.png").stat().st_size > 1000
    sweep = study_sweep(params, tiny_data, opt)
    assert len(sweep["rows"]) == 5 and "test_accuracy" not in sweep["rows"][sweep["best_index"]]
    assert all("test_accuracy" not in r for r in sweep["rows"])  # selection never sees test
    assert 0 <= sweep["refit_on_train_val"]["test_accuracy"] <= 1
    assert sweep["n_val"] == 100  # the validation images the selection was scored on
    desk = study_deskew(params, tiny_data)
    assert [r.get("batched") for r in desk["rows"]] == [2, 2, None]  # the two Adam candidates trained as one program
    assert all("test_accuracy" not in r for r in desk["rows"]) and "refit_on_train_val" in desk
    for name, result in (("mse", mse), ("optimum", opt), ("l1l2", l12), ("sweep", sweep), ("deskew", desk)):
        result = {"params": params.studies.model_dump()[name], "preprocessing": "deskew on", **result}
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    text = write_studies_report(tmp_path, tmp_path / "studies.md")
    assert (tmp_path / "studies.md").read_text() == text
    assert "**(selected)**" in text and "## 2. The convex optimum" in text and "| l1 |" in text
    assert text.count("**(selected)**") == 2  # plain and deskewed
    assert "## 4. The best linear model on deskewed digits" in text and "| x2 " in text
    assert " s in all" not in text and all("seconds" not in json.dumps(r) for r in (mse, opt, l12, sweep, desk))
    best_val = sweep["rows"][sweep["best_index"]]["val_accuracy"]
    se = 100 * (best_val * (1 - best_val) / 100) ** 0.5
    assert f"on 100 validation images is {se:.2f} points" in text  # n_val from the result, not 10k


def test_unknown_study_is_a_one_line_error(tmp_path):
    with pytest.raises(MnistlrError, match="unknown study 'grid'; accepted: mse, optimum, l1l2, sweep, deskew"):
        run_study("grid", parse_params(TINY), tmp_path, tmp_path / "x.json")


@pytest.mark.parametrize("study,deskewed", [("deskew", False), ("sweep", True)])
def test_a_study_on_the_wrong_inputs_is_a_one_line_error(tmp_path, study, deskewed):
    (tmp_path / "preprocessing.json").write_text(
        json.dumps({"deskew": deskewed, "mean": 0.13, "std": 0.3, "image_side": 28})
    )
    with pytest.raises(MnistlrError) as info:
        run_study(study, parse_params(TINY), tmp_path, tmp_path / "x.json")
    msg = str(info.value)
    assert "\n" not in msg and f"study {study!r} needs" in msg
    assert ("--prepared data/prepared_deskewed" if study == "deskew" else "--prepared ../data/prepared") in msg
    assert not (tmp_path / "x.json").exists()


def test_studies_params_are_strict():
    with pytest.raises(MnistlrError, match="studies.sweep.candidates.0.optimiser"):
        parse_params({"studies": {"sweep": {"candidates": [{"optimiser": "sgd"}]}}})


RUNNING = re.compile(r"Running stage '([^']+)'")
STAGES = ("prepare_deskewed", "study@mse", "study@optimum", "l1l2", "sweep", "deskew", "report")
UP_TO_DATE = "Data and pipelines are up to date."


def make_studies(project: Path, env: dict) -> None:
    """What `make studies` runs, line by line, with the venv's dvc (the copy has no .venv of its own)."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^studies:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    for line in recipe.strip().splitlines():
        argv = line.strip().replace("$(BIN)/", "").replace("$(REPRO_ARGS)", "").split()
        run([exe(argv[0]), *argv[1:]], project, env)


def test_the_studies_are_a_dvc_project_of_their_own_on_the_root_pipelines_data(tmp_path, reproduced):
    root = set(RUNNING.findall(reproduced[2]))
    assert root == {"prepare", "train", "evaluate", "report"}  # no studies stage
    project, env = copy_project(reproduced, tmp_path / "p"), reproduced[1]
    studies = project / "studies"
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["studies"] = copy.deepcopy(TINY["studies"])  # no root stage reads them: the root pipeline stays up to date
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the root project never lists the studies' stages, run or not
    assert dvc("status", cwd=project, env=env).stdout.strip() == UP_TO_DATE
    assert sorted(dvc("stage", "list", "--name-only", cwd=studies, env=env).stdout.split()) == sorted(STAGES)
    assert "study@mse" in dvc("status", cwd=studies, env=env).stdout  # not yet run here

    # the studies read the root prepare stage's arrays and the root params.yaml, and never rerun the root stages
    log = dvc("repro", cwd=studies, env=env).stdout
    assert sorted(RUNNING.findall(log)) == sorted(STAGES), log
    sweep = json.loads((studies / "results/sweep.json").read_text())
    assert sweep["n_val"] == 200 and len(sweep["rows"]) == 2 + 3  # two candidates, the optimum's three runs
    deskew = json.loads((studies / "results/deskew.json").read_text())
    assert deskew["preprocessing"].startswith("deskew on") and len(deskew["rows"]) == 3
    assert json.loads((studies / "data/prepared_deskewed/preprocessing.json").read_text())["deskew"] is True
    text = (studies / "report.md").read_text()
    assert "on 200 validation images" in text and text.count("**(selected)**") == 2
    assert "![L1 vs L2 weights](figures/l1l2_weights.png)" in text
    png = (studies / "figures/l1l2_weights.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert dvc("status", cwd=studies, env=env).stdout.strip() == UP_TO_DATE
    assert dvc("status", cwd=project, env=env).stdout.strip() == UP_TO_DATE
    assert not (project / "data" / "prepared_deskewed").exists()  # every output of the studies is in studies/

    # their deps outside studies/ are hashed: an edit of the code they import makes them stale, and only them
    code = project / "mnistlr" / "studies.py"
    original = code.read_text()
    code.write_text(original + "\n# an edit\n")
    stale = json.loads(dvc("status", "--json", cwd=studies, env=env).stdout)
    assert sorted(stale) == sorted(set(STAGES) - {"prepare_deskewed", "report"}), stale
    assert dvc("status", cwd=project, env=env).stdout.strip() == UP_TO_DATE
    code.write_text(original)

    # the run cache: a config that already ran restores its results without running again
    mse = (studies / "results/mse.json").read_bytes()
    params["studies"]["mse"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert sorted(RUNNING.findall(dvc("repro", cwd=studies, env=env).stdout)) == ["report", "study@mse"]
    params["studies"]["mse"]["epochs"] = TINY["studies"]["mse"]["epochs"]  # back to the config that ran
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = dvc("repro", cwd=studies, env=env).stdout
    assert "Stage 'study@mse' is cached - skipping run" in log and RUNNING.findall(log) == ["report"], log
    assert (studies / "results/mse.json").read_bytes() == mse

    # the one command (`make studies`): the root prepare stage, then the studies; here both are up to date
    make_studies(project, env)
    assert dvc("status", cwd=studies, env=env).stdout.strip() == UP_TO_DATE

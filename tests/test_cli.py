"""The command line: --help everywhere, exit 0 on success, one line and exit 1 on a user's mistake."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnistlr import __version__
from mnistlr.data import MD5SUMS_ENV, MIRROR_ENV
from mnistlr.model import load_model
from tests.conftest import REPO, write_mirror

STAGES = sorted(p.name for p in (REPO / "stages").glob("*.py"))


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MNISTLR_DEBUG", MIRROR_ENV, MD5SUMS_ENV)}
    env["PYTHONPATH"] = str(REPO)  # this checkout's mnistlr, whatever is installed
    env.update(extra)
    return env


def stage(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / name), *args],
        cwd=REPO,
        env=env or _env(),
        capture_output=True,
        text=True,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *parts: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def write_params(path: Path, **update) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in update.items():
        params[key] = {**params[key], **value} if isinstance(value, dict) and key != "variants" else value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_has_help(name):
    proc = stage(name, "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr
    if name != "study_report.py":  # it reads only the studies' results, no params
        assert "--params" in proc.stdout


def test_mnistlr_command_has_help_and_version():
    script = Path(sys.executable).with_name("mnistlr")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from mnistlr.cli import app; app()"]
    proc = subprocess.run([*cmd, "--help"], env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr
    version = subprocess.run([*cmd, "version"], env=_env(), capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == __version__, version.stderr


def test_bad_params_file_is_one_line_and_debug_shows_the_traceback(tmp_path):
    params = write_params(tmp_path / "params.yaml", train={"epochs": "ten"})
    args = ("--params", str(params), "--out", str(tmp_path / "prepared"))
    assert_one_line_error(
        stage("prepare.py", *args), f"{params}: train.epochs = 'ten': input should be a valid integer"
    )
    debug = stage("prepare.py", *args, env=_env(MNISTLR_DEBUG="1"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "MnistlrError" in debug.stderr


def test_a_stage_run_outside_the_repository_root_says_to_run_it_from_there(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "train.py")], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert_one_line_error(
        proc,
        f"params.yaml not found in {tmp_path}: run the stages from the repository root (where dvc.yaml is), "
        "e.g. `dvc repro`",
    )


def test_mirror_missing_a_file_is_one_line_naming_file_and_env(tmp_path):
    mirror = write_mirror(tmp_path / "mirror", n_train=40, n_test=20)
    (mirror / "t10k-images-idx3-ubyte.gz").unlink()
    env = _env(**{MIRROR_ENV: str(mirror), MD5SUMS_ENV: str(mirror / "MD5SUMS")})
    proc = stage("prepare.py", "--out", str(tmp_path / "prepared"), env=env)
    assert_one_line_error(proc, f"t10k-images-idx3-ubyte.gz is missing from the mirror {MIRROR_ENV}={mirror}")
    assert not (tmp_path / "prepared").exists()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synthetic_mirror):
    """The prepare stage run on the synthetic mirror: exit 0 and its output folder."""
    tmp = tmp_path_factory.mktemp("cli")
    params = write_params(
        tmp / "params.yaml",
        data={"val_size": 200},
        variants={"full": {"fraction": 1.0, "noise": 0.0}},
        train={"epochs": 30, "batch_size": 50, "device": "cpu", "patience": 2},
    )
    env = _env(**{MIRROR_ENV: str(synthetic_mirror), MD5SUMS_ENV: str(synthetic_mirror / "MD5SUMS")})
    proc = stage("prepare.py", "--params", str(params), "--out", str(tmp / "prepared"), env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return tmp, params


@pytest.fixture(scope="module")
def trained(prepared):
    """The train stage run on the prepared folder with patience 2: its exit and output folders."""
    tmp, params = prepared
    out = {"models": tmp / "models", "curves": tmp / "curves"}
    proc = stage(
        "train.py",
        "--params",
        str(params),
        "--prepared",
        str(tmp / "prepared"),
        "--models",
        str(out["models"]),
        "--curves",
        str(out["curves"]),
    )
    return proc, out


def test_train_with_patience_exits_0_and_logs_the_best_epoch(trained):
    proc, out = trained
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out["curves"] / "full.csv").open()))
    assert [r["best"] for r in rows].count("1") == 1
    # stopped when patience ran out after the best epoch, well before 30 epochs on these easy digits
    best = next(int(r["epoch"]) for r in rows if r["best"] == "1")
    assert len(rows) == best + 2 < 30
    assert proc.stdout.startswith(f"full: epoch {len(rows)} val accuracy ")
    model = load_model(out["models"] / "full.npz")  # the model carries the params' normalization
    assert (model.mean, model.std) == (0.1307, 0.3081) and model.weight.shape == (10, 784)


EVALUATE_OUTS = {"metrics": "m", "predictions": "p", "figures": "f"}
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


def evaluate_args(tmp: Path, models: Path, curves: Path) -> list[str]:
    return [
        "--models",
        str(models),
        "--curves",
        str(curves),
        *[a for k, v in EVALUATE_OUTS.items() for a in (f"--{k}", str(tmp / "eval" / v))],
    ]


def test_evaluate_writes_headline_metrics_predictions_and_figures(trained, prepared):
    tmp, params = prepared
    assert trained[0].returncode == 0, trained[0].stderr
    proc = stage(
        "evaluate.py",
        "--params",
        str(params),
        "--prepared",
        str(tmp / "prepared"),
        *evaluate_args(tmp, trained[1]["models"], trained[1]["curves"]),
    )
    assert proc.returncode == 0 and proc.stdout.startswith("full: test accuracy "), proc.stderr
    metrics = json.loads((tmp / "eval" / "m" / "full.json").read_text())
    assert {k: sorted(v) for k, v in metrics.items()} == {
        "test": ["accuracy", "ece", "loss"],
        "val": ["accuracy", "loss"],
        "weights": ["sparsity"],
    }
    assert metrics["test"]["accuracy"] > 0.9  # the synthetic digits are easy
    assert len((tmp / "eval" / "p" / "full.csv").read_text().splitlines()) == 1 + 300
    assert sorted(p.name for p in (tmp / "eval" / "f").iterdir()) == FIGURES


def test_a_variant_prepare_never_built_is_one_line_and_trains_nothing(prepared, tmp_path):
    tmp, _ = prepared
    params = write_params(
        tmp_path / "params.yaml",
        data={"val_size": 200},
        train={"epochs": 1, "device": "cpu"},
        variants={"full": {"fraction": 1.0, "noise": 0.0}, "half": {"fraction": 0.5, "noise": 0.0}},
    )
    proc = stage(
        "train.py",
        "--params",
        str(params),
        "--prepared",
        str(tmp / "prepared"),
        "--models",
        str(tmp_path / "models"),
        "--curves",
        str(tmp_path / "curves"),
    )
    assert_one_line_error(proc, "no prepared variant 'half' at", "run the prepare stage first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_diverging_training_is_one_line_and_writes_no_model(prepared):
    tmp, params = prepared
    raw = yaml.safe_load(params.read_text())
    # On these separable digits even lr 1e4 stays finite; 1e38 overflows float32 logits in the first epoch.
    raw["train"].update(lr={"sgd": 1e38, "adam": 1e-3, "lbfgs": 1.0}, schedule="constant")
    bad = tmp / "huge_lr.yaml"
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = stage(
        "train.py",
        "--params",
        str(bad),
        "--prepared",
        str(tmp / "prepared"),
        "--models",
        str(tmp / "diverged"),
        "--curves",
        str(tmp / "diverged_curves"),
    )
    assert_one_line_error(proc, "training diverged: the training loss became", "at epoch 1", "set train.grad_clip")
    assert not (tmp / "diverged").exists() and not (tmp / "diverged_curves").exists()


def test_evaluate_without_a_model_says_to_train(prepared, tmp_path):
    tmp, params = prepared
    proc = stage(
        "evaluate.py",
        "--params",
        str(params),
        "--prepared",
        str(tmp / "prepared"),
        *evaluate_args(tmp_path, tmp_path / "none", tmp_path / "curves"),
    )
    assert_one_line_error(proc, f"no model at {tmp_path / 'none' / 'full.npz'}; run the train stage first")
    assert not (tmp_path / "eval").exists()

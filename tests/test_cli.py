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
    return subprocess.run([sys.executable, str(REPO / "stages" / name), *args], cwd=REPO,
                          env=env or _env(), capture_output=True, text=True)


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


EVALUATE_OUTS = ["--metrics", "m.json", "--details", "d.json", "--predictions", "p.csv", "--figures", "f"]


@pytest.mark.parametrize("name,extra", [("train.py", ["--log", "x.csv"]), ("evaluate.py", EVALUATE_OUTS)])
def test_unknown_variant_is_one_line_naming_it_and_the_known_ones(name, extra, tmp_path):
    outs = [a if a.startswith("--") else str(tmp_path / a) for a in extra]
    proc = stage(name, "--variant", "ful", "--model", str(tmp_path / "m.npz"), *outs)
    assert_one_line_error(proc, "unknown variant 'ful'; params.yaml defines: full, frac10, frac25, frac50, noise10")
    assert list(tmp_path.iterdir()) == []


def test_evaluate_requires_the_details_path():
    proc = stage("evaluate.py", "--variant", "full", "--model", "m.npz",
                 *[a for a in EVALUATE_OUTS if a not in ("--details", "d.json")])
    assert proc.returncode == 2 and "Missing option '--details'" in proc.stderr, proc.stderr


def test_bad_params_file_is_one_line_and_debug_shows_the_traceback(tmp_path):
    params = write_params(tmp_path / "params.yaml", train={"epochs": "ten"})
    args = ("--params", str(params), "--out", str(tmp_path / "prepared"))
    assert_one_line_error(stage("prepare.py", *args), f"{params}: train.epochs = 'ten': input should be a valid integer")
    debug = stage("prepare.py", *args, env=_env(MNISTLR_DEBUG="1"))
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "MnistlrError" in debug.stderr


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
    params = write_params(tmp / "params.yaml", data={"val_size": 200}, variants={"full": {"fraction": 1.0, "noise": 0.0}},
                          train={"epochs": 30, "batch_size": 50, "device": "cpu", "patience": 2})
    env = _env(**{MIRROR_ENV: str(synthetic_mirror), MD5SUMS_ENV: str(synthetic_mirror / "MD5SUMS")})
    proc = stage("prepare.py", "--params", str(params), "--out", str(tmp / "prepared"), env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return tmp, params


@pytest.fixture(scope="module")
def trained(prepared):
    """The train stage run on the prepared folder with patience 2: its exit and output files."""
    tmp, params = prepared
    out = {"model": tmp / "full.npz", "log": tmp / "full.csv"}
    proc = stage("train.py", "--variant", "full", "--params", str(params), "--prepared", str(tmp / "prepared"),
                 "--model", str(out["model"]), "--log", str(out["log"]))
    return proc, out


def test_train_with_patience_exits_0_and_logs_the_best_epoch(trained):
    proc, out = trained
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out["log"].open()))
    assert [r["best"] for r in rows].count("1") == 1
    # stopped when patience ran out after the best epoch, well before 30 epochs on these easy digits
    best = next(int(r["epoch"]) for r in rows if r["best"] == "1")
    assert len(rows) == best + 2 < 30
    assert proc.stdout.startswith(f"full: epoch {len(rows)} val accuracy ")
    model = load_model(out["model"])  # the model carries the params' normalization
    assert (model.mean, model.std) == (0.1307, 0.3081) and model.weight.shape == (10, 784)


def test_evaluate_writes_headline_metrics_and_details(trained, prepared):
    tmp, params = prepared
    assert trained[0].returncode == 0, trained[0].stderr
    out = {k: tmp / "eval" / v for k, v in (("metrics", "m.json"), ("details", "d.json"),
                                            ("predictions", "p.csv"), ("figures", "fig"))}
    proc = stage("evaluate.py", "--variant", "full", "--params", str(params), "--prepared", str(tmp / "prepared"),
                 "--model", str(trained[1]["model"]), *[a for k, p in out.items() for a in (f"--{k}", str(p))])
    assert proc.returncode == 0 and proc.stdout.startswith("full: test accuracy "), proc.stderr
    metrics = json.loads(out["metrics"].read_text())
    assert {k: sorted(v) for k, v in metrics.items()} == {
        "test": ["accuracy", "ece", "loss"], "val": ["accuracy", "loss"], "weights": ["sparsity"]}
    assert metrics["test"]["accuracy"] > 0.9  # the synthetic digits are easy
    assert sorted(json.loads(out["details"].read_text())) == ["classes", "test_reliability", "weights"]
    assert len(out["predictions"].read_text().splitlines()) == 1 + 300
    assert sorted(p.name for p in out["figures"].iterdir()) == ["confusion.png", "reliability.png", "weights.png"]


def test_diverging_training_is_one_line_and_writes_no_model(prepared):
    tmp, params = prepared
    raw = yaml.safe_load(params.read_text())
    # On these separable digits even lr 1e4 stays finite; 1e38 overflows float32 logits in the first epoch.
    raw["train"].update(lr={"sgd": 1e38, "adam": 1e-3, "lbfgs": 1.0}, schedule="constant")
    bad = tmp / "huge_lr.yaml"
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    proc = stage("train.py", "--variant", "full", "--params", str(bad), "--prepared", str(tmp / "prepared"),
                 "--model", str(tmp / "diverged.npz"), "--log", str(tmp / "diverged.csv"))
    assert_one_line_error(proc, "training diverged: loss became", "at epoch 1, step", "set train.grad_clip")
    assert not (tmp / "diverged.npz").exists() and not (tmp / "diverged.csv").exists()


def test_evaluate_without_a_model_says_to_train(prepared):
    tmp, params = prepared
    proc = stage("evaluate.py", "--variant", "full", "--params", str(params), "--prepared", str(tmp / "prepared"),
                 "--model", str(tmp / "none.npz"), *[str(tmp / "none" / a) if not a.startswith("--") else a
                                                     for a in EVALUATE_OUTS])
    assert_one_line_error(proc, f"no model at {tmp / 'none.npz'}; run the train stage first")
    assert not (tmp / "none").exists()

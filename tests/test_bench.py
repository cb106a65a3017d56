"""The bench scripts tell the truth: the benchmark compares like with like (the trainer and the plain loop train on
the same batches to the same model) and labels each run with the config that ran; gpu_check.sh fails when any
part fails; a bench script writes its results files only where --out says."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "bench" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = module
    spec.loader.exec_module(module)
    return module


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 784, generator=torch.Generator().manual_seed(0)) * 0.08
    y = torch.randint(0, 10, (n,), generator=g)
    return centers[y] + torch.randn(n, 784, generator=g), y  # overlapping classes: accuracy well below 1


def test_trainer_and_plain_loop_train_the_same_model_on_the_same_batches(benchmark):
    data = {"train": _data(1000, 1), "val": _data(200, 2), "test": _data(2000, 3)}
    trainer_s, trainer_acc = benchmark.trainer_run(data, 3, seed=7)
    plain_s, plain_acc = benchmark.plain_loop(data, 3, seed=7, threads=1)
    assert len(trainer_s) == len(plain_s) == 3
    assert 0.3 < trainer_acc < 0.95  # a test set with errors, so a different model would show
    assert abs(trainer_acc - plain_acc) <= 1 / 2000  # at most one test image, from float rounding


def test_another_batch_order_gives_another_model(benchmark):
    """The comparison above can fail: the plain loop with another seed lands elsewhere."""
    data = {"train": _data(1000, 1), "val": _data(200, 2), "test": _data(2000, 3)}
    _, trainer_acc = benchmark.trainer_run(data, 3, seed=7)
    accuracies = {benchmark.plain_loop(data, 3, seed=s, threads=1)[1] for s in (8, 9, 10)}
    assert any(abs(a - trainer_acc) > 1 / 2000 for a in accuracies)


# --- bench/gpu_check.sh fails when a part fails ----------------------------------------------------

GPU_CHECK = REPO / "bench" / "gpu_check.sh"


def _gpu_check(tmp_path, path_dirs: list, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PATH": os.pathsep.join([*map(str, path_dirs), os.environ["PATH"]]), **env}
    return subprocess.run(
        ["bash", str(GPU_CHECK), str(tmp_path / "out")], cwd=REPO, env=environ, capture_output=True, text=True
    )


def _executable(path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the check would really run")
def test_gpu_check_without_cuda_fails_at_once_saying_why(tmp_path):
    proc = _gpu_check(tmp_path, [], PYTHON=sys.executable)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "CUDA" in proc.stderr
    # with a driver but no CUDA device for torch (a CPU-only torch): the same, naming torch's answer
    fake = tmp_path / "bin"
    fake.mkdir()
    _executable(fake / "nvidia-smi", "#!/bin/sh\necho 'name, driver_version, memory.total'\n")
    proc = _gpu_check(tmp_path, [fake], PYTHON=sys.executable)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: torch.cuda.is_available() is False"), proc.stderr
    assert not (tmp_path / "out").exists()  # no report of a check that never ran


def test_gpu_check_runs_every_part_and_fails_naming_those_that_failed(tmp_path):
    """A stand-in python that passes the CUDA check, fails the tests and the CUDA benchmarks and passes the
    CPU pipeline (the last part: its status alone used to be the script's)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    _executable(fake / "nvidia-smi", "#!/bin/sh\necho 'name, driver_version, memory.total'\n")
    _executable(
        fake / "python",
        "#!/bin/bash\n"
        'case "$*" in\n'
        '  -c*) echo "torch 0 cuda 0 Stand-in GPU";;\n'
        '  *"--pipeline-device cpu"*) echo "| pipeline | ok |";;\n'
        '  *) echo "partial output"; echo "Traceback: boom" >&2; exit 3;;\n'
        "esac\n",
    )
    proc = _gpu_check(tmp_path, [fake], PYTHON=str(fake / "python"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = "tests bench_cuda bench_cuda_eager pipeline_cuda"
    assert proc.stderr.splitlines()[-1] == f"error: gpu_check: 4 part(s) failed: {failed}", proc.stderr
    assert "error: part bench_cuda failed (exit 3)" in proc.stderr
    out = tmp_path / "out"
    assert (out / "pipeline_cpu.md").read_text() == "| pipeline | ok |\n"  # a part that passed keeps its report
    assert not (out / "bench_cuda.md").exists()  # a failed part writes no report, its traceback least of all
    assert (out / "bench_cuda.stderr").read_text() == "Traceback: boom\n"


# --- make bench labels what ran ------------------------------------------------------------------------


@pytest.mark.parametrize("committed,new", [("sgd", "adam"), ("adam", "sgd"), ("lbfgs", "adam")])
def test_the_pipeline_part_runs_a_config_new_to_the_committed_params(benchmark, tmp_path, committed, new):
    text = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(re.sub(r"(?m)^optimizer: \w+", f"optimizer: {committed}", text))
    plan = benchmark.exp_run_plan(tmp_path)
    assert (plan["committed"], plan["new"]) == (committed, new)
    assert plan["runs"] == [("new config", new), ("config already run", committed), ("config already run", new)]


def test_the_pipeline_report_names_the_optimizer_of_each_run(benchmark):
    """With adam committed, sgd is the new config: the report compares the runs under their real names."""
    stage = {"cmd": ["stages/train.py"], "wall_s": 5.0, "max_rss_mb": 300.0}
    result = {
        "train_device": "cpu",
        "optimizers": {"committed": "adam", "new": "sgd"},
        "cold_s": 30.0,
        "stages": [stage],
        "noop_s": 1.0,
        "floor_s": 6.0,
        "pins": {"pinned": {"trainer_s_per_epoch": 0.5, "floor_s": 6.0}},
        "exp_runs": [
            {"label": "new config", "set": "optimizer=sgd", "wall_s": 8.42, "stages": [stage]},
            {"label": "config already run", "set": "optimizer=adam", "wall_s": 1.74, "stages": []},
            {"label": "config already run", "set": "optimizer=sgd", "wall_s": 1.5, "stages": []},
        ],
        "startup": {"interpreter_s": 0.02, "imports_s": {"train": 1.0}},
        "test_accuracy": {"repro (adam)": {"full": 0.92}, "exp run (sgd)": {"full": 0.91}},
    }
    text = "\n".join(benchmark.pipeline_lines(result))
    assert "cold `dvc repro` (fresh copy, empty cache; optimizer=adam)" in text
    assert (
        "A config already run (the slower of the two, `-S optimizer=adam`): 1.74 s, 21 % of the new config's "
        "(`-S optimizer=sgd`) 8.42 s." in text
    )
    assert "one-process floor (sgd), s" in text and "| repro (adam) | 92.00 % |" in text


# --- no bench script overwrites a committed result unasked ----------------------------------------------


def test_the_fidelity_bench_writes_its_results_only_where_out_says(tmp_path, monkeypatch, real_mirror):
    """Run from a copy of bench/ (its committed results would be tmp/bench/results): without --out it
    prints the report and writes nothing; with --out it writes both files there."""
    from typer.testing import CliRunner

    from mnistlr.data import IN_FEATURES, NUM_CLASSES
    from mnistlr.model import Model

    (tmp_path / "bench").mkdir()
    script = shutil.copy(REPO / "bench" / "predict_fidelity.py", tmp_path / "bench" / "predict_fidelity.py")
    spec = importlib.util.spec_from_file_location("predict_fidelity_copy", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("MNISTLR_MNIST_DIR", str(real_mirror))
    monkeypatch.setattr(module, "stroke_width", lambda mask: 2.5)  # the pen statistic of 50k digits: seconds
    monkeypatch.chdir(tmp_path)
    weight = np.random.default_rng(0).normal(0, 0.01, (NUM_CLASSES, IN_FEATURES)).astype(np.float32)
    Model(weight, np.zeros(NUM_CLASSES, np.float32), 0.1307, 0.3081).save(tmp_path / "m.npz")
    args = ["--model", "m.npz", "--kind", "mnist", "--mnist-digits", "20", "--select-digits", "0"]
    res = CliRunner().invoke(module.app, args)
    assert res.exit_code == 0, res.output
    assert "## Fidelity on the MNIST test digits" in res.stdout and "| mnist | 20 |" in res.stdout
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if "__pycache__" not in p.parts)
    assert written == ["bench", "bench/predict_fidelity.py", "m.npz"]  # (Python's bytecode cache aside)
    res = CliRunner().invoke(module.app, [*args, "--out", "results"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "results" / "predict_fidelity.md").read_text() in res.stdout
    assert (tmp_path / "results" / "predict_fidelity.json").is_file()

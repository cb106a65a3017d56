"""Same params and seed: the same numbers, byte for byte; another seed: other numbers."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import mnistlr
from mnistlr import train
from mnistlr.data import build_variant, split_indices, subset_indices
from mnistlr.params import TrainParams
from tests.conftest import REPO, SMALL_PARAMS, copy_project, dvc, make_project, run

LABELS = np.arange(1000, dtype=np.int64) % 10
X = torch.randn(120, 784, generator=torch.Generator().manual_seed(5))
Y = torch.arange(120) % 10


def _init(seed: int) -> np.ndarray:
    # lr 0: the weights fit returns are exactly its seeded initialisation
    model, _ = train.fit(X, Y, X, Y, TrainParams(epochs=1, batch_size=120, schedule="constant"), "sgd", 0.0, seed)
    return model.fc.weight.detach().numpy().copy()


def _batch_order(seed: int, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    seen = []
    real = train.gradient

    def spy(theta, xb, targets, yb, *rest):
        seen.append(yb[0].numpy().copy())
        return real(theta, xb, targets, yb, *rest)

    monkeypatch.setattr(train, "gradient", spy)
    train.fit(X, Y, X, Y, TrainParams(epochs=2, batch_size=7, schedule="constant"), "sgd", 0.0, seed)
    return np.concatenate(seen)


DRAWS = {
    "split": lambda s, mp: split_indices(1000, 100, s)[1],
    "subset": lambda s, mp: subset_indices(1000, 0.3, s),
    "noise": lambda s, mp: build_variant(LABELS, "noisy", 1.0, 0.2, s).labels,
    "init": lambda s, mp: _init(s),
    "batch order": _batch_order,
}


@pytest.mark.parametrize("what", DRAWS)
def test_the_seed_drives(what, monkeypatch):
    draw = DRAWS[what]
    first = draw(42, monkeypatch)
    assert isinstance(first, np.ndarray) and first.size > 0
    assert np.array_equal(first, draw(42, monkeypatch))
    assert not np.array_equal(first, draw(43, monkeypatch))


# Environments that ask torch, MKL, OpenBLAS and numpy for other code paths and thread counts than
# the ones mnistlr pins: what a machine with another instruction set (or more cores) picks by itself.
REQUESTS = {
    "generic": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_CBWR": "COMPATIBLE",
        "OPENBLAS_CORETYPE": "Prescott",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
        "OMP_NUM_THREADS": "1",
    },
    "widest": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_CBWR": "AUTO",
        "OPENBLAS_CORETYPE": "SkylakeX",
        "NPY_DISABLE_CPU_FEATURES": "",
        "OMP_NUM_THREADS": "2",
    },
}


def _metrics(project) -> dict[str, bytes]:
    files = [
        *sorted((project / "metrics").glob("*.json")),
        *sorted((project / "plots").rglob("*.csv")),
        *sorted((project / "models").glob("*.npz")),
    ]
    return {str(p.relative_to(project)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, reproduced):
    """The session's reproduced project and a second, independent one with the same params (SMALL_PARAMS:
    a clean and a label-noise variant), run up to evaluate; on a CPU the pins cover, the second in an
    environment that asks for the narrowest code paths and one thread (REQUESTS["generic"])."""
    env = reproduced[1]
    second = make_project(tmp_path_factory.mktemp("run2"), SMALL_PARAMS)
    request = REQUESTS["generic"] if mnistlr._has_avx2() else {}
    dvc("repro", "evaluate", cwd=second, env={**env, **request})  # the metrics; the report adds none
    return (reproduced[0], second), env


def test_two_runs_give_bit_identical_metrics(two_runs):
    (a, b), _ = two_runs
    first, second = _metrics(a), _metrics(b)
    assert set(first) == {
        f"{d}/{v}.{ext}"
        for v in ("full", "noise10")
        for d, ext in (("metrics", "json"), ("plots/train", "csv"), ("plots/predictions", "csv"), ("models", "npz"))
    }
    assert first == second


def test_another_seed_gives_other_metrics(two_runs):
    (a, b), env = two_runs
    params = yaml.safe_load((b / "params.yaml").read_text())
    params["seed"] = 7
    (b / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", "evaluate", cwd=b, env=env)
    assert _metrics(a)["metrics/full.json"] != _metrics(b)["metrics/full.json"]
    summary = [(p / "data/prepared/variants/noise10.json").read_text() for p in (a, b)]
    assert summary[0] != summary[1]  # the subset and noise draw changed too, not only training


# --- the same bits on every x86-64 CPU with AVX2 --------------------------------------------------

STAGE_OUTPUTS = ("models", "curves", "metrics", "predictions")


def _train_outputs(project, env: dict, out) -> dict[str, bytes]:
    """Run the train stage of `project` into `out` under `env`; every file it wrote, by path."""
    run(
        [sys.executable, "stages/train.py", "--models", str(out / "models"), "--curves", str(out / "curves")],
        project,
        env,
    )
    return {str(p.relative_to(out)): p.read_bytes() for d in ("models", "curves") for p in sorted((out / d).rglob("*"))}


def _stage_outputs(project, env: dict, out) -> dict[str, bytes]:
    """Run the train and evaluate stages of `project` into `out` under `env`; every file they wrote, by path."""
    _train_outputs(project, env, out)
    run(
        [
            sys.executable,
            "stages/evaluate.py",
            "--models",
            str(out / "models"),
            "--curves",
            str(out / "curves"),
            "--metrics",
            str(out / "metrics"),
            "--predictions",
            str(out / "predictions"),
            "--figures",
            str(out / "figures"),
        ],
        project,
        env,
    )
    return {str(p.relative_to(out)): p.read_bytes() for d in STAGE_OUTPUTS for p in sorted((out / d).rglob("*"))}


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory, reproduced):
    if not mnistlr._has_avx2():
        pytest.skip("the CPU pins apply to x86-64 CPUs with AVX2 only")
    project = copy_project(reproduced, tmp_path_factory.mktemp("cpu") / "p")  # its data/prepared is what counts
    env = reproduced[1]
    return project, {k: v for k, v in env.items() if k not in mnistlr.CPU_PINS and k != mnistlr.NATIVE_CPU_ENV}


def test_train_and_evaluate_give_the_same_bytes_whatever_code_paths_the_environment_asks_for(
    prepared_project, tmp_path
):
    """The widest code paths and two threads against the reproduced project's own outputs (the narrowest
    and one thread: test_two_runs_give_bit_identical_metrics)."""
    project, env = prepared_project
    folders = {"models": "models", "curves": "plots/train", "metrics": "metrics", "predictions": "plots/predictions"}
    baseline = {
        f"{name}/{p.name}": p.read_bytes()
        for name in STAGE_OUTPUTS
        for p in sorted((project / folders[name]).glob("*"))
    }
    assert len(baseline) == 8 and any(k.startswith("models/") for k in baseline)
    assert _stage_outputs(project, {**env, **REQUESTS["widest"]}, tmp_path / "widest") == baseline


def test_without_the_pins_those_requests_change_the_bits(prepared_project, tmp_path):
    """The check above can fail: left to their own choice (MNISTLR_NATIVE_CPU=1), the same requests give
    other trained weights."""
    project, env = prepared_project
    native = {**env, mnistlr.NATIVE_CPU_ENV: "1"}
    by_hand = _train_outputs(project, {**native, **mnistlr.CPU_PINS}, tmp_path / "by-hand")
    generic = _train_outputs(project, {**native, **REQUESTS["generic"]}, tmp_path / "generic")
    assert by_hand["models/full.npz"] != generic["models/full.npz"]


def test_a_stage_process_runs_with_the_pins():
    probe = "import mnistlr, torch; print(mnistlr.cpu_pins_active(), torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k not in mnistlr.CPU_PINS and k != mnistlr.NATIVE_CPU_ENV}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env={**env, "ATEN_CPU_CAPABILITY": "default"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == (["True", "AVX2"] if mnistlr._has_avx2() else ["False", out[1]])


def test_an_npz_is_written_without_zip64_headers_so_every_python_writes_the_same_bytes(tmp_path):
    """np.savez forces ZIP64 headers, whose version field differs between Python patch releases (the prepared
    data's hash changed between 3.11.7 and 3.11.2); atomic.write_arrays writes plain ones, read back alike."""
    import zipfile

    import numpy as np

    from mnistlr import atomic

    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.array([1, 2, 3], np.uint8)}
    atomic.write_arrays(tmp_path / "a.npz", **arrays)
    members = zipfile.ZipFile(tmp_path / "a.npz").infolist()
    assert [m.filename for m in members] == ["x.npy", "y.npy"]
    assert {(m.create_version, m.extract_version, m.date_time) for m in members} == {(20, 20, (1980, 1, 1, 0, 0, 0))}
    with np.load(tmp_path / "a.npz", allow_pickle=False) as back:
        assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())
    atomic.write_arrays(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()

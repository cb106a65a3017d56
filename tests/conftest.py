"""Shared fixtures: tiny synthetic MNIST mirrors, the real mirror when present, temp DVC projects."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnistlr.data import CANONICAL_MD5, MD5SUMS_ENV, MIRROR_ENV, file_md5
from mnistlr.repo import exe

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def encode_idx(array: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes (the format of the MNIST files), to write synthetic mirrors and bad files."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x00000800 | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def real_mirror_dir() -> Path | None:
    """The canonical MNIST mirror: MNISTLR_MNIST_DIR if it holds the files, else ../shared/data/mnist."""
    for cand in (os.environ.get(MIRROR_ENV), REPO.parent / "shared" / "data" / "mnist"):
        if cand and all((Path(cand) / n).is_file() for n in CANONICAL_MD5):
            return Path(cand).resolve()
    return None


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n learnable 28x28 uint8 'digits': a class-specific stroke pattern plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    templates = np.zeros((10, 28, 28), dtype=np.float32)
    for c in range(10):
        r = 4 + 2 * c
        templates[c, r : r + 3, 4:24] = 1.0  # a horizontal bar whose height encodes the class
        templates[c, 4:24, 2 + 2 * c : 4 + 2 * c] = 0.6
    images = templates[labels] * 200 + rng.normal(0, 30, (n, 28, 28))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_mirror(folder: Path, n_train: int = 1200, n_test: int = 300, seed: int = 0) -> Path:
    """Write the four gzip IDX files and an MD5SUMS for them into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = synthetic_digits(n, s)
        # mtime=0: identical bytes every time, so md5 sums are stable
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(encode_idx(images), mtime=0))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode_idx(labels), mtime=0))
    (folder / "MD5SUMS").write_text("".join(f"{file_md5(folder / n)}  {n}\n" for n in CANONICAL_MD5))
    return folder


# The longest modules first: xdist hands each worker a whole module (--dist loadfile) in collection order,
# and a long one started last would leave the other worker idle at the end.
LONGEST_FIRST = (
    "test_docs.py",
    "test_sweep_dask.py",
    "test_grid.py",
    "test_review_e2e.py",
    "test_sweep_e2e.py",
    "test_workflow.py",
    "test_reproducibility.py",
    "test_layout.py",
    "test_pipeline_e2e.py",
    "test_predict.py",
    "test_studies.py",
    "test_habits.py",
    "test_cli.py",
    "test_faults.py",
    "test_run_cache.py",
    "test_real_mnist.py",
    "test_data.py",
    "test_train.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def synthetic_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a small synthetic MNIST (1200 train, 300 test) and its MD5SUMS."""
    return write_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture
def use_synthetic_mirror(synthetic_mirror: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the pipeline at the synthetic mirror (its own md5 sums replace the canonical ones)."""
    monkeypatch.setenv(MIRROR_ENV, str(synthetic_mirror))
    monkeypatch.setenv(MD5SUMS_ENV, str(synthetic_mirror / "MD5SUMS"))
    return synthetic_mirror


def skip_unless_ci(reason: str) -> None:
    """Skip a test whose tool or data is missing here; on CI (CI=true) fail instead: a skip there hides a regression."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must provide it")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def real_mirror() -> Path:
    """The canonical MNIST files; the test is skipped where they are missing (and fails on CI)."""
    path = real_mirror_dir()
    if path is None:
        skip_unless_ci("canonical MNIST mirror not found (set MNISTLR_MNIST_DIR or provide ../shared/data/mnist)")
    return path


SMALL_PARAMS = {
    "data": {"val_size": 200},
    # two variants keep the end-to-end runs short while still exercising foreach
    "variants": {"full": {"fraction": 1.0, "noise": 0.0}, "noise10": {"fraction": 1.0, "noise": 0.1}},
    "train": {"epochs": 3, "batch_size": 32, "device": "cpu"},
}


def deep_update(base: dict, update: dict, replace: tuple[str, ...] = ("variants",)) -> dict:
    """Recursively merge `update` into a copy of `base`; keys in `replace` are replaced whole."""
    out = dict(base)
    for k, v in update.items():
        merge = isinstance(v, dict) and isinstance(out.get(k), dict) and k not in replace
        out[k] = deep_update(out[k], v, ()) if merge else v
    return out


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command, capturing output; on failure show it."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run dvc (the venv's, as mnistlr runs it) in `cwd`."""
    return run([exe("dvc"), *args], cwd=cwd, env=env, check=check)


def make_project(dest: Path, params_update: dict | None = None) -> Path:
    """Copy the repo's tracked files (not data, models or metrics) into `dest` as a fresh git + DVC repo."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    skip = ("dvc.lock", "metrics/", "plots/", "reports/", ".github/")
    for rel in files:
        if rel.startswith(skip) or not (REPO / rel).exists():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    (dest / "params.yaml").write_text(yaml.safe_dump(deep_update(params, params_update or {}), sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run([*git, "commit", "-qm", "init"], dest)
    return dest


def project_env(mirror: Path, synthetic: bool) -> dict:
    """Environment for running the pipeline in a temp project: the venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env[MIRROR_ENV] = str(mirror)
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.com"
    if synthetic:
        env[MD5SUMS_ENV] = str(mirror / "MD5SUMS")
    else:
        env.pop(MD5SUMS_ENV, None)
    return env


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> tuple[Path, dict, str]:
    """A temp project with SMALL_PARAMS, reproduced once on a synthetic mirror and committed:
    (project, env, what that `dvc repro` printed). Tests never change it: they work on `copy_project`.
    Built once per test run: under pytest-xdist the first worker to ask builds it in the run's shared temp
    folder, under a file lock, and the others use it."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    project, mirror, log = root / "reproduced", root / "reproduced-mirror", root / "reproduced.log"
    env = project_env(mirror, synthetic=True)
    with FileLock(str(root / "reproduced.lock")):
        if not log.is_file():
            write_mirror(mirror)
            project.mkdir()
            make_project(project, SMALL_PARAMS)
            first = dvc("repro", cwd=project, env=env).stdout
            run(["git", "add", "-A"], project, env)
            run(["git", "commit", "-qm", "results"], project, env)
            log.write_text(first)
    return project, env, log.read_text()


def copy_project(reproduced: tuple[Path, dict, str], dest: Path) -> Path:
    """A copy of the reproduced project (git history, DVC cache and run cache included) at `dest`."""
    shutil.copytree(reproduced[0], dest, symlinks=True)
    return dest


def load_storage_module():
    """scripts/storage.py as a module (scripts/ is not a package): start, stop, dvc_remote_commands."""
    import importlib.util

    if "mnistlr_storage" in sys.modules:
        return sys.modules["mnistlr_storage"]
    spec = importlib.util.spec_from_file_location("mnistlr_storage", REPO / "scripts" / "storage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mnistlr_storage"] = module  # @dataclass looks its module up by name while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def s3_storage(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server (SeaweedFS `weed mini`) on free 127.0.0.1 ports for this session, bucket created.

    Yields scripts/storage.py's Storage (endpoint, bucket, access_key, secret_key, pid, url); the server is
    stopped by its PID at the end. Skipped where no `weed` binary is installed (fails on CI instead).
    Use `load_storage_module().dvc_remote_commands(storage)` for the `dvc remote` commands.
    """
    storage_mod = load_storage_module()
    try:
        storage_mod.weed_exe()
    except SystemExit as exc:
        skip_unless_ci(f"no SeaweedFS `weed` binary ({exc})")
    storage = storage_mod.start(tmp_path_factory.mktemp("s3"))
    try:
        yield storage
    finally:
        storage_mod.stop(storage, graceful=False)  # its data is in this session's temp folder

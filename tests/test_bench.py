"""The benchmark's pipeline copy works where neither git nor .git came along (a bare GPU image)."""

import importlib.util
import shutil
import subprocess
from unittest import mock

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "bench" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(*args: str, cwd=REPO) -> list[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs this repository's git metadata to compare with")
def test_without_git_the_copy_holds_what_git_would_list(benchmark):
    with mock.patch.object(benchmark.subprocess, "run", side_effect=FileNotFoundError("git")):
        walked = set(benchmark.project_files())
    tracked = set(_git("ls-files"))
    untracked = set(_git("ls-files", "--others", "--exclude-standard"))
    assert tracked <= walked  # every project file travels ...
    assert walked - tracked <= untracked  # ... and nothing that .gitignore excludes (.venv, data/, caches)
    assert {"dvc.yaml", "params.yaml", "mnistlr/train.py", "stages/train.py"} <= walked


def test_without_a_git_program_commits_go_through_dulwich(benchmark, tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a\n")
    with mock.patch.object(benchmark.shutil, "which", return_value=None):
        benchmark.commit_all(tmp_path, "first")
        (tmp_path / "params.yaml").write_text("seed: 2\n")
        benchmark.commit_all(tmp_path, "second")
    if shutil.which("git"):  # read back with git itself
        assert _git("log", "--format=%s", cwd=tmp_path) == ["second", "first"]
        assert _git("status", "--porcelain", cwd=tmp_path) == []
        assert _git("show", "HEAD:params.yaml", cwd=tmp_path) == ["seed:", "2"]

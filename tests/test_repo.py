"""mnistlr.repo: every dvc and git command runs there, and a failed one becomes one line saying why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mnistlr.errors import MnistlrError
from mnistlr.repo import dvc_json, exe, failure_line, git_answer, git_show, run_dvc, run_git
from tests.conftest import run


class Refused(MnistlrError):
    pass


def finished(stdout: str = "", stderr: str = "", returncode: int = 1) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(["x"], returncode, stdout, stderr)


def test_a_stages_own_error_line_says_what_to_fix():
    proc = finished(
        stdout="Running stage 'train':\nerror: train.lr 0 is not accepted; accepted: a number > 0\n",
        stderr="ERROR: failed to reproduce 'train': failed to run: python stages/train.py, exited with 1\n",
    )
    assert failure_line(proc) == "train.lr 0 is not accepted; accepted: a number > 0"


def test_else_dvcs_first_error_line_the_cause_not_the_summary():
    stderr = "WARNING: no remote\nERROR: failed to pull data from the cloud - Forbidden\nERROR: 3 files failed\n"
    assert failure_line(finished(stderr=stderr)) == "ERROR: failed to pull data from the cloud - Forbidden"


def test_else_the_last_non_empty_line_else_the_exit_status():
    assert failure_line("hint: one\nfatal: not a git repository\n\n  \n") == "fatal: not a git repository"
    assert failure_line(finished(returncode=128)) == "exit 128"


def test_exe_prefers_the_executable_beside_this_python():
    assert exe("dvc") == str(Path(sys.executable).with_name("dvc"))
    assert exe("no-such-program-here") == "no-such-program-here"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    env = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    run(["git", "init", "-q", "-b", "main"], tmp_path)
    (tmp_path / "a.txt").write_text("one\n")
    run(["git", "add", "a.txt"], tmp_path)
    run(["git", *env, "commit", "-qm", "first"], tmp_path)
    return tmp_path


def test_run_git_returns_stdout_and_raises_one_line_naming_the_command(repo):
    assert run_git("rev-parse", "--abbrev-ref", "HEAD", cwd=repo).strip() == "main"
    with pytest.raises(Refused) as err:
        run_git("rev-parse", "--verify", "no-such-branch", cwd=repo, error=Refused)
    message = str(err.value)
    assert message.startswith("`git rev-parse --verify no-such-branch` failed: fatal: ") and "\n" not in message


def test_git_show_reads_a_committed_file_or_says_none(repo):
    (repo / "a.txt").write_text("changed in the workspace\n")
    assert git_show("HEAD", "a.txt", repo) == "one\n"
    assert git_show("HEAD", "missing.txt", repo) is None
    assert git_answer("config", "no.such-key", cwd=repo) is None


def test_run_dvc_and_dvc_json(repo):
    with pytest.raises(MnistlrError) as err:
        run_dvc("status", cwd=repo)  # a git repository but no DVC one
    assert str(err.value).startswith("`dvc status` failed: ERROR: ") and "\n" not in str(err.value)
    run_dvc("init", "-q", cwd=repo)
    assert dvc_json("status", cwd=repo) == {}

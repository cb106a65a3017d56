"""Runs the dvc and git subprocesses of a repository.

Every dvc and git command of mnistlr goes through here, so a failed one always reads the same way: one
MnistlrError naming the command and the one line of its output that says why (`failure_line`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from mnistlr.errors import MnistlrError

STAGE_ERROR = "error: "  # how mnistlr's stages (and git) begin the line that says what to fix
DVC_ERROR = "ERROR:"  # how dvc begins its own error lines


def beside_python(name: str) -> Path | None:
    """The executable `name` installed beside this Python (the venv's), or None."""
    path = Path(sys.executable).with_name(name)
    return path if path.is_file() else None


def exe(name: str) -> str:
    """The executable `name` beside this Python, else the one on PATH (else the bare name, which then fails
    with the OS's own message)."""
    beside = beside_python(name)
    return str(beside) if beside else (shutil.which(name) or name)


def _lines(proc_or_stderr: subprocess.CompletedProcess | str) -> list[str]:
    if isinstance(proc_or_stderr, str):
        text = proc_or_stderr
    else:
        text = f"{proc_or_stderr.stdout or ''}\n{proc_or_stderr.stderr or ''}"
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def failure_line(proc_or_stderr: subprocess.CompletedProcess | str) -> str:
    """The one line that says why a command failed: the last `error: ...` line (a stage's, what to fix), else
    dvc's first `ERROR:` line (the cause; the later ones sum up), else the last non-empty line of its output,
    else `exit N`. Given a finished process it reads stdout then stderr; given text, that text."""
    lines = _lines(proc_or_stderr)
    said = [ln[len(STAGE_ERROR) :] for ln in lines if ln.startswith(STAGE_ERROR)]
    if said:
        return said[-1]
    dvc_said = [ln for ln in lines if ln.startswith(DVC_ERROR)]
    if dvc_said:
        return dvc_said[0]
    if lines:
        return lines[-1]
    return f"exit {proc_or_stderr.returncode}" if isinstance(proc_or_stderr, subprocess.CompletedProcess) else "exit"


def failed_stage(proc: subprocess.CompletedProcess) -> str | None:
    """The stage dvc names in `failed to reproduce 'STAGE'`, or None."""
    found = [m.group(1) for ln in _lines(proc) if (m := re.search(r"failed to reproduce '([^']+)'", ln))]
    return found[-1] if found else None


def _run(
    tool: str, args: tuple[str, ...], cwd: str | Path, env: dict[str, str] | None, error: type[MnistlrError]
) -> str:
    proc = subprocess.run([exe(tool), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stdout
    if tool == "dvc" and any(ln.startswith(STAGE_ERROR) for ln in _lines(proc)):
        # a stage's own line says what to fix: name the command by its verbs, not its many -S options
        verbs = args[: next((i for i, a in enumerate(args) if a.startswith("-")), len(args))]
        stage = failed_stage(proc)
        where = f" in stage {stage}" if stage else ""
        raise error(f"`{' '.join((tool, *verbs))}` failed{where}: {failure_line(proc)}")
    raise error(f"`{tool} {' '.join(args)}` failed: {failure_line(proc)}")


def run_dvc(
    *args: str, cwd: str | Path = ".", env: dict[str, str] | None = None, error: type[MnistlrError] = MnistlrError
) -> str:
    """stdout of `dvc ARGS` in `cwd`; a failure raises `error` with one line: the command and `failure_line`
    (with the stage's name when a stage failed)."""
    return _run("dvc", args, cwd, env, error)


def dvc_json(
    *args: str, cwd: str | Path = ".", env: dict[str, str] | None = None, error: type[MnistlrError] = MnistlrError
) -> Any:
    """Parsed output of `dvc ARGS --json` ({} when dvc prints nothing)."""
    out = run_dvc(*args, "--json", cwd=cwd, env=env, error=error)
    return json.loads(out) if out.strip() else {}


def run_git(
    *args: str, cwd: str | Path = ".", env: dict[str, str] | None = None, error: type[MnistlrError] = MnistlrError
) -> str:
    """stdout of `git ARGS` in `cwd`; a failure raises `error` with one line: the command and `failure_line`."""
    return _run("git", args, cwd, env, error)


def git_answer(*args: str, cwd: str | Path = ".", env: dict[str, str] | None = None) -> str | None:
    """stdout of `git ARGS` when it succeeds, None when it fails: for questions whose answer may be no
    (no such remote, config key or file, not a repository)."""
    proc = subprocess.run([exe("git"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def git_show(rev: str, path: str, cwd: str | Path = ".") -> str | None:
    """The text of `path` as committed in `rev`; None when `rev` has no such file (or it is empty)."""
    out = git_answer("show", f"{rev}:{path}", cwd=cwd)
    return out if out and out.strip() else None

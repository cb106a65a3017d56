"""Run `dvc` as a subprocess (its CLI output is its stable interface) and turn failures into user errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from mnistlr.errors import MnistlrError


def dvc_exe() -> str:
    """The dvc beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.is_file() else (shutil.which("dvc") or "dvc")


def run_dvc(*args: str, cwd: str | Path = ".") -> str:
    """stdout of `dvc ARGS`; a non-zero exit becomes an MnistlrError with dvc's last error line."""
    proc = subprocess.run([dvc_exe(), *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise MnistlrError(f"`dvc {' '.join(args)}` failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    return proc.stdout


def dvc_json(*args: str, cwd: str | Path = ".") -> Any:
    """Parsed JSON output of `dvc ARGS --json`."""
    out = run_dvc(*args, "--json", cwd=cwd)
    return json.loads(out) if out.strip() else {}

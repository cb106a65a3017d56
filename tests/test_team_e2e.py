"""The round trip a team lives on, end to end through real git and dvc against a real S3 server (no mocks).

A bare git repo is `origin`. Clone A runs the pipeline on the synthetic mirror and shares it: `dvc push`
to the S3 remote (SeaweedFS on 127.0.0.1, the `s3_storage` fixture), `git push` of dvc.lock and the
metrics. A fresh clone B gets the models with `dvc pull` and has nothing to retrain. Then A runs a named
experiment and shares it with `dvc exp push origin NAME`; B fetches it with `dvc exp pull origin NAME`,
applies it and pulls its model. Credentials stay in .dvc/config.local (git-ignored) in both clones.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import copy_project, dvc, load_storage_module, run, synthetic_digits

STAGE_RUN = re.compile(r"Running stage '([^']+)'")
EXP = "adam-trial"
METRICS = ("metrics/full.json", "metrics/noise10.json")
MODELS = ("models/full.npz", "models/noise10.npz")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def remote_objects(storage) -> set[str]:
    """The md5 of every object in the remote's folder of the bucket (DVC 3 keeps files/md5/ab/cdef...)."""
    import botocore.session  # comes with dvc-s3

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=storage.endpoint,
        aws_access_key_id=storage.access_key,
        aws_secret_access_key=storage.secret_key,
        region_name="us-east-1",
    )
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix="mnistlr/files/md5/"):
        keys |= {"".join(o["Key"].split("/")[-2:]) for o in page.get("Contents", [])}
    return keys


def local_remote_commands(storage) -> list[list[str]]:
    """Only the credential commands (`dvc remote modify --local ...`): what a teammate runs after cloning."""
    return [c for c in load_storage_module().dvc_remote_commands(storage) if "--local" in c]


def predict(project: Path, image: Path, env: dict) -> list[dict]:
    proc = run(["mnistlr", "predict", str(image), "--model", "models/full.npz", "--json"], project, env)
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def team(tmp_path_factory, reproduced, s3_storage):
    """origin (bare), clone A (the session's reproduced project, copied, then pushed), clone B (fresh clone,
    pulled); timings of B's side."""
    env = reproduced[1]
    root = tmp_path_factory.mktemp("team")
    origin = root / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root, env)

    a = copy_project(reproduced, root / "a")
    remotes_before = dvc("remote", "list", cwd=a, env=env).stdout
    run(["git", "remote", "add", "origin", str(origin)], a, env)
    for cmd in load_storage_module().dvc_remote_commands(s3_storage):
        dvc(*cmd, cwd=a, env=env)
    repro_a = dvc("repro", cwd=a, env=env)  # up to date: the remote is configured but never read
    push_a = dvc("push", cwd=a, env=env)
    run(["git", "add", "-A"], a, env)
    run(["git", "commit", "-qm", "remote configured"], a, env)
    run(["git", "push", "-q", "origin", "main"], a, env)

    b = root / "b"
    run(["git", "clone", "-q", str(origin), str(b)], root, env)
    b_before = {"config_local": (b / ".dvc" / "config.local").exists(), "models": [(b / m).exists() for m in MODELS]}
    for cmd in local_remote_commands(s3_storage):
        dvc(*cmd, cwd=b, env=env)
    t0 = time.monotonic()
    pull_b = dvc("pull", cwd=b, env=env)
    b_pull_s = time.monotonic() - t0
    t0 = time.monotonic()
    repro_b = dvc("repro", cwd=b, env=env)
    b_repro_s = time.monotonic() - t0
    print(f"\nB: dvc pull {b_pull_s:.1f} s + no-op dvc repro {b_repro_s:.1f} s")
    return {
        "env": env,
        "origin": origin,
        "a": a,
        "b": b,
        "storage": s3_storage,
        "remotes_before": remotes_before,
        "first_repro": reproduced[2],
        "repro_a": repro_a,
        "push_a": push_a,
        "pull_b": pull_b,
        "repro_b": repro_b,
        "b_before": b_before,
    }


def test_the_default_project_has_no_remote_and_repro_runs_without_one(team):
    assert team["remotes_before"].strip() == ""  # as committed: no remote, `dvc repro` needs none
    assert "Running stage 'prepare'" in team["first_repro"]
    assert "Running stage" not in team["repro_a"].stdout  # with a remote configured: up to date, nothing read


def test_credentials_stay_local_and_out_of_git(team):
    a, b, storage, env = team["a"], team["b"], team["storage"], team["env"]
    shared = (a / ".dvc" / "config").read_text()
    assert storage.url in shared and storage.endpoint in shared  # the remote itself is shared through git ...
    assert storage.secret_key not in shared and storage.access_key not in shared  # ... its credentials are not
    local = (a / ".dvc" / "config.local").read_text()
    assert storage.secret_key in local and storage.access_key in local
    assert run(["git", "check-ignore", "-q", ".dvc/config.local"], a, env, check=False).returncode == 0
    assert run(["git", "ls-files", ".dvc"], a, env).stdout.split() == [".dvc/.gitignore", ".dvc/config"]
    # every version of .dvc/ that ever reached origin (the throwaway keys are also in scripts/storage.py, by design)
    history = run(["git", "log", "--all", "-p", "--", ".dvc"], b, env).stdout
    assert storage.url in history and storage.secret_key not in history and storage.access_key not in history
    assert ".dvc/config.local" not in run(["git", "log", "--all", "--name-only"], b, env).stdout
    assert team["b_before"]["config_local"] is False  # a fresh clone gets the remote, not the keys


def test_push_sends_every_cached_output_to_s3(team):
    a, storage = team["a"], team["storage"]
    pushed = remote_objects(storage)
    for m in MODELS:
        assert md5(a / m) in pushed, m
    # data/prepared is a directory output: its .dir manifest is pushed along with its files
    lock = (a / "dvc.lock").read_text()
    dir_md5 = re.search(r"path: data/prepared\n\s+hash: md5\n\s+md5: (\w+)\.dir", lock).group(1)
    assert dir_md5 + ".dir" in pushed


def test_fresh_clone_pulls_and_has_nothing_to_retrain(team):
    a, b, env = team["a"], team["b"], team["env"]
    assert team["b_before"]["models"] == [False, False]  # models are not in git ...
    for m in MODELS:
        assert (b / m).is_file() and md5(b / m) == md5(a / m), m  # ... dvc pull brings A's exact bytes
    for m in METRICS:
        assert (b / m).read_bytes() == (a / m).read_bytes(), m
    assert "up to date" in dvc("status", "dvc.yaml", cwd=b, env=env).stdout  # the root pipeline (not studies/)
    assert STAGE_RUN.findall(team["repro_b"].stdout) == []
    # the pulled model works: same image, same answer as A's
    image = b.parent / "digit.png"
    images, _ = synthetic_digits(10, seed=7)
    Image.fromarray(images[0]).save(image)
    got = predict(b, image, env)
    assert got == predict(a, image, env)
    assert got[0]["prediction"] in range(10)


def test_experiment_round_trip_through_origin_and_s3(team):
    a, b, env, storage = team["a"], team["b"], team["env"], team["storage"]
    baseline_model = md5(a / "models/full.npz")
    dvc("exp", "run", "-n", EXP, "-S", "optimizer=adam", cwd=a, env=env)
    exp_model = md5(a / "models/full.npz")  # the workspace holds the experiment's results after exp run
    assert exp_model != baseline_model
    assert exp_model not in remote_objects(storage)

    out = dvc("exp", "push", "origin", EXP, cwd=a, env=env)
    # with a default remote, `dvc exp push` pushes the experiment's cached outputs too (not only the git ref)
    assert exp_model in remote_objects(storage), out.stdout + out.stderr
    again = dvc("push", cwd=a, env=env)  # what the README tells teammates to run anyway: nothing left to send
    assert "Everything is up to date" in again.stdout + again.stderr, again.stdout + again.stderr
    assert exp_model in remote_objects(storage)
    assert EXP in run(["git", "for-each-ref", "refs/exps"], team["origin"], env).stdout

    dvc("exp", "pull", "origin", EXP, cwd=b, env=env)
    shown = json.loads(dvc("exp", "show", "--json", cwd=b, env=env).stdout)
    names = {r.get("name") for e in shown for x in (e.get("experiments") or []) for r in x["revs"]}
    assert EXP in names, shown
    dvc("exp", "apply", EXP, cwd=b, env=env)
    dvc("pull", cwd=b, env=env)
    assert md5(b / "models/full.npz") == exp_model
    assert "optimizer: adam" in (b / "params.yaml").read_text()
    assert "up to date" in dvc("status", "dvc.yaml", cwd=b, env=env).stdout  # the root pipeline (not studies/)
    for m in METRICS:
        assert (b / m).read_bytes() == (a / m).read_bytes(), m

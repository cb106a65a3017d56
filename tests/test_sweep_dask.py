"""`mnistlr sweep` on a real Dask cluster: a scheduler and two workers on 127.0.0.1, a bare git origin and a
real S3 server, all started here and stopped by PID. Every point is a one-epoch `dvc exp run` on synthetic
digits in its own clone; results are checked from a fresh clone of the origin, as a teammate would see them."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnistlr.errors import MnistlrError
from mnistlr.sweep import exp_ref, expand_grid, point_name
from tests.conftest import dvc, load_storage_module, make_project, project_env, run

BIN = Path(sys.executable).parent
MNISTLR = str(BIN / "mnistlr")
PARAMS = {
    "data": {"val_size": 200},
    "variants": {"full": {"fraction": 1.0, "noise": 0.0}},  # one variant: each point is one train + evaluate
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "lr": {"sgd": 0.003, "adam": 0.0003}},
}
GRID = ["-S", "optimizer=sgd,adam", "-S", "train.weight_decay=0,0.0001"]
EXPECTED = {("sgd", 0), ("sgd", 0.0001), ("adam", 0), ("adam", 0.0001)}


# --- the grid, against what `dvc exp run --queue` queues ---------------------------------------------------


def queued_overrides(project: Path, env: dict, sets: list[str]) -> list[list[str]]:
    """The overrides of every experiment `dvc exp run --queue -S ...` queues, in order, from its own output."""
    out = dvc("exp", "run", "--queue", *(a for s in sets for a in ("-S", s)), cwd=project, env=env).stdout
    found = [ast.literal_eval(m)["params.yaml"] for m in re.findall(r"Queueing with overrides '(\{.*\})'\.", out)]
    queued = out.count("Queued experiment")
    dvc("queue", "remove", "--all", cwd=project, env=env)
    return found if found else [[]] * queued


@pytest.mark.parametrize("sets", [
    ["optimizer=sgd,adam", "train.weight_decay=0,0.0001"],          # the 2x2 grid
    ["seed=1,2", "seed=3"],                                          # a repeated key: the last wins
    ["seed=range(1,4)", "train.lr.sgd=0.1,0.2"],                    # Hydra's range() and a nested key
    ["train.schedule=constant", "optimizer=adam,sgd,lbfgs"],        # a single value and a 3-way list
], ids=["2x2", "repeated-key", "range-nested", "single-and-3"])
def test_grid_expands_as_dvc_queues_it(tmp_path, synthetic_mirror, sets):
    project = make_project(tmp_path, PARAMS)
    env = project_env(synthetic_mirror, synthetic=True)
    assert expand_grid(sets) == queued_overrides(project, env, sets)


def test_grid_points_and_names():
    points = expand_grid(["optimizer=sgd,adam", "train.weight_decay=0,0.0001"])
    assert points == [["optimizer=sgd", "train.weight_decay=0"], ["optimizer=sgd", "train.weight_decay=0.0001"],
                      ["optimizer=adam", "train.weight_decay=0"], ["optimizer=adam", "train.weight_decay=0.0001"]]
    assert expand_grid(["seed=1", "seed=2"]) == [["seed=2"]]  # -S a=1 -S a=2: one run, the last value
    commit, other = "a" * 40, "b" * 40
    names = [point_name(p, commit) for p in points]
    assert len(set(names)) == 4
    assert names == [point_name(p, commit) for p in points]  # deterministic
    assert point_name(["train.weight_decay=0", "optimizer=sgd"], commit) == names[0]  # order of -S does not matter
    assert point_name(points[0], other) != names[0]  # another commit, another experiment
    assert point_name(points[0], commit, "mine") != names[0] and point_name(points[0], commit, "mine").startswith("mine-")
    for name in names:
        assert len(name) <= 20
        assert subprocess.run(["git", "check-ref-format", exp_ref(commit, name)]).returncode == 0
    with pytest.raises(MnistlrError, match="--name-prefix"):
        point_name(points[0], commit, "bad/prefix")
    with pytest.raises(MnistlrError, match="KEY=V1"):
        expand_grid(["optimizer"])


# --- the team: origin, S3, a scheduler and two workers ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def team(tmp_path_factory, synthetic_mirror, s3_storage):
    """A reproduced project whose baseline is pushed to a bare git origin and to the S3 remote."""
    root = tmp_path_factory.mktemp("team")
    origin = root / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root)
    (root / "project").mkdir()
    project = make_project(root / "project", PARAMS)
    env = project_env(synthetic_mirror, synthetic=True)
    for cmd in load_storage_module().dvc_remote_commands(s3_storage):
        dvc(*cmd, cwd=project, env=env)
    dvc("repro", cwd=project, env=env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline"], project, env)
    run(["git", "remote", "add", "origin", str(origin)], project, env)
    run(["git", "push", "-q", "origin", "main"], project, env)
    dvc("push", cwd=project, env=env)
    return {"project": project, "origin": origin, "env": env, "storage": s3_storage, "root": root}


@pytest.fixture(scope="module")
def cluster(team):
    """`dask scheduler` and two `dask worker`s (no nanny: the PID is the worker) on 127.0.0.1, each worker with its
    own temp folder so the test sees where its clones go; all stopped by PID."""
    root, env = team["root"], team["env"]
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    logs = []

    def start(args: list[str], name: str, extra_env: dict | None = None) -> subprocess.Popen:
        log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed at teardown
        logs.append(log)
        proc = subprocess.Popen([str(BIN / "dask"), *args], cwd=root, env={**env, **(extra_env or {})},
                                stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], "scheduler")
        workers = []
        for i in range(2):
            tmp = root / f"worker{i}-tmp"
            tmp.mkdir()
            proc = start(["worker", address, "--nthreads", "1", "--no-dashboard", "--no-nanny", "--host", "127.0.0.1",
                          "--local-directory", str(tmp)], f"worker{i}", {"TMPDIR": str(tmp)})
            workers.append((proc, tmp))
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(2, timeout=60)
                break
            except OSError:
                assert time.monotonic() < deadline, (root / "scheduler.log").read_text()
                time.sleep(1)
        yield {"address": address, "workers": workers}
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()


def sweep(team: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([MNISTLR, "sweep", *args], cwd=team["project"], env={**team["env"], "COLUMNS": "120"},
                          capture_output=True, text=True, timeout=timeout)
    return proc


def origin_refs(team: dict) -> dict[str, str]:
    """ref -> sha of every experiment on the origin."""
    out = run(["git", "ls-remote", str(team["origin"]), "refs/exps/*"], team["root"]).stdout
    return {line.split("\t")[1]: line.split("\t")[0] for line in out.splitlines()}


def fresh_clone(team: dict, dest: Path) -> Path:
    """A teammate's clone of the origin with the S3 remote's credentials."""
    run(["git", "clone", "-q", str(team["origin"]), str(dest)], team["root"])
    for cmd in load_storage_module().dvc_remote_commands(team["storage"]):
        if "--local" in cmd:
            dvc(*cmd, cwd=dest, env=team["env"])
    return dest


def check_results(team: dict, dest: Path, names: list[str]) -> dict[str, dict]:
    """Pull `names` into a fresh clone: each must show its params and metrics, and its model must come out of S3."""
    clone = fresh_clone(team, dest)
    env = team["env"]
    dvc("exp", "pull", "origin", *names, cwd=clone, env=env)  # with their cache: from S3 into this empty clone
    shown = json.loads(dvc("exp", "show", "--json", cwd=clone, env=env).stdout)
    exps = {r["name"]: r["data"] for c in shown if c["rev"] != "workspace"
            for e in c.get("experiments") or [] for r in e["revs"]}
    assert set(names) <= set(exps), (names, sorted(exps))
    for name in names:
        metrics = exps[name]["metrics"]["metrics/full.json"]["data"]
        assert 0.3 < metrics["test"]["accuracy"] <= 1.0, (name, metrics)
        dvc("exp", "apply", name, cwd=clone, env=env)
        dvc("pull", "models/full.npz", cwd=clone, env=env)
        model = clone / "models" / "full.npz"
        lock = yaml.safe_load((clone / "dvc.lock").read_text())
        md5 = next(o["md5"] for o in lock["stages"]["train@full"]["outs"] if o["path"] == "models/full.npz")
        assert hashlib.md5(model.read_bytes()).hexdigest() == md5  # the experiment's own model
        with np.load(model) as f:
            assert f[f.files[0]].size > 0
        run(["git", "checkout", "-q", "--", "."], clone)
    return {n: exps[n] for n in names}


def sweep_names(output: str, status: str = "done") -> list[str]:
    return re.findall(rf"^{status} (\S+) \(", output, flags=re.M)


def grid_of(exps: dict[str, dict]) -> set[tuple[str, float]]:
    out = set()
    for data in exps.values():
        p = data["params"]["params.yaml"]["data"]
        out.add((p["optimizer"], float(p["train"]["weight_decay"])))
    return out


# --- the sweep ------------------------------------------------------------------------------------------------


def test_sweep_runs_every_point_on_the_cluster_and_reports_the_failing_ones(team, cluster, tmp_path):
    before = origin_refs(team)
    # weight_decay -1 fails the train stage's params check: two failing points beside four good ones
    proc = sweep(team, "-S", "optimizer=sgd,adam", "-S", "train.weight_decay=0,0.0001,-1",
                 "--scheduler", cluster["address"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out  # the number of failed points
    done = sweep_names(proc.stdout)
    assert len(done) == 4, out
    failed = re.findall(r"^FAILED (\S+) \((.*)\): (.+)$", proc.stdout, flags=re.M)
    assert sorted(p for _, p, _ in failed) == ["optimizer=adam train.weight_decay=-1",
                                               "optimizer=sgd train.weight_decay=-1"], out
    assert all("weight_decay" in err and "\n" not in err for _, _, err in failed), failed
    assert re.search(r"^progress: \d/6 done, \d running, \d waiting, \d failed$", proc.stdout, flags=re.M), out
    assert "sweep: 4 of 6 points passed, 2 failed" in proc.stderr
    # only the four good points reached the origin, each named as the driver named it
    commit = run(["git", "rev-parse", "HEAD"], team["project"]).stdout.strip()
    new = set(origin_refs(team)) - set(before)
    assert new == {exp_ref(commit, n) for n in done}, (new, done)
    # the comparison, as `mnistlr compare` writes it: the baseline and the four experiments
    compared = json.loads((team["project"] / "experiments" / "compare.json").read_text())
    assert {r["run"] for r in compared["runs"]} >= set(done) and len(compared["runs"]) == 5
    assert "compared 5 runs on full" in proc.stdout
    # a teammate's fresh clone: all four with metrics, the models in S3
    exps = check_results(team, tmp_path / "fresh", done)
    assert grid_of(exps) == EXPECTED


def test_rerunning_the_sweep_skips_every_point_already_pushed(team, cluster):
    before = origin_refs(team)
    start = time.monotonic()
    proc = sweep(team, *GRID, "--scheduler", cluster["address"])
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 already on origin (skipped), 0 to run" in proc.stdout, proc.stdout
    assert sweep_names(proc.stdout) == [] and origin_refs(team) == before  # nothing ran, nothing pushed
    assert elapsed < 60, elapsed  # no experiment ran (one runs ~20 s or more)


def processes_in(folder: Path) -> list[str]:
    """Processes working in `folder` or naming it on their command line (a dead worker's leftovers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(folder)) or str(folder) in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def test_a_worker_killed_mid_sweep_loses_no_point_and_pushes_nothing_partial(team, cluster, tmp_path):
    (victim, victim_tmp), _ = cluster["workers"]
    before = set(origin_refs(team))
    proc = subprocess.Popen([MNISTLR, "sweep", *GRID, "--name-prefix", "killed", "--scheduler", cluster["address"]],
                            cwd=team["project"], env=team["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # wait until the victim is inside a point's `dvc exp run` (its clone has a checkout and a DVC temp dir)
        deadline = time.monotonic() + 180
        while not list(victim_tmp.glob("mnistlr-sweep-killed-*/repo/.dvc/tmp")):
            assert proc.poll() is None and time.monotonic() < deadline, "the victim never started a point"
            time.sleep(0.3)
        time.sleep(4)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    out = stdout + stderr
    assert proc.returncode == 0, out
    done = sweep_names(stdout)
    assert len(done) == 4 and all(n.startswith("killed-") for n in done), out
    # the killed attempt stopped itself (no orphan finished it: its point was rerun, not found pushed) and
    # cleaned up: its clone is gone and none of its processes is left
    assert not re.search(r"^skipped ", stdout, flags=re.M), out
    deadline = time.monotonic() + 20
    while list(victim_tmp.glob("mnistlr-sweep-killed-*")) or processes_in(victim_tmp):
        assert time.monotonic() < deadline, (list(victim_tmp.glob("mnistlr-sweep-killed-*")), processes_in(victim_tmp))
        time.sleep(0.5)
    # exactly four new refs, and every one has its metrics and its model in the remote
    new = set(origin_refs(team)) - before
    assert len(new) == 4, new
    exps = check_results(team, tmp_path / "fresh", [ref.rsplit("/", 1)[1] for ref in new])
    assert grid_of(exps) == EXPECTED


# --- bad input: one line, exit 1, nothing pushed -------------------------------------------------------------


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def test_an_unknown_param_key_is_refused_with_the_closest_known_one(team):
    before = origin_refs(team)
    proc = sweep(team, "-S", "optimzer=sgd,adam")
    assert_one_line_error(proc, "unknown param key 'optimzer'", "did you mean 'optimizer'")
    proc = sweep(team, "-S", "optimizer=sgd", "-S", "train.weightdecay=0,1")
    assert_one_line_error(proc, "'train.weightdecay'", "'train.weight_decay'")
    assert origin_refs(team) == before


def test_an_unreachable_scheduler_is_one_line_after_the_connect_timeout(team):
    before = origin_refs(team)
    start = time.monotonic()
    proc = sweep(team, "-S", "seed=7,8", "--scheduler", f"tcp://127.0.0.1:{free_port()}", timeout=120)
    assert_one_line_error(proc, "cannot reach the Dask scheduler", "within 10 s")
    assert time.monotonic() - start < 60
    assert origin_refs(team) == before


def test_a_missing_git_remote_or_an_unpushed_commit_is_refused(team, tmp_path):
    project = make_project(tmp_path, PARAMS)
    proc = subprocess.run([MNISTLR, "sweep", "-S", "seed=1,2"], cwd=project, env=team["env"], capture_output=True,
                          text=True)
    assert_one_line_error(proc, "no git remote 'origin'", "git remote add origin")
    # a commit that is not on the origin: the workers could not clone it
    before = origin_refs(team)
    run(["git", "remote", "add", "origin", str(team["origin"])], project)
    proc = subprocess.run([MNISTLR, "sweep", "-S", "seed=1,2"], cwd=project, env=team["env"], capture_output=True,
                          text=True)
    assert_one_line_error(proc, "is not on the git remote 'origin'", "git push origin HEAD")
    assert origin_refs(team) == before


def test_sweep_point_refuses_a_list_and_the_cli_stays_light():
    proc = subprocess.run([MNISTLR, "sweep-point", "-S", "optimizer=sgd,adam", "--origin", "/nowhere",
                           "--commit", "a" * 40], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: sweep-point runs one point"), proc.stderr
    probe = "import sys, mnistlr.cli; print(sorted(m for m in ('torch', 'dask', 'distributed') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"

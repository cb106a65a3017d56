"""`mnistlr sweep` on a real Dask cluster: a scheduler and two workers on 127.0.0.1, a bare git origin and a
real S3 server, all started here and stopped by PID. Each task is one training pass of a group of points (or
a slice of one) of the small reproduced project (synthetic digits, two variants, three epochs) in its own
clone, every point recorded as an experiment and pushed. The driver's .dvc/config.local holds the S3
credentials; the workers get theirs from their own environment, and the scheduler records every task it is
given, so the tests see that none of the driver's credentials travel. Results are checked from a fresh clone
of the origin, as a teammate would see them."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
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
from mnistlr.grid import Point, expand_grid, point_name, select, split_groups
from mnistlr.params import parse_params
from mnistlr.record import exp_ref
from mnistlr.sweep import CONFIG_LOCAL_ENV
from tests.conftest import copy_project, dvc, load_storage_module, make_project, project_env, run

BIN = Path(sys.executable).parent
MNISTLR = str(BIN / "mnistlr")
PARAMS = {
    "data": {"val_size": 100},
    "variants": {"full": {"fraction": 1.0, "noise": 0.0}},  # one variant: each point is one train + evaluate
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "lr": {"sgd": 0.003, "adam": 0.0003}},
}
# One training pass of three points, two that train and one that diverges; with two workers the group is
# cut into two slices, one per worker (every other point: 0.003 and 1e38, then 0.006).
GRID = ["-S", "train.lr.sgd=0.003,0.006,1e38"]
GOOD = ["-S", "train.lr.sgd=0.003,0.006"]  # the grid's points that pass
EXPECTED = {0.003, 0.006}

# Loaded by the scheduler (`dask scheduler --preload`): appends every task it is given, pickled as the
# scheduler holds it (function and arguments), to the file named by MNISTLR_TEST_TASK_LOG.
RECORDER = """
import json, os
import cloudpickle
from distributed.diagnostics.plugin import SchedulerPlugin

class RecordTasks(SchedulerPlugin):
    name = "record-tasks"

    def update_graph(self, scheduler, *, tasks, **kwargs):
        with open(os.environ["MNISTLR_TEST_TASK_LOG"], "a") as f:
            for key in tasks:
                ts = scheduler.tasks.get(key)
                if ts is not None:
                    f.write(json.dumps({"key": str(key), "spec": cloudpickle.dumps(ts.run_spec).hex()}) + "\\n")

def dask_setup(scheduler):
    scheduler.add_plugin(RecordTasks())
"""


# --- the grid, against what `dvc exp run --queue` queues ---------------------------------------------------


def queued_overrides(project: Path, env: dict, sets: list[str]) -> list[list[str]]:
    """The overrides of every experiment `dvc exp run --queue -S ...` queues, in order, from its own output
    (the queue is never started: what it holds is left to the temp project)."""
    out = dvc("exp", "run", "--queue", *(a for s in sets for a in ("-S", s)), cwd=project, env=env).stdout
    found = [ast.literal_eval(m)["params.yaml"] for m in re.findall(r"Queueing with overrides '(\{.*\})'\.", out)]
    queued = out.count("Queued experiment")
    return found if found else [[]] * queued


@pytest.fixture(scope="module")
def queue_project(tmp_path_factory, synthetic_mirror):
    project = make_project(tmp_path_factory.mktemp("queue"), PARAMS)
    return project, project_env(synthetic_mirror, synthetic=True)


@pytest.mark.parametrize(
    "sets",
    [
        ["optimizer=sgd,adam", "train.weight_decay=0,0.0001"],  # the 2x2 grid
        ["seed=1,2", "seed=3"],  # a repeated key: the last wins
        ["seed=range(1,4)", "train.lr.sgd=0.1,0.2"],  # Hydra's range() and a nested key
        ["train.schedule=constant", "optimizer=adam,sgd,lbfgs"],  # a single value and a 3-way list
    ],
    ids=["2x2", "repeated-key", "range-nested", "single-and-3"],
)
def test_grid_expands_as_dvc_queues_it(queue_project, sets):
    project, env = queue_project
    assert expand_grid(sets) == queued_overrides(project, env, sets)


def test_grid_points_and_names():
    points = expand_grid(["optimizer=sgd,adam", "train.weight_decay=0,0.0001"])
    assert points == [
        ["optimizer=sgd", "train.weight_decay=0"],
        ["optimizer=sgd", "train.weight_decay=0.0001"],
        ["optimizer=adam", "train.weight_decay=0"],
        ["optimizer=adam", "train.weight_decay=0.0001"],
    ]
    assert expand_grid(["seed=1", "seed=2"]) == [["seed=2"]]  # -S a=1 -S a=2: one run, the last value
    commit, other = "a" * 40, "b" * 40
    names = [point_name(p, commit) for p in points]
    assert len(set(names)) == 4
    assert names == [point_name(p, commit) for p in points]  # deterministic
    assert point_name(["train.weight_decay=0", "optimizer=sgd"], commit) == names[0]  # order of -S does not matter
    assert point_name(points[0], other) != names[0]  # another commit, another experiment
    assert point_name(points[0], commit, "mine") != names[0] and point_name(points[0], commit, "mine").startswith(
        "mine-"
    )
    for name in names:
        assert len(name) <= 20
        assert subprocess.run(["git", "check-ref-format", exp_ref(commit, name)]).returncode == 0
    with pytest.raises(MnistlrError, match="--name-prefix"):
        point_name(points[0], commit, "bad/prefix")
    with pytest.raises(MnistlrError, match="KEY=V1"):
        expand_grid(["optimizer"])


def points_with(lrs: list[float]) -> list[Point]:
    return [
        Point(f"p{i}", [f"train.lr.sgd={lr}"], "", parse_params({"train": {"lr": {"sgd": lr}}}))
        for i, lr in enumerate(lrs)
    ]


def test_a_group_is_cut_into_slices_so_that_every_worker_gets_work():
    big, small = points_with([0.1, 0.2, 0.3, 0.4, 0.5]), points_with([0.6])
    groups = {"g-0000000a": big, "g-0000000b": small}
    every = {p.name for ps in groups.values() for p in ps}
    # 6 points on 2 workers: a share of 3; the group of 5 in two slices of every other point
    tasks = split_groups(groups, every, 2)
    assert {t: [p.overrides[0] for p in ps] for t, ps in tasks.items()} == {
        "g-0000000a.1of2": ["train.lr.sgd=0.1", "train.lr.sgd=0.3", "train.lr.sgd=0.5"],
        "g-0000000a.2of2": ["train.lr.sgd=0.2", "train.lr.sgd=0.4"],
        "g-0000000b": ["train.lr.sgd=0.6"],
    }
    assert list(split_groups(groups, every, 1)) == ["g-0000000a", "g-0000000b"]  # one worker: whole groups
    assert len(split_groups(groups, every, 8)) == 6  # more workers than points: one point a task
    # what is left of a killed run: the slices a later driver picks hold only points still to run, and each
    # task is found again by its name alone, as a CI job finds it
    tasks = split_groups({"g-0000000a": big}, {"p1", "p3"}, 2)
    assert {t: [p.name for p in ps] for t, ps in tasks.items()} == {
        "g-0000000a.1of3": ["p0", "p3"],
        "g-0000000a.2of3": ["p1", "p4"],
    }
    tasks = split_groups({"g-0000000a": big}, {"p0", "p1", "p2", "p3"}, 4)
    assert {t: [p.name for p in ps] for t, ps in tasks.items()} == {
        "g-0000000a.1of4": ["p0", "p4"],
        "g-0000000a.2of4": ["p1"],
        "g-0000000a.3of4": ["p2"],
        "g-0000000a.4of4": ["p3"],
    }
    for task, points in tasks.items():
        assert select({"g-0000000a": big}, task) == points
    with pytest.raises(MnistlrError, match=r"'g-0000000c' is not a group of this grid; accepted: g-0000000a"):
        select({"g-0000000a": big}, "g-0000000c")
    with pytest.raises(MnistlrError, match=r"slice 3 of 2 .* accepted: NAME\.IofK with 1 <= I <= K <= 5"):
        select({"g-0000000a": big}, "g-0000000a.3of2")


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


def aws_env(storage) -> dict[str, str]:
    """The S3 credentials as the standard AWS variables: how a worker (or a teammate) holds them."""
    return {"AWS_ACCESS_KEY_ID": storage.access_key, "AWS_SECRET_ACCESS_KEY": storage.secret_key}


@pytest.fixture(scope="module")
def team(tmp_path_factory, reproduced, s3_storage):
    """A copy of the session's reproduced project whose baseline is pushed to a bare git origin and to the S3
    remote. The remote's URL and endpoint are committed in .dvc/config; its credentials are in the driver's
    .dvc/config.local only."""
    root = tmp_path_factory.mktemp("team")
    origin = root / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], root)
    project = copy_project(reproduced, root / "project")  # SMALL_PARAMS, reproduced and committed
    env = dict(reproduced[1])
    for key in aws_env(s3_storage):
        env.pop(key, None)
    for cmd in load_storage_module().dvc_remote_commands(s3_storage):
        dvc(*cmd, cwd=project, env=env)
    assert s3_storage.secret_key in (project / ".dvc" / "config.local").read_text()
    assert s3_storage.secret_key not in (project / ".dvc" / "config").read_text()
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "remote configured"], project, env)
    run(["git", "remote", "add", "origin", str(origin)], project, env)
    run(["git", "push", "-q", "origin", "main"], project, env)
    dvc("push", cwd=project, env=env)
    commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    return {"project": project, "origin": origin, "env": env, "storage": s3_storage, "root": root, "commit": commit}


@pytest.fixture(scope="module")
def cluster(team):
    """`dask scheduler` (recording every task it is given) and two `dask worker`s (no nanny: the PID is the worker)
    on 127.0.0.1, each worker with the S3 credentials in its environment and its own temp folder, so the test sees
    where its clones go; all stopped by PID."""
    root, env = team["root"], team["env"]
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    (root / "record_tasks.py").write_text(RECORDER)
    task_log = root / "tasks.jsonl"
    task_log.touch()
    procs: list[subprocess.Popen] = []
    logs = []

    def start(args: list[str], name: str, extra_env: dict) -> subprocess.Popen:
        log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed at teardown
        logs.append(log)
        proc = subprocess.Popen(
            [str(BIN / "dask"), *args], cwd=root, env={**env, **extra_env}, stdout=log, stderr=subprocess.STDOUT
        )
        procs.append(proc)
        return proc

    try:
        # --dashboard-address: the HTTP server each starts even without a dashboard, on 127.0.0.1 too
        start(
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
                "--dashboard-address",
                "127.0.0.1:0",
                "--preload",
                str(root / "record_tasks.py"),
            ],
            "scheduler",
            {"MNISTLR_TEST_TASK_LOG": str(task_log)},
        )
        workers = []
        for i in range(2):
            tmp = root / f"worker{i}-tmp"
            tmp.mkdir()
            proc = start(
                [
                    "worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--dashboard-address",
                    "127.0.0.1:0",
                    "--no-nanny",
                    "--host",
                    "127.0.0.1",
                    "--local-directory",
                    str(tmp),
                ],
                f"worker{i}",
                {"TMPDIR": str(tmp), **aws_env(team["storage"])},
            )
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
                time.sleep(0.5)
        yield {"address": address, "workers": workers, "task_log": task_log}
    finally:
        for proc in reversed(procs):  # the workers, then the scheduler
            stop(proc)
        for log in logs:
            log.close()


def sweep(team: dict, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MNISTLR, "sweep", *args],
        cwd=team["project"],
        env={**(env or team["env"]), "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def origin_refs(team: dict) -> dict[str, str]:
    """ref -> sha of every experiment on the origin."""
    out = run(["git", "ls-remote", str(team["origin"]), "refs/exps/*"], team["root"]).stdout
    return {line.split("\t")[1]: line.split("\t")[0] for line in out.splitlines()}


def cached_model(clone: Path, lock: dict) -> Path:
    """models/full.npz of a dvc.lock, as a file of the clone's DVC cache, its bytes checked against its md5."""
    cache = clone / ".dvc" / "cache" / "files" / "md5"
    outs = [o for stage in lock["stages"].values() for o in stage.get("outs", [])]
    md5 = next((o["md5"] for o in outs if o["path"] == "models/full.npz"), None)
    if md5 is None:  # the models folder as one output: its manifest names each file's md5
        folder = next(o["md5"] for o in outs if o["path"] == "models")
        manifest = json.loads((cache / folder[:2] / folder[2:]).read_text())
        md5 = next(e["md5"] for e in manifest if e["relpath"] == "full.npz")
    path = cache / md5[:2] / md5[2:]
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5
    return path


def check_results(team: dict, dest: Path, names: list[str]) -> dict[str, dict]:
    """A teammate's fresh clone of the origin, the S3 credentials in its environment: `dvc exp pull` brings `names`
    with their cache, from S3 into the empty clone. Each must show its params and metrics and have its own model."""
    run(["git", "clone", "-q", str(team["origin"]), str(dest)], team["root"])
    env = {**team["env"], **aws_env(team["storage"])}
    dvc("exp", "pull", "origin", *names, cwd=dest, env=env)
    shown = json.loads(dvc("exp", "show", "--json", cwd=dest, env=env).stdout)
    exps = {
        r["name"]: r for c in shown if c["rev"] != "workspace" for e in c.get("experiments") or [] for r in e["revs"]
    }
    assert set(names) <= set(exps), (names, sorted(exps))
    models = set()
    for name in names:
        metrics = exps[name]["data"]["metrics"]["metrics/full.json"]["data"]
        assert 0.3 < metrics["test"]["accuracy"] <= 1.0, (name, metrics)
        lock = yaml.safe_load(run(["git", "show", f"{exps[name]['rev']}:dvc.lock"], dest).stdout)
        with np.load(cached_model(dest, lock)) as f:
            assert f[f.files[0]].size > 0
            models.add(hashlib.md5(b"".join(f[k].tobytes() for k in sorted(f.files))).hexdigest())
    assert len(models) == len(names)  # each experiment its own model
    return {n: exps[n]["data"] for n in names}


def sweep_names(output: str, status: str = "done") -> list[str]:
    return re.findall(rf"^{status} (\S+) \(", output, flags=re.M)


def grid_of(exps: dict[str, dict]) -> set[float]:
    """train.lr.sgd of each experiment, as dvc recorded its params."""
    return {data["params"]["params.yaml"]["data"]["train"]["lr"]["sgd"] for data in exps.values()}


def points_of(sets: list[str], team: dict, prefix: str = "sweep") -> dict[str, list[str]]:
    """name -> overrides of every point of a grid, named as the driver names them."""
    return {point_name(p, team["commit"], prefix): p for p in expand_grid(sets[1::2])}


def task_lines(output: str) -> dict[str, tuple[int, str]]:
    """task -> (its number of points, the worker that ran it), from the driver's `task ...` lines."""
    found = re.findall(r"^task (\S+): (\d+) point\(s\) in \d+ s on (\S+)$", output, flags=re.M)
    return {task: (int(n), worker) for task, n, worker in found}


# --- the sweep ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid_sweep(team, cluster):
    """GRID swept once on the cluster: its output, the comparison it wrote, the origin's refs before and after."""
    before = origin_refs(team)
    proc = sweep(team, *GRID, "--scheduler", cluster["address"])
    compare = team["project"] / "experiments" / "compare.json"
    return {
        "proc": proc,
        "before": before,
        "after": origin_refs(team),
        "compared": json.loads(compare.read_text()) if compare.is_file() else None,
    }


def test_sweep_runs_every_point_on_the_cluster_as_groups_and_reports_the_failing_one(team, grid_sweep, tmp_path):
    proc = grid_sweep["proc"]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # the number of failed points
    done = sweep_names(proc.stdout)
    assert sorted(done) == sorted(points_of(GOOD, team)), out
    # one group, three points for two workers: two slices, one per worker, each one clone and one training pass
    tasks = task_lines(proc.stdout)
    assert sorted(tasks) == [f"{g}.{i}of2" for g in {t.split(".")[0] for t in tasks} for i in (1, 2)], out
    assert sorted(n for n, _ in tasks.values()) == [1, 2] and len({w for _, w in tasks.values()}) == 2, out
    # the diverging point fails alone, with the trainer's one-line reason; the others of its slice are pushed
    failed = re.findall(r"^FAILED (\S+) \((.*)\): (.+)$", proc.stdout, flags=re.M)
    assert [p for _, p, _ in failed] == ["train.lr.sgd=1e+38"], out
    assert "training diverged" in failed[0][2] and "train.lr.sgd" in failed[0][2], failed
    progress = r"^progress: \d/3 points done, 1 failed; \d task\(s\) running, \d waiting$"
    assert re.search(progress, proc.stdout, flags=re.M), out
    assert "sweep: 2 of 3 points passed, 1 failed" in proc.stderr, out
    # the driver's credentials stay with it, and it says so
    assert "note: .dvc/config.local stays on this machine" in proc.stdout, out
    # only the two good points reached the origin, each named as the driver named it
    new = set(grid_sweep["after"]) - set(grid_sweep["before"])
    assert new == {exp_ref(team["commit"], n) for n in done}, (new, done)
    # the comparison, as `mnistlr compare` writes it: the baseline and the two experiments; the best by validation
    compared = grid_sweep["compared"]
    assert {r["run"] for r in compared["runs"]} >= set(done) and len(compared["runs"]) == 3
    assert "compared 3 runs on full" in proc.stdout
    assert re.search(rf"^best: ({'|'.join(done)}) \(", proc.stdout, flags=re.M), out
    # a teammate's fresh clone: both with metrics, the models in S3
    exps = check_results(team, tmp_path / "fresh", done)
    assert grid_of(exps) == EXPECTED


def recorded_tasks(task_log: Path) -> dict[str, bytes]:
    """key -> the pickled function and arguments of every task the scheduler was given."""
    return {t["key"]: bytes.fromhex(t["spec"]) for t in map(json.loads, task_log.read_text().splitlines())}


def test_no_credential_travels_with_the_tasks(team, cluster, grid_sweep):
    storage = team["storage"]
    tasks = recorded_tasks(cluster["task_log"])
    # the scheduler saw each group's task with its arguments (so a credential among them would show) ...
    names = task_lines(grid_sweep["proc"].stdout)
    assert len(names) == 2
    for name in names:
        (spec,) = [spec for key, spec in tasks.items() if key.startswith(f"mnistlr-sweep-{name}-")]
        assert b"group_task" in spec and name.encode() in spec and str(team["origin"]).encode() in spec, spec
        assert team["commit"].encode() in spec and GRID[1].encode() in spec, spec
    # ... and none of the driver's credentials in any task: the workers ran with their own
    for key, spec in tasks.items():
        assert storage.secret_key.encode() not in spec, key
        assert storage.access_key.encode() not in spec, key
        assert b"config.local" not in spec, key


def test_a_group_run_by_name_as_a_ci_job_is_skipped_when_rerun_and_by_the_sweep(team, cluster, tmp_path):
    # a CI matrix's jobs: the plan names the groups, each job runs one from a checkout of the commit
    grid = ["-S", "train.batch_size=16", "-S", "train.lr.sgd=0.01,0.02"]
    work = tmp_path / "work"
    work.mkdir()
    project, env = team["project"], team["env"]
    plan = json.loads(run([MNISTLR, "sweep", "--plan", "--json", *grid], project, env).stdout)
    assert [len(t["points"]) for t in plan] == [2], plan
    group = plan[0]["group"]
    assert {p["name"] for p in plan[0]["points"]} == set(points_of(grid, team)), plan
    point = [MNISTLR, "sweep-point", *grid, "--workdir", str(work)]
    # a group this grid does not have: one line naming the one it has, nothing pushed
    proc = subprocess.run([*point, "--group", "g-00000000"], cwd=project, env=env, capture_output=True, text=True)
    assert_one_line_error(proc, "'g-00000000' is not a group of this grid", f"accepted: {group}")
    before = origin_refs(team)
    proc = subprocess.run([*point, "--group", group], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(sweep_names(proc.stdout)) == sorted(points_of(grid, team)), proc.stdout
    assert set(origin_refs(team)) - set(before) == {exp_ref(team["commit"], n) for n in points_of(grid, team)}
    assert list(work.iterdir()) == []  # its clone is gone
    # the job again (a retried task): every point is found on origin, nothing is trained or pushed
    after = origin_refs(team)
    proc = subprocess.run([*point, "--group", group], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "2 on the remote already, 0 to run" in proc.stdout, proc.stdout + proc.stderr
    assert sorted(sweep_names(proc.stdout, "skipped")) == sorted(points_of(grid, team)), proc.stdout
    assert origin_refs(team) == after
    # the sweep of the same grid finds every point on origin: no task, only the comparison of what is there
    logged = len(recorded_tasks(cluster["task_log"]))
    proc = sweep(team, *grid, "--scheduler", cluster["address"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 already on origin (skipped), 0 to run" in proc.stdout, proc.stdout
    assert sweep_names(proc.stdout) == [] and origin_refs(team) == after
    assert len(recorded_tasks(cluster["task_log"])) == logged  # no task was submitted
    assert re.search(r"^compared \d+ runs on full", proc.stdout, flags=re.M), proc.stdout


def test_a_local_cluster_reads_this_repositorys_config_local(team):
    # A local cluster's workers run on this machine and use the driver's .dvc/config.local (by its path): the
    # diverging point gets through `dvc pull` to its training. The mirror is made unreachable, so a pull that
    # restored nothing would fail in the prepare stage instead.
    env = {**team["env"], "MNISTLR_MNIST_DIR": str(team["root"] / "no-mirror-here")}
    assert not set(aws_env(team["storage"])) & set(env) and CONFIG_LOCAL_ENV not in env
    before = origin_refs(team)
    proc = sweep(team, "-S", "train.lr.sgd=1e38", "--workers", "1", env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # the number of failed points
    # the trainer's own one-line reason: a point that fails, not git or storage (no retry) ...
    failed = re.findall(r"^FAILED (\S+) \((.*)\): (.+)$", proc.stdout, flags=re.M)
    assert len(failed) == 1 and failed[0][1] == "train.lr.sgd=1e+38", out
    assert "training diverged" in failed[0][2], out
    assert re.search(r"^progress: 0/1 points done, 1 failed; 0 task\(s\) running, 0 waiting$", proc.stdout, re.M), out
    assert "sweep: 0 of 1 points passed, 1 failed" in proc.stderr, out
    assert origin_refs(team) == before  # ... and nothing pushed


def test_a_worker_without_credentials_fails_the_group_saying_where_they_come_from(team, tmp_path):
    # the per-group command as a worker (or a CI job) without any of the S3 credentials runs it
    before = origin_refs(team)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [
            MNISTLR,
            "sweep-point",
            "-S",
            "optimizer=adam",
            "--name-prefix",
            "nocreds",
            "--origin",
            str(team["origin"]),
            "--commit",
            team["commit"],
            "--workdir",
            str(work),
        ],
        cwd=tmp_path,
        env=team["env"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 75, proc.stdout + proc.stderr  # storage, not the points: worth another attempt
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: `dvc pull --allow-missing prepare` failed: ERROR: "), err
    assert CONFIG_LOCAL_ENV in err and "AWS_ACCESS_KEY_ID" in err, err
    assert origin_refs(team) == before and list(work.iterdir()) == []  # nothing pushed, no clone left


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


def test_a_worker_killed_mid_task_loses_no_point_and_pushes_nothing_partial(team, cluster, tmp_path):
    before = set(origin_refs(team))
    point = ["-S", "optimizer=adam", "-S", "data.val_size=50"]
    proc = subprocess.Popen(
        [MNISTLR, "sweep", *point, "--name-prefix", "killed", "--scheduler", cluster["address"]],
        cwd=team["project"],
        env=team["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the victim: the worker whose clone of the group has its recording worktree (pulled; preparing, training
        # or recording)
        deadline = time.monotonic() + 180
        victim = None
        while victim is None:
            assert proc.poll() is None and time.monotonic() < deadline, "no worker started the group"
            for worker, tmp in cluster["workers"]:
                if list(tmp.glob("mnistlr-sweep-killed-*/repo/.dvc/tmp/sweeps/wt-*")):
                    victim = (worker, tmp)
            time.sleep(0.2)
        (worker, victim_tmp) = victim
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    out = stdout + stderr
    assert proc.returncode == 0, out
    done = sweep_names(stdout)
    assert done == list(points_of(point, team, "killed")), out
    # the killed attempt stopped itself (no orphan finished it: its point was rerun, not found pushed) and
    # cleaned up: its clone is gone and none of its processes is left
    assert not re.search(r"^skipped ", stdout, flags=re.M), out
    deadline = time.monotonic() + 20
    while list(victim_tmp.glob("mnistlr-sweep-killed-*")) or processes_in(victim_tmp):
        assert time.monotonic() < deadline, (list(victim_tmp.glob("mnistlr-sweep-killed-*")), processes_in(victim_tmp))
        time.sleep(0.5)
    # exactly one new ref, and it has its metrics and its model in the remote
    new = set(origin_refs(team)) - before
    assert new == {exp_ref(team["commit"], done[0])}, new
    exps = check_results(team, tmp_path / "fresh", done)
    assert {
        (e["params"]["params.yaml"]["data"]["optimizer"], e["params"]["params.yaml"]["data"]["data"]["val_size"])
        for e in exps.values()
    } == {("adam", 50)}


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
    proc = sweep(team, "-S", "optimzer=sgd,adam", "--workers", "2")
    assert_one_line_error(proc, "unknown param key 'optimzer'", "did you mean 'optimizer'")
    proc = sweep(team, "-S", "optimizer=sgd", "-S", "train.weightdecay=0,1", "--workers", "2")
    assert_one_line_error(proc, "'train.weightdecay'", "'train.weight_decay'")
    assert origin_refs(team) == before


def test_an_unreachable_scheduler_is_one_line_after_the_connect_timeout(team):
    before = origin_refs(team)
    start = time.monotonic()
    proc = sweep(
        team, "-S", "seed=7,8", "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--connect-timeout", "2", timeout=120
    )
    assert_one_line_error(proc, "cannot reach the Dask scheduler", "within 2 s")
    assert time.monotonic() - start < 60
    assert origin_refs(team) == before


def test_a_missing_git_remote_or_an_unpushed_commit_is_refused(team, tmp_path):
    project = make_project(tmp_path, PARAMS)
    cmd = [MNISTLR, "sweep", "-S", "seed=1,2", "--workers", "2"]
    proc = subprocess.run(cmd, cwd=project, env=team["env"], capture_output=True, text=True)
    assert_one_line_error(proc, "no git remote 'origin'", "git remote add origin")
    # a commit that is not on the origin: the workers could not clone it
    before = origin_refs(team)
    run(["git", "remote", "add", "origin", str(team["origin"])], project)
    proc = subprocess.run(cmd, cwd=project, env=team["env"], capture_output=True, text=True)
    assert_one_line_error(proc, "is not on the git remote 'origin'", "git push origin HEAD")
    assert origin_refs(team) == before


def test_sweep_point_refuses_a_list_a_bad_group_or_a_missing_config_local_and_the_cli_stays_light(tmp_path):
    point = [MNISTLR, "sweep-point", "-S", "optimizer=sgd,adam", "--origin", "/nowhere", "--commit", "a" * 40]
    proc = subprocess.run(point, cwd=tmp_path, capture_output=True, text=True)
    assert_one_line_error(proc, "sweep-point runs one point", "--group NAME", "mnistlr sweep --plan")
    proc = subprocess.run([*point, "--group", "sgd"], cwd=tmp_path, capture_output=True, text=True)
    assert_one_line_error(proc, "--group 'sgd' is not accepted", "g-<8 hex digits>.IofK")
    # a worker's MNISTLR_DVC_CONFIG_LOCAL that names no file: one line naming it, before any clone
    missing = tmp_path / "no-config.local"
    proc = subprocess.run(
        [MNISTLR, "sweep-point", "-S", "seed=1", "--origin", "/nowhere", "--commit", "a" * 40],
        cwd=tmp_path,
        env={**os.environ, CONFIG_LOCAL_ENV: str(missing)},
        capture_output=True,
        text=True,
    )
    assert_one_line_error(proc, str(missing), CONFIG_LOCAL_ENV, "is not a file")
    probe = "import sys, mnistlr.cli; print(sorted(m for m in ('torch', 'dask', 'distributed') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"
    # the plan of a cluster sweep (the driver's grouping included) imports no torch either
    project = make_project(tmp_path / "project", PARAMS)
    plan = (
        "import sys\nfrom mnistlr.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'dask', 'distributed') if m in sys.modules))"
    )
    grid = ["-S", "train.lr.sgd=0.1,0.2,0.3", "-S", "train.batch_size=32,64"]
    proc = run([sys.executable, "-c", plan, "sweep", "--plan", *grid, "--workers", "4"], project)
    assert proc.stdout.splitlines()[-1] == "heavy: []", proc.stdout
    # two groups (the batch size is shared in a pass) of three points, each cut in two for four workers
    tasks = task_lines_of_plan(proc.stdout)
    assert sorted(tasks.values()) == [1, 1, 2, 2] and len({t.split(".")[0] for t in tasks}) == 2, proc.stdout
    assert proc.stdout.startswith("6 points of "), proc.stdout


def task_lines_of_plan(output: str) -> dict[str, int]:
    """task -> its number of points, from `mnistlr sweep --plan`."""
    return {t: int(n) for t, n in re.findall(r"^(g-[0-9a-f]{8}(?:\.\dof\d)?): (\d+) point\(s\)$", output, re.M)}


NO_DASK = "import sys; sys.modules['dask'] = None; from mnistlr.cli import app; app()"  # `import dask` fails


@pytest.mark.parametrize("missing", ["dask", "distributed"])
def test_sweep_without_the_cluster_extra_is_one_line_naming_the_package_and_the_install(tmp_path, missing):
    project = make_project(tmp_path, PARAMS)
    code = NO_DASK.replace("'dask'", repr(missing))
    proc = subprocess.run(
        [sys.executable, "-c", code, "sweep", "-S", "seed=1,2", "--workers", "2"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert_one_line_error(proc, f"needs the package {missing!r}", "pip install 'mnistlr[cluster]'")
    assert run(["git", "status", "--porcelain"], project).stdout == ""  # nothing written
    # the plan, the per-group command and the rest of the CLI work without it
    proc = subprocess.run(
        [sys.executable, "-c", code, "sweep", "--plan", "-S", "seed=1,2"], cwd=project, capture_output=True, text=True
    )
    assert proc.returncode == 0 and len(task_lines_of_plan(proc.stdout)) == 2, proc.stdout + proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "sweep-point",
            "-S",
            "optimizer=sgd,adam",
            "--origin",
            "/nowhere",
            "--commit",
            "a" * 40,
        ],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert_one_line_error(proc, "sweep-point runs one point")
    proc = subprocess.run([sys.executable, "-c", code, "version"], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr

"""Sweeps on a Dask cluster: one task per training pass, git and the DVC remote the only shared state.

The driver (`mnistlr sweep --scheduler/--workers`) plans the grid as the one-machine sweep does (mnistlr.grid:
DVC's Hydra parser, each point named from its params and the commit, the points grouped by what one training
pass shares), skips the points whose experiment ref is already on the git remote, cuts a group into slices
when it holds more of the points left to run than a worker's share, and submits one task per group or slice.
A task runs `mnistlr sweep-point --group NAME` in a fresh clone of the commit: one `dvc pull` of the prepared
data, one training pass of its points (mnistlr.grid.run_points: each point recorded as an experiment of the
commit, the same as `dvc exp run -S <point>` records it), then one push of all its experiments: their DVC
cache and run cache first, their git refs last, so that a ref never exists on the remote without its data.
The same command runs a group alone, as a CI matrix job or a SLURM array task.

A task's arguments are the git URL, the commit, the grid's -S options, the name prefix and the group's name:
no credentials. Anyone who can reach the scheduler can read them, so each worker takes the DVC remote's
credentials from its own machine: a DVC config.local named by MNISTLR_DVC_CONFIG_LOCAL in the worker's
environment (copied into each clone), else the standard AWS variables of that environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a store whose endpoint .dvc/config does not name) or the
worker's ~/.aws files. A local cluster (no --scheduler) runs on this machine: its workers are given the path
of this repository's .dvc/config.local, never its text.

dask and distributed are the optional `cluster` extra; only the driver and the workers need them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mnistlr import atomic
from mnistlr.errors import MnistlrError
from mnistlr.grid import (
    TASK_RE,
    Point,
    PointOutcome,
    check_keys,
    expand_grid,
    group_points,
    plan,
    point_name,
    run_points,
    select,
    split_groups,
    summarize,
)
from mnistlr.record import exp_ref, recorded
from mnistlr.repo import beside_python, failure_line, git_answer, run_dvc, run_git

CONNECT_TIMEOUT_S = 10
CONFIG_LOCAL_ENV = "MNISTLR_DVC_CONFIG_LOCAL"  # a worker's own DVC config.local (credentials) for its clones
CLUSTER_INSTALL = "pip install 'mnistlr[cluster]'"
TEMPFAIL = 75  # sweep-point's exit status for a failure worth retrying elsewhere (git or storage, not the points)
WATCHDOG_ENV = "MNISTLR_SWEEP_WATCHDOG"  # set by the Dask task: sweep-point stops itself if the worker dies
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
CREDENTIALS_HINT = (
    f"this machine's storage credentials: {CONFIG_LOCAL_ENV} naming a DVC config.local, or "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
)
STORAGE_REFUSED = re.compile(
    r"Unable to locate credentials|Forbidden|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|\(403\)"
)


class TransientError(MnistlrError):
    """A failure of the shared state (clone, pull, push): another attempt may succeed."""


@dataclass
class PointResult:
    name: str
    overrides: list[str]
    status: str  # done (pushed now) | skipped (on the remote before) | failed
    error: str = ""


# --- git -------------------------------------------------------------------------------------------


def remote_url(remote: str, cwd: str | Path = ".") -> str:
    """The URL of git remote `remote`; an error naming how to add it when there is none."""
    url = (git_answer("remote", "get-url", remote, cwd=cwd) or "").strip()
    if not url:
        raise MnistlrError(
            f"no git remote {remote!r} in this repository; the sweep's workers clone the commit from "
            f"it and push their results to it: git remote add {remote} URL && git push {remote} HEAD"
        )
    return url


def remote_exp_refs(url: str, cwd: str | Path = ".") -> set[str]:
    """Every experiment ref on the git remote."""
    out = run_git("ls-remote", url, "refs/exps/*", cwd=cwd, error=TransientError)
    return {line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line}


def check_pushed(commit: str, remote: str, cwd: str | Path = ".") -> None:
    """The workers clone the commit from the remote: it must be there."""
    advertised = run_git("ls-remote", remote, cwd=cwd)
    if any(line.split("\t", 1)[0] == commit for line in advertised.splitlines()):
        return
    run_git("fetch", "-q", remote, cwd=cwd)
    if run_git("for-each-ref", "--contains", commit, f"refs/remotes/{remote}", cwd=cwd).strip():
        return
    raise MnistlrError(
        f"commit {commit[:7]} is not on the git remote {remote!r}; the workers clone it from there: "
        f"git push {remote} HEAD"
    )


# --- one group, in a fresh clone ---------------------------------------------------------------------

# Run in place of sweep-point (same PID and process group) when the worker that started it dies: stop the
# group's other processes (dvc, the scoring pool), then remove the attempt's clone. exec() ends every thread
# of the old program at once, so nothing of it writes or pushes after this.
CLEANER = """
import os, shutil, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
group = os.getpgrp()
os.killpg(group, signal.SIGTERM)
time.sleep(1.0)
for pid in (p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
    try:
        with open(f"/proc/{pid}/stat") as f:
            pgrp = int(f.read().rsplit(")", 1)[1].split()[2])
        if pgrp == group:
            os.kill(int(pid), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


def _start_watchdog(attempt: Path) -> None:
    """When the process that started us dies (a killed Dask worker), become CLEANER: nothing of a dead attempt
    keeps running or pushes, and its clone goes. (sweep-point runs in its own process group under Dask.)"""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.execv(sys.executable, [sys.executable, "-c", CLEANER, str(attempt)])

    threading.Thread(target=watch, daemon=True).start()


def _env() -> dict[str, str]:
    """This Python's bin folder first on PATH (the stages' `python`); a git identity for the experiment
    commits where git has none."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    for key, role, value in (("user.name", "NAME", "mnistlr sweep"), ("user.email", "EMAIL", "sweep@localhost")):
        if not (git_answer("config", key) or "").strip():
            env.setdefault(f"GIT_AUTHOR_{role}", value)
            env.setdefault(f"GIT_COMMITTER_{role}", value)
    return env


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """os.environ set to `env` for this process and what it starts (the recorder's git and dvc, the pool)."""
    old = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)


def _dvc(*args: str, cwd: Path, error: type[MnistlrError]) -> str:
    """stdout of `dvc ARGS` (mnistlr.repo.run_dvc); storage that refuses this machine's credentials (or finds
    none) says where they come from."""
    try:
        return run_dvc(*args, cwd=cwd, error=error)
    except MnistlrError as exc:
        if not STORAGE_REFUSED.search(str(exc)):
            raise
        raise type(exc)(f"{exc}; {CREDENTIALS_HINT}") from None


def default_remote(repo: Path) -> str | None:
    """The DVC default remote of `repo` (`dvc remote default`, read in this process: every config level)."""
    from dvc.config import Config, ConfigError

    try:
        return Config(dvc_dir=repo / ".dvc").get("core", {}).get("remote") or None
    except ConfigError as exc:
        raise MnistlrError(f"the DVC config of the clone (with its config.local) is not valid: {exc}") from None


def push_experiments(clone: Path, url: str, commit: str, names: list[str], has_remote: bool) -> None:
    """Push experiments `names` of `commit`: their DVC cache and run cache to the default remote first (DVC's
    own `dvc exp push` pushes the refs first), then their git refs, so that no ref is on the remote before its
    data is."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    refs = [exp_ref(commit, n) for n in names]
    if has_remote:
        revs = [run_git("rev-parse", ref, cwd=clone).strip() for ref in refs]
        try:
            with contextlib.chdir(clone), Repo(str(clone)) as repo:
                repo.push(revs=revs, workspace=False, run_cache=True)
        except DvcException as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TransientError(
                f"pushing the experiments' data to the DVC remote failed: {first}; {CREDENTIALS_HINT}"
            ) from None
    try:
        _dvc("exp", "push", "--no-cache", url, *names, cwd=clone, error=TransientError)
    except TransientError:
        if set(refs) - remote_exp_refs(url, clone):  # not another attempt's refs, there already
            raise


def run_group(
    url: str,
    commit: str,
    sets: list[str],
    group: str | None = None,
    prefix: str = "sweep",
    name: str | None = None,
    config_local: Path | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] = print,
    jobs: int | None = None,
) -> list[PointResult]:
    """Run one group (or slice) of the grid, or its one point when there is no group, in a fresh clone of
    `commit`: the points already on the remote are skipped, the rest trained in one pass, recorded (scored in
    `jobs` processes, as `mnistlr sweep --jobs`), and pushed.
    MnistlrError: the grid or the group is wrong (retrying will not help); TransientError: git or storage."""
    attempt = Path(tempfile.mkdtemp(prefix=f"mnistlr-sweep-{prefix}-", dir=workdir))
    clone = attempt / "repo"
    if os.environ.get(WATCHDOG_ENV):
        _start_watchdog(attempt)
    try:
        with _environ(_env()):
            run_git("clone", "-q", "--no-checkout", url, str(clone), cwd=attempt, error=TransientError)
            run_git("checkout", "-q", "--detach", commit, cwd=clone)
            points = plan(sets, clone, commit, prefix, yes=True)  # the grid as the driver planned it
            if group is not None:
                points = select(group_points(points), group)
            elif name is not None:
                points[0].name = name
            pushed = remote_exp_refs(url, clone)
            results = {
                p.name: PointResult(p.name, p.overrides, "skipped") for p in points if exp_ref(commit, p.name) in pushed
            }
            todo = [p for p in points if p.name not in results]
            log(
                f"{group or points[0].name}: {len(points)} point(s) of {commit[:8]}, {len(results)} on the remote "
                f"already, {len(todo)} to run"
            )
            if todo:
                results.update(_run_and_push(clone, url, commit, todo, config_local, log, jobs))
            return [results[p.name] for p in points]
    finally:
        shutil.rmtree(attempt, ignore_errors=True)


def _run_and_push(
    clone: Path,
    url: str,
    commit: str,
    todo: list[Point],
    config_local: Path | None,
    log: Callable[[str], None],
    jobs: int | None = None,
) -> dict[str, PointResult]:
    if config_local is not None:
        with atomic.atomic_path(clone / ".dvc" / "config.local") as tmp:
            tmp.touch(mode=0o600)  # credentials: readable by this user only, before a byte is in it
            shutil.copyfile(config_local, tmp)
    has_remote = default_remote(clone) is not None
    if has_remote:  # the commit's prepared data; a group whose data differs makes its own
        _dvc("pull", "--allow-missing", "prepare", cwd=clone, error=TransientError)  # not -q: it hides errors
    else:
        log("no default DVC remote: the models stay in this clone; only the experiments' commits reach git")
    try:
        outcome = run_points(todo, clone, commit, jobs, quiet=not sys.stderr.isatty(), log=log)
        failed = {o.point.name: o.error or "failed" for o in outcome.outcomes if o.status == "failed"}
    except TransientError:
        raise
    except MnistlrError as exc:  # the pass stopped (its data could not be made, say): what it recorded goes out
        done = recorded(clone, commit)
        failed = {p.name: str(exc) for p in todo if p.name not in done}
    names = [p.name for p in todo if p.name not in failed]
    if names:
        push_experiments(clone, url, commit, names, has_remote)
        log(f"pushed {len(names)} experiment(s) to {url}")
    return {
        p.name: PointResult(p.name, p.overrides, "failed", failed[p.name])
        if p.name in failed
        else PointResult(p.name, p.overrides, "done")
        for p in todo
    }


def mnistlr_command() -> list[str]:
    """The mnistlr console script beside this Python, else this Python running the CLI."""
    beside = beside_python("mnistlr")
    return [str(beside)] if beside else [sys.executable, "-c", "from mnistlr.cli import app; app()"]


@dataclass
class TaskResult:
    task: str  # the group or slice
    points: list[PointResult]
    seconds: float
    worker: str
    error: str = ""  # the task failed before any point had an outcome


def group_task(url: str, commit: str, sets: list[str], task: str, prefix: str, jobs: int | None = None) -> TaskResult:
    """The Dask task: `mnistlr sweep-point --group TASK` in a subprocess (its own process group, which stops
    itself if this worker dies), with this worker's environment: the storage credentials are the worker's own
    (MNISTLR_DVC_CONFIG_LOCAL or the AWS variables), none travel with the task. Points that fail are results;
    a git or storage failure raises, so that Dask retries the task (a fresh clone, skipping what was pushed)."""
    try:
        from distributed import get_worker

        worker = get_worker().address
    except (ImportError, ValueError):
        worker = os.uname().nodename
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mnistlr-sweep-task-") as tmp:
        out = Path(tmp) / "out.log"
        err = Path(tmp) / "err.log"
        results = Path(tmp) / "results.json"
        cmd = [
            *mnistlr_command(),
            "sweep-point",
            "--origin",
            url,
            "--commit",
            commit,
            "--group",
            task,
            "--name-prefix",
            prefix,
            "--results",
            str(results),
            *(["--jobs", str(jobs)] if jobs else []),
            *(a for s in sets for a in ("-S", s)),
        ]
        # files, not pipes: if this worker dies, the orphan's writes must not fail before it stops itself
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.run(
                cmd,
                cwd=tmp,
                env={**_env(), WATCHDOG_ENV: "1"},
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        said = err.read_text()
        points = [PointResult(**r) for r in json.loads(results.read_text())] if results.is_file() else []
    last = failure_line(said) if said.strip() else f"exit {proc.returncode}"
    if proc.returncode == TEMPFAIL:
        raise RuntimeError(f"{task}: {last}")
    return TaskResult(task, points, time.monotonic() - start, worker, "" if points else last)


# --- the driver ------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    commit: str
    points: list[Point]
    results: list[PointResult]
    compared: int = 0
    comparison: str = ""
    summary: str = ""
    tasks: list[TaskResult] = field(default_factory=list)

    @property
    def failed(self) -> list[PointResult]:
        return [r for r in self.results if r.status == "failed"]


def require_distributed() -> None:
    """dask's `distributed` (the optional `cluster` extra) must import; without it a one-line error naming the
    missing package and the install command."""
    try:
        import distributed  # noqa: F401
    except ModuleNotFoundError as exc:
        missing = (exc.name or "distributed").split(".")[0]
        raise MnistlrError(
            f"`mnistlr sweep` needs the package {missing!r}, which is not installed "
            f"(dask and distributed are the optional `cluster` extra): {CLUSTER_INSTALL}"
        ) from None


def connect(
    scheduler: str | None, n_workers: int, config_local: Path | None = None, timeout_s: float = CONNECT_TIMEOUT_S
) -> tuple[Any, Any]:
    """(client, cluster): the scheduler at `scheduler` (reached within timeout_s), else a local cluster of
    n_workers processes on this machine, whose workers are pointed at `config_local` (a path: its text
    stays in the file)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=timeout_s), None
        except (OSError, TimeoutError) as exc:
            raise MnistlrError(
                f"cannot reach the Dask scheduler at {scheduler} within {timeout_s:g} s "
                f"({type(exc).__name__}); start one with `dask scheduler` or leave out --scheduler "
                "for a local cluster"
            ) from None
    env = {CONFIG_LOCAL_ENV: str(config_local)} if config_local is not None else {}
    # no dashboard; the scheduler's HTTP server (health, metrics) on a free port of 127.0.0.1, not 8787
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        host="127.0.0.1",
        silence_logs=50,
        env=env,
    )
    return Client(cluster), cluster


def worker_slots(client: Any) -> int:
    """How many tasks the cluster runs at once: its workers' threads (at least 1)."""
    workers = client.scheduler_info().get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


def plan_tasks(
    sets: list[str], workers: int | None = None, prefix: str = "sweep", cwd: str | Path = "."
) -> tuple[str, dict[str, list[Point]]]:
    """`mnistlr sweep --plan`: (HEAD, its tasks): the grid's groups, cut into slices for `workers` workers."""
    root = Path(run_git("rev-parse", "--show-toplevel", cwd=cwd).strip())
    commit = run_git("rev-parse", "HEAD", cwd=root).strip()
    points = plan(sets, root, commit, prefix, yes=True)
    return commit, split_groups(group_points(points), {p.name for p in points}, workers or 1)


def _describe(overrides: list[str]) -> str:
    return " ".join(overrides) or "(no overrides)"


def run_sweep(
    sets: list[str],
    scheduler: str | None = None,
    name_prefix: str = "sweep",
    remote: str = "origin",
    n_workers: int = 2,
    out: str | Path = "experiments",
    variant: str = "full",
    metric: str = "test.accuracy",
    cwd: str | Path = ".",
    log: Callable[[str], None] = print,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    yes: bool = False,
) -> SweepOutcome:
    """Check everything, run every point not yet on the remote as groups, pull the results and compare them.
    No credentials leave this machine: a remote scheduler's workers use their own; a local cluster's
    workers read this repository's .dvc/config.local (unless MNISTLR_DVC_CONFIG_LOCAL names another)."""
    require_distributed()
    root = Path(run_git("rev-parse", "--show-toplevel", cwd=cwd).strip())
    commit = run_git("rev-parse", "HEAD", cwd=root).strip()
    points = plan(sets, root, commit, name_prefix, yes)
    url = remote_url(remote, root)
    check_pushed(commit, remote, root)
    if run_git("status", "--porcelain", "--untracked-files=no", cwd=root).strip():
        log(f"note: uncommitted changes are not part of the sweep; it runs commit {commit[:7]}")
    cfg = root / ".dvc" / "config.local"
    local_cfg = cfg if cfg.is_file() and not scheduler and CONFIG_LOCAL_ENV not in os.environ else None
    if scheduler and cfg.is_file():
        log(
            f"note: {cfg.relative_to(root)} stays on this machine; the workers use their own storage credentials "
            f"({CONFIG_LOCAL_ENV} or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in their environment)"
        )

    pushed = remote_exp_refs(url, root)
    results = {p.name: PointResult(p.name, p.overrides, "skipped") for p in points if exp_ref(commit, p.name) in pushed}
    todo = {p.name for p in points} - set(results)
    log(
        f"sweep of {len(points)} points on {commit[:7]}: {len(results)} already on {remote} (skipped), "
        f"{len(todo)} to run"
    )
    tasks_run: list[TaskResult] = []
    if todo:
        client, cluster = connect(scheduler, n_workers, local_cfg, connect_timeout_s)
        try:
            slots = worker_slots(client) if scheduler else n_workers
            tasks = split_groups(group_points(points), todo, slots)
            log(
                f"{len(tasks)} task(s) for {slots} worker(s), each one clone and one training pass: "
                + ", ".join(f"{t} ({sum(p.name in todo for p in ps)} to run)" for t, ps in tasks.items())
            )
            # a local cluster's workers share this machine's cores: each task scores its points in its share
            jobs = None if scheduler else max(1, (os.cpu_count() or 1) // n_workers)
            done, tasks_run = _run_tasks(client, url, commit, sets, name_prefix, tasks, todo, log, jobs)
            results.update(done)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    outcome = SweepOutcome(commit, points, [results[p.name] for p in points], tasks=tasks_run)
    ok = [r.name for r in outcome.results if r.status in ("done", "skipped")]
    if ok:
        from mnistlr.review import compare_experiments

        log(f"pulling {len(ok)} experiments from {remote}")
        run_dvc("exp", "pull", "--no-cache", "-f", remote, *ok, cwd=root)
        status = {"done": "recorded", "skipped": "skipped", "failed": "failed"}
        outcome.summary = summarize(
            root,
            commit,
            [PointOutcome(p, status[r.status], r.error) for p, r in zip(points, outcome.results, strict=True)],
        )
        try:
            table, outcome.comparison = compare_experiments(Path(root) / out, variant, metric, [commit], cwd=root)
            outcome.compared = len(table)
        except MnistlrError as exc:
            log(f"compare: {exc}")
    return outcome


def _executing_keys(dask_worker: Any) -> list[str]:
    """Run on each worker: the keys of the tasks it is executing now (not just assigned to it)."""
    return [str(ts.key) for ts in dask_worker.state.executing]


def _run_tasks(
    client: Any,
    url: str,
    commit: str,
    sets: list[str],
    prefix: str,
    tasks: dict[str, list[Point]],
    todo: set[str],
    log: Callable[[str], None],
    jobs: int | None = None,
) -> tuple[dict[str, PointResult], list[TaskResult]]:
    """Submit one task per group or slice (retries=2) and report progress until every one has an outcome."""
    from distributed import wait

    digest = hashlib.sha256("\n".join([commit, prefix, *sets]).encode()).hexdigest()[:8]
    futures = {
        client.submit(
            group_task,
            url,
            commit,
            sets,
            task,
            prefix,
            jobs,
            key=f"mnistlr-sweep-{task}-{digest}",
            pure=False,
            retries=2,
        ): task
        for task in tasks
    }
    results: dict[str, PointResult] = {}
    finished: list[TaskResult] = []
    pending = set(futures)
    last_line = ""
    while pending:
        with contextlib.suppress(TimeoutError):
            wait(list(pending), timeout=2, return_when="FIRST_COMPLETED")
        done = {f for f in pending if f.done()}
        pending -= done
        for fut in done:
            task = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:
                res = TaskResult(task, [], 0.0, "", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
            finished.append(res)
            by_name = {r.name: r for r in res.points}
            for p in tasks[task]:
                if p.name not in todo:
                    continue
                r = by_name.get(p.name) or PointResult(p.name, p.overrides, "failed", res.error or "no result")
                results[p.name] = r
                if r.status == "failed":
                    log(f"FAILED {p.name} ({_describe(p.overrides)}): {r.error}")
                else:
                    log(f"{r.status} {p.name} ({_describe(p.overrides)})")
            where = f" on {res.worker}" if res.worker else ""
            log(f"task {task}: {len(tasks[task])} point(s) in {res.seconds:.0f} s{where}")
        try:
            executing = {k for keys in client.run(_executing_keys, on_error="ignore").values() for k in keys}
        except Exception:
            executing = set()
        running = sum(1 for f in pending if str(f.key) in executing)
        failed = sum(1 for r in results.values() if r.status == "failed")
        line = (
            f"progress: {len(results) - failed}/{len(todo)} points done, {failed} failed; "
            f"{running} task(s) running, {len(pending) - running} waiting"
        )
        if line != last_line:
            log(line)
            last_line = line
    return results, finished


# --- sweep-point: a group, or one point, from a checkout or from a Dask task ------------------------------------


def point_from_here(
    sets: list[str],
    group: str | None = None,
    commit: str | None = None,
    name: str | None = None,
    name_prefix: str = "sweep",
    origin: str = "origin",
    config_local: Path | None = None,
    workdir: str | Path | None = None,
    results_file: Path | None = None,
    log: Callable[[str], None] = print,
    jobs: int | None = None,
) -> list[PointResult]:
    """`mnistlr sweep-point`: a group of the grid (or one point), from a checkout (a CI job, a SLURM task) or
    from a Dask task (origin a URL). config_local: a DVC config.local on this machine for the clone (default:
    this checkout's, if any); without one the clone's dvc takes the AWS variables of this environment."""
    points = expand_grid(sets)
    if group is None and len(points) != 1:
        raise MnistlrError(
            f"sweep-point runs one point but -S {' -S '.join(sets)} makes {len(points)}; give single values, "
            "or --group NAME to run a group of the grid (`mnistlr sweep --plan` lists them)"
        )
    if group is not None and not TASK_RE.match(group):
        raise MnistlrError(
            f"--group {group!r} is not accepted; accepted: a group as `mnistlr sweep --plan` names it, "
            "g-<8 hex digits>, or a slice of one, g-<8 hex digits>.IofK"
        )
    if group is not None and name is not None:
        raise MnistlrError("--name names one point; a group's points are named as `mnistlr sweep` names them")
    point_name(points[0], "0" * 40, name_prefix)  # a bad prefix is refused before any clone
    top = git_answer("rev-parse", "--show-toplevel")
    root = Path(top.strip()) if top else None
    checkout = root is not None and (root / "params.yaml").is_file() and (root / ".dvc").is_dir()
    if checkout:
        check_keys(points, root / "params.yaml")
    is_url = "://" in origin or origin.startswith(("/", ".", "~")) or ("@" in origin and ":" in origin)
    if not is_url and root is None:
        raise MnistlrError(f"--origin {origin!r} is a remote name but this is no git repository; pass the URL")
    url = origin if is_url else remote_url(origin, root)
    if commit is None:
        if root is None:
            raise MnistlrError("no --commit and no git repository here to take HEAD from")
        commit = run_git("rev-parse", "HEAD", cwd=root).strip()
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise MnistlrError(
            f"--commit {commit!r} is not accepted; accepted: a full 40-hex commit id (git rev-parse HEAD)"
        )
    if checkout and group is not None and git_answer("cat-file", "-e", f"{commit}^{{commit}}", cwd=root) is not None:
        select(group_points(plan(sets, root, commit, name_prefix, yes=True)), group)  # refused before any clone
    if name is not None and not NAME_RE.match(name):
        raise MnistlrError(f"--name {name!r} is not accepted; accepted: up to 40 letters, digits, - or _")
    if config_local is not None and not Path(config_local).is_file():
        raise MnistlrError(
            f"--config-local {str(config_local)!r} (or {CONFIG_LOCAL_ENV}) is not a file; accepted: "
            "a DVC config.local on this machine, or neither (then the AWS_* variables of the "
            "environment hold the credentials)"
        )
    if config_local is None and root is not None and (root / ".dvc" / "config.local").is_file():
        config_local = root / ".dvc" / "config.local"
    results = run_group(url, commit, sets, group, name_prefix, name, config_local, workdir, log, jobs)
    for r in results:
        log(f"{r.status} {r.name} ({_describe(r.overrides)})" + (f": {r.error}" if r.error else ""))
    if results_file is not None:
        atomic.write_json(results_file, [asdict(r) for r in results])
    return results

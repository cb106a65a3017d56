"""Sweeps on a Dask cluster: one task per grid point, git and the DVC remote the only shared state.

The driver (`mnistlr sweep`) expands `-S` grids exactly as `dvc exp run --queue -S` does (DVC's own
Hydra parser), names every point from its params and the commit, skips the points whose experiment
ref is already on the git remote, and submits one task per remaining point. A task runs the
per-point command (`mnistlr sweep-point`) in a fresh clone of the commit: `dvc pull`, `dvc exp run`,
`dvc push` (the cache first), then `dvc exp push` (the ref last, so a ref never exists without its
data). The same per-point command runs unchanged as a CI matrix job or a SLURM array task.

A task's arguments are the git URL, the commit, the point's name and its overrides: no credentials.
Anyone who can reach the scheduler can read them, so each worker takes the DVC remote's credentials
from its own machine: a DVC config.local named by MNISTLR_DVC_CONFIG_LOCAL in the worker's environment
(copied into each clone), else the standard AWS variables of that environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for a store whose endpoint .dvc/config does not name) or
the worker's ~/.aws files. A local cluster (no --scheduler) runs on this machine: its workers are
given the path of this repository's .dvc/config.local, never its text.

dask and distributed are the optional `cluster` extra; only the driver and the workers need them.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnistlr.errors import MnistlrError
from mnistlr.repo import beside_python, failure_line, git_answer, run_dvc, run_git
from mnistlr.review import compare_experiments

CONNECT_TIMEOUT_S = 10
CONFIG_LOCAL_ENV = "MNISTLR_DVC_CONFIG_LOCAL"  # a worker's own DVC config.local (credentials) for its clones
CLUSTER_INSTALL = "pip install 'mnistlr[cluster]'"
TEMPFAIL = 75  # sweep-point's exit status for a failure worth retrying elsewhere (git or storage, not the experiment)
WATCHDOG_ENV = (
    "MNISTLR_SWEEP_WATCHDOG"  # set by the Dask task: the point kills its own process group if the worker dies
)
ORPHANED = threading.Event()  # set by the watchdog: the worker that ran this point is gone
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")


class TransientError(MnistlrError):
    """A failure of the shared state (clone, pull, push): another attempt may succeed."""


# --- the grid --------------------------------------------------------------------------------------


def expand_grid(sets: list[str]) -> list[list[str]]:
    """Every point of the `-S` options, as `dvc exp run --queue -S` queues them: each option KEY=V1,V2,...
    (Hydra's override grammar), their cartesian product, a repeated key's last option wins. Each point is
    its list of KEY=VALUE overrides; points that set the same values are kept once."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import HydraException

    if not sets:
        raise MnistlrError("no -S given; accepted: one or more -S KEY=V1,V2,... e.g. -S 'optimizer=sgd,adam'")
    for s in sets:
        if "=" not in s:
            raise MnistlrError(f"-S {s!r} is not KEY=V1,V2,...; e.g. -S 'optimizer=sgd,adam'")
    by_file = to_path_overrides(sets)
    other = sorted(set(by_file) - {"params.yaml"})
    if other:
        raise MnistlrError(f"-S sets params of {', '.join(other)}; accepted: keys of params.yaml only")
    try:
        sweeps = get_hydra_sweeps(by_file)
    except (HydraException, DvcException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MnistlrError(f"cannot parse -S {' -S '.join(sets)}: {first}") from None
    points: list[list[str]] = []
    for sweep in sweeps:
        point = list(sweep.get("params.yaml", []))
        if point not in points:
            points.append(point)
    return points


def override_key(override: str) -> str:
    """'train.weight_decay=0' -> 'train.weight_decay' (a leading + or ~ of Hydra's grammar dropped)."""
    return override.partition("=")[0].lstrip("+~")


def param_keys(params: dict, prefix: str = "") -> list[str]:
    """Every key of params.yaml in dotted form, inner nodes included: 'train', 'train.lr', 'train.lr.sgd'."""
    out = []
    for k, v in params.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out.extend(param_keys(v, key + "."))
    return out


def check_keys(points: list[list[str]], params_path: str | Path = "params.yaml") -> None:
    """Every key the points set must be in params.yaml: a typo would run a whole sweep of identical models."""
    params = yaml.safe_load(Path(params_path).read_text()) or {}
    known = param_keys(params)
    for point in points:
        for override in point:
            key = override_key(override)
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise MnistlrError(
                    f"unknown param key {key!r} (not in {Path(params_path).name}){hint} "
                    f"accepted: {', '.join(k for k in known if '.' not in k)} and their dotted sub-keys"
                )


def point_name(point: list[str], commit: str, prefix: str = "sweep") -> str:
    """A short, deterministic experiment name (a valid git ref): prefix + hash of the sorted params and the commit."""
    if not NAME_RE.match(prefix) or len(prefix) > 28:
        raise MnistlrError(
            f"--name-prefix {prefix!r} is not accepted; accepted: up to 28 letters, digits, - or _, "
            "starting with a letter or digit"
        )
    text = commit + "\n" + "\n".join(sorted(point, key=override_key))
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def exp_ref(commit: str, name: str) -> str:
    """The ref `dvc exp push` creates for experiment `name` of baseline `commit`."""
    return f"refs/exps/{commit[:2]}/{commit[2:]}/{name}"


# --- git -------------------------------------------------------------------------------------------


def stop_if_orphaned() -> None:
    """No git or dvc command starts once the worker running this point is gone."""
    if ORPHANED.is_set():
        raise TransientError("the Dask worker running this point died; stopped")


def git(*args: str, cwd: str | Path = ".", error: type[MnistlrError] = MnistlrError) -> str:
    """stdout of `git ARGS` (mnistlr.repo.run_git), unless this point's worker is gone."""
    stop_if_orphaned()
    return run_git(*args, cwd=cwd, error=error)


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
    out = git("ls-remote", url, "refs/exps/*", cwd=cwd, error=TransientError)
    return {line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line}


def check_pushed(commit: str, remote: str, cwd: str | Path = ".") -> None:
    """The workers clone the commit from the remote: it must be there."""
    advertised = git("ls-remote", remote, cwd=cwd)
    if any(line.split("\t", 1)[0] == commit for line in advertised.splitlines()):
        return
    git("fetch", "-q", remote, cwd=cwd)
    if git("for-each-ref", "--contains", commit, f"refs/remotes/{remote}", cwd=cwd).strip():
        return
    raise MnistlrError(
        f"commit {commit[:7]} is not on the git remote {remote!r}; the workers clone it from there: "
        f"git push {remote} HEAD"
    )


# --- one point -------------------------------------------------------------------------------------


def _start_watchdog(cleanup: Callable[[], None]) -> None:
    """When the process that started us dies (a killed Dask worker), kill our whole process group
    (dvc and its stages), after removing the clone: nothing of a dead attempt keeps running or pushes."""
    parent = os.getppid()
    # a handler, not SIG_IGN: our children get the default back at exec, so the group's SIGTERM stops them, not us
    signal.signal(signal.SIGTERM, lambda signum, frame: None)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        ORPHANED.set()  # no further git or dvc command starts
        with contextlib.suppress(OSError):
            os.killpg(os.getpgrp(), signal.SIGTERM)
        time.sleep(1.0)
        cleanup()
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def _env() -> dict[str, str]:
    """This Python's bin folder first on PATH (the stages' `python`); a git identity for DVC's experiment
    commits where git has none."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    for key, role, value in (("user.name", "NAME", "mnistlr sweep"), ("user.email", "EMAIL", "sweep@localhost")):
        if not (git_answer("config", key) or "").strip():
            env.setdefault(f"GIT_AUTHOR_{role}", value)
            env.setdefault(f"GIT_COMMITTER_{role}", value)
    return env


STORAGE_REFUSED = re.compile(
    r"Unable to locate credentials|Forbidden|AccessDenied|InvalidAccessKeyId|"
    r"SignatureDoesNotMatch|\(403\)"
)


def _dvc(*args: str, cwd: Path, env: dict[str, str], error: type[MnistlrError]) -> str:
    """stdout of `dvc ARGS` (mnistlr.repo.run_dvc), unless this point's worker is gone. Storage that refuses
    this machine's credentials (or finds none) says where they come from."""
    stop_if_orphaned()
    try:
        return run_dvc(*args, cwd=cwd, env=env, error=error)
    except MnistlrError as exc:
        if not STORAGE_REFUSED.search(str(exc)):
            raise
        raise type(exc)(
            f"{exc}; this machine's storage credentials: {CONFIG_LOCAL_ENV} naming a DVC config.local, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
        ) from None


def default_remote(repo: Path) -> str | None:
    """The DVC default remote of `repo` (`dvc remote default`, read in this process: every config level)."""
    from dvc.config import Config, ConfigError

    try:
        return Config(dvc_dir=repo / ".dvc").get("core", {}).get("remote") or None
    except ConfigError as exc:
        raise MnistlrError(f"the DVC config of the clone (with its config.local) is not valid: {exc}") from None


def run_point(
    url: str,
    commit: str,
    name: str,
    point: list[str],
    config_local: Path | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Run one point in a fresh clone: 'skipped' when its ref is already on the remote, else 'done'.
    MnistlrError: the experiment failed (retrying will not help); TransientError: git or storage did."""
    ref = exp_ref(commit, name)
    if ref in remote_exp_refs(url):
        log(f"{name}: already on the remote ({ref}); skipped")
        return "skipped"
    attempt = Path(tempfile.mkdtemp(prefix=f"mnistlr-sweep-{name}-", dir=workdir))
    clone = attempt / "repo"
    if os.environ.get(WATCHDOG_ENV):
        _start_watchdog(lambda: shutil.rmtree(attempt, ignore_errors=True))
    env = _env()
    try:
        git("clone", "-q", "--no-checkout", url, str(clone), cwd=attempt, error=TransientError)
        git("checkout", "-q", "--detach", commit, cwd=clone)
        if config_local is not None:
            (clone / ".dvc" / "config.local").touch(mode=0o600)
            shutil.copyfile(config_local, clone / ".dvc" / "config.local")
        has_remote = default_remote(clone) is not None
        if has_remote:
            _dvc("pull", "--allow-missing", cwd=clone, env=env, error=TransientError)  # not -q: it hides errors
        else:
            log(f"{name}: no default DVC remote: the models stay in this clone; only metrics reach git")
        log(f"{name}: dvc exp run {' '.join('-S ' + o for o in point)}")
        _dvc("exp", "run", "-n", name, *(a for o in point for a in ("-S", o)), cwd=clone, env=env, error=MnistlrError)
        if has_remote:
            _dvc("push", cwd=clone, env=env, error=TransientError)  # the data first ...
        try:
            _dvc("exp", "push", "--no-cache", url, name, cwd=clone, env=env, error=TransientError)  # ... the ref last
        except TransientError:
            if ref not in remote_exp_refs(url):
                raise
        log(f"{name}: pushed {ref}")
        return "done"
    finally:
        shutil.rmtree(attempt, ignore_errors=True)
        if ORPHANED.is_set():  # whatever of our group is left goes with us
            os.killpg(os.getpgrp(), signal.SIGKILL)


def mnistlr_command() -> list[str]:
    """The mnistlr console script beside this Python, else this Python running the CLI."""
    beside = beside_python("mnistlr")
    return [str(beside)] if beside else [sys.executable, "-c", "from mnistlr.cli import app; app()"]


@dataclass
class PointResult:
    name: str
    point: list[str]
    status: str  # done | skipped | failed
    seconds: float = 0.0
    error: str = ""
    host: str = field(default_factory=lambda: os.uname().nodename)


def point_task(url: str, commit: str, name: str, point: list[str]) -> PointResult:
    """The Dask task: the per-point command in a subprocess (its own process group, which kills itself
    if this worker dies), with this worker's environment: the storage credentials are the worker's own
    (MNISTLR_DVC_CONFIG_LOCAL or the AWS variables), none travel with the task. An experiment that fails
    is a result; a git or storage failure raises, so Dask retries the task (a fresh clone)."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mnistlr-sweep-task-") as tmp:
        cmd = [
            *mnistlr_command(),
            "sweep-point",
            "--origin",
            url,
            "--commit",
            commit,
            "--name",
            name,
            *(a for o in point for a in ("-S", o)),
        ]
        proc = subprocess.run(
            cmd, cwd=tmp, env={**_env(), WATCHDOG_ENV: "1"}, capture_output=True, text=True, start_new_session=True
        )
    last = failure_line(proc.stderr) if proc.stderr.strip() else f"exit {proc.returncode}"
    if proc.returncode == TEMPFAIL:
        raise RuntimeError(f"{name}: {last}")
    if proc.returncode != 0:
        return PointResult(name, point, "failed", time.monotonic() - start, last)
    status = "skipped" if "already on the remote" in proc.stdout else "done"
    return PointResult(name, point, status, time.monotonic() - start)


# --- the driver ------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    commit: str
    results: list[PointResult]
    compared: int = 0
    summary: str = ""

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


def _describe(point: list[str]) -> str:
    return " ".join(point) or "(no overrides)"


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
) -> SweepOutcome:
    """Check everything, run every point not yet on the remote, pull the results and compare them.
    No credentials leave this machine: a remote scheduler's workers use their own; a local cluster's
    workers read this repository's .dvc/config.local (unless MNISTLR_DVC_CONFIG_LOCAL names another)."""
    require_distributed()
    root = Path(git("rev-parse", "--show-toplevel", cwd=cwd).strip())
    points = expand_grid(sets)
    check_keys(points, root / "params.yaml")
    url = remote_url(remote, root)
    commit = git("rev-parse", "HEAD", cwd=root).strip()
    check_pushed(commit, remote, root)
    names = [point_name(p, commit, name_prefix) for p in points]
    if git("status", "--porcelain", "--untracked-files=no", cwd=root).strip():
        log(f"note: uncommitted changes are not part of the sweep; it runs commit {commit[:7]}")
    cfg = root / ".dvc" / "config.local"
    local_cfg = cfg if cfg.is_file() and not scheduler and CONFIG_LOCAL_ENV not in os.environ else None
    if scheduler and cfg.is_file():
        log(
            f"note: {cfg.relative_to(root)} stays on this machine; the workers use their own storage credentials "
            f"({CONFIG_LOCAL_ENV} or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in their environment)"
        )

    pushed = remote_exp_refs(url, root)
    results: dict[str, PointResult] = {}
    todo = []
    for name, point in zip(names, points, strict=True):
        if exp_ref(commit, name) in pushed:
            results[name] = PointResult(name, point, "skipped")
        else:
            todo.append((name, point))
    log(
        f"sweep of {len(points)} points on {commit[:7]}: {len(results)} already on {remote} (skipped), "
        f"{len(todo)} to run"
    )

    if todo:
        client, cluster = connect(scheduler, n_workers, local_cfg, connect_timeout_s)
        try:
            results.update(_run_tasks(client, url, commit, todo, log))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    outcome = SweepOutcome(commit, [results[n] for n in names])
    ok = [r.name for r in outcome.results if r.status in ("done", "skipped")]
    if ok:
        log(f"pulling {len(ok)} experiments from {remote}")
        run_dvc("exp", "pull", "--no-cache", "-f", remote, *ok, cwd=root)
        try:
            table, summary = compare_experiments(Path(root) / out, variant, metric, [commit], cwd=root)
            outcome.compared, outcome.summary = len(table), summary
        except MnistlrError as exc:
            log(f"compare: {exc}")
    return outcome


def _executing_keys(dask_worker: Any) -> list[str]:
    """Run on each worker: the keys of the tasks it is executing now (not just assigned to it)."""
    return [str(ts.key) for ts in dask_worker.state.executing]


def _run_tasks(
    client: Any, url: str, commit: str, todo: list[tuple[str, list[str]]], log: Callable[[str], None]
) -> dict[str, PointResult]:
    """Submit one task per point (retries=2) and report progress until every one has an outcome."""
    from distributed import wait

    futures = {
        client.submit(point_task, url, commit, name, point, key=f"mnistlr-sweep-{name}", pure=False, retries=2): (
            name,
            point,
        )
        for name, point in todo
    }
    results: dict[str, PointResult] = {}
    pending = set(futures)
    last_line = ""
    while pending:
        with contextlib.suppress(TimeoutError):
            wait(list(pending), timeout=2, return_when="FIRST_COMPLETED")
        done = {f for f in pending if f.done()}
        pending -= done
        for fut in done:
            name, point = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                res = PointResult(name, point, "failed", error=first)
            results[name] = res
            if res.status == "failed":
                log(f"FAILED {name} ({_describe(point)}): {res.error}")
            else:
                log(f"{res.status} {name} ({_describe(point)}) in {res.seconds:.0f} s on {res.host}")
        try:
            executing = {k for keys in client.run(_executing_keys, on_error="ignore").values() for k in keys}
        except Exception:
            executing = set()
        running = sum(1 for f in pending if str(f.key) in executing)
        failed = sum(1 for r in results.values() if r.status == "failed")
        line = (
            f"progress: {len(results) - failed}/{len(futures)} done, {running} running, "
            f"{len(pending) - running} waiting, {failed} failed"
        )
        if line != last_line:
            log(line)
            last_line = line
    return results


def point_from_here(
    sets: list[str],
    commit: str | None = None,
    name: str | None = None,
    name_prefix: str = "sweep",
    origin: str = "origin",
    config_local: Path | None = None,
    workdir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """`mnistlr sweep-point`: one point, from a checkout (a CI job, a SLURM task) or from a Dask task (origin a URL).
    config_local: a DVC config.local on this machine for the clone (default: this checkout's, if any); without
    one the clone's dvc takes the AWS variables of this environment."""
    points = expand_grid(sets) if sets else [[]]
    if len(points) != 1:
        raise MnistlrError(
            f"sweep-point runs one point but -S {' -S '.join(sets)} makes {len(points)}; "
            "give single values (a CI matrix or an array job sets one point per task)"
        )
    point = points[0]
    top = git_answer("rev-parse", "--show-toplevel")
    root = Path(top.strip()) if top else None
    if root is not None and (root / "params.yaml").is_file():
        check_keys([point], root / "params.yaml")
    is_url = "://" in origin or origin.startswith(("/", ".", "~")) or ("@" in origin and ":" in origin)
    if not is_url and root is None:
        raise MnistlrError(f"--origin {origin!r} is a remote name but this is no git repository; pass the URL")
    url = origin if is_url else remote_url(origin, root)
    if commit is None:
        if root is None:
            raise MnistlrError("no --commit and no git repository here to take HEAD from")
        commit = git("rev-parse", "HEAD", cwd=root).strip()
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise MnistlrError(
            f"--commit {commit!r} is not accepted; accepted: a full 40-hex commit id (git rev-parse HEAD)"
        )
    name = name or point_name(point, commit, name_prefix)
    if not NAME_RE.match(name):
        raise MnistlrError(f"--name {name!r} is not accepted; accepted: up to 40 letters, digits, - or _")
    if config_local is not None and not Path(config_local).is_file():
        raise MnistlrError(
            f"--config-local {str(config_local)!r} (or {CONFIG_LOCAL_ENV}) is not a file; accepted: "
            "a DVC config.local on this machine, or neither (then the AWS_* variables of the "
            "environment hold the credentials)"
        )
    if config_local is None and root is not None and (root / ".dvc" / "config.local").is_file():
        config_local = root / ".dvc" / "config.local"
    return run_point(url, commit, name, point, config_local, workdir, log)

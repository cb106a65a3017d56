"""A grid in one pass: every point of a `-S` grid trained at once on this machine, each point then
recorded as a DVC experiment of this repository, the same as `dvc exp run -S <point>` would record it.

`dvc exp run --queue` runs the whole pipeline once per point: seconds of DVC machinery, imports and
stage processes around a second of training. Here the grid is expanded as DVC expands it (its Hydra
parser), each point's params.yaml is written by DVC's own override writer, and the points are grouped
by everything the trainer cannot vary per model (data, variants, seed, optimizer, batch size, epochs,
schedule, ...). Each group trains as one program: every variant of every point on shared batches, each
model with its own learning rate, weight decay and L1, bit for bit what training it alone gives. Then
each point is scored and its figures drawn in a pool of processes, and `mnistlr.record` records it.

A point already recorded (same params, same baseline commit: same name) is skipped, so a rerun does
only what is missing. A point whose model diverges fails alone; the others are recorded.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from mnistlr import atomic
from mnistlr.errors import MnistlrError
from mnistlr.params import Params, group_key, parse_params, read_yaml
from mnistlr.record import PARAMS, Recorder, point_params, recorded
from mnistlr.repo import git_show, run_git

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,27}$")
CONFIRM_ABOVE = 1000  # points; a larger grid asks for --yes
ALPHA = 0.05  # McNemar: "the test set cannot tell these apart" at this level


# --- the grid ---------------------------------------------------------------------------------------


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
    other = sorted(set(by_file) - {PARAMS})
    if other:
        raise MnistlrError(f"-S sets params of {', '.join(other)}; accepted: keys of params.yaml only")
    try:
        sweeps = get_hydra_sweeps(by_file)
    except (HydraException, DvcException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MnistlrError(f"cannot parse -S {' -S '.join(sets)}: {first}") from None
    points: list[list[str]] = []
    for sweep in sweeps:
        point = list(sweep.get(PARAMS, []))
        if point not in points:
            points.append(point)
    if not points or points == [[]]:
        raise MnistlrError(f"-S {' -S '.join(sets)} gives an empty grid; accepted: KEY=V1,V2,... with a value")
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


def check_keys(points: list[list[str]], params_path: str | Path = PARAMS) -> None:
    """Every key the points set must be in params.yaml: a typo would run a whole sweep of identical models."""
    params = read_yaml(params_path) or {}
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
    if not NAME_RE.match(prefix):
        raise MnistlrError(
            f"--name-prefix {prefix!r} is not accepted; accepted: up to 28 letters, digits, - or _, "
            "starting with a letter or digit"
        )
    text = commit + "\n" + "\n".join(sorted(point, key=override_key))
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


@dataclass
class Point:
    """One point of the grid: its overrides, experiment name, params.yaml text and typed params."""

    name: str
    overrides: list[str]
    text: str
    params: Params

    @property
    def label(self) -> str:
        return " ".join(self.overrides)


def plan_points(
    sets: list[str], root: Path, baseline: str, prefix: str, scratch: Path, yes: bool = False
) -> list[Point]:
    """The grid's points with their params.yaml text, each checked before anything runs."""
    raw = expand_grid(sets)
    if len(raw) > CONFIRM_ABOVE and not yes:
        raise MnistlrError(f"the grid has {len(raw)} points (over {CONFIRM_ABOVE}); pass --yes to run them all")
    check_keys(raw, root / PARAMS)
    base_text = git_show(baseline, PARAMS, cwd=root)
    if base_text is None:
        raise MnistlrError(f"{PARAMS} is not committed at {baseline[:8]}; accepted: a commit with params.yaml")
    points = []
    for overrides in raw:
        text = point_params(base_text, overrides, scratch)
        params = parse_params(read_yaml(scratch / PARAMS), f"{PARAMS} with {' '.join(overrides)}")
        points.append(Point(point_name(overrides, baseline, prefix), overrides, text, params))
    return points


# --- training ---------------------------------------------------------------------------------------


@dataclass
class Trained:
    """A point's fitted variants (model, history) or the one line of its failure."""

    fitted: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def train_group(points: list[Point], prepared: Path) -> dict[str, Trained]:
    """Every variant of every point of one group, trained as one program per set of training images; a point
    with a diverged model gets that model's error line instead of its models."""
    from mnistlr import train

    out = {}
    for p, fitted in zip(points, train.train_grid([p.params for p in points], prepared), strict=True):
        errors = [f"{name}: {one.error}" for name, one in fitted.items() if one.error]
        out[p.name] = Trained(error=errors[0]) if errors else Trained(fitted=fitted)
    return out


# --- evaluate and report, one process per core ------------------------------------------------------------


_RECORDER: Recorder | None = None  # where finish_point records: a pool process's own worktree, or the sweep's (one job)


def start_worker(root: str, baseline: str) -> None:
    """Pool initializer: this process records into a worktree of its own, removed when the pool shuts down."""
    from multiprocessing import util

    global _RECORDER
    _RECORDER = Recorder(root, baseline).__enter__()
    util.Finalize(None, _RECORDER.close, exitpriority=10)


class InThisProcess(Executor):
    """The pool of one job: each point scored and recorded in the sweep's own process and worktree, as it is
    submitted. No process to start, no second copy of torch and the plotting libraries in memory."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def __enter__(self) -> InThisProcess:
        global _RECORDER
        _RECORDER = self.rec
        return self

    def __exit__(self, *exc: object) -> None:
        global _RECORDER
        _RECORDER = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # as a pool's future holds it: raised by .result()
            future.set_exception(exc)
        return future


def warm_worker(text: str) -> None:
    """In a pool process, while the first pass trains: the imports of finish_point, and the worktree's data."""
    import mnistlr.evaluate
    import mnistlr.report  # noqa: F401

    assert _RECORDER is not None, "warm_worker runs in a pool started with start_worker"
    _RECORDER.prepare(text)


def finish_point(folder: str, name: str, text: str) -> str | None:
    """In a pool process: score the point laid out in `folder` and write its report, as the evaluate and report
    stages do from the repository root (relative paths, so the outputs' text is the same); then record it as
    experiment `name`. Returns the one line of a failure, or None."""
    from mnistlr.evaluate import evaluate
    from mnistlr.params import load_params
    from mnistlr.report import build_report

    assert _RECORDER is not None, "finish_point runs in a pool started with start_worker"
    here = os.getcwd()
    os.chdir(folder)
    try:
        params = load_params(PARAMS)
        evaluate(params, "data/prepared", "models", "plots/train", "metrics", "plots/predictions", "reports/figures")
        build_report(
            params,
            "metrics",
            "data/prepared/variants",
            "plots/predictions",
            "reports/report.md",
            prepared_dir="data/prepared",
            experiments_dir="experiments",
        )
    except MnistlrError as exc:
        return str(exc)
    finally:
        os.chdir(here)
    for shared in ("data", "experiments"):
        link = Path(folder) / shared
        if link.is_symlink():
            link.unlink()
    _RECORDER.prepare(text)  # nothing to do when its data is the last point's
    _RECORDER.record(name, text, Path(folder))
    return None


def lay_out(point: Point, trained: Trained, folder: Path, worktree: Path) -> None:
    """The point's params.yaml, models and curves in `folder`, with the worktree's data and experiments."""
    from mnistlr import train
    from mnistlr.data import load_preprocessing

    folder.mkdir(parents=True)
    atomic.write_text(folder / PARAMS, point.text)
    for shared in ("data", "experiments"):
        if (worktree / shared).exists():
            (folder / shared).symlink_to(worktree / shared)
    pre = load_preprocessing(worktree / "data" / "prepared")
    train.save_fitted(point.params, trained.fitted, pre, folder / "models", folder / "plots" / "train")


# --- the sweep ---------------------------------------------------------------------------------------------


@dataclass
class PointOutcome:
    point: Point
    status: str  # "recorded", "skipped" (recorded before), "failed"
    error: str | None = None
    seconds: float = 0.0


@dataclass
class GridOutcome:
    baseline: str
    outcomes: list[PointOutcome]
    train_seconds: float = 0.0
    summary: str = ""

    @property
    def failed(self) -> list[PointOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def clean_head(root: Path) -> str:
    """HEAD's commit, when the tracked files are as committed: the experiments are of that commit."""
    dirty = run_git("status", "--porcelain", "--untracked-files=no", cwd=root).strip()
    if dirty:
        first = dirty.splitlines()[0].strip()
        raise MnistlrError(
            f"uncommitted changes ({first}{', ...' if len(dirty.splitlines()) > 1 else ''}): the sweep records "
            "experiments of HEAD; commit them, or `git stash`, first"
        )
    return run_git("rev-parse", "HEAD", cwd=root).strip()


def progress(total: int, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="point", desc="sweep", disable=disable, dynamic_ncols=True, leave=True)


def group_points(points: list[Point]) -> dict[str, list[Point]]:
    """The points by training pass, in grid order; each pass named g-<hash of what its points share>."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        key = json.dumps(group_key(p.params))
        groups.setdefault(f"g-{hashlib.sha256(key.encode()).hexdigest()[:8]}", []).append(p)
    return groups


def plan(sets: list[str], root: Path, baseline: str, prefix: str = "sweep", yes: bool = False) -> list[Point]:
    """plan_points with its scratch folder under .dvc/tmp, removed afterwards."""
    scratch = root / ".dvc" / "tmp" / "sweeps" / f"plan-{os.getpid()}"
    try:
        return plan_points(sets, root, baseline, prefix, scratch, yes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- tasks: a group, or a slice of one, by name (the cluster's tasks, a CI matrix's jobs) ------------------

TASK_RE = re.compile(r"^(g-[0-9a-f]{8})(?:\.([1-9][0-9]*)of([1-9][0-9]*))?$")


def task_name(group: str, i: int = 1, k: int = 1) -> str:
    """g-1a2b3c4d for a whole group, g-1a2b3c4d.2of3 for the 2nd of its 3 slices."""
    return group if k == 1 else f"{group}.{i}of{k}"


def slice_of(points: list[Point], i: int, k: int) -> list[Point]:
    """Slice i of k of a group: every k-th point from the i-th, so that the points a killed run left to do are
    shared out about evenly too. Each slice is still one training pass."""
    return points[i - 1 :: k]


def split_groups(groups: dict[str, list[Point]], todo: set[str], workers: int) -> dict[str, list[Point]]:
    """The tasks that run the points named in `todo` on `workers` workers: each group whole, or, when it has
    more such points than a worker's share, ceil(len(todo) / workers), in the fewest slices that hold at most
    a share each, so that every worker gets work. Tasks with nothing to do are left out."""
    share = max(1, math.ceil(len(todo) / max(1, workers)))
    tasks: dict[str, list[Point]] = {}
    for group, points in groups.items():
        k = math.ceil(sum(p.name in todo for p in points) / share)
        while k < len(points) and any(
            sum(p.name in todo for p in slice_of(points, i, k)) > share for i in range(1, k + 1)
        ):
            k += 1
        for i in range(1, k + 1):
            part = slice_of(points, i, k)
            if any(p.name in todo for p in part):
                tasks[task_name(group, i, k)] = part
    return tasks


def select(groups: dict[str, list[Point]], name: str) -> list[Point]:
    """The points of task `name` (a group, or a slice I of K of one: NAME.IofK) of this grid's groups."""
    m = TASK_RE.match(name)
    if not m or m.group(1) not in groups:
        first = next(iter(groups))
        raise MnistlrError(
            f"--group {name!r} is not a group of this grid; accepted: {', '.join(groups)}, or a slice of one "
            f"such as {first}.1of2 (`mnistlr sweep --plan` with the same -S lists them)"
        )
    points = groups[m.group(1)]
    i, k = int(m.group(2) or 1), int(m.group(3) or 1)
    if i > k or k > len(points):
        raise MnistlrError(
            f"--group {name!r}: slice {i} of {k} of a group of {len(points)} point(s); "
            f"accepted: NAME.IofK with 1 <= I <= K <= {len(points)}"
        )
    return slice_of(points, i, k)


def plan_text(tasks: dict[str, list[Point]], baseline: str) -> str:
    """What `mnistlr sweep --plan` prints: each task (a group or a slice), its number of points, the points."""
    n = sum(len(points) for points in tasks.values())
    lines = [f"{n} points of {baseline[:8]} in {len(tasks)} task(s), each one training pass:"]
    for name, points in tasks.items():
        lines.append(f"{name}: {len(points)} point(s)")
        lines += [f"  {p.name}  {p.label}" for p in points]
    lines.append("run one task (a CI job, an array task) with: mnistlr sweep-point <the same -S options> --group NAME")
    return "\n".join(lines)


def plan_json(tasks: dict[str, list[Point]]) -> list[dict[str, Any]]:
    """The plan as data: [{"group": NAME, "points": [{"name": ..., "overrides": [...]}, ...]}, ...]."""
    return [
        {"group": name, "points": [{"name": p.name, "overrides": p.overrides} for p in points]}
        for name, points in tasks.items()
    ]


def run_grid(
    sets: list[str],
    root: str | Path = ".",
    prefix: str = "sweep",
    yes: bool = False,
    jobs: int | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> GridOutcome:
    """Train, score and record every point of the grid that is not recorded yet; then the summary."""
    root = Path(root).resolve()
    baseline = clean_head(root)
    points = plan(sets, root, baseline, prefix, yes)
    return run_points(points, root, baseline, jobs, quiet, log)


# A pool process costs seconds to start (torch, matplotlib and DVC imported, its worktree made) where scoring and
# recording a point costs about one: a small grid is done sooner, and with less CPU, in the sweep's own process
# (4 points of the synthetic test project: 9.4 s wall and 10 s CPU in one process, 9.7 s and 16 s with two).
POINTS_PER_JOB = 8


def default_jobs(points: int) -> int:
    """One process per core, at most 4, each with at least POINTS_PER_JOB points (one job: this process)."""
    return max(1, min(os.cpu_count() or 1, 4, points // POINTS_PER_JOB))


def run_points(
    points: list[Point],
    root: Path,
    baseline: str,
    jobs: int | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> GridOutcome:
    """Record every point of `points` not recorded yet as an experiment of `baseline` in the repository at
    `root`: one training pass per group, scoring in `jobs` processes. Then the summary over all of them."""
    done = recorded(root, baseline)
    todo = [p for p in points if p.name not in done]
    outcomes = {p.name: PointOutcome(p, "skipped") for p in points if p.name in done}
    groups = group_points(todo)
    log(
        f"sweep: {len(points)} points of {baseline[:8]}, {len(points) - len(todo)} recorded before, "
        f"{len(todo)} to run in {len(groups)} training pass(es)"
    )
    train_s = 0.0
    if todo:
        jobs = jobs or default_jobs(len(todo))
        with Recorder(root, baseline) as rec, progress(len(todo), quiet) as bar:
            pool: Executor = InThisProcess(rec)
            warming = []
            if jobs > 1:
                pool = ProcessPoolExecutor(
                    max_workers=jobs,
                    mp_context=get_context("spawn"),
                    initializer=start_worker,
                    initargs=(str(root), baseline),
                )
                # the pool's processes start (imports, worktree, data) while the first pass trains
                first = next(iter(groups.values()))[0].text
                warming = [pool.submit(warm_worker, first) for _ in range(jobs)]
            with pool:
                for i, group in enumerate(groups.values(), 1):
                    bar.set_postfix_str(f"pass {i}/{len(groups)}: data")
                    rec.prepare(group[0].text)
                    bar.set_postfix_str(f"pass {i}/{len(groups)}: training {len(group)} point(s)")
                    t0 = time.perf_counter()
                    trained = train_group(group, rec.prepared)
                    train_s += time.perf_counter() - t0
                    bar.set_postfix_str(f"pass {i}/{len(groups)}: scoring and recording")
                    outcomes.update(_finish_group(group, trained, rec, pool, bar))
                for warm in warming:
                    warm.result()  # raises what went wrong there, if anything did
    ordered = [outcomes[p.name] for p in points]
    result = GridOutcome(baseline, ordered, train_s)
    result.summary = summarize(root, baseline, ordered)
    return result


def _finish_group(
    group: list[Point], trained: dict[str, Trained], rec: Recorder, pool: Executor, bar: Any
) -> dict[str, PointOutcome]:
    """Lay out each trained point, score and record it in the pool; the outcome of each as it completes."""
    staging = rec.wt.parent / f"points-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    outcomes: dict[str, PointOutcome] = {}
    futures = {}
    try:
        for p in group:
            if trained[p.name].error:
                outcomes[p.name] = PointOutcome(p, "failed", trained[p.name].error)
                bar.update(1)
                continue
            folder = staging / p.name
            lay_out(p, trained[p.name], folder, rec.wt)
            futures[pool.submit(finish_point, str(folder), p.name, p.text)] = p
        trained.clear()  # the models are on disk now
        for future in as_completed(futures):
            p = futures[future]
            error = future.result()
            outcomes[p.name] = PointOutcome(p, "failed", error) if error else PointOutcome(p, "recorded")
            bar.update(1)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return outcomes


# --- the summary -------------------------------------------------------------------------------------------


def _scores(root: Path, baseline: str, name: str, variant: str) -> tuple[dict, Any] | None:
    from mnistlr.record import exp_ref
    from mnistlr.stats import read_predictions

    ref = exp_ref(baseline, name)
    metrics = git_show(ref, f"metrics/{variant}.json", cwd=root)
    predictions = git_show(ref, f"plots/predictions/{variant}.csv", cwd=root)
    if metrics is None or predictions is None:
        return None
    return json.loads(metrics), read_predictions(predictions, f"{name}:plots/predictions/{variant}.csv")


def summarize(root: Path, baseline: str, outcomes: list[PointOutcome]) -> str:
    """The best point by validation accuracy of the reference variant; the test set reports that point
    only, and names the points it cannot tell from it (exact McNemar test, p >= 0.05)."""
    import numpy as np

    from mnistlr.stats import mcnemar_p

    ok = [o for o in outcomes if o.status != "failed"]
    failed = len(outcomes) - len(ok)
    counts = (
        f"{sum(o.status == 'recorded' for o in outcomes)} recorded now, "
        f"{sum(o.status == 'skipped' for o in outcomes)} before, {failed} failed"
    )
    if not ok:
        return f"no point to compare ({counts})"
    variant = ok[0].point.params.reference_variant()
    scored = {o.point.name: s for o in ok if (s := _scores(root, baseline, o.point.name, variant)) is not None}
    if not scored:
        return f"no recorded point has metrics/{variant}.json ({counts})"
    by_name = {o.point.name: o.point for o in ok}
    best = max(scored, key=lambda n: (scored[n][0]["val"]["accuracy"], -list(scored).index(n)))
    metrics, (actual, pred) = scored[best]
    ties = []
    for name, (_, (_, other)) in scored.items():
        if name == best:
            continue
        right, right_other = pred == actual, other == actual
        p = mcnemar_p(int(np.sum(right_other & ~right)), int(np.sum(right & ~right_other)))
        if p >= ALPHA:
            ties.append(f"{name} ({by_name[name].label})")
    lines = [
        f"{len(scored)} points compared on validation accuracy of {variant} ({counts}).",
        f"best: {best} ({by_name[best].label}): val accuracy {metrics['val']['accuracy']:.4f}, "
        f"test accuracy {metrics['test']['accuracy']:.4f} (the test set reports this point only)",
        f"the test set cannot tell it from {len(ties)} of the other {len(scored) - 1} "
        f"(exact McNemar, p >= {ALPHA:g}){': ' if ties else ''}" + ", ".join(ties),
        f"see them with: dvc exp show --only-changed; apply the best with: dvc exp apply {best}",
    ]
    return "\n".join(lines)

"""Benchmark: a grid in one pass (`mnistlr sweep`) against DVC's queue of the same grid, on canonical MNIST.

Run `python bench/sweep_grid.py --help` (`make bench` runs it). It measures; it asserts nothing. In fresh
copies of this repository (its tracked files, no outputs), each reproduced once on the mirror
(MNISTLR_MNIST_DIR) and committed:

1. `mnistlr sweep` of the grid: wall time, the seconds its training passes took (per point), peak RSS.
2. `dvc exp run --queue` of the same grid, then `dvc queue start -j 2`, waited for: wall time (skip with
   --no-queue).
3. Identity: each point's experiment commit from the sweep against the queue's experiment of the same
   params: the trees (every tracked byte: params.yaml, dvc.lock, metrics, curves, figures, report).
4. A large grid (--large, 96 points by default): wall, points in `dvc exp show`, peak RSS.

Prints a markdown report; writes it (and JSON beside it) only with --out.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

from mnistlr import atomic

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GRID = ["train.lr.sgd=0.025,0.05,0.1,0.2,0.4,0.8", "train.weight_decay=0,1e-5,1e-4,1e-3"]
LARGE = [
    "train.lr.sgd=0.025,0.05,0.1,0.2,0.4,0.8,1.6,3.2",
    "train.weight_decay=0,1e-5,1e-4,1e-3",
    "train.l1=0,1e-5,1e-4",
]
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PATH"] = f"{BIN}{os.pathsep}{out['PATH']}"
    out["DVC_NO_ANALYTICS"] = "1"
    for role in ("AUTHOR", "COMMITTER"):
        out.setdefault(f"GIT_{role}_NAME", "bench")
        out.setdefault(f"GIT_{role}_EMAIL", "bench@example.com")
    return out


def sh(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


# runs a command and prints, last on stderr, the peak RSS (KiB) of its largest process, itself or a descendant
PEAK = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
)


def timed(*cmd: str, cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in MB of the command's largest process, the process)."""
    start = time.perf_counter()
    proc = sh(sys.executable, "-c", PEAK, *cmd, cwd=cwd)
    return time.perf_counter() - start, int(proc.stderr.strip().splitlines()[-1]) / 1024, proc


def reproduced() -> Path:
    """This repository's tracked files in a fresh git repository (a temporary folder), `dvc repro` run and
    committed."""
    base = Path(tempfile.mkdtemp(prefix="mnistlr-grid-bench-")) / "base"
    files = sh("git", "ls-files", cwd=REPO).stdout.split()
    for rel in files:
        if rel.startswith(("dvc.lock", "metrics/", "plots/", "reports/")) or not (REPO / rel).is_file():
            continue
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, base / rel)
    sh("git", "init", "-q", "-b", "main", cwd=base)
    sh("dvc", "repro", "-q", cwd=base)
    sh("git", "add", "-A", cwd=base)
    sh("git", "commit", "-qm", "baseline", cwd=base)
    return base


def torch_version() -> str:
    """Without importing torch here (a second copy of it in memory would skew the peak RSS figures)."""
    from importlib.metadata import version

    return version("torch")


def copy(base: Path, name: str) -> Path:
    """A copy of the reproduced project beside it (caches and run cache included)."""
    dest = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base.parent)) / "proj"
    shutil.copytree(base, dest, symlinks=True)
    return dest


def experiments(project: Path) -> dict[str, str]:
    """The experiments' trees, keyed by the params.yaml text each commits (the point, as DVC wrote it)."""
    refs = sh("git", "for-each-ref", "--format=%(refname)", "refs/exps", cwd=project).stdout.split()
    out = {}
    for ref in refs:
        if re.fullmatch(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/\S+", ref):
            params = sh("git", "show", f"{ref}:params.yaml", cwd=project).stdout
            out[params] = sh("git", "rev-parse", f"{ref}^{{tree}}", cwd=project).stdout.strip()
    return out


def blobs(project: Path, tree: str) -> dict[str, str]:
    listing = sh("git", "ls-tree", "-r", tree, cwd=project).stdout.splitlines()
    return {line.split("\t", 1)[1]: line.split()[2] for line in listing}


def differing_paths(a: Path, tree_a: str, b: Path, tree_b: str) -> list[str]:
    """The paths whose bytes differ between two experiment trees of two repositories."""
    x, y = blobs(a, tree_a), blobs(b, tree_b)
    return sorted(p for p in set(x) | set(y) if x.get(p) != y.get(p))


def point_of(params_text: str) -> str:
    """The grid's keys as a point's params.yaml sets them."""
    from ruamel.yaml import YAML

    train = YAML(typ="safe").load(params_text)["train"]
    return f"train.lr.sgd={train['lr']['sgd']} train.weight_decay={train['weight_decay']} train.l1={train['l1']}"


def sweep(project: Path, grid: list[str]) -> dict:
    args = [a for s in grid for a in ("-S", s)]
    wall, rss, proc = timed(str(BIN / "mnistlr"), "sweep", "--quiet", "--yes", *args, cwd=project)
    trained = re.search(r"training: (\d+) points? in ([\d.]+) s", proc.stdout)
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=project).stdout)
    listed = sum(len(e["revs"]) for b in shown for e in (b.get("experiments") or []))
    return {
        "points": len(experiments(project)),
        "wall_s": wall,
        "train_s": float(trained.group(2)) if trained else None,
        "peak_rss_mb": rss,
        "in_exp_show": listed,
        "summary": proc.stdout.strip().splitlines()[-4:],
    }


def queue(project: Path, grid: list[str], jobs: int) -> dict:
    args = [a for s in grid for a in ("-S", s)]
    start = time.perf_counter()
    sh("dvc", "exp", "run", "--queue", *args, cwd=project)
    sh("dvc", "queue", "start", "-j", str(jobs), cwd=project)
    while re.search(r"\b(Queued|Running)\b", sh("dvc", "queue", "status", cwd=project).stdout):
        time.sleep(2)
    wall = time.perf_counter() - start
    sh("dvc", "queue", "stop", cwd=project)
    failed = len(re.findall(r"\bFailed\b", sh("dvc", "queue", "status", cwd=project).stdout))
    return {"points": len(experiments(project)), "wall_s": wall, "failed": failed}


def report(r: dict) -> str:
    s, q = r["sweep"], r.get("queue")
    n = s["points"]
    lines = [
        f"Measured by `python bench/sweep_grid.py` on {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{r['torch']}; load average before {r['load_before']:.2f}, after {r['load_after']:.2f}.",
        "",
        f"Grid: {' x '.join(GRID)} ({n} points), default params otherwise, canonical MNIST. Each run starts "
        "from its own copy of one reproduced and committed project (cache and run cache included).",
        "",
        "| run | points recorded | wall s | s a point | training s a point |",
        "|---|--:|--:|--:|--:|",
        f"| `mnistlr sweep` | {n} | {s['wall_s']:.1f} | {s['wall_s'] / n:.2f} | "
        + (f"{s['train_s'] / n:.2f} |" if s["train_s"] else "- |"),
    ]
    if q:
        lines.append(
            f"| `dvc exp run --queue` + `dvc queue start -j {r['jobs']}` | {q['points']} | {q['wall_s']:.1f} | "
            f"{q['wall_s'] / max(q['points'], 1):.2f} | - |"
        )
        lines += [
            "",
            f"Sweep wall / queue wall: {s['wall_s'] / q['wall_s']:.3f} (target: 0.25 or less). "
            f"Queue failures: {q['failed']}.",
            f"Identical experiment trees (sweep vs queue, same params): {r['identical']} of {r['compared']}.",
        ]
        lines += [f"- differs: {point}: {', '.join(paths)}" for point, paths in r.get("differing", {}).items()]
    lines += ["", f"Sweep peak RSS (largest process): {s['peak_rss_mb']:.0f} MB."]
    if "large" in r:
        big = r["large"]
        lines += [
            "",
            f"Large grid {' x '.join(LARGE)}: {big['points']} points recorded, {big['in_exp_show']} in "
            f"`dvc exp show`, wall {big['wall_s']:.1f} s ({big['wall_s'] / max(big['points'], 1):.2f} s a point), "
            + (f"training {big['train_s']:.1f} s, " if big["train_s"] else "")
            + f"peak RSS {big['peak_rss_mb']:.0f} MB.",
        ]
    lines += ["", "The sweep's summary:", "", "```", *s["summary"], "```"]
    return "\n".join(lines) + "\n"


@app.command()
def main(
    with_queue: bool = typer.Option(True, "--queue/--no-queue", help="also run the grid through DVC's queue"),
    jobs: int = typer.Option(2, help="queue workers (dvc queue start -j)"),
    large: bool = typer.Option(True, "--large/--no-large", help="also run the 96-point grid"),
    out: Path | None = typer.Option(None, help="write the markdown here (and JSON beside it, .json)"),
    keep: bool = typer.Option(False, help="keep the temporary projects"),
) -> None:
    """Time a grid in one pass against DVC's queue, check they record the same experiments."""
    base = reproduced()
    try:
        results: dict = {"jobs": jobs, "grid": GRID, "torch": torch_version(), "load_before": os.getloadavg()[0]}
        swept = copy(base, "sweep")
        results["sweep"] = sweep(swept, GRID)
        if with_queue:
            q = copy(base, "queue")
            results["queue"] = queue(q, GRID, jobs)
            mine, theirs = experiments(swept), experiments(q)
            results["compared"] = len(set(mine) & set(theirs))
            results["identical"] = sum(mine[p] == theirs[p] for p in set(mine) & set(theirs))
            results["differing"] = {
                point_of(p): differing_paths(swept, mine[p], q, theirs[p])
                for p in sorted(set(mine) & set(theirs))
                if mine[p] != theirs[p]
            }
        if large:
            results["large"] = sweep(copy(base, "large"), LARGE)
        results["load_after"] = os.getloadavg()[0]
        text = report(results)
        typer.echo(text)
        if out is not None:
            atomic.write_text(out, text)
            atomic.write_json(out.with_suffix(".json"), results)
    finally:
        if not keep:
            shutil.rmtree(base.parent, ignore_errors=True)


if __name__ == "__main__":
    app()

"""Benchmark: experiments per hour of one 8-point grid, `dvc queue start -j 2` against `mnistlr sweep` on a
local Dask cluster of 2 worker processes, on this machine.

Both run the same grid (`-S optimizer=sgd,adam -S train.weight_decay=0,0.0001 -S train.batch_size=64,128`) of
cheap points (one variant, EPOCHS epochs, CPU) from the same reproduced baseline. The sweep runs one task per
training pass (4 here: the optimizer and the batch size are shared in a pass) and also does what the queue
does not: a fresh clone per task, `dvc pull`, a push of its experiments to a real S3 server (SeaweedFS on
127.0.0.1) and to a bare git origin, then `dvc exp pull` of every result and the comparison.

    python bench/sweep_throughput.py [--epochs 1] [--mirror DIR | --synthetic] [--out bench/results/sweep_throughput]

The real MNIST comes from --mirror, else the folder MNISTLR_MNIST_DIR names; without either, a synthetic one.

Prints a markdown table; writes it (and JSON beside it) only with --out. It measures; it asserts nothing.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnistlr import atomic  # noqa: E402
from tests.conftest import (  # noqa: E402
    dvc,
    load_storage_module,
    make_project,
    project_env,
    real_mirror_dir,
    run,
    write_mirror,
)

GRID = ["optimizer=sgd,adam", "train.weight_decay=0,0.0001", "train.batch_size=64,128"]
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def params(epochs: int) -> dict:
    return {"variants": {"full": {"fraction": 1.0, "noise": 0.0}}, "train": {"epochs": epochs, "device": "cpu"}}


def baseline(dest: Path, mirror: Path, synthetic: bool, epochs: int, storage=None, origin: Path | None = None):
    """A reproduced, committed project; with storage and origin, pushed to both."""
    dest.mkdir(parents=True)
    extra = {"data": {"val_size": 200}} if synthetic else {}
    project = make_project(dest, {**params(epochs), **extra})
    env = project_env(mirror, synthetic)
    if storage is not None:
        for cmd in load_storage_module().dvc_remote_commands(storage):
            dvc(*cmd, cwd=project, env=env)
    dvc("repro", cwd=project, env=env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "baseline"], project, env)
    if origin is not None:
        run(["git", "remote", "add", "origin", str(origin)], project, env)
        run(["git", "push", "-q", "origin", "main"], project, env)
        dvc("push", cwd=project, env=env)
    return project, env


def time_queue(project: Path, env: dict, jobs: int) -> dict:
    """Queue the grid and run it with `dvc queue start -j JOBS`; seconds from queueing to the last result."""
    start = time.monotonic()
    dvc("exp", "run", "--queue", *(a for s in GRID for a in ("-S", s)), cwd=project, env=env)
    dvc("queue", "start", "-j", str(jobs), cwd=project, env=env)
    while True:
        status = dvc("queue", "status", cwd=project, env=env).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(2)
    seconds = time.monotonic() - start
    dvc("queue", "stop", cwd=project, env=env, check=False)
    return {"seconds": seconds, "succeeded": status.count("Success"), "failed": status.count("Failed")}


def time_sweep(project: Path, env: dict, workers: int) -> dict:
    """`mnistlr sweep` on a local cluster; seconds in all, until the last task finished, and per task."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mnistlr")),
            "sweep",
            *(a for s in GRID for a in ("-S", s)),
            "--workers",
            str(workers),
        ],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last_task, per_task, succeeded, lines = start, [], 0, []
    for line in proc.stdout:
        lines.append(line.rstrip())
        succeeded += bool(re.match(r"^done \S+ \(", line))
        m = re.match(r"^task \S+: (\d+) point\(s\) in (\d+) s", line)
        if m:
            per_task.append({"points": int(m.group(1)), "seconds": int(m.group(2))})
            last_task = time.monotonic()
    proc.wait()
    seconds = time.monotonic() - start
    return {
        "seconds": seconds,
        "succeeded": succeeded,
        "exit": proc.returncode,
        "tasks_done_at": last_task - start,
        "driver_tail_seconds": seconds - (last_task - start),
        "tasks": per_task,
        "output_tail": lines[-6:],
    }


@app.command()
def main(
    epochs: int = typer.Option(1, help="epochs per point"),
    mirror: Path = typer.Option(None, help="MNIST mirror (default: the canonical one if present, else synthetic)"),
    synthetic: bool = typer.Option(False, help="use a small synthetic mirror (1200 train images)"),
    jobs: int = typer.Option(2, help="dvc queue workers and local Dask workers"),
    out: Path | None = typer.Option(
        None, help="also write the table and the JSON here, e.g. bench/results/sweep_throughput (no suffix)"
    ),
) -> None:
    """Measure and print experiments per hour of both ways."""
    storage_mod = load_storage_module()
    with tempfile.TemporaryDirectory(prefix="mnistlr-sweep-bench-") as tmp:
        tmp = Path(tmp)
        if mirror is None and not synthetic:
            mirror = real_mirror_dir()
        if mirror is None:
            synthetic, mirror = True, write_mirror(tmp / "mirror")
        storage = storage_mod.start(tmp / "s3")
        try:
            origin = tmp / "origin.git"
            run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp)
            qproject, qenv = baseline(tmp / "queue", mirror, synthetic, epochs)
            queue = time_queue(qproject, qenv, jobs)
            print(f"queue: {queue}", file=sys.stderr)
            sproject, senv = baseline(tmp / "sweep", mirror, synthetic, epochs, storage, origin)
            sweep = time_sweep(sproject, senv, jobs)
            print(f"sweep: {sweep}", file=sys.stderr)
        finally:
            storage_mod.stop(storage)
    n = 8
    tasks = sweep["tasks"]
    mean_task = sum(t["seconds"] for t in tasks) / len(tasks) if tasks else float("nan")
    result = {
        "grid": GRID,
        "points": n,
        "epochs": epochs,
        "workers": jobs,
        "data": "synthetic (1200 train)" if synthetic else "real MNIST",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "queue": {**queue, "experiments_per_hour": 3600 * queue["succeeded"] / queue["seconds"]},
        "sweep": {
            **sweep,
            "experiments_per_hour": 3600 * sweep["succeeded"] / sweep["seconds"],
            "mean_task_seconds": mean_task,
        },
        # T(N machines of w workers) ~ ceil(tasks / (N w)) * task + driver tail (dvc exp pull + compare, serial)
        "model": {"task_seconds": mean_task, "driver_tail_seconds": sweep["driver_tail_seconds"]},
        "command": "python bench/sweep_throughput.py " + " ".join(sys.argv[1:]),
    }
    table = "\n".join(
        [
            f"| way ({n} points, {epochs} epoch(s), {jobs} workers, {result['data']}) "
            "| wall s | experiments/hour | ok |",
            "|---|---:|---:|---:|",
            f"| `dvc queue start -j {jobs}` (local, nothing pushed) | {queue['seconds']:.0f} | "
            f"{result['queue']['experiments_per_hour']:.0f} | {queue['succeeded']}/{n} |",
            f"| `mnistlr sweep --workers {jobs}` ({len(tasks)} tasks: clone, pull, train, push to S3 + git; "
            "pull, compare) | "
            f"{sweep['seconds']:.0f} | {result['sweep']['experiments_per_hour']:.0f} | {sweep['succeeded']}/{n} |",
            "",
            f"Sweep: mean {mean_task:.0f} s per task (clone + pull + one training pass of its points + push); "
            f"the driver's serial tail (dvc exp pull of all {n} + compare) {sweep['driver_tail_seconds']:.0f} s.",
        ]
    )
    print(table)
    if out is not None:
        atomic.write_json(out.with_suffix(".json"), result)
        atomic.write_text(out.with_suffix(".md"), table + "\n")


if __name__ == "__main__":
    app()

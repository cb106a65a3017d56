"""The figures `make bench` is compared against, measured on this machine at a revision from before the
one-process-per-stage layout (one train and one evaluate stage per variant, e.g. 30657a1).

In a fresh clone of this repository at REV, with an empty DVC cache and the clone's own code
(PYTHONPATH): cold `dvc repro`, no-op `dvc repro`, `dvc exp run -S optimizer=adam`, and the one-process
floor of that revision (its own `train()` and `evaluate()` of every variant in one fresh Python process,
imports included, Adam), each the median of --runs. The targets of a speed goal stated on another
machine scale by the ratio of this floor to that machine's. It measures; it asserts nothing.

    python bench/per_variant_baseline.py 30657a1 [--runs 3] [--out bench/results/baseline_30657a1.md]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mnistlr import atomic  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

# The revision's API: train(params, variant, prepared, model, log) and
# evaluate(params, variant, prepared, model, metrics, details, predictions, figures).
FLOOR = """
import json, sys, time
t = time.perf_counter()
from mnistlr.evaluate import evaluate
from mnistlr.params import load_params
from mnistlr.train import train
params = load_params("params.yaml").model_copy(update={"optimizer": "adam"})
out = sys.argv[1]
for v in params.variants:
    train(params, v, "data/prepared", f"{out}/{v}.npz", f"{out}/{v}.csv")
    evaluate(params, v, "data/prepared", f"{out}/{v}.npz", f"{out}/{v}.json", f"{out}/{v}.details.json",
             f"{out}/{v}.predictions.csv", f"{out}/figures/{v}")
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


@app.command()
def main(
    rev: str = typer.Argument(..., help="a git revision with one train and evaluate stage per variant"),
    runs: int = typer.Option(3, min=1, help="runs of each measurement; the median is reported"),
    out: Path = typer.Option(None, help="also write the markdown here"),
) -> None:
    if not os.environ.get("MNISTLR_MNIST_DIR"):
        raise SystemExit("error: set MNISTLR_MNIST_DIR to the folder of the four MNIST .gz files")
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="mnistlr-baseline-"))
    clone = work / "clone"
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(clone),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    dvc = str(bin_dir / "dvc")
    try:
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", rev], cwd=clone, check=True)
        subject = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"], cwd=clone, capture_output=True, text=True, check=True
        ).stdout.strip()
        cold, noop, exp, floor = [], [], [], []
        for _ in range(runs):
            shutil.rmtree(clone / ".dvc" / "cache", ignore_errors=True)
            subprocess.run(["git", "checkout", "-q", "-f", rev], cwd=clone, check=True)
            cold.append(timed([dvc, "repro", "-f"], clone, env))
            noop.append(timed([dvc, "repro"], clone, env))
            exp.append(timed([dvc, "exp", "run", "-S", "optimizer=adam"], clone, env))
            subprocess.run(["git", "checkout", "-q", "-f", rev], cwd=clone, check=True)
            subprocess.run([dvc, "checkout", "-q"], cwd=clone, env=env, check=True)
            scratch = Path(tempfile.mkdtemp(dir=work))
            proc = subprocess.run(
                [sys.executable, "-c", FLOOR, str(scratch)], cwd=clone, env=env, capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise SystemExit(f"error: the floor failed:\n{proc.stderr[-2000:]}")
            floor.append(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
        med = statistics.median
        lines = [
            f"Revision {subject}; {os.cpu_count()} CPU cores; median of {runs} runs, "
            "cache emptied before each cold run.",
            "",
            "| figure | s (median) | runs |",
            "|:--|--:|:--|",
            f"| cold `dvc repro` | {med(cold):.1f} | {', '.join(f'{s:.1f}' for s in cold)} |",
            f"| no-op `dvc repro` | {med(noop):.2f} | {', '.join(f'{s:.2f}' for s in noop)} |",
            f"| `dvc exp run -S optimizer=adam` | {med(exp):.1f} | {', '.join(f'{s:.1f}' for s in exp)} |",
            f"| one-process floor (train + evaluate of every variant, Adam) | {med(floor):.1f} | "
            f"{', '.join(f'{s:.1f}' for s in floor)} |",
        ]
        text = "\n".join(lines) + "\n"
        print(text, end="")
        if out is not None:
            atomic.write_text(out, text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app()

"""The batched trainer's speed against the number of models it trains at once, beside the machine's peak for
the same matrix products; and the training cost per point of a 24-point grid.

1. Scaling: K models (--models) on the training split of a prepared folder, each its own learning rate,
   params.yaml's train settings otherwise (SGD, batch 64, cosine), the validation set scored each epoch, for
   --epochs epochs, at each --threads. Per model-epoch seconds, and the trainer's GFLOP/s: the two products of
   each step (logits and gradient: 4 * 7850 flops an image) and the validation product (2 * 7850 an image)
   over the wall time. Beside it, the peak for the same shapes: the models split into programs as the trainer
   splits them, on as many Python threads, each program's two products per step ([k * 10, 785] x [785, 64]
   and [k * 10, 64] x [64, 785], single-threaded kernels, as the trainer runs them) in a tight loop.
2. The grid: train.train_grid over the 24 points train.lr.sgd = 0.025 .. 0.8 x train.weight_decay = 0 .. 1e-3
   (params.yaml otherwise: 5 variants, 10 epochs, batch 64: 120 models), at each --threads; its wall time
   over 24 is the training cost per point.

Each figure is the best of --repeats runs, beside the share of the machine's CPUs that other processes
used during that run (from /proc/stat): a figure taken while others ran is slower than the machine.
It measures; it asserts nothing. Writes a results file only with --out:

    python bench/trainer_scaling.py --prepared data/prepared [--out bench/results/trainer_scaling.md]
"""

from __future__ import annotations

import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mnistlr  # noqa: E402  (first: the CPU pins it sets must precede torch's loading)

PINNED = mnistlr.cpu_pins_active()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mnistlr import atomic, train  # noqa: E402
from mnistlr.data import IN_FEATURES, NUM_CLASSES, load_split  # noqa: E402
from mnistlr.params import load_params  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

FLOPS_STEP = 4 * NUM_CLASSES * (IN_FEATURES + 1)  # an image's logits and gradient, per model
FLOPS_SCORE = 2 * NUM_CLASSES * (IN_FEATURES + 1)  # an image's logits, per model
LRS = [0.025, 0.05, 0.1, 0.2, 0.4, 0.8]
WEIGHT_DECAYS = [0.0, 1e-5, 1e-4, 1e-3]


def busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (/proc/stat), or None where there is none."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def best_of(repeats: int, run) -> tuple[float, float | None]:
    """(the best wall time of `repeats` runs, the share of the machine's CPUs that other processes used during
    that run), the share None where /proc/stat is missing."""
    best: tuple[float, float | None] = (math.inf, None)
    for _ in range(repeats):
        busy, own, start = busy_seconds(), time.process_time(), time.perf_counter()
        run()
        wall = time.perf_counter() - start
        others = None
        if busy is not None:
            others = max(0.0, busy_seconds() - busy - (time.process_time() - own)) / (wall * os.cpu_count())
        best = min(best, (wall, others), key=lambda b: b[0])
    return best


def share(others: float | None) -> str:
    return "?" if others is None else f"{100 * others:.0f} %"


def peak(models: int, threads: int, batch: int, seconds: float = 1.0) -> float:
    """GFLOP/s of the trainer's two per-step products for `models` split as the trainer splits them (programs
    of at most train.PROGRAM_MODELS, as many on each of `threads` Python threads), each program its own
    tensors, single-threaded kernels, in a tight loop for about `seconds`."""
    workers = min(threads, models)
    programs = workers * math.ceil(models / (workers * train.PROGRAM_MODELS))
    sizes = [len(p) for p in np.array_split(np.arange(models), programs)]
    stop = threading.Event()
    counts = [0] * workers

    def loop(i: int) -> None:
        torch.set_num_threads(1)  # as the trainer's workers do: single-threaded kernels on each thread
        mine = []
        for size in sizes[i::workers]:
            rows = size * NUM_CLASSES
            theta = torch.randn(rows, train.STRIDE)[:, : IN_FEATURES + 1]
            grad = torch.zeros(rows, train.STRIDE)[:, : IN_FEATURES + 1]
            mine.append((theta, grad, torch.randn(rows, batch)))
        xb = torch.randn(batch, IN_FEATURES + 1)
        while not stop.is_set():
            for _ in range(10):
                for theta, grad, residual in mine:
                    torch.mm(theta, xb.t())
                    grad.addmm_(residual, xb, beta=0, alpha=1.0 / batch)
            counts[i] += 10 * sum(sizes[i::workers])

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    wall = time.perf_counter() - start
    return sum(counts) * batch * FLOPS_STEP / wall / 1e9


def square_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of one large square float32 product on `threads` torch threads: the machine's matmul ceiling."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    return 2 * n**3 / best_of(repeats, lambda: torch.mm(a, b))[0] / 1e9


def grid_points(params_file: Path) -> list:
    base = load_params(params_file)
    return [
        base.model_copy(
            update={
                "train": base.train.model_copy(
                    update={"lr": base.train.lr.model_copy(update={"sgd": lr}), "weight_decay": wd}
                )
            }
        )
        for lr in LRS
        for wd in WEIGHT_DECAYS
    ]


@app.command()
def main(
    prepared: Path = typer.Option(Path("data/prepared"), help="a prepared folder (its train/ and val/ splits)"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="the train settings and variants"),
    models: list[int] = typer.Option([1, 8, 24, 40, 120], "--models", help="models trained at once"),
    threads: list[int] = typer.Option([1, 2], "--threads", help="torch threads (the trainer's programs)"),
    epochs: int = typer.Option(2, help="epochs per scaling measurement"),
    repeats: int = typer.Option(2, help="runs per figure; the best is kept"),
    grid: bool = typer.Option(True, help="also time the 24-point grid (10 epochs each)"),
    out: Path | None = typer.Option(None, help="write the results as markdown here"),
) -> None:
    params = load_params(params_file)
    cfg = params.train.model_copy(update={"epochs": epochs, "device": "cpu"})
    x, y = map(torch.from_numpy, load_split(prepared, "train"))
    vx, vy = map(torch.from_numpy, load_split(prepared, "val"))
    n, n_val = len(y), len(vy)
    load_before = os.getloadavg()
    lines = [
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, CPU pins "
        f"{'on' if PINNED else 'off'}; load average before: {load_before[0]:.2f}",
        "",
        f"Measured by `python bench/trainer_scaling.py --epochs {epochs} --repeats {repeats}` (models "
        f"{', '.join(map(str, models))}; threads {', '.join(map(str, threads))}) on a prepared folder of "
        f"{params_file.name}'s data; each figure the best of {repeats} runs.",
        "",
        f"## Scaling: K models on {n} training images, {epochs} epochs, batch {cfg.batch_size}, "
        f"validation ({n_val}) scored each epoch",
        "",
        "| threads | models | wall s | ms per model-epoch | trainer GFLOP/s | peak GFLOP/s, same shapes | of peak "
        "| other processes |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    typer.echo("\n".join(lines))
    previous = torch.get_num_threads()
    for t in threads:
        torch.set_num_threads(t)
        for k in models:
            rates = list(np.geomspace(LRS[0], LRS[-1], k)) if k > 1 else [params.lr]

            def run(k=k, rates=rates) -> None:
                train.fit_models(x, y.expand(k, -1), vx, vy, cfg, "sgd", rates, seed=params.seed)

            wall, others = best_of(repeats, run)
            rate = k * epochs * (n * FLOPS_STEP + n_val * FLOPS_SCORE) / wall / 1e9
            top = peak(k, t, cfg.batch_size)
            row = (
                f"| {t} | {k} | {wall:.2f} | {wall / k / epochs * 1000:.1f} | {rate:.1f} | {top:.1f} "
                f"| {100 * rate / top:.0f} % | {share(others)} |"
            )
            lines.append(row)
            typer.echo(row)
    lines += ["", "One large product (2048 x 2048 x 2048, float32), the machine's matmul ceiling:", ""]
    for t in threads:
        torch.set_num_threads(t)
        lines.append(f"- {t} thread{'s' if t > 1 else ''}: {square_peak(t):.1f} GFLOP/s")
        typer.echo(lines[-1])
    if grid:
        points = grid_points(params_file)
        k = len(points) * len(params.variants)
        lines += [
            "",
            f"## The 24-point grid: train.train_grid, {len(points)} points x {len(params.variants)} variants = "
            f"{k} models, {params.train.epochs} epochs",
            "",
            "| threads | wall s | training s per point | other processes |",
            "|--:|--:|--:|--:|",
        ]
        typer.echo("\n".join(lines[-5:]))
        for t in threads:
            torch.set_num_threads(t)
            wall, others = best_of(
                repeats, lambda points=points: train.train_grid(points, prepared, on_divergence="raise")
            )
            lines.append(f"| {t} | {wall:.2f} | {wall / len(points):.3f} | {share(others)} |")
            typer.echo(lines[-1])
    torch.set_num_threads(previous)
    load_after = os.getloadavg()
    lines += ["", f"Load average after: {load_after[0]:.2f}."]
    typer.echo(lines[-1])
    if out is not None:
        atomic.write_text(out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    app()

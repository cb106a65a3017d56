"""Adam through torch's fused CPU kernel (train.fused_adam_step, the trainer's one private torch call) against
the same update in public tensor operations (train.Optimizer with fused=False): what keeping the private call
buys.

Measured: one optimizer step on K models alone (thread CPU time, single-threaded kernels, as the trainer
runs them); the train stage's training (train.train_variants, params.yaml with optimizer adam) and, with --grid,
a 24-point Adam grid (train.lr.adam x train.weight_decay, train.train_grid), at each --threads. Runs alternate
between the two ways; each figure is the best of --repeats, beside the share of the CPUs other processes used
during it. It measures; it asserts nothing. Writes a results file only with --out:

    python bench/trainer_adam_fused.py --prepared data/prepared [--out bench/results/trainer_adam_fused.md]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import mnistlr  # noqa: E402  (first: the CPU pins it sets must precede torch's loading)

PINNED = mnistlr.cpu_pins_active()

import torch  # noqa: E402
from trainer_scaling import best_of, share  # noqa: E402

from mnistlr import atomic, train  # noqa: E402
from mnistlr.params import load_params  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

ADAM_LRS = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3]
WEIGHT_DECAYS = [0.0, 1e-5, 1e-4, 1e-3]


class PublicAdam(train.Optimizer):
    """train.Optimizer with Adam in public tensor operations, also on the CPU."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "fused": False})


def step_cost(k: int, fused: bool, steps: int = 500) -> float:
    """Microseconds of one Adam step (Optimizer.step) on k models, thread CPU time, one thread."""
    storage = torch.zeros(k * 10, train.STRIDE)
    storage[:, : train.COLS] = torch.randn(k * 10, train.COLS)
    grad = torch.zeros_like(storage)
    grad[:, : train.COLS] = torch.randn(k * 10, train.COLS)
    opt = train.Optimizer(storage, "adam", [1e-3] * k, fused=fused)
    rates, bc2 = opt.rates([1.0] * steps, 1)
    rates, bc2 = rates.unbind(0), bc2.unbind(0)
    for s in range(20):
        opt.step(grad, rates[s], bc2[s], 1.0)
    start = time.thread_time()
    for s in range(20, steps):
        opt.step(grad, rates[s], bc2[s], 1.0)
    return (time.thread_time() - start) / (steps - 20) * 1e6


def both_ways(repeats: int, run) -> tuple[tuple[float, float | None], tuple[float, float | None]]:
    """(public, fused): each the best of `repeats` runs of `run`, the two ways alternating."""
    public, fused = [], []
    trainers = train.Optimizer
    for _ in range(repeats):
        fused.append(best_of(1, run))
        train.Optimizer = PublicAdam
        try:
            public.append(best_of(1, run))
        finally:
            train.Optimizer = trainers
    return min(public, key=lambda b: b[0]), min(fused, key=lambda b: b[0])


@app.command()
def main(
    prepared: Path = typer.Option(Path("data/prepared"), help="a prepared folder"),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="the train settings and variants"),
    threads: list[int] = typer.Option([1, 2], "--threads", help="torch threads"),
    repeats: int = typer.Option(3, help="runs per figure, each way; the best is kept"),
    grid: bool = typer.Option(True, help="also time a 24-point Adam grid"),
    out: Path | None = typer.Option(None, help="write the results as markdown here"),
) -> None:
    params = load_params(params_file).model_copy(update={"optimizer": "adam"})
    lines = [
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, CPU pins {'on' if PINNED else 'off'}. Measured by "
        f"`python bench/trainer_adam_fused.py --repeats {repeats}` on a prepared folder of {params_file.name}'s "
        f"data.",
        "",
        "One Adam step, thread CPU time:",
        "",
        "| models | public us | fused us | public / fused |",
        "|--:|--:|--:|--:|",
    ]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    for k in (1, 12, 24):
        public, fused = step_cost(k, False), step_cost(k, True)
        lines.append(f"| {k} | {public:.1f} | {fused:.1f} | {public / fused:.2f} |")
    lines += [
        "",
        f"Training, wall time, the best of {repeats} runs each way, alternating:",
        "",
        "| training | threads | public s | fused s | public / fused | other processes (public, fused) |",
        "|--|--:|--:|--:|--:|--|",
    ]
    typer.echo("\n".join(lines))
    cases = [(f"train stage ({len(params.variants)} variants, {params.train.epochs} epochs)", [params])]
    if grid:
        points = [
            params.model_copy(
                update={
                    "train": params.train.model_copy(
                        update={"lr": params.train.lr.model_copy(update={"adam": lr}), "weight_decay": wd}
                    )
                }
            )
            for lr in ADAM_LRS
            for wd in WEIGHT_DECAYS
        ]
        cases.append((f"24-point grid ({len(points) * len(params.variants)} models)", points))
    for name, points in cases:
        for t in threads:
            torch.set_num_threads(t)
            (public, others_public), (fused, others_fused) = both_ways(
                repeats, lambda points=points: train.train_grid(points, prepared, on_divergence="raise")
            )
            lines.append(
                f"| {name} | {t} | {public:.2f} | {fused:.2f} | {public / fused:.2f} "
                f"| {share(others_public)}, {share(others_fused)} |"
            )
            typer.echo(lines[-1])
    torch.set_num_threads(previous)
    if out is not None:
        atomic.write_text(out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    app()

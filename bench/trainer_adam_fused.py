"""Adam in public tensor operations (the trainer's, train.Optimizer) against torch's private fused CPU kernel
(torch._fused_adam_, what torch.optim.Adam(fused=True) runs), which the trainer does not use.

The fused variant lives here only: a subclass of train.Optimizer that sends each group of models sharing a
learning rate through the kernel in one call, put in the trainer's place for its runs. Measured: the train
stage's training (train.train_variants, params.yaml with optimizer adam) and, with --grid, a 24-point Adam grid
(train.lr.adam x train.weight_decay, train.train_grid), at each --threads. Runs alternate between the two
ways; each figure is the best of --repeats, beside the share of the CPUs other processes used during it. It
measures; it asserts nothing. Writes a results file only with --out:

    python bench/trainer_adam_fused.py --prepared data/prepared [--out bench/results/trainer_adam_fused.md]
"""

from __future__ import annotations

import os
import sys
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
from mnistlr.data import IN_FEATURES, NUM_CLASSES  # noqa: E402
from mnistlr.params import load_params  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

ADAM_LRS = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3]
WEIGHT_DECAYS = [0.0, 1e-5, 1e-4, 1e-3]


class FusedAdam(train.Optimizer):
    """train.Optimizer with Adam's step through torch's fused kernel, one call per distinct learning rate (each
    model's [10, STRIDE] block its own tensor); SGD as the trainer's."""

    def __init__(self, params, name, lrs, momentum=0.0, weight_decays=None) -> None:
        super().__init__(params, name, lrs, momentum, weight_decays)
        if name == "adam":
            blocks = [t.split(NUM_CLASSES) for t in (params, self.exp_avg, self.exp_avg_sq)]
            self.groups = {lr: [i for i in range(self.k) if self.lrs[i] == lr] for lr in dict.fromkeys(self.lrs)}
            self.blocks = {lr: [[b[i] for i in idx] for b in blocks] for lr, idx in self.groups.items()}
            self.step_count = torch.zeros(())  # the kernel's step counter, advanced before each step

    def rates(self, factors, first_step):
        self.factors, self.at = list(factors), 0  # the kernel takes the schedule's factor, step by step
        return super().rates(factors, first_step)

    def step(self, grad, rate, bc2) -> None:
        if self.name != "adam":
            super().step(grad, rate, bc2)
            return
        if self.weight_decay is not None:
            grad[:, :IN_FEATURES].addcmul_(self.params[:, :IN_FEATURES], self.weight_decay)
        factor, self.at = self.factors[self.at], self.at + 1
        self.step_count.add_(1)
        grads = grad.split(NUM_CLASSES)
        for lr, idx in self.groups.items():
            params, exp_avgs, exp_avg_sqs = self.blocks[lr]
            torch._fused_adam_(
                params,
                [grads[i] for i in idx],
                exp_avgs,
                exp_avg_sqs,
                [],
                [self.step_count] * len(idx),
                lr=lr * factor,
                beta1=self.BETAS[0],
                beta2=self.BETAS[1],
                weight_decay=0.0,
                eps=self.EPS,
                amsgrad=False,
                maximize=False,
            )


def both_ways(repeats: int, run) -> tuple[tuple[float, float | None], tuple[float, float | None]]:
    """(public, fused): each the best of `repeats` runs of `run`, the two ways alternating."""
    public, fused = [], []
    public_optimizer = train.Optimizer
    for _ in range(repeats):
        public.append(best_of(1, run))
        train.Optimizer = FusedAdam
        try:
            fused.append(best_of(1, run))
        finally:
            train.Optimizer = public_optimizer
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
        f"data: the best of {repeats} runs each way, alternating.",
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
    previous = torch.get_num_threads()
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

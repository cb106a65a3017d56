"""Batched training (train.fit_batched) against one model at a time: seconds per model-epoch.

Trains Adam (lr 0.002) on a prepared folder's training split for --epochs epochs, once as a single
model with `fit` and then as K models at once with `fit_batched`, at each batch size, on the CPU at
--threads threads (the studies run at one). `fit` also scores the validation set after each epoch (its
learning curve); `fit_batched` does not. It measures; it asserts nothing (tests/test_train.py checks that the
batched models are bit for bit the ones `fit` trains; bench/trainer_scaling.py measures the scaling with K
beside the machine's peak). Usage:
  python bench/batched_speed.py --prepared data/prepared_deskewed
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from mnistlr.data import load_split
from mnistlr.params import TrainParams
from mnistlr.train import fit, fit_batched

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    prepared: Path = typer.Option(
        Path("data/prepared_deskewed"), help="a prepared folder (its train/ and val/ splits)"
    ),
    epochs: int = typer.Option(2, help="epochs per measurement"),
    threads: int = typer.Option(1, help="torch threads"),
    batch_sizes: list[int] = typer.Option([128, 256], "--batch-size"),
    ks: list[int] = typer.Option([4, 8, 16], "--k", help="models trained at once"),
) -> None:
    torch.set_num_threads(threads)
    x, y = map(torch.from_numpy, load_split(prepared, "train"))
    vx, vy = map(torch.from_numpy, load_split(prepared, "val"))
    typer.echo(f"{len(y)} training images, {epochs} epochs, {threads} thread(s), Adam lr 0.002\n")
    typer.echo("| batch | models | s per model-epoch | vs one alone |\n|--:|--:|--:|--:|")
    for bs in batch_sizes:
        cfg = TrainParams(epochs=epochs, batch_size=bs, device="cpu")
        start = time.perf_counter()
        fit(x, y, vx, vy, cfg, "adam", 0.002, 42)
        alone = (time.perf_counter() - start) / epochs
        typer.echo(f"| {bs} | 1 | {alone:.3f} | 1.0x |")
        for k in ks:
            start = time.perf_counter()
            fit_batched(x, y, cfg, "adam", [0.002] * k, [0.0] * k, 42)
            per = (time.perf_counter() - start) / epochs / k
            typer.echo(f"| {bs} | {k} | {per:.3f} | {alone / per:.1f}x |")


if __name__ == "__main__":
    app()

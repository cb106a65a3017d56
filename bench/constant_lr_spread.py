"""How far the tutorial's setting (SGD lr 0.1, constant, batch 64) wanders from seed to seed.

`make bench` compares the tutorial's loop and this trainer after the same few epochs at a constant
rate, one seed each, and their final test accuracies differ by points. This repeats both over seeds
(the seed drives the initial weights and the batch order; the 50k/10k split stays the prepared
one), with a third loop between them: plain torch.optim.SGD over batches sliced from a permutation
of the same prepared tensors, the textbook loop without the DataLoader. The gap between two single
runs can then be read against the spread of each. It measures; it asserts nothing. The tutorial's
loop costs ~15 s per epoch on a 2-core CPU.
Usage: python bench/constant_lr_spread.py [--prepared data/prepared] [--epochs 4] [--seeds 32] [--tutorial-seeds 8]
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

import torch
import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import torchvision_root, tutorial_loop

from mnistlr.data import load_split, load_variant, locate
from mnistlr.params import TrainParams, load_params
from mnistlr.train import fit, score, to_device

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def plain_loop(
    x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, epochs: int, seed: int
) -> float:
    """nn.Linear + CrossEntropyLoss + torch.optim.SGD(lr 0.1), batches of 64 from a seeded permutation
    per epoch: the test accuracy after `epochs`."""
    torch.manual_seed(seed)
    model, criterion = torch.nn.Linear(784, 10), torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=order)
        for start in range(0, len(y), 64):
            batch = perm[start : start + 64]
            optimizer.zero_grad()
            criterion(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return score(model, test_x, test_y)[1]


def _summary(name: str, tests: list[float]) -> str:
    return (
        f"{name}: test accuracy {min(tests):.2f}-{max(tests):.2f} %, median {statistics.median(tests):.2f} %, "
        f"standard deviation {statistics.stdev(tests):.2f} points ({len(tests)} seeds)"
    )


@app.command()
def main(
    prepared: Path = typer.Option(Path("data/prepared"), help="a prepared folder (dvc repro makes data/prepared)"),
    epochs: int = typer.Option(4, min=1, help="epochs per run, as in make bench"),
    seeds: int = typer.Option(32, min=2, help="runs of the trainer and of the plain loop, seeds 0 .. seeds-1"),
    tutorial_seeds: int = typer.Option(
        0, min=0, help="tutorial-loop runs, seeds 0 .. n-1 (0: none; 2 or more for a spread)"
    ),
) -> None:
    """Per seed at a constant rate: val accuracy after each epoch and test accuracy at the end."""
    cpu = torch.device("cpu")
    x, y = to_device(cpu, *load_variant(prepared, "full"))
    val_x, val_y = to_device(cpu, *load_split(prepared, "val"))
    test_x, test_y = to_device(cpu, *load_split(prepared, "test"))
    cfg = TrainParams(epochs=epochs, batch_size=64, schedule="constant")
    typer.echo(f"SGD lr 0.1 constant, batch 64, {epochs} epochs on {len(y)} images, the prepared split\n")
    typer.echo("| loop | seed | val accuracy by epoch (%) | test accuracy (%) |\n|---|---:|---|---:|")
    trainer = []
    for seed in range(seeds):
        model, history = fit(x, y, val_x, val_y, cfg, "sgd", 0.1, seed)
        trainer.append(100 * score(model, test_x, test_y)[1])
        typer.echo(
            f"| mnistlr trainer | {seed} | {', '.join(f'{100 * h.val_accuracy:.2f}' for h in history)} "
            f"| {trainer[-1]:.2f} |"
        )
    plain = []
    for seed in range(seeds):
        plain.append(100 * plain_loop(x, y, test_x, test_y, epochs, seed))
        typer.echo(f"| plain torch.optim loop | {seed} | | {plain[-1]:.2f} |")
    tutorial = []
    if tutorial_seeds:
        root = torchvision_root(locate(Path("data/raw")))
        split_seed = load_params().seed  # the seed prepare split with
        for seed in range(tutorial_seeds):
            _, accuracy = tutorial_loop(root, epochs, seed, cpu, torch.get_num_threads(), split_seed)
            tutorial.append(100 * accuracy)
            typer.echo(f"| tutorial (DataLoader) | {seed} | | {tutorial[-1]:.2f} |")
        shutil.rmtree(root, ignore_errors=True)
    typer.echo("\n" + _summary("mnistlr trainer", trainer))
    typer.echo(_summary("plain torch.optim loop", plain))
    if len(tutorial) > 1:
        typer.echo(_summary("tutorial (DataLoader)", tutorial))


if __name__ == "__main__":
    app()

"""Benchmark: the tutorial's DataLoader loop against mnistlr's trainer, plus pipeline wall time and memory.

Run `make bench` (or `python bench/benchmark.py --help`). Prints a markdown table.
It measures; it asserts nothing: speed goals are checked by reading its output, not by tests.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import typer
from torch import nn

from mnistlr import atomic
from mnistlr.data import locate, normalize, read_images, read_labels, split_indices
from mnistlr.params import TrainParams
from mnistlr.train import fit, resolve_device, score

REPO = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class TutorialLogisticRegression(nn.Module):
    """The seed's model, verbatim."""

    def __init__(self, in_dim: int = 28 * 28, out_dim: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size(0), -1)
        return self.fc(x)


def train_epoch(model, loader, criterion, optimizer, device):
    """The seed's train_epoch, verbatim (per-batch .item() tracking included)."""
    model.train()
    total_loss, correct, total = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        logits = model(x)
        loss = criterion(logits, y)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * x.size(0)
        preds = logits.argmax(dim=1)
        correct += (preds == y).sum().item()
        total += y.size(0)
    return total_loss / total, correct / total


def validate(model, loader, criterion, device):
    """The seed's validate, verbatim."""
    model.eval()
    total_loss, correct, total = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = criterion(logits, y)
            total_loss += loss.item() * x.size(0)
            preds = logits.argmax(dim=1)
            correct += (preds == y).sum().item()
            total += y.size(0)
    return total_loss / total, correct / total


def tutorial_loop(root: Path, epochs: int, seed: int, device: torch.device, threads: int) -> tuple[list[float], float]:
    """The seed's loop: torchvision MNIST + ToTensor/Normalize, DataLoader(64, shuffle), SGD 0.1, on `threads`
    CPU threads. Seconds of each epoch (its training and validation passes) and the final test accuracy.

    Its 50k/10k split is the trainer's (mnistlr.data.split_indices) rather than random_split's, so
    both loops see the same images."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    torch.set_num_threads(threads)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    full_ds = datasets.MNIST(root=str(root), train=True, download=True, transform=transform)
    test_ds = datasets.MNIST(root=str(root), train=False, download=True, transform=transform)
    train_idx, val_idx = split_indices(len(full_ds), 10_000, seed)
    train_ds, val_ds = Subset(full_ds, train_idx.tolist()), Subset(full_ds, val_idx.tolist())
    train_loader = DataLoader(train_ds, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val_ds, batch_size=64)
    torch.manual_seed(seed)
    model = TutorialLogisticRegression().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    epoch_s = []
    for _ in range(epochs):
        _sync(device)
        t = time.perf_counter()
        train_epoch(model, train_loader, criterion, optimizer, device)
        validate(model, val_loader, criterion, device)
        _sync(device)
        epoch_s.append(time.perf_counter() - t)
    _, test_acc = validate(model, DataLoader(test_ds, batch_size=64), criterion, device)
    return epoch_s, test_acc


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def trainer_run(
    files: dict, epochs: int, seed: int, device: torch.device, batch_size: int, cuda_graph: bool
) -> tuple[list[float], float]:
    """mnistlr's trainer with the tutorial's settings (SGD lr 0.1, constant, batch 64).

    Returns (seconds of each epoch, test accuracy after `epochs`). Like the tutorial's, each epoch
    includes its train and validation scores.
    """
    x = torch.from_numpy(normalize(read_images(files["train-images-idx3-ubyte.gz"]), 0.1307, 0.3081))
    y = torch.from_numpy(read_labels(files["train-labels-idx1-ubyte.gz"]))
    train_idx, val_idx = (torch.from_numpy(i) for i in split_indices(60_000, 10_000, seed))
    tx = torch.from_numpy(normalize(read_images(files["t10k-images-idx3-ubyte.gz"]), 0.1307, 0.3081)).to(device)
    ty = torch.from_numpy(read_labels(files["t10k-labels-idx1-ubyte.gz"])).to(device)
    xtr, ytr = x[train_idx].to(device), y[train_idx].to(device)
    xva, yva = x[val_idx].to(device), y[val_idx].to(device)

    def timed_fit(n: int):
        cfg = TrainParams(epochs=n, batch_size=batch_size, schedule="constant", cuda_graph=cuda_graph)
        return fit(xtr, ytr, xva, yva, cfg, "sgd", 0.1, seed)

    model, history = timed_fit(epochs)
    _, acc = score(model, tx, ty)
    return [h.seconds for h in history], float(acc)


def steady_state(epoch_s: list[float]) -> dict:
    """Median and spread of the epochs after the first, which in either loop pays one-off costs
    (first kernel launches, allocator, and on CUDA the graph capture)."""
    rest = epoch_s[1:]
    return {"median": statistics.median(rest), "min": min(rest), "max": max(rest), "epochs": len(rest)}


def pipeline_timings(mirror: Path) -> dict:
    """Cold `dvc repro` (fresh copy, empty cache), a no-op one, then `dvc exp run -S optimizer=adam`
    from the reproduced workspace; wall time and peak RSS of each stage process."""
    tmp = Path(tempfile.mkdtemp(prefix="mnistlr-bench-"))
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith(("dvc.lock", "metrics/", "plots/", "reports/")) or not (REPO / rel).is_file():
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, tmp / rel)
    shim_dir = tmp / ".shim"
    shim_dir.mkdir()
    log = tmp / ".rss.jsonl"
    # A `python` first on PATH that records each stage's wall time and peak RSS.
    atomic.write_text(
        shim_dir / "python",
        f"#!{sys.executable}\n"
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"rc = subprocess.call([{sys.executable!r}, *sys.argv[1:]])\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        f"open({str(log)!r}, 'a').write(json.dumps({{'cmd': sys.argv[1:4], 'wall_s': time.perf_counter() - t, 'max_rss_mb': rss / 1024}}) + '\\n')\n"
        "sys.exit(rc)\n"
    )
    (shim_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MNISTLR_MNIST_DIR=str(mirror), DVC_NO_ANALYTICS="1")
    env.pop("MNISTLR_MD5SUMS", None)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
    dvc = str(Path(sys.executable).with_name("dvc"))
    t = time.perf_counter()
    subprocess.run([dvc, "repro"], cwd=tmp, env=env, check=True, capture_output=True)
    cold = time.perf_counter() - t
    noops, noop_out = [], ""
    for _ in range(3):  # the median of three: one run is at the mercy of the machine's other load
        t = time.perf_counter()
        noop_out = subprocess.run([dvc, "repro"], cwd=tmp, env=env, check=True, capture_output=True, text=True).stdout
        noops.append(time.perf_counter() - t)
    stages = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    for cmd in (["git", "add", "-A"], [*git, "commit", "-qm", "results"]):
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
    t = time.perf_counter()
    subprocess.run([dvc, "exp", "run", "-S", "optimizer=adam"], cwd=tmp, env=env, check=True, capture_output=True)
    exp_run = time.perf_counter() - t
    exp_stages = [json.loads(line) for line in log.read_text().splitlines()]
    shutil.rmtree(tmp, ignore_errors=True)
    return {"cold_s": cold, "noop_s": statistics.median(noops), "noop_ran_nothing": "Running stage" not in noop_out,
            "exp_run_s": exp_run, "stages": stages, "exp_stages": exp_stages}


@app.command()
def main(
    epochs: int = typer.Option(4, min=4, help="epochs for every loop; the first is dropped, the rest give median and spread"),
    seed: int = typer.Option(42),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    pipeline: bool = typer.Option(True, help="also time a cold and a no-op `dvc repro` and `dvc exp run`"),
    out: Path = typer.Option(None, help="also write the results as JSON here"),
    cuda_graph: bool = typer.Option(True, help="trainer: replay epochs as CUDA graphs (CUDA only)"),
    tutorial: bool = typer.Option(True, help="also time the tutorial's loop"),
) -> None:
    """Tutorial loop vs mnistlr trainer (s/epoch, ratio, test accuracy), then pipeline timings."""
    dev = resolve_device(device)
    files = locate(REPO / "data" / "raw")
    root = Path(tempfile.mkdtemp(prefix="mnistlr-tv-"))
    (root / "MNIST" / "raw").mkdir(parents=True)
    for name, path in files.items():  # torchvision's MNIST reads <root>/MNIST/raw; it extracts, never downloads
        shutil.copy(path, root / "MNIST" / "raw" / name)
    default_threads = torch.get_num_threads()
    loops = {}  # name -> (epoch seconds, test accuracy)
    if tutorial:
        loops[f"tutorial (DataLoader), {default_threads} threads"] = tutorial_loop(root, epochs, seed, dev, default_threads)
        loops["tutorial (DataLoader), 1 thread"] = tutorial_loop(root, epochs, seed, dev, 1)
        torch.set_num_threads(default_threads)
    trainer_name = "mnistlr trainer" + (" (CUDA graph)" if dev.type == "cuda" and cuda_graph else
                                        ", steps on 1 thread" if dev.type == "cpu" else "")
    loops[trainer_name] = trainer_run(files, epochs, seed, dev, 64, cuda_graph)
    shutil.rmtree(root, ignore_errors=True)
    stats = {k: steady_state(t) for k, (t, _) in loops.items()}
    base = stats[next(iter(stats))]["median"]
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    results = {"device": name, "torch": torch.__version__, "epochs": epochs,
               "loops": {k: {**stats[k], "epoch_s": loops[k][0], "test_accuracy": loops[k][1]} for k in loops}}
    lines = [
        f"Device: {name}; torch {torch.__version__}; {epochs} epochs of SGD lr 0.1 constant, batch 64, seed {seed}, "
        "the same 50k/10k split; every loop timed alike: seconds per epoch (training and validation passes), "
        "the first epoch dropped, median and range of the rest.",
        "",
        "| loop | s / epoch (median) | range | speed-up vs first row | test accuracy |",
        "|---|---:|---:|---:|---:|",
        *[f"| {k} | {st['median']:.3f} | {st['min']:.3f}-{st['max']:.3f} | {base / st['median']:.1f}x | "
          f"{100 * loops[k][1]:.2f} % |" for k, st in stats.items()],
    ]
    if pipeline:
        mirror = Path(os.environ.get("MNISTLR_MNIST_DIR") or Path(files["train-images-idx3-ubyte.gz"]).parent)
        p = pipeline_timings(mirror)
        results["pipeline"] = p
        lines += [
            "",
            f"Cold `dvc repro` (empty cache, all variants): {p['cold_s']:.1f} s; no-op `dvc repro`: {p['noop_s']:.2f} s"
            f" (median of 3; {'ran no stage' if p['noop_ran_nothing'] else 'RAN STAGES'}); "
            f"`dvc exp run -S optimizer=adam` after it: {p['exp_run_s']:.1f} s.",
            "",
            "| stage command | wall s | peak RSS (MB) |",
            "|---|---:|---:|",
            *[f"| `{' '.join(s['cmd'])}` | {s['wall_s']:.1f} | {s['max_rss_mb']:.0f} |" for s in p["stages"]],
            "",
            f"Stages of `dvc exp run -S optimizer=adam`: {len(p['exp_stages'])} processes, "
            f"{sum(s['wall_s'] for s in p['exp_stages']):.1f} s inside them, "
            f"{p['exp_run_s'] - sum(s['wall_s'] for s in p['exp_stages']):.1f} s in dvc itself.",
        ]
    typer.echo("\n".join(lines))
    if out:
        atomic.write_json(out, results)


if __name__ == "__main__":
    app()

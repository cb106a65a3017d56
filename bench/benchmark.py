"""Benchmark: the trainer against a plain autograd + torch.optim loop and the tutorial's loop, then the pipeline.

Run `make bench` (or `python bench/benchmark.py --help`). Prints a markdown report; `--out` also writes JSON.
It measures; it asserts nothing: speed goals are checked by reading its output, not by tests.

1. Loops: the same 50k/10k split, SGD lr 0.1 constant, batch 64, seed; seconds per epoch (training and
   the epoch's scores) and test accuracy of mnistlr's trainer, of a plain loop over the same tensors in
   the same batch order (nn.Linear, CrossEntropyLoss, autograd, torch.optim.SGD; running train scores and
   validation scores like the trainer's), and of the tutorial's DataLoader loop.
2. The CPU pins (mnistlr/__init__.py): the trainer and the one-process floor, each in a fresh process,
   with the pins and with MNISTLR_NATIVE_CPU=1.
3. The pipeline in a fresh copy with an empty cache: cold `dvc repro` of the committed params, no-op `dvc
   repro`, `dvc exp run -S optimizer=<another>` (a new config: adam, or sgd when adam is the committed
   optimizer) beside the same work in one process (train + evaluate of every variant, imports included),
   then configs already run (the committed optimizer, the new one again), each stage process's wall time
   and peak RSS, and what starting a stage process costs. Every label names the optimizer that ran.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
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
from mnistlr.data import derive_seed, locate, normalize, read_images, read_labels, split_indices
from mnistlr.params import TrainParams, load_params
from mnistlr.train import LogisticRegression, fit, resolve_device, score

REPO = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


# --- 1. loops ------------------------------------------------------------------------------------


class TutorialLogisticRegression(nn.Module):
    """The tutorial's model, verbatim."""

    def __init__(self, in_dim: int = 28 * 28, out_dim: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.size(0), -1)
        return self.fc(x)


def train_epoch(model, loader, criterion, optimizer, device):
    """The tutorial's train_epoch, verbatim (per-batch .item() tracking included)."""
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
    """The tutorial's validate, verbatim."""
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


def torchvision_root(files: dict[str, Path]) -> Path:
    """A temporary folder laid out as torchvision's MNIST reads it (<root>/MNIST/raw): it extracts the
    copied .gz files there and never downloads."""
    root = Path(tempfile.mkdtemp(prefix="mnistlr-tv-"))
    (root / "MNIST" / "raw").mkdir(parents=True)
    for file_name, path in files.items():
        shutil.copy(path, root / "MNIST" / "raw" / file_name)
    return root


def tutorial_loop(
    root: Path, epochs: int, seed: int, device: torch.device, threads: int, split_seed: int | None = None
) -> tuple[list[float], float]:
    """The tutorial's loop: torchvision MNIST + ToTensor/Normalize, DataLoader(64, shuffle), SGD 0.1, on `threads`
    CPU threads. Seconds of each epoch (its training and validation passes) and the final test accuracy.

    Its 50k/10k split is the trainer's (mnistlr.data.split_indices with `split_seed`, default `seed`)
    rather than random_split's, so both loops see the same images."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    torch.set_num_threads(threads)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    full_ds = datasets.MNIST(root=str(root), train=True, download=True, transform=transform)
    test_ds = datasets.MNIST(root=str(root), train=False, download=True, transform=transform)
    train_idx, val_idx = split_indices(len(full_ds), 10_000, seed if split_seed is None else split_seed)
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


def load_tensors(files: dict, seed: int, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The 50k/10k split and the test set, normalized as the pipeline's prepare does, on `device`."""
    x = torch.from_numpy(normalize(read_images(files["train-images-idx3-ubyte.gz"]), 0.1307, 0.3081))
    y = torch.from_numpy(read_labels(files["train-labels-idx1-ubyte.gz"]))
    train_idx, val_idx = (torch.from_numpy(i) for i in split_indices(60_000, 10_000, seed))
    tx = torch.from_numpy(normalize(read_images(files["t10k-images-idx3-ubyte.gz"]), 0.1307, 0.3081))
    ty = torch.from_numpy(read_labels(files["t10k-labels-idx1-ubyte.gz"]))
    return {
        "train": (x[train_idx].to(device), y[train_idx].to(device)),
        "val": (x[val_idx].to(device), y[val_idx].to(device)),
        "test": (tx.to(device), ty.to(device)),
    }


def trainer_run(data: dict, epochs: int, seed: int, cuda_graph: bool = True) -> tuple[list[float], float]:
    """mnistlr's trainer with the tutorial's settings (SGD lr 0.1, constant, batch 64): seconds of each
    epoch (its steps, running train scores and validation scores) and the test accuracy."""
    cfg = TrainParams(epochs=epochs, batch_size=64, schedule="constant", cuda_graph=cuda_graph)
    model, history = fit(*data["train"], *data["val"], cfg, "sgd", 0.1, seed)
    return [h.seconds for h in history], score(model, *data["test"])[1]


def plain_loop(data: dict, epochs: int, seed: int, threads: int) -> tuple[list[float], float]:
    """The same training written the usual way over the same tensors: nn.Linear, CrossEntropyLoss, autograd
    and torch.optim.SGD (lr 0.1, batch 64), in the trainer's batch order (the same seeded permutation per
    epoch), with the trainer's per-epoch scores: the running mean of the batches' loss and accuracy
    (accumulated on the device) and the validation set's, by mnistlr.metrics. Steps on `threads` threads."""
    x, y = data["train"]
    torch.manual_seed(seed)  # the trainer's initial weights
    model = LogisticRegression().to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    criterion = nn.CrossEntropyLoss()
    n, bs = len(x), 64
    order = torch.Generator().manual_seed(derive_seed(seed, "batches"))
    epoch_s = []
    for _ in range(epochs):
        _sync(x.device)
        started = time.perf_counter()
        perm = torch.randperm(n, generator=order).to(x.device)
        xs, ys = x[perm], y[perm]
        seen_loss = torch.zeros((), dtype=torch.float64, device=x.device)
        seen_correct = torch.zeros((), dtype=torch.int64, device=x.device)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        for s in range(math.ceil(n / bs)):
            xb, yb = xs[s * bs : (s + 1) * bs], ys[s * bs : (s + 1) * bs]
            opt.zero_grad()
            logits = model(xb)
            loss = criterion(logits, yb)
            loss.backward()
            opt.step()
            seen_loss += loss.detach() * len(yb)
            seen_correct += (logits.argmax(1) == yb).sum()
        torch.set_num_threads(previous)
        _ = (float(seen_loss) / n, int(seen_correct) / n, *score(model, *data["val"]))
        _sync(x.device)
        epoch_s.append(time.perf_counter() - started)
    return epoch_s, score(model, *data["test"])[1]


def steady_state(epoch_s: list[float]) -> dict:
    """Median and spread of the epochs after the first, which in every loop pays one-off costs
    (first kernel launches, allocator, and on CUDA the graph capture)."""
    rest = epoch_s[1:]
    return {"median": statistics.median(rest), "min": min(rest), "max": max(rest), "epochs": len(rest)}


def loops(files: dict, epochs: int, seed: int, dev: torch.device, cuda_graph: bool, tutorial: bool) -> dict:
    """Every loop, timed alike: {name: {median, min, max, epochs, epoch_s, test_accuracy}}."""
    data = load_tensors(files, seed, dev)
    timed: dict[str, tuple[list[float], float]] = {}
    trainer = "mnistlr trainer" + (
        " (CUDA graph)" if dev.type == "cuda" and cuda_graph else ", steps on 1 thread" if dev.type == "cpu" else ""
    )
    timed[trainer] = trainer_run(data, epochs, seed, cuda_graph)
    threads = torch.get_num_threads()
    for t in sorted({1, threads}):
        timed[f"plain autograd + torch.optim loop, {t} thread{'s' if t > 1 else ''}"] = plain_loop(
            data, epochs, seed, t
        )
    if tutorial:
        root = torchvision_root(files)
        timed[f"tutorial (DataLoader), {threads} threads"] = tutorial_loop(root, epochs, seed, dev, threads)
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)
    return {k: {**steady_state(t), "epoch_s": t, "test_accuracy": acc} for k, (t, acc) in timed.items()}


def loop_lines(results: dict, epochs: int, seed: int) -> list[str]:
    trainer = next(iter(results))
    base = results[trainer]["median"]
    return [
        f"{epochs} epochs of SGD lr 0.1 constant, batch 64, seed {seed}, the same 50k/10k split; "
        "every loop timed alike: "
        "seconds per epoch (its steps and its scores), the first epoch dropped, median and range of the rest.",
        "",
        "| loop | s / epoch (median) | range | trainer's speed-up over it | test accuracy |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {k} | {r['median']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {r['median'] / base:.1f}x | "
            f"{100 * r['test_accuracy']:.2f} % |"
            for k, r in results.items()
        ],
    ]


# --- 2. the CPU pins -------------------------------------------------------------------------------


FLOOR = """
import json, sys, time
t = time.perf_counter()
from mnistlr.evaluate import evaluate
from mnistlr.params import load_params
from mnistlr.train import train
params = load_params(sys.argv[1])
params = params.model_copy(update={"optimizer": sys.argv[3]})
out = sys.argv[4]
train(params, sys.argv[2], out + "/models", out + "/curves")
evaluate(
    params, sys.argv[2], out + "/models", out + "/curves", out + "/metrics", out + "/predictions", out + "/figures"
)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""

TRAINER_ONLY = """
import json, sys
sys.path.insert(0, sys.argv[1])
import benchmark
from mnistlr.data import locate
from pathlib import Path
data = benchmark.load_tensors(locate(Path(sys.argv[2])), int(sys.argv[3]), benchmark.torch.device("cpu"))
epoch_s, _ = benchmark.trainer_run(data, int(sys.argv[4]), int(sys.argv[3]))
print(json.dumps(benchmark.steady_state(epoch_s)))
"""


def _python(code: str, *args: str, env: dict, cwd: Path = REPO) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: a benchmark subprocess failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def floor_seconds(workspace: Path, optimizer: str, env: dict) -> float:
    """Wall time of train + evaluate of every variant in one fresh process (imports included), from
    `workspace`'s params and prepared data into a scratch folder."""
    out = Path(tempfile.mkdtemp(prefix="mnistlr-floor-"))
    try:
        return _python(FLOOR, "params.yaml", "data/prepared", optimizer, str(out), env=env, cwd=workspace)["seconds"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def pin_costs(workspace: Path, raw: Path, seed: int, epochs: int, env: dict, optimizer: str) -> dict:
    """The trainer's s/epoch and the one-process floor with `optimizer`, each in fresh processes, pinned and
    native (MNISTLR_NATIVE_CPU=1); the floor is the median of 3 runs."""
    out = {}
    for name, extra in (("pinned", {}), ("native", {"MNISTLR_NATIVE_CPU": "1"})):
        run_env = {**env, **extra}
        trainer = _python(TRAINER_ONLY, str(REPO / "bench"), str(raw), str(seed), str(epochs), env=run_env)
        floors = [floor_seconds(workspace, optimizer, run_env) for _ in range(3)]
        out[name] = {"trainer_s_per_epoch": trainer["median"], "floor_s": statistics.median(floors)}
    return out


# --- 3. the pipeline --------------------------------------------------------------------------------


def _median_seconds(cmd: list[str], cwd: Path, env: dict, runs: int = 3) -> float:
    """Median wall time of a command run `runs` times, each in a fresh process."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def startup_costs(workspace: Path, env: dict, cuda: bool) -> dict:
    """What a stage process pays before its first line of work, each the median of 3 fresh processes:
    the bare interpreter, the interpreter plus each stage entry point's module-level imports, and the
    CUDA context a stage training on the GPU creates on top."""
    py = sys.executable
    costs = {"interpreter_s": _median_seconds([py, "-c", "pass"], workspace, env)}
    # what each stage imports before it works (train imports torch, evaluate matplotlib, inside main)
    imports = {
        "prepare": "typer, mnistlr.prepare",
        "train": "typer, mnistlr.train",
        "evaluate": "typer, mnistlr.evaluate, mnistlr.figures",
        "report": "typer, mnistlr.report",
    }
    costs["imports_s"] = {
        stage: _median_seconds([py, "-c", f"import {modules}"], workspace, env) for stage, modules in imports.items()
    }
    if cuda:
        torch_only = _median_seconds([py, "-c", "import torch"], workspace, env)
        with_cuda = _median_seconds(
            [py, "-c", "import torch; torch.ones(1, device='cuda').sum().item()"], workspace, env
        )
        costs["cuda_init_s"] = with_cuda - torch_only
    return costs


def _accuracies(workspace: Path) -> dict[str, float]:
    return {
        m.stem: json.loads(m.read_text())["test"]["accuracy"] for m in sorted((workspace / "metrics").glob("*.json"))
    }


def exp_run_plan(workspace: Path) -> dict:
    """The configs the pipeline part runs, from `workspace`'s params.yaml: the committed optimizer (cold
    `dvc repro`), a new one (adam, or sgd when adam is committed), and the `dvc exp run -S` calls as
    (label, optimizer): the new config, then both again as configs already run."""
    committed = load_params(workspace / "params.yaml").optimizer
    new = "sgd" if committed == "adam" else "adam"
    runs = [("new config", new), ("config already run", committed), ("config already run", new)]
    return {"committed": committed, "new": new, "runs": runs}


def project_copy(train_device: str) -> Path:
    """The repository's files (git's list, as they are in the working tree; no outputs) in a fresh git
    repository with `train.device` set in its params.yaml."""
    tmp = Path(tempfile.mkdtemp(prefix="mnistlr-bench-"))
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel.startswith(("dvc.lock", "metrics/", "plots/", "reports/")) or not (REPO / rel).is_file():
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, tmp / rel)
    params = tmp / "params.yaml"
    text, count = re.subn(r"(?m)^(  device:) \w+", rf"\1 {train_device}", params.read_text())
    if count != 1:
        raise SystemExit(f"error: expected one train.device line in {params}, found {count}")
    params.write_text(text)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
    return tmp


def pipeline_timings(mirror: Path, train_device: str, seed: int, epochs: int) -> dict:
    """Every pipeline figure of the report, in one fresh copy with an empty cache."""
    tmp = project_copy(train_device)
    cuda = train_device == "cuda" or (train_device == "auto" and torch.cuda.is_available())
    shim_dir = tmp / ".shim"
    shim_dir.mkdir()
    log = tmp / ".rss.jsonl"
    # A `python` first on PATH that records each stage's wall time and peak RSS. It runs the
    # interpreter by its full path: a link named `python` would lose a virtual environment's packages.
    atomic.write_text(
        shim_dir / "python",
        f"#!{sys.executable}\n"
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        f"rc = subprocess.call([{sys.executable!r}, *sys.argv[1:]])\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        f"open({str(log)!r}, 'a').write(json.dumps({{'cmd': sys.argv[1:2], 'wall_s': time.perf_counter() - t, "
        "'max_rss_mb': rss / 1024}) + '\\n')\n"
        "sys.exit(rc)\n",
    )
    (shim_dir / "python").chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{shim_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        MNISTLR_MNIST_DIR=str(mirror),
        DVC_NO_ANALYTICS="1",
    )
    env.pop("MNISTLR_MD5SUMS", None)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]

    def dvc(*args: str) -> tuple[float, list[dict]]:
        """Run dvc in the copy: its wall time and the stage processes it started."""
        log.unlink(missing_ok=True)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise SystemExit(f"error: `dvc {' '.join(args)}` exited {proc.returncode} in {tmp}:\n{tail}")
        stages = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return seconds, stages

    plan = exp_run_plan(tmp)
    result: dict = {"train_device": "cuda" if cuda else "cpu", "optimizers": {k: plan[k] for k in ("committed", "new")}}
    result["cold_s"], result["stages"] = dvc("repro")
    result["test_accuracy"] = {f"repro ({plan['committed']})": _accuracies(tmp)}
    noops = [dvc("repro") for _ in range(3)]  # the median of three: one run is at the mercy of the machine's load
    result["noop_s"] = statistics.median(s for s, _ in noops)
    result["noop_started"] = max(len(st) for _, st in noops)
    subprocess.run(["git", "add", "-A"], cwd=tmp, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "results"], cwd=tmp, check=True, capture_output=True)
    result["pins"] = pin_costs(tmp, Path(mirror), seed, epochs, env, plan["new"])
    result["floor_s"] = result["pins"]["pinned"]["floor_s"]
    runs = []
    for label, value in plan["runs"]:
        seconds, stages = dvc("exp", "run", "-S", f"optimizer={value}")
        runs.append({"label": label, "set": f"optimizer={value}", "wall_s": seconds, "stages": stages})
        if label == "new config":
            result["test_accuracy"][f"exp run ({value})"] = _accuracies(tmp)
    result["exp_runs"] = runs
    result["startup"] = startup_costs(tmp, env, cuda)
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def pipeline_lines(p: dict) -> list[str]:
    """The pipeline part of the markdown report."""
    costs = p["startup"]
    new = next(r for r in p["exp_runs"] if r["label"] == "new config")
    again = max((r for r in p["exp_runs"] if r["label"] != "new config"), key=lambda r: r["wall_s"])
    rows = [
        (
            f"cold `dvc repro` (fresh copy, empty cache; optimizer={p['optimizers']['committed']})",
            p["cold_s"],
            p["stages"],
        ),
        ("no-op `dvc repro` (median of 3)", p["noop_s"], []),
        *[(f"`dvc exp run -S {r['set']}`, {r['label']}", r["wall_s"], r["stages"]) for r in p["exp_runs"]],
    ]
    pins = p["pins"]
    cuda = f"; CUDA context {costs['cuda_init_s']:.2f} s" if "cuda_init_s" in costs else ""
    accuracy = p["test_accuracy"]
    variants = list(next(iter(accuracy.values())))
    return [
        f"Training stages ran on: {p['train_device']}.",
        "",
        "| run | wall s | stage processes started | s inside them |",
        "|---|---:|---|---:|",
        *[
            f"| {name} | {wall:.2f} | {', '.join(Path(s['cmd'][0]).stem for s in stages) or 'none'} | "
            f"{sum(s['wall_s'] for s in stages):.1f} |"
            for name, wall, stages in rows
        ],
        f"| the same work as the new config (`-S {new['set']}`) in one process (train + evaluate of every variant, "
        f"imports; median of 3) | {p['floor_s']:.2f} | - | - |",
        "",
        f"A config already run (the slower of the two, `-S {again['set']}`): {again['wall_s']:.2f} s, "
        f"{100 * again['wall_s'] / new['wall_s']:.0f} % of the new config's (`-S {new['set']}`) "
        f"{new['wall_s']:.2f} s. The new config's dvc overhead beyond its stage processes: "
        f"{new['wall_s'] - sum(s['wall_s'] for s in new['stages']):.2f} s.",
        "",
        "What starting a stage process costs (each the median of 3 fresh processes): interpreter "
        f"{costs['interpreter_s']:.2f} s; with each entry point's imports: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in costs["imports_s"].items())
        + cuda
        + ".",
        "",
        f"| CPU code paths | trainer s / epoch | one-process floor ({p['optimizers']['new']}), s |",
        "|---|---:|---:|",
        *[f"| {name} | {v['trainer_s_per_epoch']:.3f} | {v['floor_s']:.2f} |" for name, v in pins.items()],
        "",
        "| stage command (cold repro) | wall s | peak RSS (MB) |",
        "|---|---:|---:|",
        *[f"| `{' '.join(s['cmd'])}` | {s['wall_s']:.1f} | {s['max_rss_mb']:.0f} |" for s in p["stages"]],
        "",
        "| test accuracy | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
        *[
            f"| {run} | " + " | ".join(f"{100 * acc[v]:.2f} %" for v in variants) + " |"
            for run, acc in accuracy.items()
        ],
    ]


@app.command()
def main(
    epochs: int = typer.Option(
        4, min=4, help="epochs for every loop; the first is dropped, the rest give median and spread"
    ),
    seed: int = typer.Option(42),
    device: str = typer.Option("auto", help="device of the loops: auto | cpu | cuda"),
    pipeline: bool = typer.Option(True, help="also time the pipeline (cold and no-op repro, exp runs, pins)"),
    out: Path = typer.Option(None, help="also write the results as JSON here"),
    cuda_graph: bool = typer.Option(True, help="trainer: replay epochs as CUDA graphs (CUDA only)"),
    tutorial: bool = typer.Option(True, help="also time the tutorial's loop"),
    pipeline_device: str = typer.Option(
        "auto", help="train.device for the pipeline's training stage: auto | cpu | cuda"
    ),
) -> None:
    """Trainer vs plain loop vs tutorial loop (s/epoch, test accuracy), then the pipeline's timings."""
    if pipeline_device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"{pipeline_device!r}; accepted: auto, cpu, cuda", param_hint="--pipeline-device")
    dev = resolve_device(device)
    files = locate(REPO / "data" / "raw")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    )
    results: dict = {
        "device": name,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "commit": commit,
        "uncommitted_changes": dirty,
        "epochs": epochs,
    }
    lines = [
        f"Device: {name}; {os.cpu_count()} CPU cores; torch {torch.__version__}; "
        f"commit {commit}{' with uncommitted changes' if dirty else ''}.",
        "",
    ]
    results["loops"] = loops(files, epochs, seed, dev, cuda_graph, tutorial)
    lines += loop_lines(results["loops"], epochs, seed)
    if pipeline:
        mirror = Path(os.environ.get("MNISTLR_MNIST_DIR") or Path(files["train-images-idx3-ubyte.gz"]).parent)
        results["pipeline"] = pipeline_timings(mirror, pipeline_device, seed, epochs)
        lines += ["", *pipeline_lines(results["pipeline"])]
    typer.echo("\n".join(lines))
    if out:
        atomic.write_json(out, results)


if __name__ == "__main__":
    app()

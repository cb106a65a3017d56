"""Benchmark: the tutorial's DataLoader loop against mnistlr's trainer, plus pipeline wall time and memory.

Run `make bench` (or `python bench/benchmark.py --help`). Prints a markdown table.
It measures; it asserts nothing: speed goals are checked by reading its output, not by tests.
"""

from __future__ import annotations

import json
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


def torchvision_root(files: dict[str, Path]) -> Path:
    """A temporary folder laid out as torchvision's MNIST reads it (<root>/MNIST/raw): it extracts the
    copied .gz files there and never downloads."""
    root = Path(tempfile.mkdtemp(prefix="mnistlr-tv-"))
    (root / "MNIST" / "raw").mkdir(parents=True)
    for file_name, path in files.items():
        shutil.copy(path, root / "MNIST" / "raw" / file_name)
    return root


def tutorial_loop(root: Path, epochs: int, seed: int, device: torch.device, threads: int,
                  split_seed: int | None = None) -> tuple[list[float], float]:
    """The seed's loop: torchvision MNIST + ToTensor/Normalize, DataLoader(64, shuffle), SGD 0.1, on `threads`
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


def _median_seconds(cmd: list[str], cwd: Path, env: dict, runs: int = 3) -> float:
    """Median wall time of a command run `runs` times, each in a fresh process."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def startup_costs(workspace: Path, env: dict, cuda: bool, scripts: list[str]) -> dict:
    """What a stage process pays before its first line of work, each the median of 3 fresh processes:
    the bare interpreter, the interpreter plus the imports of each entry point in `scripts`, and the CUDA
    context that a stage training on the GPU creates on top (measured as `import torch` plus one tiny
    kernel, minus `import torch`)."""
    py = sys.executable
    costs = {"interpreter_s": _median_seconds([py, "-c", "pass"], workspace, env)}
    load = ("import importlib.util as u, sys; s = u.spec_from_file_location('stage', sys.argv[1]); "
            "s.loader.exec_module(u.module_from_spec(s))")  # module top level only: no command runs
    costs["imports_s"] = {Path(script).stem: _median_seconds([py, "-c", load, script], workspace, env)
                          for script in scripts}
    if cuda:
        torch_only = _median_seconds([py, "-c", "import torch"], workspace, env)
        with_cuda = _median_seconds([py, "-c", "import torch; torch.ones(1, device='cuda').sum().item()"], workspace, env)
        costs["cuda_init_s"] = with_cuda - torch_only
    return costs


def _accuracies(workspace: Path) -> dict[str, float]:
    return {m.stem: json.loads(m.read_text())["test"]["accuracy"] for m in sorted((workspace / "metrics").glob("*.json"))}


def _overhead(stages: list[dict], costs: dict) -> float:
    """Seconds of the stage processes spent starting: interpreter and imports, plus CUDA set-up in train."""
    total = 0.0
    for s in stages:
        stage = Path(s["cmd"][0]).stem
        total += costs["imports_s"].get(stage, costs["interpreter_s"])
        if stage == "train":
            total += costs.get("cuda_init_s", 0.0)
    return total


def project_files() -> list[str]:
    """The repository's files, relative: git's list, or where neither git nor .git came along (a bare
    GPU image gets a copy of the working tree), every file that the .gitignore files do not exclude."""
    try:
        return subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        import pathspec  # a dvc dependency

        files = []
        for folder, dirs, names in os.walk(REPO):
            here = Path(folder)
            dirs[:] = [d for d in dirs if d != ".git"]
            files += [(here / n).relative_to(REPO).as_posix() for n in names]
        for ignore in sorted(REPO.rglob(".gitignore")):
            base = ignore.parent.relative_to(REPO).as_posix()
            spec = pathspec.GitIgnoreSpec.from_lines(ignore.read_text().splitlines())
            prefix = "" if base == "." else base + "/"
            files = [f for f in files if not (f.startswith(prefix) and spec.match_file(f[len(prefix):]))]
        return files


def commit_all(repo: Path, message: str) -> None:
    """Commit every file of `repo` (a git repository is made first if there is none), with the git
    program where there is one, else with dulwich (a dvc dependency; dvc itself needs no git program)."""
    if shutil.which("git"):
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
        cmds = ([] if (repo / ".git").exists() else [["git", "init", "-q"]]) + [["git", "add", "-A"], [*git, "commit", "-qm", message]]
        for cmd in cmds:
            subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
        return
    from dulwich import porcelain

    handle = porcelain.open_repo(repo) if (repo / ".git").exists() else porcelain.init(repo)
    porcelain.add(handle)
    who = b"bench <bench@example.com>"
    porcelain.commit(handle, message=message.encode(), author=who, committer=who)


def pipeline_timings(mirror: Path, train_device: str = "auto") -> dict:
    """Cold `dvc repro` (fresh copy, empty cache), a no-op one, then `dvc exp run -S optimizer=adam`
    from the reproduced workspace: wall time and peak RSS of each stage process, each variant's test
    accuracy after both, and what a stage process pays before it works (`startup_costs`).
    `train_device` is written into the copy's params.yaml (train.device) before the first run."""
    tmp = Path(tempfile.mkdtemp(prefix="mnistlr-bench-"))
    for rel in project_files():
        if rel.startswith(("dvc.lock", "metrics/", "plots/", "reports/")) or not (REPO / rel).is_file():
            continue
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, tmp / rel)
    params = tmp / "params.yaml"
    text, count = re.subn(r"(?m)^(  device:) \w+", rf"\1 {train_device}", params.read_text())
    if count != 1:
        raise SystemExit(f"error: expected one train.device line in {params}, found {count}")
    params.write_text(text)
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
        f"open({str(log)!r}, 'a').write(json.dumps({{'cmd': sys.argv[1:4], 'wall_s': time.perf_counter() - t, 'max_rss_mb': rss / 1024}}) + '\\n')\n"
        "sys.exit(rc)\n"
    )
    (shim_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MNISTLR_MNIST_DIR=str(mirror), DVC_NO_ANALYTICS="1")
    env.pop("MNISTLR_MD5SUMS", None)
    commit_all(tmp, "bench")

    def dvc(*args: str) -> str:
        """Run dvc in the copy (as a module: also where it was installed with `pip --target`, no script
        on PATH); its output, or on failure a stop that shows what dvc said."""
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise SystemExit(f"error: `dvc {' '.join(args)}` exited {proc.returncode} in {tmp}:\n{tail}")
        return proc.stdout

    t = time.perf_counter()
    dvc("repro")
    cold = time.perf_counter() - t
    repro_accuracy = _accuracies(tmp)
    noops, noop_out = [], ""
    for _ in range(3):  # the median of three: one run is at the mercy of the machine's other load
        t = time.perf_counter()
        noop_out = dvc("repro")
        noops.append(time.perf_counter() - t)
    stages = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    commit_all(tmp, "results")
    t = time.perf_counter()
    dvc("exp", "run", "-S", "optimizer=adam")
    exp_run = time.perf_counter() - t
    exp_stages = [json.loads(line) for line in log.read_text().splitlines()]
    costs = startup_costs(tmp, env, cuda, sorted({s["cmd"][0] for s in stages + exp_stages}))
    result = {"cold_s": cold, "noop_s": statistics.median(noops), "noop_ran_nothing": "Running stage" not in noop_out,
              "exp_run_s": exp_run, "stages": stages, "exp_stages": exp_stages, "startup": costs,
              "train_device": "cuda" if cuda else "cpu",
              "test_accuracy": {"repro (sgd)": repro_accuracy, "exp run (adam)": _accuracies(tmp)}}
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def pipeline_lines(p: dict) -> list[str]:
    """The pipeline part of the markdown report."""
    costs = p["startup"]
    rows = []
    for name, wall, stages in (("cold `dvc repro`", p["cold_s"], p["stages"]),
                               ("`dvc exp run -S optimizer=adam`", p["exp_run_s"], p["exp_stages"])):
        inside = sum(s["wall_s"] for s in stages)
        start = _overhead(stages, costs)
        rows.append(f"| {name} | {wall:.1f} | {len(stages)} | {inside:.1f} | {wall - inside:.1f} | "
                    f"{start:.1f} ({100 * start / wall:.0f} %) | {inside - start:.1f} |")
    accuracy = p["test_accuracy"]
    variants = list(next(iter(accuracy.values())))
    cuda = f"; CUDA context {costs['cuda_init_s']:.2f} s" if "cuda_init_s" in costs else ""
    return [
        f"Training stages ran on: {p['train_device']}. No-op `dvc repro`: {p['noop_s']:.2f} s"
        f" (median of 3; {'ran no stage' if p['noop_ran_nothing'] else 'RAN STAGES'}).",
        "",
        "| run | wall s | stage processes | s inside them | s in dvc itself | s starting them (share of wall) | s working |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "s starting them: per stage process, the interpreter and its entry point's module-level imports, plus the "
        "CUDA context for a stage that trains on the GPU; each measured alone as the median of 3 fresh processes: "
        f"interpreter {costs['interpreter_s']:.2f} s; with each entry point's imports: " + ", ".join(f"{k} {v:.2f} s" for k, v in costs["imports_s"].items()) + cuda + ".",
        "",
        "| stage command | wall s | peak RSS (MB) |",
        "|---|---:|---:|",
        *[f"| `{' '.join(s['cmd'])}` | {s['wall_s']:.1f} | {s['max_rss_mb']:.0f} |" for s in p["stages"]],
        "",
        "| test accuracy | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
        *[f"| {run} | " + " | ".join(f"{100 * acc[v]:.2f} %" for v in variants) + " |" for run, acc in accuracy.items()],
    ]


@app.command()
def main(
    epochs: int = typer.Option(4, min=4, help="epochs for every loop; the first is dropped, the rest give median and spread"),
    seed: int = typer.Option(42),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    pipeline: bool = typer.Option(True, help="also time a cold and a no-op `dvc repro` and `dvc exp run`"),
    out: Path = typer.Option(None, help="also write the results as JSON here"),
    cuda_graph: bool = typer.Option(True, help="trainer: replay epochs as CUDA graphs (CUDA only)"),
    tutorial: bool = typer.Option(True, help="also time the tutorial's loop"),
    loops: bool = typer.Option(True, help="time the training loops (off: the pipeline alone)"),
    pipeline_device: str = typer.Option("auto", help="train.device for the pipeline's training stages: auto | cpu | cuda"),
) -> None:
    """Tutorial loop vs mnistlr trainer (s/epoch, ratio, test accuracy), then pipeline timings."""
    if pipeline_device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"{pipeline_device!r}; accepted: auto, cpu, cuda", param_hint="--pipeline-device")
    dev = resolve_device(device)
    files = locate(REPO / "data" / "raw")
    name = torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine()
    # whoever sent a copy of the working tree without .git (or without git) names its commit
    commit = os.environ.get("MNISTLR_COMMIT", "")
    if not commit and shutil.which("git"):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    results = {"device": name, "cpu_count": os.cpu_count(), "torch": torch.__version__, "commit": commit, "epochs": epochs}
    lines = [f"Device: {name}; {os.cpu_count()} CPU cores; torch {torch.__version__}; commit {commit or 'unknown'}."]
    if loops:
        root = torchvision_root(files)
        default_threads = torch.get_num_threads()
        timed = {}  # loop name -> (epoch seconds, test accuracy)
        if tutorial:
            timed[f"tutorial (DataLoader), {default_threads} threads"] = tutorial_loop(root, epochs, seed, dev, default_threads)
            timed["tutorial (DataLoader), 1 thread"] = tutorial_loop(root, epochs, seed, dev, 1)
            torch.set_num_threads(default_threads)
        trainer_name = "mnistlr trainer" + (" (CUDA graph)" if dev.type == "cuda" and cuda_graph else
                                            ", steps on 1 thread" if dev.type == "cpu" else "")
        timed[trainer_name] = trainer_run(files, epochs, seed, dev, 64, cuda_graph)
        shutil.rmtree(root, ignore_errors=True)
        stats = {k: steady_state(t) for k, (t, _) in timed.items()}
        base = stats[next(iter(stats))]["median"]
        results["loops"] = {k: {**stats[k], "epoch_s": timed[k][0], "test_accuracy": timed[k][1]} for k in timed}
        lines += [
            "",
            f"{epochs} epochs of SGD lr 0.1 constant, batch 64, seed {seed}, the same 50k/10k split; every loop timed "
            "alike: seconds per epoch (training and validation passes), the first epoch dropped, median and range of the rest.",
            "",
            "| loop | s / epoch (median) | range | speed-up vs first row | test accuracy |",
            "|---|---:|---:|---:|---:|",
            *[f"| {k} | {st['median']:.3f} | {st['min']:.3f}-{st['max']:.3f} | {base / st['median']:.1f}x | "
              f"{100 * timed[k][1]:.2f} % |" for k, st in stats.items()],
        ]
    if pipeline:
        mirror = Path(os.environ.get("MNISTLR_MNIST_DIR") or Path(files["train-images-idx3-ubyte.gz"]).parent)
        results["pipeline"] = pipeline_timings(mirror, pipeline_device)
        lines += ["", *pipeline_lines(results["pipeline"])]
    typer.echo("\n".join(lines))
    if out:
        atomic.write_json(out, results)


if __name__ == "__main__":
    app()

"""Faults: divergence, gradient clipping, early stopping, atomic writes and a SIGKILL mid-stage."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mnistlr import atomic, train
from mnistlr.errors import MnistlrError
from mnistlr.params import TrainParams
from mnistlr.train import EarlyStopping, EpochRecord, LogisticRegression, best_epoch, fit, write_history
from tests.conftest import REPO, dvc, make_project, project_env


def _blobs(n=200, seed=0):
    centers = torch.randn(10, 784, generator=torch.Generator().manual_seed(123)) * 0.5
    y = torch.arange(n) % 10
    return centers[y] + torch.randn(n, 784, generator=torch.Generator().manual_seed(seed)), y


# --- training ---------------------------------------------------------------------------


def test_huge_learning_rate_names_epoch_step_and_both_remedies():
    x, y = _blobs()
    with pytest.raises(MnistlrError) as info:
        fit(x * 1e20, y, x, y, TrainParams(epochs=3, batch_size=20, schedule="constant"), "sgd", 1e4, seed=0)
    msg = str(info.value)
    assert re.fullmatch(
        r"training diverged: the training loss became (nan|inf|-inf) at epoch \d+ with train\.lr\.sgd = 10000\.0; "
        r"lower the learning rate or set train\.grad_clip \(e\.g\. 1\.0\)",
        msg,
    ), msg


def _one_step_update(grad_clip: float) -> float:
    """Norm of the whole parameter update after one full-batch SGD step with lr 1."""
    x, y = _blobs(100)
    cfg = TrainParams(epochs=1, batch_size=100, schedule="constant", grad_clip=grad_clip)
    torch.manual_seed(0)  # fit seeds the init the same way: this is its starting point
    start = torch.cat([p.detach().flatten() for p in LogisticRegression().parameters()])
    model, _ = fit(x * 50, y, x, y, cfg, "sgd", 1.0, seed=0)
    end = torch.cat([p.detach().flatten() for p in model.parameters()])
    return float((end - start).norm())


def test_grad_clip_bounds_the_update_to_lr_times_max_norm():
    free = _one_step_update(0.0)
    clipped = _one_step_update(0.5)
    assert free > 5  # without clipping the big inputs give a big step...
    assert clipped <= 0.5 * (1 + 1e-5)  # ...with it the step is at most lr * grad_clip
    assert clipped > 0.45  # and clipping rescales, it does not zero the gradient


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_clipped_training_steps_never_wait_for_the_gpu(monkeypatch):
    # Sync debug mode "error" from the first step to the end-of-epoch read of the running scores: any
    # host sync inside the inner loop (an .item() on the clipped norm, say) raises.
    real_gradient, real_scores = train.gradient, train._running_scores

    def gradient_in_error_mode(*args):
        torch.cuda.set_sync_debug_mode("error")
        return real_gradient(*args)

    def scores_in_default_mode(*args):
        torch.cuda.set_sync_debug_mode("default")
        return real_scores(*args)

    monkeypatch.setattr(train, "gradient", gradient_in_error_mode)
    monkeypatch.setattr(train, "_running_scores", scores_in_default_mode)
    x, y = (t.cuda() for t in _blobs())
    try:
        for optimizer, lr in (("sgd", 0.1), ("adam", 1e-2)):
            cfg = TrainParams(epochs=2, batch_size=20, grad_clip=0.5, l1=1e-4, patience=1, cuda_graph=False)
            model, history = fit(x, y, x, y, cfg, optimizer, lr, seed=0)
            assert history and model.fc.weight.is_cuda
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_early_stopping_keeps_the_best_epochs_weights():
    weights = torch.zeros(1, 2)
    stopper = EarlyStopping(patience=2)
    stops = []
    for epoch, acc in enumerate([0.5, 0.7, 0.6, 0.7], start=1):  # 0.7 again is no gain
        weights.fill_(float(epoch))
        stops.append(stopper.update(epoch, acc, weights))
    assert stops == [False, False, False, True] and stopper.best_epoch == 2
    assert torch.equal(stopper.best(weights), torch.full((1, 2), 2.0))


def test_patience_zero_never_stops_and_keeps_the_last_weights():
    weights = torch.ones(1, 2)
    stopper = EarlyStopping(patience=0)
    assert not any(stopper.update(e, 0.1, weights) for e in range(1, 50))
    assert stopper.best(weights) is weights


def test_patience_stops_fit_early_on_a_plateau_and_marks_the_best_epoch(tmp_path):
    x, y = _blobs()
    # 20 training images as the validation set: all classified right from epoch 2 on, so no later
    # epoch can do strictly better, while the weights keep moving.
    vx, vy = x[:20], y[:20]
    cfg = dict(batch_size=50, schedule="constant")
    model, history = fit(x, y, vx, vy, TrainParams(epochs=20, patience=3, **cfg), "sgd", 0.1, seed=0)
    assert [h.epoch for h in history] == [1, 2, 3, 4, 5]
    assert history[0].val_accuracy < 1.0 and [h.val_accuracy for h in history[1:]] == [1.0] * 4
    two, _ = fit(x, y, vx, vy, TrainParams(epochs=2, **cfg), "sgd", 0.1, seed=0)
    five, _ = fit(x, y, vx, vy, TrainParams(epochs=5, **cfg), "sgd", 0.1, seed=0)
    assert torch.equal(model.fc.weight, two.fc.weight)  # epoch 2's weights were restored...
    assert not torch.equal(model.fc.weight, five.fc.weight)  # ...not the last epoch's
    write_history(tmp_path / "log.csv", history, best_epoch(history))
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0].endswith(",best") and [ln.rsplit(",", 1)[1] for ln in lines[1:]] == ["0", "1", "0", "0", "0"]


def test_best_epoch_is_the_first_with_the_highest_val_accuracy():
    rec = [EpochRecord(e, 1.0, 0.5, 1.0, acc, 0.1) for e, acc in enumerate([0.2, 0.9, 0.9, 0.4], start=1)]
    assert best_epoch(rec) == 2


# --- atomic writes ----------------------------------------------------------------------


# Every file the project writes goes through mnistlr.atomic (a temp file renamed into place), so a
# kill can never leave a half-written output. The scan reads the code: a call that writes a file
# is accepted only when the file it writes is a scratch path, i.e. a name bound from
# atomic_path/atomic_dir (the temp beside the output) or tempfile.mkdtemp/TemporaryDirectory, or
# derived from one. Project functions (atomic.*, figures.save, Model.save) are scanned where defined.
SCANNED = ("mnistlr", "stages", "bench")
SCRATCH_MAKERS = {"atomic_path", "atomic_dir", "mkdtemp", "TemporaryDirectory"}
# (module, function): index of the argument that names the file written
MODULE_WRITERS = {
    **{(np_, fn): 0 for np_ in ("np", "numpy") for fn in ("save", "savez", "savez_compressed", "savetxt")},
    ("torch", "save"): 1,
    ("json", "dump"): 1,
    ("pickle", "dump"): 1,
    ("plt", "savefig"): 0,
    **{("shutil", fn): 1 for fn in ("copy", "copy2", "copyfile", "copytree", "move")},
}
# method: which part names the file written ("self": the object the method is called on)
WRITE_METHODS = {
    "write_text": "self",
    "write_bytes": "self",
    "touch": "self",
    "savefig": 0,
    "to_csv": 0,
    "to_json": 0,
    "tofile": 0,
    "save": "any",
}
RETURNS_TEXT_WITHOUT_PATH = {"to_csv", "to_json"}
PATH_KEYWORDS = {"path", "path_or_buf", "fname", "file", "fid"}
OPEN_MODULES = {"gzip", "io", "bz2", "lzma", "codecs"}
PROJECT = "mnistlr"


def _project_api() -> tuple[dict[str, str], dict[str, set[str]]]:
    """The project's function return annotations and each class's method names."""
    returns, methods = {}, {}
    for path in sorted((REPO / PROJECT).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
                returns[node.name] = ast.unparse(node.returns)
            elif isinstance(node, ast.ClassDef):
                methods[node.name] = {
                    n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                }
    return returns, methods


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _scopes(tree: ast.Module) -> list[list[ast.AST]]:
    """Each function (or method) is a scope; the module's other statements are one more."""
    scopes, module_level = [], []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scopes.append([node])
        elif isinstance(node, ast.ClassDef):
            scopes.extend([item] for item in node.body)
        else:
            module_level.append(node)
    return [*scopes, module_level]


def _scratch_names(nodes: list[ast.AST]) -> set[str]:
    """Names bound (by =, or `with ... as`) to a scratch path or to something derived from one."""
    bindings = []
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Assign):
            bindings += [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            bindings.append((node.target.id, node.value))
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            bindings += [
                (i.optional_vars.id, i.context_expr) for i in node.items if isinstance(i.optional_vars, ast.Name)
            ]
    scratch: set[str] = set()
    while True:
        more = {name for name, value in bindings if name not in scratch and _is_scratch(value, scratch)}
        if not more:
            return scratch
        scratch |= more


def _is_scratch(expr: ast.AST | None, scratch: set[str]) -> bool:
    if expr is None:
        return False
    return any(
        (isinstance(n, ast.Name) and n.id in scratch) or (isinstance(n, ast.Call) and _name(n.func) in SCRATCH_MAKERS)
        for n in ast.walk(expr)
    )


def _open_writes(call: ast.Call) -> bool:
    """Whether an open() call opens for writing (a mode that is not a literal counts as writing)."""
    func = call.func
    mode: ast.expr | None = next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        if isinstance(func, ast.Attribute) and getattr(func.value, "id", "") not in OPEN_MODULES:
            # Path.open(mode) or Image.open(fp, mode): the first literal that looks like a mode
            mode = next(
                (
                    a
                    for a in call.args
                    if isinstance(a, ast.Constant)
                    and isinstance(a.value, str)
                    and re.fullmatch(r"[rwaxbtU+]+", a.value)
                ),
                None,
            )
        elif len(call.args) > 1:
            mode = call.args[1]
    if mode is None:
        return False  # default "r"
    if not (isinstance(mode, ast.Constant) and isinstance(mode.value, str)):
        return True
    return bool(set(mode.value) & set("wax+"))


def _written_file(call: ast.Call, project_modules: set[str], api) -> list[ast.expr] | None:
    """The expressions that may name the file a call writes; None when the call writes no file."""
    returns, methods = api
    func, name = call.func, _name(call.func)
    receiver = func.value if isinstance(func, ast.Attribute) else None
    owner = getattr(receiver, "id", "")
    if name == "open":
        if not _open_writes(call):
            return None
        if receiver is None or owner in OPEN_MODULES:
            return call.args[:1]
        return [receiver]
    if (owner, name) in MODULE_WRITERS:
        i = MODULE_WRITERS[(owner, name)]
        return call.args[i : i + 1] or [k.value for k in call.keywords]
    if receiver is None or name not in WRITE_METHODS or owner in project_modules:
        return None
    if name == "save" and isinstance(receiver, ast.Call):
        made = returns.get(_name(receiver.func), "")
        if "save" in methods.get(made, set()):
            return None  # a project object's own save (e.g. Model.save), scanned where it is defined
    where = WRITE_METHODS[name]
    if where == "self":
        return [receiver]
    if where == "any":
        return [*call.args, *(k.value for k in call.keywords)]
    target = call.args[where : where + 1] or [k.value for k in call.keywords if k.arg in PATH_KEYWORDS]
    if not target and name in RETURNS_TEXT_WITHOUT_PATH:
        return None  # df.to_csv() returns the text
    return target


def _direct_writes(source: str, label: str, api=None) -> list[str]:
    """'label:line: code' for every call in `source` that writes a file other than a scratch path."""
    api = api or _project_api()
    tree = ast.parse(source)
    project_modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == PROJECT:
            project_modules.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            project_modules.update(a.asname for a in node.names if a.name.startswith(PROJECT + ".") and a.asname)
    found = []
    for scope in _scopes(tree):
        scratch = _scratch_names(scope)
        for call in (n for top in scope for n in ast.walk(top) if isinstance(n, ast.Call)):
            targets = _written_file(call, project_modules, api)
            if targets is not None and not any(_is_scratch(t, scratch) for t in targets):
                found.append(f"{label}:{call.lineno}: {ast.get_source_segment(source, call).splitlines()[0]}")
    return found


def test_every_writer_goes_through_mnistlr_atomic():
    api = _project_api()
    files = [p for folder in SCANNED for p in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 15 and any(p.name == "benchmark.py" for p in files)
    found = [w for p in files for w in _direct_writes(p.read_text(), str(p.relative_to(REPO)), api)]
    assert found == []


NON_ATOMIC = {
    "write_text": "def f(out):\n    out.write_text('x')\n",
    "open_w": "def f(out):\n    with open(out, 'w') as fh:\n        fh.write('x')\n",
    "open_mode_kw": "def f(out):\n    open(out, mode='ab')\n",
    "open_unknown_mode": "def f(out, mode):\n    open(out, mode)\n",
    "path_open_a": "def f(out):\n    out.open('a').write('x')\n",
    "gzip_open": "import gzip\ndef f(out):\n    gzip.open(out, 'wb')\n",
    "np_save": "import numpy as np\ndef f(out, a):\n    np.savez(out, a=a)\n",
    "torch_save": "import torch\ndef f(m, out):\n    torch.save(m.state_dict(), out)\n",
    "savefig": "def f(fig, out):\n    fig.savefig(out)\n",
    "shutil_copy": "import shutil\ndef f(a, b):\n    shutil.copy2(a, b)\n",
    "to_csv": "def f(df, out):\n    df.to_csv(out, index=False)\n",
    "pil_save": "def f(img, out):\n    img.save(out)\n",
    "a_name_is_not_enough": "def f(out):\n    tmp = out\n    tmp.write_text('x')\n",
    "scratch_of_another_function": (
        "from mnistlr import atomic\n"
        "def f(out):\n    with atomic.atomic_path(out) as tmp:\n        tmp.write_text('x')\n"
        "def g(tmp):\n    tmp.write_text('x')\n"
    ),
}
ATOMIC = {
    "atomic_helper": "from mnistlr import atomic\ndef f(out):\n    atomic.write_json(out, {})\n",
    "open_temp_of_atomic_path": (
        "from mnistlr.atomic import atomic_path\n"
        "def f(out):\n    with atomic_path(out) as tmp, open(tmp, 'wb') as fh:\n        fh.write(b'x')\n"
    ),
    "savefig_into_temp": (
        "from mnistlr import atomic\n"
        "def f(fig, out):\n    with atomic.atomic_path(out) as tmp:\n        fig.savefig(tmp)\n"
    ),
    "derived_from_atomic_dir": (
        "import numpy as np\nfrom mnistlr import atomic\n"
        "def f(out, a):\n    with atomic.atomic_dir(out) as tmp:\n"
        "        part = tmp / 'a.npy'\n        np.save(part, a)\n"
    ),
    "private_temp_folder": (
        "import shutil, tempfile\nfrom pathlib import Path\n"
        "def f(src):\n    root = Path(tempfile.mkdtemp())\n"
        "    shutil.copy(src, root / 'a')\n    (root / 'b').write_text('x')\n"
    ),
    "reading": (
        "def f(path):\n    with open(path) as a, open(path, 'rb') as b, path.open() as c:\n        return a.read()\n"
    ),
    "to_csv_returns_text": "def f(df):\n    return df.to_csv(index=False)\n",
    "project_figure_save": "from mnistlr import figures\ndef f(fig, out):\n    figures.save(fig, out)\n",
    "project_model_save": "def f(net, out):\n    net.to_model(0.1, 0.3).save(out)\n",
}


@pytest.mark.parametrize("case", NON_ATOMIC)
def test_the_scan_flags_a_direct_write(case):
    assert len(_direct_writes(NON_ATOMIC[case], case)) == 1


@pytest.mark.parametrize("case", ATOMIC)
def test_the_scan_accepts_writes_to_scratch_paths_and_reads(case):
    assert _direct_writes(ATOMIC[case], case) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"old": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text('{"half": ')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "old": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --- SIGKILL while a stage writes an output ---------------------------------------------------------

# Loaded by every Python process of the run (PYTHONPATH): zipfile's writestr, which every .npz output goes
# through (atomic.write_arrays), writes the first member of a models/ file, says where, then stalls before the
# rest, so the kill lands in the middle of writing the model.
SLOW_WRITER = """
import os, time, zipfile

_writestr = zipfile.ZipFile.writestr


def _slow_writestr(self, zinfo_or_arcname, data, *args, **kwds):
    # a model's .npz (atomic.write_arrays): its first member on disk, then a long pause before the rest
    _writestr(self, zinfo_or_arcname, data, *args, **kwds)
    name = str(self.filename or "")
    if "models/" in name:
        self.fp.flush()
        os.fsync(self.fp.fileno())
        with open(os.environ["MNISTLR_TEST_WRITING"], "w") as marker:
            marker.write(os.path.abspath(name))
        time.sleep(600)


zipfile.ZipFile.writestr = _slow_writestr
"""


def _wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text():
            return path.read_text()
        if proc.poll() is not None:
            pytest.fail(f"dvc exited {proc.returncode} before writing the model:\n{log.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"the model write did not start within {timeout} s:\n{log.read_text()}")


def test_sigkill_while_writing_the_model_shows_no_partial_file_and_repro_recovers(tmp_path, synthetic_mirror):
    project = make_project(
        tmp_path / "proj",
        {
            "data": {"val_size": 200},
            "variants": {"full": {"fraction": 1.0, "noise": 0.0}},
            "train": {"epochs": 2, "batch_size": 32, "device": "cpu"},
        },
    )
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_WRITER)
    marker = tmp_path / "writing"
    env = project_env(synthetic_mirror, synthetic=True)
    slow_env = {**env, "PYTHONPATH": str(hook), "MNISTLR_TEST_WRITING": str(marker)}
    log = tmp_path / "dvc.log"
    with open(log, "w") as out:
        # its own session: the kill reaches dvc and the stage's python, nothing else
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("dvc")), "repro"],
            cwd=project,
            env=slow_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            partial = Path(_wait_for_file(marker, proc, log, timeout=240))
            # mid-write: the first member is on disk, under a hidden temp name, and the output is not there
            assert partial.parent == project / "models" and partial.name.startswith(".full.npz.tmp-"), partial
            assert partial.stat().st_size > 0
            assert sorted(p.name for p in (project / "models").iterdir()) == [partial.name]
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    # nothing of train, evaluate or report looks complete, and dvc recorded no train result
    assert not (project / "models" / "full.npz").exists()
    assert not (project / "plots" / "train" / "full.csv").exists()
    assert not (project / "metrics" / "full.json").exists()
    assert not (project / "reports" / "report.md").exists()
    lock = yaml.safe_load((project / "dvc.lock").read_text()) if (project / "dvc.lock").exists() else {}
    assert "train" not in lock.get("stages", {})
    assert "prepare" in lock.get("stages", {})  # what finished before the kill stays done

    again = dvc("repro", cwd=project, env=env)
    assert "Running stage 'train'" in again.stdout and "Running stage 'prepare'" not in again.stdout
    from mnistlr.model import load_model

    assert load_model(project / "models" / "full.npz").weight.shape == (10, 784)
    assert (project / "metrics" / "full.json").is_file()
    # the killed writer's half file is gone: the rewrite of the same path removed it
    assert sorted(p.name for p in (project / "models").iterdir()) == ["full.npz"]
    assert "up to date" in dvc("status", "dvc.yaml", cwd=project, env=env).stdout

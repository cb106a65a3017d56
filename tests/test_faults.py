"""Faults: divergence, gradient clipping, early stopping, atomic writes and a SIGKILL mid-stage (issue 5)."""

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

from mnistlr import atomic, trainer
from mnistlr.early_stopping import EarlyStopping
from mnistlr.errors import MnistlrError
from mnistlr.model import LogisticRegression
from mnistlr.params import TrainParams
from mnistlr.train import best_epoch, write_history
from mnistlr.trainer import EpochRecord, fit
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
        r"training diverged: loss became (nan|inf|-inf) at epoch \d+, step \d+ with train\.lr\.sgd = 10000\.0; "
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
    # Sync debug mode "error" from the first step to the per-epoch divergence check: any
    # host sync inside the inner loop (an .item() on the clipped norm, say) raises.
    real_loss, real_check = trainer.training_loss, trainer._raise_if_diverged

    def loss_in_error_mode(*args):
        torch.cuda.set_sync_debug_mode("error")
        return real_loss(*args)

    def check_in_default_mode(*args):
        torch.cuda.set_sync_debug_mode("default")
        return real_check(*args)

    monkeypatch.setattr(trainer, "training_loss", loss_in_error_mode)
    monkeypatch.setattr(trainer, "_raise_if_diverged", check_in_default_mode)
    x, y = (t.cuda() for t in _blobs())
    try:
        for optimizer, lr in (("sgd", 0.1), ("adam", 1e-2)):
            cfg = TrainParams(epochs=2, batch_size=20, grad_clip=0.5, l1=1e-4, patience=1)
            model, history = fit(x, y, x, y, cfg, optimizer, lr, seed=0)
            assert history and model.fc.weight.is_cuda
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_early_stopping_keeps_the_best_epochs_weights():
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2)
    stops = []
    for epoch, acc in enumerate([0.5, 0.7, 0.6, 0.7], start=1):  # 0.7 again is no gain
        torch.nn.init.constant_(model.weight, float(epoch))
        stops.append(stopper.update(epoch, acc, model))
    assert stops == [False, False, False, True] and stopper.best_epoch == 2
    stopper.restore(model)
    assert torch.equal(model.weight, torch.full((1, 2), 2.0))


def test_patience_zero_never_stops_and_keeps_the_last_weights():
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(patience=0)
    assert not any(stopper.update(e, 0.1, model) for e in range(1, 50))
    before = model.weight.detach().clone()
    stopper.restore(model)
    assert torch.equal(model.weight, before)


def test_patience_stops_fit_early_on_a_plateau_and_marks_the_best_epoch(tmp_path):
    x, y = _blobs()
    # An lr this small leaves the predictions, hence val accuracy, unchanged: a plateau from epoch 1.
    cfg = TrainParams(epochs=20, batch_size=50, schedule="constant", patience=3)
    model, history = fit(x, y, x, y, cfg, "sgd", 1e-12, seed=0)
    assert [h.epoch for h in history] == [1, 2, 3, 4]
    one, _ = fit(x, y, x, y, TrainParams(epochs=1, batch_size=50, schedule="constant"), "sgd", 1e-12, seed=0)
    assert torch.equal(model.fc.weight, one.fc.weight)  # epoch 1's weights were restored
    write_history(tmp_path / "log.csv", history, best_epoch(history))
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0].endswith(",best") and [ln.rsplit(",", 1)[1] for ln in lines[1:]] == ["1", "0", "0", "0"]


def test_best_epoch_is_the_first_with_the_highest_val_accuracy():
    rec = [EpochRecord(e, 1.0, 0.5, 1.0, acc, 0.1) for e, acc in enumerate([0.2, 0.9, 0.9, 0.4], start=1)]
    assert best_epoch(rec) == 2


# --- atomic writes ----------------------------------------------------------------------


# A direct write in mnistlr/ outside atomic.py would be a file a kill can leave half-written.
WRITERS = {"save", "savefig", "write_text", "write_bytes", "to_csv", "open"}


def _direct_writes(path: Path) -> list[str]:
    source = path.read_text()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in WRITERS or (isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "atomic"):
            continue
        call = ast.get_source_segment(source, node)
        if name == "open" and not re.search(r"['\"][wax]", call):  # reading is fine
            continue
        # prepare writes into the temp folder that atomic_dir swaps in whole
        if "tmp" not in call:
            found.append(f"{path.name}:{node.lineno}: {call.splitlines()[0]}")
    return found


def test_every_writer_goes_through_mnistlr_atomic():
    modules = [p for p in sorted((REPO / "mnistlr").glob("*.py")) if p.name != "atomic.py"]
    assert [w for p in modules for w in _direct_writes(p)] == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json(target, {"old": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "old": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --- SIGKILL mid-stage ------------------------------------------------------------------


SLOW_TRAIN = {
    "data": {"val_size": 200},
    "variants": {"full": {"fraction": 1.0, "noise": 0.0}},
    # batch 1 and many epochs: train runs for minutes, so the kill lands inside it
    "train": {"epochs": 2000, "batch_size": 1, "device": "cpu"},
}


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"dvc exited {proc.returncode} before {text!r}:\n{path.read_text()}")
        time.sleep(0.2)
    pytest.fail(f"no {text!r} within {timeout} s:\n{path.read_text()}")


def test_sigkill_during_train_leaves_no_complete_output_and_repro_recovers(tmp_path, synthetic_mirror):
    project = make_project(tmp_path / "proj", SLOW_TRAIN)
    env = project_env(synthetic_mirror, synthetic=True)
    log = tmp_path / "dvc.log"
    with open(log, "w") as out:
        # its own session: the kill reaches dvc and the stage's python, nothing else
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("dvc")), "repro"], cwd=project, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            _wait_for(log, "Running stage 'train@full'", proc, timeout=180)
            time.sleep(4)  # past the imports, inside the epochs
            assert proc.poll() is None, log.read_text()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    # nothing of train, evaluate or report looks complete
    assert not (project / "models" / "full.pt").exists()
    assert not (project / "plots" / "train" / "full.csv").exists()
    assert not (project / "metrics" / "full.json").exists()
    assert not (project / "reports" / "report.md").exists()
    lock = yaml.safe_load((project / "dvc.lock").read_text()) if (project / "dvc.lock").exists() else {}
    assert "train@full" not in lock.get("stages", {})

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(epochs=2, batch_size=32)  # the rerun only needs to finish, not be slow
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    again = dvc("repro", cwd=project, env=env)
    assert "Running stage 'train@full'" in again.stdout and "Running stage 'prepare'" not in again.stdout
    assert (project / "models" / "full.pt").is_file() and (project / "metrics" / "full.json").is_file()
    assert "up to date" in dvc("status", "dvc.yaml", cwd=project, env=env).stdout

"""The train stage: fit one training-set variant, save its state_dict and learning curve."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from mnistlr import atomic
from mnistlr.device import resolve_device
from mnistlr.model import save_model
from mnistlr.params import Params
from mnistlr.prepare import load_split, load_variant
from mnistlr.trainer import EpochRecord, fit


def write_history(path: str | Path, history: Sequence[EpochRecord]) -> None:
    """The learning curve as CSV, one row per epoch (DVC plots it with x = epoch)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0].as_dict()), lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.as_dict().items()})
    atomic.write_text(path, buf.getvalue())


def train(params: Params, variant: str, prepared: str | Path, model_path: str | Path, log_path: str | Path) -> list[EpochRecord]:
    """Train on `variant` with the params' optimizer; write the model and the per-epoch log."""
    params.variant(variant)
    device = resolve_device(params.train.device)
    x, y = load_variant(prepared, variant, device)
    val_x, val_y = load_split(prepared, "val", device)
    model, history = fit(x, y, val_x, val_y, params.train, params.optimizer, params.lr, params.seed)
    save_model(model, model_path)
    write_history(log_path, history)
    return history

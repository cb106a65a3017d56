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


def best_epoch(history: Sequence[EpochRecord]) -> int:
    """The first epoch with the highest val accuracy: the one early stopping keeps."""
    return max(history, key=lambda r: r.val_accuracy).epoch


def write_history(path: str | Path, history: Sequence[EpochRecord], best: int | None = None) -> None:
    """The learning curve as CSV, one row per epoch (DVC plots it with x = epoch).

    With `best` (early stopping on) a `best` column marks the epoch whose weights were kept.
    """
    buf = io.StringIO()
    fields = list(history[0].as_dict()) + (["best"] if best is not None else [])
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for record in history:
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.as_dict().items()}
        if best is not None:
            row["best"] = int(record.epoch == best)
        writer.writerow(row)
    atomic.write_text(path, buf.getvalue())


def train(params: Params, variant: str, prepared: str | Path, model_path: str | Path, log_path: str | Path) -> list[EpochRecord]:
    """Train on `variant` with the params' optimizer; write the model and the per-epoch log."""
    params.variant(variant)
    device = resolve_device(params.train.device)
    x, y = load_variant(prepared, variant, device)
    val_x, val_y = load_split(prepared, "val", device)
    model, history = fit(x, y, val_x, val_y, params.train, params.optimizer, params.lr, params.seed)
    save_model(model, model_path)
    # Only with early stopping are the saved weights the best epoch's rather than the last's.
    write_history(log_path, history, best_epoch(history) if params.train.patience > 0 else None)
    return history

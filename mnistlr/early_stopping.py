"""Early stopping on validation accuracy: remember the best epoch's weights, stop on a plateau."""

from __future__ import annotations

from torch import nn


class EarlyStopping:
    """Tracks the best validation accuracy; `patience` epochs without a strict gain means stop.

    patience = 0 turns it off: `update` never asks to stop and `restore` keeps the last weights.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_accuracy = float("-inf")
        self.best_epoch = 0
        self._best_state: dict | None = None

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def update(self, epoch: int, val_accuracy: float, model: nn.Module) -> bool:
        """Record one epoch; True when training should stop now."""
        if not self.enabled:
            return False
        if val_accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch = val_accuracy, epoch
            # A device-side copy: no host transfer, and later steps cannot alias it.
            self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return epoch - self.best_epoch >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights back into `model` (no-op when off)."""
        if self._best_state is not None:
            model.load_state_dict(self._best_state)

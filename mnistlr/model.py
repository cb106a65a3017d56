"""The model: one linear layer, 784 pixels -> 10 raw class scores."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mnistlr import atomic
from mnistlr.errors import MnistlrError

IN_FEATURES = 28 * 28
NUM_CLASSES = 10


class LogisticRegression(nn.Module):
    """Multinomial logistic regression. Returns raw logits: CrossEntropyLoss applies log-softmax itself."""

    def __init__(self, in_features: int = IN_FEATURES, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, 28, 28] or [B, 784] -> [B, 784]; a view, no copy.
        return self.fc(x.flatten(1))


def save_model(model: LogisticRegression, path: str | Path) -> None:
    """Save the state_dict (CPU tensors only), atomically."""
    atomic.save_torch(path, {k: v.detach().cpu() for k, v in model.state_dict().items()})


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LogisticRegression:
    """Load a saved state_dict with weights_only=True: a pickle that runs code is refused."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise MnistlrError(f"no model at {path}; run the train stage first") from None
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MnistlrError(f"{path}: not a loadable weights-only checkpoint ({first})") from None
    model = LogisticRegression().to(device)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise MnistlrError(f"{path}: not a LogisticRegression state_dict ({str(exc).splitlines()[0]})") from None
    return model.eval()

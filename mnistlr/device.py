"""Choosing the compute device."""

from __future__ import annotations

import torch

from mnistlr.errors import MnistlrError


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present else CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MnistlrError("train.device = 'cuda' but no CUDA device is available; accepted here: auto, cpu")
    if name not in ("cpu", "cuda"):
        raise MnistlrError(f"device {name!r} is not accepted; accepted: auto, cpu, cuda")
    return torch.device(name)

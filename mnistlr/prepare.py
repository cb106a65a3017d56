"""The prepare stage: raw MNIST files -> normalized split tensors and training-set variants."""

from __future__ import annotations

from pathlib import Path

import torch

from mnistlr import atomic, idx, sources
from mnistlr.dataset import build_variant, normalize, split_indices
from mnistlr.errors import MnistlrError
from mnistlr.params import Params


def load_mnist(paths: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Decode the four files; image and label counts must agree."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = idx.read_images(paths[f"{prefix}-images-idx3-ubyte.gz"])
        labels = idx.read_labels(paths[f"{prefix}-labels-idx1-ubyte.gz"])
        if images.shape[0] != labels.shape[0]:
            raise MnistlrError(
                f"{split}: {images.shape[0]} images but {labels.shape[0]} labels; the files do not belong together"
            )
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


def prepare(params: Params, out_dir: str | Path, download_root: str | Path = "data/raw") -> dict[str, dict]:
    """Write train/val/test tensors and every variant into `out_dir` (atomically, as one folder)."""
    raw = load_mnist(sources.locate(download_root))
    n_train = raw["train_images"].shape[0]
    if params.data.val_size >= n_train:
        raise MnistlrError(
            f"data.val_size = {params.data.val_size} leaves no training images; accepted: 1..{n_train - 1}"
        )
    train_idx, val_idx = split_indices(n_train, params.data.val_size, params.seed)
    x_all = normalize(raw["train_images"], params.data.mean, params.data.std)
    splits = {
        "train": (x_all[train_idx], raw["train_labels"][train_idx]),
        "val": (x_all[val_idx], raw["train_labels"][val_idx]),
        "test": (normalize(raw["test_images"], params.data.mean, params.data.std), raw["test_labels"]),
    }
    summaries = {}
    with atomic.atomic_dir(out_dir) as tmp:
        for split, (x, y) in splits.items():
            torch.save({"x": x.contiguous(), "y": y.contiguous()}, tmp / f"{split}.pt")
        train_y = splits["train"][1]
        (tmp / "variants").mkdir()
        for name, v in params.variants.items():
            variant = build_variant(train_y, name, v.fraction, v.noise, params.seed)
            torch.save(
                {"index": variant.index, "y": variant.labels, "changed": variant.changed},
                tmp / "variants" / f"{name}.pt",
            )
            summaries[name] = variant.summary(name, v.fraction, v.noise)
            atomic.write_json(tmp / "variants" / f"{name}.json", summaries[name])
    return summaries


def load_split(prepared: str | Path, split: str, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of 'train', 'val' or 'test' from a prepared folder, on `device`."""
    blob = torch.load(Path(prepared) / f"{split}.pt", weights_only=True, map_location=device)
    return blob["x"], blob["y"]


def load_variant(
    prepared: str | Path, name: str, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of a training-set variant: its rows of the train split, with its labels."""
    path = Path(prepared) / "variants" / f"{name}.pt"
    if not path.is_file():
        raise MnistlrError(f"no prepared variant {name!r} at {path}; run the prepare stage first")
    variant = torch.load(path, weights_only=True, map_location=device)
    x, _ = load_split(prepared, "train", device)
    return x[variant["index"]], variant["y"]

"""The prepare stage: raw MNIST files -> normalized train/val/test arrays and training-set variants."""

from __future__ import annotations

from pathlib import Path

from mnistlr import atomic, data
from mnistlr.errors import MnistlrError
from mnistlr.params import Params


def prepare(params: Params, out_dir: str | Path, download_root: str | Path = "data/raw") -> dict[str, dict]:
    """Write {train,val,test}.npz and variants/<name>.{npz,json} into `out_dir`, atomically, as one folder."""
    raw = data.load_mnist(data.locate(download_root))
    n_train = raw["train_images"].shape[0]
    if params.data.val_size >= n_train:
        raise MnistlrError(
            f"data.val_size = {params.data.val_size} leaves no training images; accepted: 1..{n_train - 1}"
        )
    train_idx, val_idx = data.split_indices(n_train, params.data.val_size, params.seed)
    mean, std = params.data.mean, params.data.std
    splits = {
        "train": (raw["train_images"], raw["train_labels"], train_idx),
        "val": (raw["train_images"], raw["train_labels"], val_idx),
        "test": (raw["test_images"], raw["test_labels"], None),
    }
    summaries = {}
    with atomic.atomic_dir(out_dir) as tmp:
        for split, (images, labels, index) in splits.items():
            if index is not None:
                images, labels = images[index], labels[index]
            # one split's floats at a time: the peak memory is the largest split, not all three
            atomic.write_arrays(tmp / f"{split}.npz", x=data.normalize(images, mean, std), y=labels)
        train_y = raw["train_labels"][train_idx]
        for name, v in params.variants.items():
            variant = data.build_variant(train_y, name, v.fraction, v.noise, params.seed)
            atomic.write_arrays(tmp / "variants" / f"{name}.npz", index=variant.index, y=variant.labels,
                                changed=variant.changed)
            summaries[name] = variant.summary(name, v.fraction, v.noise)
            atomic.write_json(tmp / "variants" / f"{name}.json", summaries[name])
    return summaries

"""The prepare stage: raw MNIST files -> (deskewed,) normalized train/val/test arrays and training-set variants."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from mnistlr import atomic, data
from mnistlr.errors import MnistlrError
from mnistlr.params import Params

SAMPLES = 12  # test digits kept plain and deskewed for the report's before/after figure


def resolve_preprocessing(params: Params, deskewed_train: np.ndarray | None) -> tuple[data.Preprocessing, str]:
    """The preprocessing of this run's inputs, and where its mean and std came from.

    `auto` means MNIST's published statistics for plain pixels and the deskewed training split's own
    (`deskewed_train`, pixels in [0, 1]) for deskewed ones (deskewing blurs a little, so its std is lower);
    numbers in params are used as they are.
    """
    d = params.data
    if d.mean != "auto" and d.std != "auto":
        return data.Preprocessing(d.deskew, d.mean, d.std), "params.yaml"
    if d.deskew:
        mean, std = data.pixel_stats(deskewed_train)
        source = f"measured on the {len(deskewed_train)} deskewed training images"
    else:
        mean, std = data.MNIST_MEAN, data.MNIST_STD
        source = "MNIST's published training-set statistics"
    if d.mean != "auto" or d.std != "auto":
        source = f"params.yaml and {source}"
    return data.Preprocessing(d.deskew, mean if d.mean == "auto" else d.mean, std if d.std == "auto" else d.std), source


def prepare(
    params: Params, out_dir: str | Path, download_root: str | Path = "data/raw", deskew: bool | None = None
) -> dict[str, dict]:
    """Write {train,val,test}/{x,y}.npy, preprocessing.json, samples.npz and variants/<name>.{npz,json} into
    `out_dir`, atomically, as one folder. `deskew` overrides params' data.deskew (the studies' deskewed copy)."""
    if deskew is not None:
        params = params.model_copy(update={"data": params.data.model_copy(update={"deskew": deskew})})
    raw = data.load_mnist(data.locate(download_root))
    n_train = raw["train_images"].shape[0]
    if params.data.val_size >= n_train:
        raise MnistlrError(
            f"data.val_size = {params.data.val_size} leaves no training images; accepted: 1..{n_train - 1}"
        )
    train_idx, val_idx = data.split_indices(n_train, params.data.val_size, params.seed)
    d = params.data
    # auto statistics of deskewed pixels are measured on the deskewed training split: deskew it once, use it twice
    deskewed_train = (
        data.Preprocessing(True, 0.0, 1.0).pixels(raw["train_images"][train_idx])
        if d.deskew and "auto" in (d.mean, d.std)
        else None
    )
    pre, source = resolve_preprocessing(params, deskewed_train)
    splits = {
        "train": (raw["train_images"], raw["train_labels"], train_idx),
        "val": (raw["train_images"], raw["train_labels"], val_idx),
        "test": (raw["test_images"], raw["test_labels"], None),
    }
    summaries = {}
    with atomic.atomic_dir(Path(out_dir)) as tmp:
        for split, (images, labels, index) in splits.items():
            if index is not None:
                images, labels = images[index], labels[index]
            if split == "train" and deskewed_train is not None:
                x, deskewed_train = data.standardize(deskewed_train, pre.mean, pre.std, in_place=True), None
            else:
                x = pre.apply(images)
            # one split's floats at a time: the peak memory is the largest split, not all three
            x_path, y_path = data.split_files(tmp, split)
            atomic.write_array(x_path, x)
            atomic.write_array(y_path, labels)
            del x
        atomic.write_json(tmp / "preprocessing.json", {**asdict(pre), "mean_std_from": source})
        sample = raw["test_images"][:SAMPLES]
        atomic.write_arrays(
            tmp / "samples.npz", plain=sample, deskewed=data.deskew(sample), y=raw["test_labels"][:SAMPLES]
        )
        train_y = raw["train_labels"][train_idx]
        for name, v in params.variants.items():
            variant = data.build_variant(train_y, name, v.fraction, v.noise, params.seed)
            atomic.write_arrays(
                tmp / "variants" / f"{name}.npz", index=variant.index, y=variant.labels, changed=variant.changed
            )
            summaries[name] = variant.summary(name, v.fraction, v.noise)
            atomic.write_json(tmp / "variants" / f"{name}.json", summaries[name])
    return summaries

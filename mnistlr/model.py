"""The trained model as a file: weights, bias and the preprocessing its inputs went through.

A model is `logits = x @ weight.T + bias` on inputs deskewed (when it says so) and normalized with
its own mean and std.
It is stored as an .npz of plain arrays (no pickle), so evaluate, report and predict use it
with numpy alone; only training (mnistlr.train) builds the torch module.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistlr import atomic
from mnistlr.data import IMAGE_SIDE, IN_FEATURES, NUM_CLASSES, Preprocessing
from mnistlr.errors import MnistlrError

FIELDS = ("weight", "bias", "mean", "std", "deskew", "image_side")


@dataclass(frozen=True)
class Model:
    """Multinomial logistic regression: one linear map from 784 normalized pixels to 10 raw class scores."""

    weight: np.ndarray  # float32 [10, 784]
    bias: np.ndarray  # float32 [10]
    mean: float  # inputs are (pixel / 255 - mean) / std
    std: float
    image_side: int = IMAGE_SIDE
    deskew: bool = False  # pixels were deskewed (mnistlr.data.deskew) before normalizing

    @property
    def preprocessing(self) -> Preprocessing:
        """What this model's inputs must go through: predict applies it, evaluate checks the prepared data's."""
        return Preprocessing(self.deskew, self.mean, self.std, self.image_side)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw class scores [N, 10] of normalized inputs [N, 784] (or [N, 28, 28])."""
        return np.asarray(x, dtype=np.float32).reshape(len(x), -1) @ self.weight.T + self.bias

    def save(self, path: str | Path) -> None:
        """Write the model atomically as an .npz of plain arrays."""
        atomic.write_arrays(
            path,
            weight=self.weight,
            bias=self.bias,
            mean=np.float64(self.mean),
            std=np.float64(self.std),
            deskew=np.bool_(self.deskew),
            image_side=np.int64(self.image_side),
        )


def load_model(path: str | Path) -> Model:
    """Read a model written by the train stage; anything else is a one-line error naming what is wrong,
    a model whose weight, bias, mean or std is nan or infinite (or whose std is not > 0) included."""
    path = Path(path)
    if not path.is_file():
        raise MnistlrError(missing_model(path))
    try:
        with np.load(path, allow_pickle=False) as blob:
            arrays = {k: blob[k] for k in blob.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MnistlrError(f"{path}: not a model file written by the train stage ({first})") from None
    missing = [k for k in FIELDS if k not in arrays]
    if missing:
        raise MnistlrError(f"{path}: model file lacks {', '.join(missing)}; retrain it with the train stage")
    scalars = [
        k
        for k in ("mean", "std", "deskew", "image_side")
        if arrays[k].shape != () or arrays[k].dtype.kind not in ("b" if k == "deskew" else "fiu")
    ]
    if scalars:
        raise MnistlrError(f"{path}: {', '.join(scalars)} must be a single number; retrain it with the train stage")
    numeric = [k for k in ("weight", "bias") if arrays[k].dtype.kind not in "fiu"]
    if numeric:
        raise MnistlrError(
            f"{path}: {', '.join(numeric)} must be numbers, not {arrays[numeric[0]].dtype}; "
            "retrain it with the train stage"
        )
    with np.errstate(over="ignore", invalid="ignore"):  # a value beyond float32 becomes inf, refused below
        weight, bias = arrays["weight"].astype(np.float32), arrays["bias"].astype(np.float32)
    if weight.shape != (NUM_CLASSES, IN_FEATURES) or bias.shape != (NUM_CLASSES,):
        raise MnistlrError(
            f"{path}: weight {weight.shape} and bias {bias.shape}; expected "
            f"({NUM_CLASSES}, {IN_FEATURES}) and ({NUM_CLASSES},)"
        )
    mean, std = float(arrays["mean"]), float(arrays["std"])
    problems = non_finite(weight=weight, bias=bias)
    problems += [f"{k} is {v}" for k, v in (("mean", mean), ("std", std)) if not math.isfinite(v)]
    if math.isfinite(std) and std <= 0:
        problems.append(f"std is {std}, not > 0")
    if problems:
        # a diverged or damaged fit: its scores would be nan, or its inputs divided by zero
        raise MnistlrError(
            f"{path}: {', '.join(problems)}; a model needs finite weights, bias and mean "
            "and a std > 0; retrain it with the train stage"
        )
    return Model(weight, bias, mean, std, int(arrays["image_side"]), bool(arrays["deskew"]))


def missing_model(path: Path) -> str:
    """What to do when no model file is at `path`: the .npz it may have meant, else the models beside it,
    else train one."""
    npz = path.with_name(path.name + ".npz")
    if path.suffix != ".npz" and npz.is_file():
        return f"{path} not found; did you mean {npz}?"
    folder = path if path.is_dir() else path.parent
    models = sorted(p.name for p in folder.glob("*.npz") if p.is_file()) if folder.is_dir() else []
    what = f"{path} is a folder, not a model file" if path.is_dir() else f"no model at {path}"
    if models:
        where = "in it" if folder == path else "here" if folder == Path() else f"in {folder}"
        return f"{what}; models {where}: {', '.join(str(folder / m) for m in models)}"
    return f"{what}; run the train stage first (dvc repro)"


def non_finite(**arrays: np.ndarray) -> list[str]:
    """'NAME has N non-finite values (nan or inf)' for each array holding any (as float32, as used)."""
    counts = {name: int(np.count_nonzero(~np.isfinite(a))) for name, a in arrays.items()}
    return [f"{name} has {n} non-finite value{'s' if n != 1 else ''} (nan or inf)" for name, n in counts.items() if n]

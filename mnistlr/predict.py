"""`mnistlr predict`: classify digit images with a trained model, in numpy.

Each image is turned into an MNIST-style digit the way NIST's digits became MNIST:
grayscale -> invert when the background is light (MNIST is white ink on black) -> crop to the
digit's bounding box -> scale to fit a 20x20 box keeping the aspect ratio (anti-aliased) ->
paste into 28x28 so the centre of mass sits at the centre (14, 14) -> [0, 1] -> normalized
with the mean and std the model file carries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnistlr import metrics
from mnistlr.data import IMAGE_SIDE
from mnistlr.errors import MnistlrError
from mnistlr.model import Model, load_model

TOP_K = 3
SIZE, BOX = IMAGE_SIDE, 20
INK_THRESHOLD = 0.2  # share of the (background-subtracted) ink range that counts as digit
MIN_CONTRAST = 16  # grey levels (of 255) between background and ink; less is a blank image


def load_gray(path: str | Path) -> np.ndarray:
    """A file as float grayscale in [0, 255]; transparency is composited on white."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba)
            return np.asarray(img.convert("L"), dtype=np.float64)
    except FileNotFoundError:
        raise MnistlrError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MnistlrError(f"{path}: not a readable image (PNG or JPEG expected): {str(exc).splitlines()[0]}") from None


def to_mnist(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """[H, W] grayscale in [0, 255] -> [28, 28] float in [0, 1], white digit on black, MNIST-centred."""
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 2 or gray.size == 0:
        raise MnistlrError(f"{name}: expected a 2-D grayscale image, got shape {gray.shape}")
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = gray - background if background < 128 else background - gray  # ink bright, background 0
    ink = np.clip(ink, 0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise MnistlrError(
            f"{name}: blank image (no stroke differs from the background by {MIN_CONTRAST} grey levels or more); "
            "expected one dark or light digit on a plain background"
        )
    ink = np.where(ink >= INK_THRESHOLD * peak, ink, 0.0) / peak  # drop faint noise; ink max 1
    rows, cols = np.nonzero(ink)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    img = Image.fromarray((crop * 255).astype(np.uint8), mode="L").resize((nw, nh), Image.Resampling.LANCZOS)
    small = np.asarray(img, dtype=np.float64) / 255.0
    cy, cx = center_of_mass(small)
    top = int(np.clip(round(SIZE / 2 - cy), 0, SIZE - nh))
    left = int(np.clip(round(SIZE / 2 - cx), 0, SIZE - nw))
    out = np.zeros((SIZE, SIZE))
    out[top : top + nh, left : left + nw] = small
    return np.clip(out, 0.0, 1.0)


def center_of_mass(img: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre, in pixel-centre coordinates + 0.5 (so a 28-wide
    uniform image has its centre at 14.0)."""
    total = img.sum()
    if total <= 0:
        return img.shape[0] / 2, img.shape[1] / 2
    r = np.arange(img.shape[0]) + 0.5
    c = np.arange(img.shape[1]) + 0.5
    return float((img.sum(1) * r).sum() / total), float((img.sum(0) * c).sum() / total)


def preprocess_file(path: str | Path, model: Model) -> np.ndarray:
    """One image file -> float32 [784], normalized as the model's training inputs were."""
    x = to_mnist(load_gray(path), str(path))
    return ((x - model.mean) / model.std).astype(np.float32).reshape(-1)


def predict_files(paths: list[Path], model_path: Path, top_k: int = TOP_K) -> list[dict]:
    """[{'image', 'prediction', 'top': [{'class', 'probability'}, ...]}] for each path, in order."""
    model = load_model(model_path)
    x = np.stack([preprocess_file(p, model) for p in paths])
    probs = metrics.softmax(model.logits(x))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    return [
        {
            "image": str(p),
            "prediction": int(classes[0]),
            "top": [{"class": int(k), "probability": round(float(row[k]), 6)} for k in classes],
        }
        for p, classes, row in zip(paths, order, probs)
    ]

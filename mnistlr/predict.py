"""`mnistlr predict`: classify digit images with a trained model, in numpy.

Each image is turned into an MNIST-style digit the way NIST's digits became MNIST, and an image that
already is one passes through unchanged:

1. decode to grayscale, transparency composited on white. A large image is reduced to about WORK_SIDE
   pixels a side before any float array exists (JPEG: while decoding, Image.draft; others: Image.reduce,
   band by band where transparency must be composited first); a file that would cost more than the
   MAX_*_BYTES limits to decode is a one-line error, as is one over PIL's decompression-bomb limit;
2. ink = distance from the background level (the median of the border), so dark ink on light paper
   and light ink on dark ground both become white on black; the border's noise level is subtracted
   and weak ink is stretched so the darkest stroke is 1. Faint anti-aliased ink is kept, not thresholded;
3. a digit that is already MNIST-form (a 28x28 image whose digit fits the 20x20 box) is not resampled.
   Any other is fitted the MNIST way: its bounding box (a threshold only finds the box) is scaled to
   fit 20x20 keeping the aspect ratio, with area anti-aliasing; a pen thinner than MIN_STROKE (at that
   scale) is widened to it;
4. the digit is moved by whole pixels so its centre of mass lies where MNIST puts it: in pixel
   (14, 14) of the 28x28 field (0-based index, rounded), as in every MNIST digit;
5. [0, 1] -> deskewed when the model file says its inputs were, then normalized with the mean and std
   it carries.

bench/predict_fidelity.py chooses MIN_STROKE on MNIST training digits held out of training and
measures what this preprocessing costs in accuracy on the MNIST test digits, kind of file by kind.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from mnistlr import metrics
from mnistlr.data import IMAGE_SIDE
from mnistlr.errors import MnistlrError
from mnistlr.model import Model, load_model

TOP_K = 3
SIZE, BOX = IMAGE_SIDE, 20
CENTRE = 14  # MNIST digits have their centre of mass in pixel 14 (0-based index, rounded) of 28
BOX_THRESHOLD = 0.25  # ink share (of full contrast) that counts as the digit's body when finding its box
MIN_CONTRAST = 16  # grey levels (of 255) between background and ink; less is a blank image
FULL_CONTRAST = 0.99  # ink this close to the page's full range is left as it is (MNIST digits peak at 254-255)
NOISE_SIGMAS = 3.0  # the border's robust noise level, times this, is subtracted from the ink
MARGIN = 2  # output pixels of context kept around the digit's box when it is resampled (faint edges)
FITTED_MIN = 17  # a 28x28 digit whose long side is FITTED_MIN..BOX pixels counts as already fitted
# Pixels at the 28x28 scale: a thinner pen is widened to this (MNIST's median stroke is 2.5). Chosen by
# `python bench/predict_fidelity.py --model models/full.npz --out bench/results` on MNIST training images
# held out of training (the prepare stage's 10k validation split), as the threshold of 0 (never widen) and
# 1.0 to 3.0 px in 0.1 steps that gets the most of them right through predict, written as each kind of file
# the bench resamples (bench/results/predict_fidelity.md); the test digits only measure the result.
MIN_STROKE = 2.3
SUPERSAMPLE = 4  # resolution (times the output's) at which a thin pen is widened
WORK_SIDE = 1024  # larger images are reduced to about this many pixels a side before any float work
STRIP_PIXELS = 1 << 22  # pixels converted at a time while reducing a large image with transparency
# What one image may cost, so that any file is answered in about a second or two and well under 500 MB:
MAX_FILE_BYTES = 100 << 20  # the file (a JPEG's whole file is entropy-decoded, even when drawn small)
MAX_DATA_BYTES = 150 << 20  # what the decoder produces: channels x bytes a sample x pixels, or the DCT
#                             coefficients a progressive JPEG is buffered as (2 bytes each, full size)
MAX_BUFFER_BYTES = 256 << 20  # PIL's buffer for the decoded image (4 bytes a pixel for colour)
PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # else 4 (PIL's storage)
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
DIRECT_REDUCE = ("L", "RGB", "I", "F")  # modes Image.reduce averages as they are


def load_gray(path: str | Path) -> np.ndarray:
    """A file as float grayscale in [0, 255], reduced to at most about WORK_SIDE pixels a side;
    transparency is composited on white. Unreadable, empty or oversized images are one-line errors."""
    try:
        size = os.stat(path).st_size
        if size == 0:
            raise MnistlrError(f"{path}: empty file, not an image")
        if size > MAX_FILE_BYTES:
            raise MnistlrError(
                f"{path}: {size >> 20} MB file, more than {MAX_FILE_BYTES >> 20} MB; "
                f"scale the image down (a digit needs no more than {WORK_SIDE} pixels a side)"
            )
        with warnings.catch_warnings():
            # PIL warns between MAX_IMAGE_PIXELS and twice that; predict decodes such an image only within
            # its own byte limits (above), and beyond twice the limit PIL still refuses (DecompressionBombError).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return image_to_gray(img, str(path))
    except FileNotFoundError:
        raise MnistlrError(f"{path}: image not found") from None
    except IsADirectoryError:
        raise MnistlrError(f"{path}: is a folder, not an image") from None
    except Image.DecompressionBombError as exc:
        raise MnistlrError(f"{path}: image too large to decode safely ({_first_line(exc)})") from None
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        zlib.error,
        IndexError,
        TypeError,
        KeyError,
    ) as exc:  # what PIL's decoders raise on broken files
        raise MnistlrError(f"{path}: not a readable image (PNG or JPEG expected): {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def reduction(width: int, height: int) -> int:
    """The whole factor that brings the longer side to at most WORK_SIDE (1: none)."""
    return max(1, math.ceil(max(width, height) / WORK_SIDE))


def image_to_gray(img: Image.Image, name: str = "image") -> np.ndarray:
    """An opened (not yet decoded) PIL image -> float grayscale [H, W] in [0, 255], at most about
    WORK_SIDE a side. A large image never exists as floats at full size: JPEG decodes at 1/2 to 1/8
    scale (Image.draft), other formats are decoded once and block-averaged (Image.reduce) before any
    conversion. An image that would cost more than MAX_DATA_BYTES or MAX_BUFFER_BYTES is an error."""
    (width, height), mode = img.size, img.mode
    if width == 0 or height == 0:
        raise MnistlrError(f"{name}: empty image ({width}x{height} pixels)")
    factor = reduction(width, height)
    coefficients = jpeg_coefficient_bytes(img) if img.format == "JPEG" and img.info.get("progressive") else 0
    if factor > 1 and img.format == "JPEG":
        img.draft("L", (math.ceil(width / factor), math.ceil(height / factor)))  # DCT scaling while decoding
        factor = reduction(*img.size)
    data, buffer = decode_bytes(img)
    data = max(data, coefficients)
    if data > MAX_DATA_BYTES or buffer > MAX_BUFFER_BYTES:
        raise MnistlrError(
            f"{name}: {width}x{height} {mode} image needs {max(data, buffer) >> 20} MB to decode, more than "
            f"{(MAX_DATA_BYTES if data > MAX_DATA_BYTES else MAX_BUFFER_BYTES) >> 20} MB; "
            f"scale it down (a digit needs no more than {WORK_SIDE} pixels a side)"
        )
    img.load()
    if factor == 1:
        return _strip_to_gray(img, 1)
    if img.mode in DIRECT_REDUCE:  # no transparency, no palette: block-average the decoded image at once
        return _strip_to_gray(img.reduce(factor), 1)
    # transparency must be composited (and a palette resolved) before averaging: a band of rows at a time
    width, height = img.size
    rows = max(factor, STRIP_PIXELS // width // factor * factor)  # a whole number of reduction blocks
    strips = [
        _strip_to_gray(img.crop((0, top, width, min(height, top + rows))), factor) for top in range(0, height, rows)
    ]
    return np.concatenate(strips, axis=0)


def decode_bytes(img: Image.Image) -> tuple[int, int]:
    """(pixel data the decoder produces, PIL's buffer for it) in bytes, at the size it will be decoded."""
    pixels = img.size[0] * img.size[1]
    deep = any(";16" in str(tile[3]) for tile in img.tile)  # 16 bits a sample (e.g. PNG rawmode RGB;16B)
    return pixels * len(img.getbands()) * (2 if deep else 1), pixels * PIXEL_BYTES.get(img.mode, 4)


def jpeg_coefficient_bytes(img: Image.Image) -> int:
    """A progressive JPEG is decoded from a buffer of all its DCT coefficients (2 bytes each, every
    component at its own sampling, whole 8x8 blocks), whatever size it is drawn at."""
    layers = getattr(img, "layer", None) or [("", 1, 1, 0)] * len(img.getbands())
    hmax, vmax = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    width, height = img.size
    return sum(
        2 * 64 * math.ceil(width * layer[1] / hmax / 8) * math.ceil(height * layer[2] / vmax / 8) for layer in layers
    )


def _strip_to_gray(strip: Image.Image, factor: int) -> np.ndarray:
    """An image or a band of its rows -> float grayscale in [0, 255] (alpha composited on white),
    block-averaged by factor."""
    if strip.mode in ALPHA_MODES or (strip.mode == "P" and "transparency" in strip.info):
        rgba = strip.convert("RGBA")
        strip = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("L")
        gray = strip.convert("F")
    elif strip.mode.startswith("I") or strip.mode == "F":  # 16- or 32-bit grayscale: scale, don't clip
        gray = strip.convert("F")
        if strip.mode.startswith("I;16") or (strip.mode == "I" and np.asarray(gray).max() > 255):
            gray = gray.point(lambda v: v * (255 / 65535))
    else:
        gray = strip.convert("L").convert("F")
    if factor > 1:
        gray = gray.reduce(factor)  # mean of each factor x factor block; the shape of the digit is kept
    return np.asarray(gray, dtype=np.float64)


def to_mnist(gray: np.ndarray, name: str = "image", min_stroke: float = MIN_STROKE) -> np.ndarray:
    """[H, W] grayscale in [0, 255] -> [28, 28] float in [0, 1], white digit on black, MNIST-fitted and
    centred. An MNIST digit (28x28, white on black, fitted in 20x20, centred by mass) comes out as
    pixel / 255, unchanged. A resampled digit's pen is widened to min_stroke (0: never widened)."""
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 2 or gray.size == 0:
        raise MnistlrError(f"{name}: expected a 2-D grayscale image, got shape {gray.shape}")
    ink = ink_map(gray, name)
    r0, r1, c0, c1 = bounding_box(ink >= BOX_THRESHOLD)  # the digit's body: the threshold only finds the box
    if gray.shape == (SIZE, SIZE) and max(r1 - r0, c1 - c0) <= BOX:
        f0, f1, g0, g1 = bounding_box(ink > 0)  # with its faintest anti-aliased edge
        if max(f1 - f0, g1 - g0) >= FITTED_MIN:  # already fitted: no resampling, at most a whole-pixel move
            return place(ink, (r0, r1, c0, c1))
    return place(*fit_box(ink, r0, r1, c0, c1, min_stroke))


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(first row, last row + 1, first column, last column + 1) of the True pixels of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def ink_map(gray: np.ndarray, name: str = "image") -> np.ndarray:
    """Grayscale -> ink in [0, 1] on a 0 background: the distance from the background level (the
    border's median), less the border's noise level, scaled so full-contrast ink is 1."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    light = background >= 128  # dark ink on light paper: invert
    ink = background - gray if light else gray - background
    full = background if light else 255.0 - background  # the most ink this background allows
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise MnistlrError(
            f"{name}: blank image (no stroke differs from the background by {MIN_CONTRAST} grey levels or more); "
            "expected one dark or light digit on a plain background"
        )
    spread = 1.4826 * float(np.median(np.abs(border - background)))  # robust sigma of the paper's noise
    noise = min(NOISE_SIGMAS * spread, 0.25 * peak)
    if noise > 0:
        ink = ink - noise
        peak -= noise
        full -= noise
    level = full if peak >= FULL_CONTRAST * full else peak  # weak ink (grey pencil, dim photo) is stretched
    return np.clip(ink / level, 0.0, 1.0)


def fit_box(
    ink: np.ndarray, r0: int, r1: int, c0: int, c1: int, min_stroke: float = MIN_STROKE
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Scale the digit's box [r0:r1, c0:c1] so its longer side is BOX pixels (aspect kept, area
    anti-aliased), with MARGIN output pixels of context around it. A pen thinner than min_stroke
    (at the 28x28 scale) is thickened to it by a grey dilation at SUPERSAMPLE times the resolution.
    Returns the patch and the fitted box's rows and columns in it."""
    h, w = r1 - r0, c1 - c0
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    box = (MARGIN, MARGIN + nh, MARGIN, MARGIN + nw)
    thicken = round((min_stroke - stroke_width(ink[r0:r1, c0:c1] >= 0.5) * scale) * SUPERSAMPLE / 2)
    if thicken <= 0:
        return resample(ink, (r0 + r1) / 2, (c0 + c1) / 2, scale, (nh + 2 * MARGIN, nw + 2 * MARGIN)), box
    fine = resample(
        ink,
        (r0 + r1) / 2,
        (c0 + c1) / 2,
        scale * SUPERSAMPLE,
        ((nh + 2 * MARGIN) * SUPERSAMPLE, (nw + 2 * MARGIN) * SUPERSAMPLE),
    )
    fine /= max(float(fine.max()), 1e-12)  # a hairline averages out faint: make it full ink, then widen it
    img = Image.fromarray(fine.astype(np.float32), mode="F").filter(ImageFilter.MaxFilter(2 * thicken + 1))
    return np.asarray(img.reduce(SUPERSAMPLE), dtype=np.float64), box


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary digit, in pixels: area / length, the length being half the perimeter;
    the perimeter counted along pixel edges is 4/pi times the true one on average over stroke directions."""
    area = int(mask.sum())
    if area == 0:
        return 0.0
    padded = np.pad(mask, 1)
    edges = np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1])
    return 8 * area / (math.pi * edges)


def resample(ink: np.ndarray, cy: float, cx: float, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """The output patch of `shape` (rows, columns) that shows the ink around (cy, cx) enlarged by
    `scale` (area averaging when shrinking, bilinear when enlarging); outside the image is 0."""
    oh, ow = shape
    ih, iw = oh / scale, ow / scale  # the input rectangle that maps onto the patch, centred on (cy, cx)
    y0, x0 = cy - ih / 2, cx - iw / 2
    top, left = max(0, math.floor(y0)), max(0, math.floor(x0))
    bottom, right = min(ink.shape[0], math.ceil(y0 + ih)), min(ink.shape[1], math.ceil(x0 + iw))
    pad = 1
    crop = np.zeros((bottom - top + 2 * pad, right - left + 2 * pad), np.float32)
    crop[pad : pad + bottom - top, pad : pad + right - left] = ink[top:bottom, left:right]
    # PIL needs the rectangle inside the array: shift it by the crop's offset, clamp what lies outside (all 0)
    by, bx = y0 - top + pad, x0 - left + pad
    if by < 0 or bx < 0 or by + ih > crop.shape[0] or bx + iw > crop.shape[1]:
        extra = math.ceil(max(-by, -bx, by + ih - crop.shape[0], bx + iw - crop.shape[1], 0)) + 1
        crop = np.pad(crop, extra)
        by, bx = by + extra, bx + extra
    resample_filter = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    img = Image.fromarray(crop, mode="F").resize((ow, oh), resample_filter, box=(bx, by, bx + iw, by + ih))
    return np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)


def place(patch: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Paste the patch into the 28x28 field, moved by whole pixels so that its centre of mass lies in
    pixel (CENTRE, CENTRE); the digit's box (rows box[0]:box[1], columns box[2]:box[3] of the patch)
    is kept inside the field, so a lopsided digit is never cut."""
    cy, cx = center_of_mass(patch)
    r0, r1, c0, c1 = box
    top = int(np.clip(_move(cy), -r0, SIZE - r1))
    left = int(np.clip(_move(cx), -c0, SIZE - c1))
    ph, pw = patch.shape
    sr, sc = max(0, -top), max(0, -left)  # first patch row/column inside the field
    dr, dc = max(0, top), max(0, left)
    nr, nc = min(ph - sr, SIZE - dr), min(pw - sc, SIZE - dc)
    out = np.zeros((SIZE, SIZE))
    out[dr : dr + nr, dc : dc + nc] = patch[sr : sr + nr, sc : sc + nc]
    return out


def _move(centre: float) -> int:
    """Whole pixels that bring a centre of mass into pixel CENTRE; none when it is within half a pixel."""
    return 0 if abs(CENTRE - centre) <= 0.5 + 1e-9 else round(CENTRE - centre)


def center_of_mass(img: np.ndarray) -> tuple[float, float]:
    """(row, column) of the intensity-weighted centre in 0-based pixel-index coordinates (pixel i spans
    i - 0.5 to i + 0.5); MNIST digits have it within half a pixel of (14, 14)."""
    total = img.sum()
    if total <= 0:
        return (img.shape[0] - 1) / 2, (img.shape[1] - 1) / 2
    r = np.arange(img.shape[0])
    c = np.arange(img.shape[1])
    return float((img.sum(1) * r).sum() / total), float((img.sum(0) * c).sum() / total)


def preprocess_gray(gray: np.ndarray, model: Model, name: str = "image") -> np.ndarray:
    """Grayscale [H, W] in [0, 255] -> float32 [784], preprocessed as the model's training inputs were."""
    x = to_mnist(gray, name)
    return model.preprocessing.apply_float(x[None])[0]


def preprocess_file(path: str | Path, model: Model) -> np.ndarray:
    """One image file -> float32 [784], preprocessed as the model's training inputs were."""
    return preprocess_gray(load_gray(path), model, str(path))


def predict_files(paths: list[Path], model_path: Path, top_k: int = TOP_K) -> list[dict]:
    """For each path, in order: {'image', 'prediction', 'top': [{'class', 'probability'}, ...]}, or
    {'image', 'error'} for an image that cannot be read or holds no digit (the reason, without the
    file's name), so that one bad file costs no other its answer. A bad model file raises MnistlrError."""
    model = load_model(model_path)
    inputs, results = [], []
    for p in paths:
        try:
            inputs.append(preprocess_file(p, model))
            results.append({"image": str(p)})
        except MnistlrError as exc:
            results.append({"image": str(p), "error": str(exc).removeprefix(f"{p}: ")})
    if not inputs:
        return results
    probs = metrics.softmax(model.logits(np.stack(inputs)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    good = [r for r in results if "error" not in r]
    for r, classes, row in zip(good, order, probs, strict=True):
        r["prediction"] = int(classes[0])
        r["top"] = [{"class": int(k), "probability": round(float(row[k]), 6)} for k in classes]
    return results

"""MNIST in: the four files (mirror or download, md5-verified), IDX decoding, split, variants, prepared arrays.

Everything here is numpy: the stages that only read data never pay for importing torch.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistlr.atomic import atomic_path
from mnistlr.errors import MnistlrError

IMAGE_SIDE = 28
IN_FEATURES = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10

# --- where the files come from -----------------------------------------------------------------

MIRROR_ENV = "MNISTLR_MNIST_DIR"
# An MD5SUMS file that replaces the canonical sums below (test fixtures with synthetic files).
MD5SUMS_ENV = "MNISTLR_MD5SUMS"
# Base URLs to download from, space-separated, tried in order (default: DOWNLOAD_URLS).
URLS_ENV = "MNISTLR_MNIST_URLS"

# The public release's files and md5 sums (the same ones torchvision checks).
CANONICAL_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# torchvision's mirrors of the same bytes, in its order of preference.
DOWNLOAD_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def read_md5sums(path: str | Path) -> dict[str, str]:
    """Parse an `md5sum`-style file: 'HASH  NAME' per line."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest.lower()
    missing = sorted(set(CANONICAL_MD5) - set(sums))
    if missing:
        raise MnistlrError(f"{path}: no md5 for {', '.join(missing)}")
    return sums


def expected_md5() -> dict[str, str]:
    """The md5 each file must have: canonical, unless MNISTLR_MD5SUMS names a replacement."""
    override = os.environ.get(MD5SUMS_ENV)
    return read_md5sums(override) if override else dict(CANONICAL_MD5)


def verify(path: Path, md5: str) -> None:
    """Raise a clear error when `path` does not have the md5 it must have."""
    found = file_md5(path)
    if found != md5:
        raise MnistlrError(f"{path}: md5 {found} does not match the expected {md5}; the file is corrupt or not MNIST")


def from_mirror(mirror: str | Path) -> dict[str, Path]:
    """The four files in a local mirror folder, each md5-verified; nothing is written there."""
    mirror = Path(mirror)
    if not mirror.is_dir():
        raise MnistlrError(f"{MIRROR_ENV}={mirror} is not a folder holding the four MNIST .gz files")
    sums = expected_md5()
    paths = {}
    for name in CANONICAL_MD5:
        path = mirror / name
        if not path.is_file():
            raise MnistlrError(f"{name} is missing from the mirror {MIRROR_ENV}={mirror}")
        verify(path, sums[name])
        paths[name] = path
    return paths


def _fetch(url: str, dest: Path) -> None:
    """Download `url` to `dest` through a temp file, so an interrupted download leaves nothing behind."""
    with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
        shutil.copyfileobj(response, f)


def download(root: str | Path) -> dict[str, Path]:
    """Download (or reuse) the four files into `root`, trying each base URL in turn; md5-verified."""
    root = Path(root)
    sums = expected_md5()
    bases = os.environ.get(URLS_ENV, "").split() or list(DOWNLOAD_URLS)
    paths = {}
    for name in CANONICAL_MD5:
        path = root / name
        if not (path.is_file() and file_md5(path) == sums[name]):
            errors = []
            for base in bases:
                try:
                    _fetch(base + name, path)
                    verify(path, sums[name])
                    break
                except (OSError, ValueError, MnistlrError) as exc:  # try the next base URL, report all
                    path.unlink(missing_ok=True)
                    errors.append(f"{base}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
            else:
                raise MnistlrError(
                    f"could not download {name} ({'; '.join(errors)}); "
                    f"without internet, set {MIRROR_ENV} to a folder holding the four MNIST .gz files"
                )
        paths[name] = path
    return paths


def locate(download_root: str | Path = "data/raw") -> dict[str, Path]:
    """The four verified MNIST files: from MNISTLR_MNIST_DIR when set, else downloaded."""
    mirror = os.environ.get(MIRROR_ENV)
    return from_mirror(mirror) if mirror else download(download_root)


# --- IDX decoding --------------------------------------------------------------------------------

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def read_bytes(path: str | Path) -> bytes:
    """The file's content, gunzipped when it ends in .gz; a broken archive is a clear error."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise MnistlrError(f"{path}: not a readable gzip file ({exc}); delete it and fetch it again") from None


def _parse_idx(data: bytes, magic: int, name: str) -> np.ndarray:
    """The payload of an IDX file as a uint8 array of the declared shape; every header field checked."""
    if len(data) < 4:
        raise MnistlrError(f"{name}: {len(data)} bytes is too short for an IDX header")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise MnistlrError(f"{name}: magic number {found:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistlrError(f"{name}: header needs {header} bytes, file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    payload = len(data) - header
    if payload != expected:
        raise MnistlrError(f"{name}: header declares shape {shape} = {expected} bytes of data, file holds {payload}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def decode_images(data: bytes, name: str = "images") -> np.ndarray:
    """IDX image bytes -> uint8 [N, rows, cols]."""
    return _parse_idx(data, IMAGES_MAGIC, name)


def decode_labels(data: bytes, name: str = "labels") -> np.ndarray:
    """IDX label bytes -> int64 [N], every label in 0-9."""
    labels = _parse_idx(data, LABELS_MAGIC, name).astype(np.int64)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise MnistlrError(f"{name}: label {int(labels[i])} at index {i} is outside 0-{NUM_CLASSES - 1}")
    return labels


def read_images(path: str | Path) -> np.ndarray:
    """Read an IDX image file (.gz or raw)."""
    return decode_images(read_bytes(path), str(path))


def read_labels(path: str | Path) -> np.ndarray:
    """Read an IDX label file (.gz or raw)."""
    return decode_labels(read_bytes(path), str(path))


def load_mnist(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """Decode the four files into train/test images and labels; counts must agree."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_images(paths[f"{prefix}-images-idx3-ubyte.gz"])
        labels = read_labels(paths[f"{prefix}-labels-idx1-ubyte.gz"])
        if images.shape[0] != labels.shape[0]:
            raise MnistlrError(
                f"{split}: {images.shape[0]} images but {labels.shape[0]} labels; the files do not belong together"
            )
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


# --- preprocessing: deskew, normalize ------------------------------------------------------------

# MNIST's published training-set statistics of pixels scaled to [0, 1] (all 60 000 images), the
# normalization of plain inputs unless params set their own.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# Images deskewed at a time. Each needs ~60 KB of scratch (coordinates, indices, gathers): 31 MB for
# 512, which also stays in the CPU's caches (60 000 images: ~2 s at 512 per chunk, 6 s at 8192).
DESKEW_CHUNK = 512


def moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row centre, column centre, slant) of each image [N, H, W] from its intensity moments.

    slant = cov(row, col) / var(row): how many columns the ink moves right per row down. A blank
    image has its centre in the middle and slant 0.
    """
    img = np.asarray(images, dtype=np.float64)
    _, h, w = img.shape
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    mass = img.sum(axis=(1, 2))
    blank = mass <= 0
    safe = np.where(blank, 1.0, mass)
    row_mass, col_mass = img.sum(axis=2), img.sum(axis=1)  # [N, H], [N, W]
    mr = np.where(blank, (h - 1) / 2, row_mass @ rows / safe)
    mc = np.where(blank, (w - 1) / 2, col_mass @ cols / safe)
    dr = rows[None, :] - mr[:, None]
    var_r = (row_mass * dr**2).sum(axis=1) / safe
    cov = np.einsum("nij,ni,nj->n", img, dr, cols[None, :] - mc[:, None]) / safe
    slant = np.where(var_r > 0, cov / np.where(var_r > 0, var_r, 1.0), 0.0)
    return mr, mc, slant


def deskew(images: np.ndarray) -> np.ndarray:
    """Straighten each digit (LeCun et al.'s deskewing): shear its rows so its principal axis is
    vertical, and move its centre of mass to the middle of the field. Bilinear sampling, zeros outside.

    Input [N, H, W] in any intensity scale (uint8 or float); output float32 in the same scale.
    Vectorized over the set, in chunks; deterministic.
    """
    images = np.asarray(images)
    n, h, w = images.shape
    out = np.empty((n, h, w), dtype=np.float32)
    cr, cc = (h - 1) / 2, (w - 1) / 2
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    for start in range(0, n, DESKEW_CHUNK):
        img = images[start : start + DESKEW_CHUNK].astype(np.float32)
        k = img.shape[0]
        mr, mc, slant = moments(img)
        # Output pixel (i, j) reads the input at (i + mr - cr, j + mc - cc + slant * (i - cr)): the
        # centre of mass lands on the field's centre and a line of that slant through it on column cc.
        src_r = np.broadcast_to((rows[None, :] + (mr - cr)[:, None])[:, :, None], (k, h, w))
        src_c = cols[None, None, :] + (mc - cc)[:, None, None] + slant[:, None, None] * (rows - cr)[None, :, None]
        r0, c0 = np.floor(src_r), np.floor(src_c)
        fr, fc = (src_r - r0).astype(np.float32), (src_c - c0).astype(np.float32)
        r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
        flat = img.reshape(-1)
        base = (np.arange(k) * h * w)[:, None, None]

        def at(r: np.ndarray, c: np.ndarray, flat: np.ndarray = flat, base: np.ndarray = base) -> np.ndarray:
            inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            return np.where(inside, flat[base + np.clip(r, 0, h - 1) * w + np.clip(c, 0, w - 1)], np.float32(0))

        top = at(r0, c0) * (1 - fc) + at(r0, c0 + 1) * fc
        bottom = at(r0 + 1, c0) * (1 - fc) + at(r0 + 1, c0 + 1) * fc
        out[start : start + k] = top * (1 - fr) + bottom * fr
    return out


def standardize(pixels: np.ndarray, mean: float, std: float, in_place: bool = False) -> np.ndarray:
    """float32 pixels in [0, 1], [N, H, W] or [N, H*W] -> float32 [N, H*W]: (x - mean) / std.

    `in_place`: the caller hands over a float32 array it no longer needs, which is overwritten instead
    of copied (a 50 000-image split is 157 MB of floats).
    """
    x = (np.asarray if in_place else np.array)(pixels, dtype=np.float32).reshape(len(pixels), -1)
    x -= np.float32(mean)
    x /= np.float32(std)
    return x


def normalize(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 784]: scaled to [0, 1], then (x - mean) / std."""
    x = images.reshape(images.shape[0], -1).astype(np.float32)
    x /= 255.0
    x -= np.float32(mean)
    x /= np.float32(std)
    return x


def pixel_stats(pixels: np.ndarray) -> tuple[float, float]:
    """(mean, std) of all pixels (in [0, 1]), accumulated in float64 and rounded to 4 decimals
    like MNIST's published 0.1307 / 0.3081. Two passes over chunks of images: a float64 copy of a
    whole training split would be 314 MB."""
    x = np.asarray(pixels).reshape(len(pixels), -1)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(x), DESKEW_CHUNK):
            yield x[start : start + DESKEW_CHUNK].astype(np.float64)

    mean = sum(float(c.sum()) for c in chunks()) / x.size
    var = sum(float(((c - mean) ** 2).sum()) for c in chunks()) / x.size
    return round(mean, 4), round(var**0.5, 4)


@dataclass(frozen=True)
class Preprocessing:
    """What a model's inputs went through, pixel scale [0, 1] -> model input; prepare records it, the
    model file carries it, predict and evaluate apply or check it."""

    deskew: bool
    mean: float
    std: float
    image_side: int = IMAGE_SIDE

    def pixels(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, side, side] -> float32 [0, 1], deskewed when the preprocessing says so."""
        x = deskew(images) if self.deskew else images.astype(np.float32)
        x /= np.float32(255.0)
        return x

    def apply(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, side, side] -> the model's inputs, float32 [N, side * side]."""
        return standardize(self.pixels(images), self.mean, self.std, in_place=True)

    def apply_float(self, pixels: np.ndarray) -> np.ndarray:
        """float pixels in [0, 1], [N, side, side] -> the model's inputs (predict's path)."""
        x = deskew(pixels) if self.deskew else pixels
        return standardize(x, self.mean, self.std)

    def describe(self) -> str:
        return f"deskew {'on' if self.deskew else 'off'}, mean {self.mean:g}, std {self.std:g}"


def load_preprocessing(prepared: str | Path) -> Preprocessing:
    """The preprocessing the prepared folder's arrays went through."""
    path = Path(prepared) / "preprocessing.json"
    if not path.is_file():
        raise MnistlrError(f"no prepared preprocessing record at {path}; run the prepare stage first")
    blob = json.loads(path.read_text())
    return Preprocessing(bool(blob["deskew"]), float(blob["mean"]), float(blob["std"]), int(blob["image_side"]))


# --- split, subsets, label noise ------------------------------------------------------------------


def derive_seed(seed: int, *salt: str) -> int:
    """A seed for one use of randomness (split, subset, noise of a variant, batch order), from `seed` and names."""
    for s in salt:
        seed = seed * 1_000_003 + zlib.crc32(s.encode())
    return seed % 2**63


def rng(seed: int, *salt: str) -> np.random.Generator:
    """A numpy generator with its own stream for each salt."""
    return np.random.default_rng(derive_seed(seed, *salt))


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, val) index sets covering range(n); val has `val_size` items."""
    perm = rng(seed, "split").permutation(n)
    return perm[val_size:], perm[:val_size]


def subset_size(n: int, fraction: float) -> int:
    """round(fraction * n), at least one."""
    return max(1, round(fraction * n))


def subset_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """The first round(fraction*n) of one seeded permutation: smaller subsets nest in larger ones."""
    return rng(seed, "subset").permutation(n)[: subset_size(n, fraction)]


def corrupt_labels(
    labels: np.ndarray, rate: float, gen: np.random.Generator, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Replace exactly round(rate*n) labels with a uniformly drawn *different* class.

    Returns (noisy labels, boolean mask of the changed positions).
    """
    n = labels.shape[0]
    k = round(rate * n)
    changed = np.zeros(n, dtype=bool)
    changed[gen.permutation(n)[:k]] = True
    # An offset in 1..C-1 (mod C) can never map a class onto itself.
    offset = gen.integers(1, num_classes, size=k)
    noisy = labels.copy()
    noisy[changed] = (labels[changed] + offset) % num_classes
    return noisy, changed


@dataclass(frozen=True)
class Variant:
    """A training-set variant: which training images, and their (possibly noisy) labels."""

    index: np.ndarray  # int64 positions into the train split
    labels: np.ndarray  # int64 labels used for training
    changed: np.ndarray  # bool, True where the label was corrupted

    def summary(self, name: str, fraction: float, noise: float) -> dict:
        """Small JSON-able description: size, class histogram, labels changed."""
        return {
            "name": name,
            "fraction": fraction,
            "noise": noise,
            "size": int(self.index.size),
            "labels_changed": int(self.changed.sum()),
            "class_histogram": np.bincount(self.labels, minlength=NUM_CLASSES).tolist(),
        }


def build_variant(train_labels: np.ndarray, name: str, fraction: float, noise: float, seed: int) -> Variant:
    """Subset the train split, then corrupt labels; seeded by `seed` and the variant's name."""
    index = subset_indices(train_labels.shape[0], fraction, seed)
    labels, changed = corrupt_labels(train_labels[index], noise, rng(seed, "noise", name))
    return Variant(index=index.astype(np.int64), labels=labels, changed=changed)


# --- the prepared folder -----------------------------------------------------------------------

SPLITS = ("train", "val", "test")


def _load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise MnistlrError(f"no prepared {what} at {path}; run the prepare stage first")
    with np.load(path, allow_pickle=False) as blob:
        return {k: blob[k] for k in blob.files}


def split_files(prepared: str | Path, split: str) -> tuple[Path, Path]:
    """The two .npy files of a prepared split: pixels x and labels y."""
    folder = Path(prepared) / split
    return folder / "x.npy", folder / "y.npy"


def load_split(prepared: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [N, 784], y int64 [N]) of 'train', 'val' or 'test' from a prepared folder.

    The pixels are memory-mapped copy-on-write: reading them costs no copy, and writing to them never
    reaches the file. A stage touches only the pages it reads.
    """
    if split not in SPLITS:
        raise MnistlrError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    x_path, y_path = split_files(prepared, split)
    if not (x_path.is_file() and y_path.is_file()):
        raise MnistlrError(f"no prepared split {split!r} at {x_path.parent}; run the prepare stage first")
    try:
        return np.load(x_path, mmap_mode="c", allow_pickle=False), np.load(y_path, allow_pickle=False)
    except ValueError as exc:
        raise MnistlrError(
            f"{x_path.parent}: not a prepared split ({str(exc).splitlines()[0]}); rerun the prepare stage"
        ) from None


def load_variant_index(prepared: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions in the train split, labels) of a training-set variant."""
    variant = _load_npz(Path(prepared) / "variants" / f"{name}.npz", f"variant {name!r}")
    return variant["index"], variant["y"]


def load_variant(prepared: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a training-set variant: its rows of the train split, with its labels."""
    index, labels = load_variant_index(prepared, name)
    x, _ = load_split(prepared, "train")
    return x[index], labels

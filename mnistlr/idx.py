"""Decode MNIST's IDX files (optionally gzip-compressed) into uint8 tensors, validating as it reads.

torchvision has a reader too, but it asserts instead of explaining and costs a
torchvision import; this one names what is wrong with a file.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from mnistlr.errors import MnistlrError

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
NUM_CLASSES = 10


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


def _parse(data: bytes, magic: int, name: str) -> tuple[tuple[int, ...], memoryview]:
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
        raise MnistlrError(
            f"{name}: header declares shape {shape} = {expected} bytes of data, file holds {payload}"
        )
    return shape, memoryview(data)[header:]


def decode_images(data: bytes, name: str = "images") -> torch.Tensor:
    """IDX image bytes -> uint8 tensor [N, rows, cols]."""
    shape, payload = _parse(data, IMAGES_MAGIC, name)
    return torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).reshape(shape).copy())


def decode_labels(data: bytes, name: str = "labels") -> torch.Tensor:
    """IDX label bytes -> int64 tensor [N], every label in 0-9."""
    shape, payload = _parse(data, LABELS_MAGIC, name)
    labels = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).astype(np.int64))
    bad = labels >= NUM_CLASSES
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise MnistlrError(f"{name}: label {int(labels[i])} at index {i} is outside 0-{NUM_CLASSES - 1}")
    return labels.reshape(shape)


def read_images(path: str | Path) -> torch.Tensor:
    """Read an IDX image file (.gz or raw)."""
    return decode_images(read_bytes(path), str(path))


def read_labels(path: str | Path) -> torch.Tensor:
    """Read an IDX label file (.gz or raw)."""
    return decode_labels(read_bytes(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """uint8 array -> IDX bytes (for tests and for writing small mirrors)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x00000800 | array.ndim
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()

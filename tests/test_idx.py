import gzip

import numpy as np
import pytest
import torch

from mnistlr import idx
from mnistlr.errors import MnistlrError
from tests.conftest import synthetic_digits


def test_roundtrip_images_and_labels(tmp_path):
    images, labels = synthetic_digits(50, seed=3)
    (tmp_path / "i.gz").write_bytes(gzip.compress(idx.encode_idx(images)))
    (tmp_path / "l").write_bytes(idx.encode_idx(labels))  # raw (not gzipped) IDX works too
    got_images = idx.read_images(tmp_path / "i.gz")
    got_labels = idx.read_labels(tmp_path / "l")
    assert got_images.shape == (50, 28, 28) and got_images.dtype == torch.uint8
    assert got_labels.shape == (50,) and got_labels.dtype == torch.int64
    assert torch.equal(got_images, torch.from_numpy(images))
    assert torch.equal(got_labels, torch.from_numpy(labels.astype(np.int64)))


def test_header_is_big_endian():
    data = idx.encode_idx(np.zeros((2, 3, 4), dtype=np.uint8))
    assert data[:4] == b"\x00\x00\x08\x03"
    assert data[4:16] == b"\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04"


def test_wrong_magic_is_named():
    labels = idx.encode_idx(np.zeros(5, dtype=np.uint8))
    with pytest.raises(MnistlrError, match="magic number 0x00000801, expected 0x00000803"):
        idx.decode_images(labels)


def test_short_payload_is_named():
    data = idx.encode_idx(np.zeros((4, 28, 28), dtype=np.uint8))
    with pytest.raises(MnistlrError, match=r"declares shape \(4, 28, 28\) = 3136 bytes of data, file holds 3000"):
        idx.decode_images(data[: 16 + 3000])


def test_label_outside_range_is_named():
    with pytest.raises(MnistlrError, match="label 12 at index 2 is outside 0-9"):
        idx.decode_labels(idx.encode_idx(np.array([1, 2, 12], dtype=np.uint8)))


def test_truncated_gzip_is_a_clear_error(tmp_path):
    blob = gzip.compress(idx.encode_idx(np.zeros((10, 28, 28), dtype=np.uint8)))
    (tmp_path / "bad.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(MnistlrError, match="not a readable gzip file"):
        idx.read_images(tmp_path / "bad.gz")

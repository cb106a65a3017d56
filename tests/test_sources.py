import pytest

from mnistlr import sources
from mnistlr.errors import MnistlrError
from mnistlr.prepare import load_mnist
from tests.conftest import write_mirror


def test_real_mirror_verifies_and_decodes(real_mirror, monkeypatch):
    monkeypatch.delenv(sources.MD5SUMS_ENV, raising=False)
    paths = sources.from_mirror(real_mirror)
    raw = load_mnist(paths)
    assert raw["train_images"].shape == (60000, 28, 28)
    assert raw["test_images"].shape == (10000, 28, 28)
    assert raw["train_labels"].bincount().tolist()[:2] == [5923, 6742]


def test_canonical_md5_rejects_other_files(tmp_path, monkeypatch):
    monkeypatch.delenv(sources.MD5SUMS_ENV, raising=False)
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    with pytest.raises(MnistlrError, match=r"md5 [0-9a-f]{32} does not match the expected f68b3c2d"):
        sources.from_mirror(mirror)


def test_md5sums_override_accepts_synthetic_mirror(tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    monkeypatch.setenv(sources.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    raw = load_mnist(sources.from_mirror(mirror))
    assert raw["train_images"].shape == (20, 28, 28)


def test_corrupted_file_fails_md5(tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    monkeypatch.setenv(sources.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    path = mirror / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(MnistlrError, match="t10k-labels-idx1-ubyte.gz: md5 .* does not match"):
        sources.from_mirror(mirror)


def test_missing_file_names_file_and_env(tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    monkeypatch.setenv(sources.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    (mirror / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(MnistlrError, match="train-labels-idx1-ubyte.gz is missing from the mirror MNISTLR_MNIST_DIR="):
        sources.from_mirror(mirror)


def test_locate_prefers_the_mirror_and_never_downloads(tmp_path, monkeypatch):
    mirror = write_mirror(tmp_path / "m", n_train=20, n_test=10)
    monkeypatch.setenv(sources.MIRROR_ENV, str(mirror))
    monkeypatch.setenv(sources.MD5SUMS_ENV, str(mirror / "MD5SUMS"))
    monkeypatch.setattr(sources, "download", lambda root: pytest.fail("must not download when a mirror is set"))
    before = sorted(p.name for p in mirror.iterdir())
    assert set(sources.locate(tmp_path / "raw")) == set(sources.CANONICAL_MD5)
    assert sorted(p.name for p in mirror.iterdir()) == before  # nothing written into the mirror
    assert not (tmp_path / "raw").exists()

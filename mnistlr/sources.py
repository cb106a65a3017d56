"""Where the four MNIST files come from: a local mirror (MNISTLR_MNIST_DIR) or a download.

Either way each file is checked against its md5 before it is decoded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mnistlr.errors import MnistlrError

MIRROR_ENV = "MNISTLR_MNIST_DIR"
# Only for test fixtures: an MD5SUMS file that replaces the canonical sums below.
MD5SUMS_ENV = "MNISTLR_MD5SUMS"

# The public release's files and md5 sums (the same ones torchvision checks).
CANONICAL_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


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


def download(root: str | Path) -> dict[str, Path]:
    """Download (or reuse) the four files into `root` through torchvision, md5-verified."""
    from torchvision.datasets import MNIST  # costs ~1.3 s: only imported when downloading
    from torchvision.datasets.utils import download_url

    root = Path(root)
    sums = expected_md5()
    paths = {}
    for name in CANONICAL_MD5:
        path = root / name
        if not (path.is_file() and file_md5(path) == sums[name]):
            errors = []
            for base in MNIST.mirrors:
                try:
                    download_url(base + name, root=str(root), filename=name, md5=sums[name])
                    break
                except Exception as exc:  # noqa: BLE001 - try the next mirror, report all
                    # first line only: the error must stay one line
                    errors.append(f"{base}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
            else:
                raise MnistlrError(
                    f"could not download {name} ({'; '.join(errors)}); "
                    f"without internet, set {MIRROR_ENV} to a folder holding the four MNIST .gz files"
                )
        verify(path, sums[name])
        paths[name] = path
    return paths


def locate(download_root: str | Path = "data/raw") -> dict[str, Path]:
    """The four verified MNIST files: from MNISTLR_MNIST_DIR when set, else downloaded."""
    mirror = os.environ.get(MIRROR_ENV)
    return from_mirror(mirror) if mirror else download(download_root)

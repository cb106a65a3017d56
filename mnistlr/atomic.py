"""Atomic writes: every output goes to a temp file in its folder, then is renamed into place.

A stage killed mid-write therefore leaves either the old file, no file, or a
hidden `.NAME.tmp-PID` file, never a truncated output that looks complete; the next
write of the same path removes such leftovers of dead processes.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Delete the temp files and folders a killed writer of `path` left behind (its process is gone)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder; swap it in for `path` only if the block succeeds."""
    with atomic_path(path) as tmp:
        tmp.mkdir()
        yield tmp
        if path.exists():
            shutil.rmtree(path)


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, indented, keys in the order given (stable diffs)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


# Every member of an .npz is dated as numpy dates it, so the bytes depend on the arrays alone.
NPZ_DATE = (1980, 1, 1, 0, 0, 0)


def write_arrays(path: str | Path, **arrays: Any) -> None:
    """Write named arrays as one uncompressed .npz atomically (readable by numpy, no pickle). Each member is
    written with its size known, so the same arrays give the same bytes under every Python: np.savez forces
    ZIP64 headers, whose version field Python's zipfile writes differently from one patch release to another
    (45 under 3.11.7, 20 under 3.11.2)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=NPZ_DATE), member.getvalue())


def write_array(path: str | Path, array: Any) -> None:
    """Write one array as a .npy file atomically (memory-mappable, no pickle)."""
    # a file object: np.save would append .npy to a bare temp name
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically; PNG metadata pinned so bytes are reproducible."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), metadata={"Software": None}, **kwargs)

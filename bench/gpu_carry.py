"""Pack what a bare CUDA machine needs to run the real pipeline: wheels and the MNIST files.

A GPU image typically holds torch, numpy, pandas and matplotlib but not dvc or pydantic, and cannot
reach a package index. This writes, into one folder to carry along (default .gpu-carry/, ignored by git):

- wheels/: every distribution that dvc, pydantic and typer need, and ruamel.yaml's C loader, pinned
  to the versions installed in the environment running this script (the versions this project is
  tested with), for the target Python (default 3.12, x86-64 Linux); a distribution that publishes no
  wheel (antlr4-python3-runtime) is built here as a pure-Python wheel;
- mnist/: the four MNIST .gz files and their MD5SUMS, from MNISTLR_MNIST_DIR.

bench/gpu_check.sh installs the wheels there with `pip install --no-index --no-deps --target`.
Usage: python bench/gpu_carry.py [--out .gpu-carry] [--python-version 3.12]
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import typer
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# What the stages, `dvc` and the benchmark import that a CUDA image may lack (or hold in a version
# this project was not tested with). torch, torchvision, numpy, pandas and matplotlib stay the image's.
ROOTS = ("dvc", "pydantic", "typer", "ruamel.yaml.clib")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "MD5SUMS")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def closure(roots: tuple[str, ...], python_version: str) -> dict[str, str]:
    """Name -> installed version of every distribution the roots need on Linux with that Python."""
    env = {"extra": "", "python_version": python_version, "sys_platform": "linux",
           "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        dist = md.distribution(name)  # PackageNotFoundError: the roots are not installed here
        found[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return found


def download(pins: dict[str, str], wheels: Path, python_version: str) -> None:
    """Wheels for the target Python; pure-Python sdists are built into wheels here."""
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", python_version, "--implementation", "cp", *platform_args, "-d", str(wheels)]
    for name, version in sorted(pins.items()):
        spec = f"{name}=={version}"
        if subprocess.run([*base, spec], capture_output=True).returncode == 0:
            continue
        # No wheel published: build one (only pure-Python packages can travel this way).
        before = set(wheels.iterdir())
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), spec], check=True)
        if not all(w.name.endswith("-none-any.whl") for w in set(wheels.iterdir()) - before):
            raise SystemExit(f"error: {spec} has no wheel for Python {python_version} and is not pure Python")


@app.command()
def main(
    out: Path = typer.Option(REPO / ".gpu-carry", help="folder to write (carried to the GPU machine)"),
    python_version: str = typer.Option("3.12", help="the GPU machine's Python, major.minor"),
    mnist: Path = typer.Option(None, help="MNIST mirror folder (default: $MNISTLR_MNIST_DIR)"),
) -> None:
    """Write OUT/wheels and OUT/mnist for bench/gpu_check.sh."""
    mirror = mnist or Path(os.environ.get("MNISTLR_MNIST_DIR", "."))
    missing = [f for f in MNIST_FILES if not (mirror / f).is_file()]
    if missing:
        raise SystemExit(f"error: MNIST mirror {str(mirror)!r} lacks {', '.join(missing)}; "
                         "pass --mnist or set MNISTLR_MNIST_DIR to a folder holding the four .gz files and MD5SUMS")
    pins = closure(ROOTS, python_version)
    tmp = Path(tempfile.mkdtemp(prefix=".gpu-carry-", dir=out.parent))
    try:  # build beside OUT, then swap it in: an interrupted run leaves OUT as it was
        (tmp / "wheels").mkdir()
        download(pins, tmp / "wheels", python_version)
        (tmp / "mnist").mkdir()
        for f in MNIST_FILES:
            shutil.copy2(mirror / f, tmp / "mnist" / f)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    typer.echo(f"{out}: {len(pins)} wheels for Python {python_version} and the MNIST files, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    app()

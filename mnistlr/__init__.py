"""Multinomial logistic regression on MNIST, as a reproducible DVC pipeline.

Importing the package pins the CPU code paths that decide the last bits of every float it computes.
torch, MKL, OpenBLAS and numpy each pick their kernels by the machine's instruction set, and kernels
for different vector widths round differently: trained on an AVX-512 machine, the same params give
other weights than on an AVX2 one. So on any x86-64 CPU with AVX2 every stage runs the AVX2 code
paths, the same on every such machine and at any thread count; the pins are environment variables
the libraries read when they load, so this runs before any of them is imported. MNISTLR_NATIVE_CPU=1
leaves each library to its own choice (faster on some machines, reproducible only on the same kind).
CUDA kernels are not covered: a GPU run matches a CPU run to float tolerance, not bit for bit.
"""

import os
import platform

__version__ = "0.1.0"

NATIVE_CPU_ENV = "MNISTLR_NATIVE_CPU"
CPU_PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's vectorized kernels (softmax, elementwise, reductions)
    "MKL_CBWR": "AVX2,STRICT",  # torch's BLAS: MKL's AVX2 path, bitwise the same at any thread count
    "OPENBLAS_CORETYPE": "Haswell",  # numpy's BLAS: OpenBLAS's AVX2 kernels
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy's own loops: no AVX-512 variants
}


def _has_avx2() -> bool:
    """Whether this is an x86-64 CPU with AVX2 and FMA, read from /proc/cpuinfo (no library loaded)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx2" in flags and "fma" in flags
    except OSError:
        pass
    return False


def cpu_pins_active() -> bool:
    """Whether this process runs with CPU_PINS (set at import unless MNISTLR_NATIVE_CPU=1 or no AVX2)."""
    return all(os.environ.get(k) == v for k, v in CPU_PINS.items())


if os.environ.get(NATIVE_CPU_ENV) != "1" and _has_avx2():
    os.environ.update(CPU_PINS)

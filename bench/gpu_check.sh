#!/usr/bin/env bash
# Every GPU check in one go (for a machine with CUDA and torch installed, no dvc needed):
# the CUDA tests plus the unit tests, then the benchmark on CUDA (graph and eager trainer).
# Usage: MNISTLR_MNIST_DIR=/path/to/mnist bash bench/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
# every unit test that needs no dvc (the CUDA ones run only here)
$py -m pytest -q -p no:cacheprovider -m "not slow" tests/test_cuda.py $(ls tests/test_train*.py tests/test_data*.py tests/test_metrics*.py 2>/dev/null) \
  "tests/test_faults.py::test_clipped_training_steps_never_wait_for_the_gpu" 2>&1 | tee "$out/pytest.log" | tail -15
$py bench/benchmark.py --device cuda --no-pipeline --epochs 3 --out "$out/bench_cuda_graph.json" 2>&1 | tee "$out/bench_cuda_graph.md"
$py bench/benchmark.py --device cuda --no-pipeline --no-tutorial --no-cuda-graph --epochs 3 --out "$out/bench_cuda_eager.json" 2>&1 | tee "$out/bench_cuda_eager.md"
# Default params (SGD cosine and Adam, 10 epochs) on the full training set, on CUDA: accuracy and wall time.
$py - <<'PY' 2>&1 | tee "$out/default_params_cuda.txt"
import time, torch
from mnistlr.data import load_split, load_variant
from mnistlr.params import load_params
from mnistlr.prepare import prepare
from mnistlr.train import fit, score, to_device
p = load_params()
prepare(p, "/tmp/prepared")
dev = torch.device("cuda")
x, y = to_device(dev, *load_variant("/tmp/prepared", "full")); vx, vy = to_device(dev, *load_split("/tmp/prepared", "val"))
tx, ty = to_device(dev, *load_split("/tmp/prepared", "test"))
for opt in ("sgd", "adam"):
    torch.cuda.synchronize(); t = time.perf_counter()
    model, hist = fit(x, y, vx, vy, p.train, opt, getattr(p.train.lr, opt), p.seed)
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"{opt}: test accuracy {score(model, tx, ty)[1]:.4f}, 10 epochs in {dt:.2f} s on {torch.cuda.get_device_name()}")
PY

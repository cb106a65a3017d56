#!/usr/bin/env bash
# The GPU checks, for any machine with a CUDA GPU and this project installed (make install):
#   tests     the CUDA tests (CUDA graphs, no host sync per step, the same updates as torch.optim) and the
#             trainer's unit tests, on the GPU
#   bench     the trainer on CUDA, graph and eager, beside the plain autograd + torch.optim loop and the
#             tutorial's loop (bench/benchmark.py --device cuda)
#   pipeline  the real pipeline under dvc with train.device=cuda, then with train.device=cpu on the same
#             machine: cold and no-op dvc repro, a new config, configs already run, per-stage wall time and
#             peak RSS, what starting the processes and the CUDA context cost, each variant's test accuracy
# Usage: bash bench/gpu_check.sh [OUTDIR]   (default gpu-results/; GPU_CHECKS="tests bench pipeline" picks the
# parts). Needs MNISTLR_MNIST_DIR (the four MNIST files) or internet for the download.
set -uo pipefail
out=${1:-gpu-results}
checks=${GPU_CHECKS:-tests bench pipeline}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
echo "commit $(git rev-parse --short HEAD)" | tee -a "$out/gpu.txt"

if [[ " $checks " == *" tests "* ]]; then
  $py -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_train.py \
    "tests/test_faults.py::test_clipped_training_steps_never_wait_for_the_gpu" 2>&1 | tee "$out/pytest.log" | tail -15
fi

if [[ " $checks " == *" bench "* ]]; then
  $py bench/benchmark.py --device cuda --no-pipeline --out "$out/bench_cuda.json" 2>&1 | tee "$out/bench_cuda.md"
  $py bench/benchmark.py --device cuda --no-pipeline --no-tutorial --no-cuda-graph --out "$out/bench_cuda_eager.json" 2>&1 \
    | tee "$out/bench_cuda_eager.md"
fi

if [[ " $checks " == *" pipeline "* ]]; then
  for device in cuda cpu; do
    $py bench/benchmark.py --no-tutorial --pipeline-device "$device" --out "$out/pipeline_$device.json" 2>&1 \
      | tee "$out/pipeline_$device.md"
  done
fi

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
# Without a CUDA device it stops at once. Every part runs even when one before it fails; the exit status is 1
# when any failed, and the last line names them. A part's report is written only when the part passed.
set -uo pipefail
out=${1:-gpu-results}
checks=${GPU_CHECKS:-tests bench pipeline}
py=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1

if ! command -v nvidia-smi > /dev/null; then
  echo "error: nvidia-smi not found: no NVIDIA driver on this machine; run bench/gpu_check.sh where a CUDA GPU is" >&2
  exit 1
fi
if ! device=$($py -c "import torch; assert torch.cuda.is_available(); print('torch', torch.__version__, 'cuda', \
torch.version.cuda, torch.cuda.get_device_name())" 2> /dev/null); then
  echo "error: torch.cuda.is_available() is False for $py: no usable CUDA device (or a CPU-only torch)" >&2
  exit 1
fi
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv && echo "$device" \
  && echo "commit $(git rev-parse --short HEAD)"; } | tee "$out/gpu.txt"

failed=()

# run NAME REPORT CMD...: CMD's stdout goes to the terminal and becomes OUTDIR/REPORT when CMD exits 0
# (OUTDIR/NAME.failed.txt when it does not); its stderr goes to OUTDIR/NAME.stderr, shown when it fails.
run() {
  local name=$1 report=$2 rc=0
  shift 2
  echo "== $name: $*"
  "$@" 2> "$out/$name.stderr" | tee "$out/$name.partial" || rc=$?
  if ((rc == 0)); then
    mv "$out/$name.partial" "$out/$report"
  else
    mv "$out/$name.partial" "$out/$name.failed.txt"
    tail -n 15 "$out/$name.stderr" >&2
    echo "error: part $name failed (exit $rc); its stderr is in $out/$name.stderr" >&2
    failed+=("$name")
  fi
}

if [[ " $checks " == *" tests "* ]]; then
  run tests pytest.log $py -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_train.py \
    "tests/test_faults.py::test_clipped_training_steps_never_wait_for_the_gpu"
fi

if [[ " $checks " == *" bench "* ]]; then
  run bench_cuda bench_cuda.md $py bench/benchmark.py --device cuda --no-pipeline --out "$out/bench_cuda.json"
  run bench_cuda_eager bench_cuda_eager.md $py bench/benchmark.py --device cuda --no-pipeline --no-tutorial \
    --no-cuda-graph --out "$out/bench_cuda_eager.json"
fi

if [[ " $checks " == *" pipeline "* ]]; then
  for device in cuda cpu; do
    run "pipeline_$device" "pipeline_$device.md" $py bench/benchmark.py --no-tutorial --pipeline-device "$device" \
      --out "$out/pipeline_$device.json"
  done
fi

if ((${#failed[@]})); then
  echo "error: gpu_check: ${#failed[@]} part(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "gpu_check: every part passed ($checks); results in $out/"

#!/usr/bin/env bash
# Every GPU check in one go, for a CUDA machine whose python3 holds torch (a bare GPU image will do):
#   tests     the CUDA tests and every unit test that needs no dvc
#   bench     the trainer on CUDA (graph and eager) against the tutorial's loop, and the default
#             params (SGD and Adam, 10 epochs) on the full training set (BENCH_DEVICE=cpu: on the CPU)
#   pipeline  the real pipeline under dvc, every stage its own process: a cold `dvc repro` and
#             `dvc exp run -S optimizer=adam` in a fresh copy, per-stage wall time and peak RSS, what
#             starting the processes and CUDA costs, each variant's test accuracy
# What the image lacks travels in .gpu-carry/ (made here by `python bench/gpu_carry.py`): wheels for
# dvc, pydantic and typer, installed with --target and put on PYTHONPATH, and the MNIST files.
# Usage: bash bench/gpu_check.sh [OUTDIR]   (GPU_CHECKS="tests bench pipeline" picks the parts,
#        PIPELINE_DEVICES="cuda cpu" the pipeline's train.device values; MNISTLR_COMMIT names the
#        commit where the copy came without .git)
# Rehearse it here first: bench/gpu_rehearsal.sh. On a lent GPU machine, one call of the device tool
# with carry [".gpu-carry"], timeout_s 560 and a command like (about 6 minutes, estimated):
#   MNISTLR_COMMIT=<sha> timeout 500 bash bench/gpu_check.sh /tmp/r > /tmp/r.log 2>&1;
#   cp /tmp/r.log $OUT/; tar -czf $OUT/gpu-results.tgz -C /tmp/r .
# (the inner timeout leaves time to pack what ran; one tarball: the tool brings back at most 8 files).
set -uo pipefail
out=${1:-gpu-results}
checks=${GPU_CHECKS:-tests bench pipeline}
mkdir -p "$out"
py=${PYTHON:-python3}
carry=$PWD/.gpu-carry
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -d "$carry/wheels" ]; then
  site=${TMPDIR:-/tmp}/mnistlr-site
  start=$EPOCHREALTIME
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$carry"/wheels/*.whl || exit 1
  # compiled once here, so that no timed process pays for compiling dvc's modules
  $py -m compileall -q -j 0 "$site" "$PWD/mnistlr" > /dev/null
  export PYTHONPATH=$PYTHONPATH:$site
  echo "set-up: $(ls "$carry"/wheels/*.whl | wc -l) wheels installed and compiled in $($py -c "print(f'{$EPOCHREALTIME - $start:.1f}')") s" | tee "$out/setup.txt"
fi
[ -d "$carry/mnist" ] && export MNISTLR_MNIST_DIR=${MNISTLR_MNIST_DIR:-$carry/mnist}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
echo "python $($py -c 'import sys; print(sys.version.split()[0], sys.executable)'); git: $(command -v git || echo none); commit ${MNISTLR_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" | tee -a "$out/gpu.txt"

if [[ " $checks " == *" tests "* ]]; then
  # every unit test that needs no dvc (the CUDA ones run only here)
  $py -m pytest -q -p no:cacheprovider -m "not slow" tests/test_cuda.py $(ls tests/test_train*.py tests/test_data*.py tests/test_metrics*.py 2>/dev/null) \
    "tests/test_faults.py::test_clipped_training_steps_never_wait_for_the_gpu" 2>&1 | tee "$out/pytest.log" | tail -15
fi

if [[ " $checks " == *" bench "* ]]; then
  dev=${BENCH_DEVICE:-cuda}  # cpu: the same commands where there is no GPU (bench/gpu_rehearsal.sh)
  $py bench/benchmark.py --device "$dev" --no-pipeline --epochs 4 --out "$out/bench_$dev.json" 2>&1 | tee "$out/bench_$dev.md"
  $py bench/benchmark.py --device "$dev" --no-pipeline --no-tutorial --no-cuda-graph --epochs 4 --out "$out/bench_${dev}_eager.json" 2>&1 | tee "$out/bench_${dev}_eager.md"
  # Default params (SGD cosine and Adam, 10 epochs) on the full training set: accuracy and wall time.
  BENCH_DEVICE=$dev $py - <<'PY' 2>&1 | tee "$out/default_params_$dev.txt"
import os, platform, tempfile, time, torch
from mnistlr.data import load_split, load_variant
from mnistlr.params import load_params
from mnistlr.prepare import prepare
from mnistlr.train import fit, score, to_device
p = load_params()
prepared = tempfile.mkdtemp(prefix="mnistlr-prepared-")
prepare(p, prepared)
dev = torch.device(os.environ["BENCH_DEVICE"])
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
name = torch.cuda.get_device_name() if dev.type == "cuda" else f"{os.cpu_count()}-core {platform.machine()} CPU"
x, y = to_device(dev, *load_variant(prepared, "full")); vx, vy = to_device(dev, *load_split(prepared, "val"))
tx, ty = to_device(dev, *load_split(prepared, "test"))
for opt in ("sgd", "adam"):
    sync(); t = time.perf_counter()
    model, hist = fit(x, y, vx, vy, p.train, opt, getattr(p.train.lr, opt), p.seed)
    sync(); dt = time.perf_counter() - t
    print(f"{opt}: test accuracy {score(model, tx, ty)[1]:.4f}, {len(hist)} epochs in {dt:.2f} s on {name}")
PY
fi

if [[ " $checks " == *" pipeline "* ]]; then
  # training on the GPU, then the same pipeline on this machine's CPU cores (train.device=cpu)
  for device in ${PIPELINE_DEVICES:-cuda cpu}; do
    $py bench/benchmark.py --no-loops --pipeline-device "$device" --out "$out/pipeline_$device.json" 2>&1 | tee "$out/pipeline_$device.md"
  done
fi

#!/usr/bin/env bash
# Rehearse bench/gpu_check.sh here, on the CPU, before spending scarce GPU time: in an environment
# built like the GPU image, so that what can break there breaks here first.
#   - Python 3.12 with the image's torch 2.11.0, torchvision 0.26.0 and numpy 2.5.2 (the device tool's
#     KINDS.md), pandas, matplotlib and pytest; no dvc, pydantic or typer: those come from .gpu-carry/
#   - no git program on PATH, and the working tree as the device tool sends it: tracked and
#     untracked-not-ignored files plus .gpu-carry/, no .git
#   - every part of the script, with the CPU where it names CUDA: BENCH_DEVICE=cpu, PIPELINE_DEVICES=cpu
# CUDA tests skip and nvidia-smi is missing here; every command runs as it will there, on another device.
# Usage: PYTHON312=/path/to/python3.12 bash bench/gpu_rehearsal.sh [WORKDIR]
#   (needs .gpu-carry/ from `python bench/gpu_carry.py` and a package index for the venv; the venv is
#   kept in WORKDIR and reused, about 5 GB)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON312:?set PYTHON312 to a Python 3.12 interpreter, as on the GPU image}
work=${1:-${TMPDIR:-/tmp}/mnistlr-gpu-rehearsal}
[ -d "$repo/.gpu-carry/wheels" ] || { echo "no .gpu-carry/wheels: run MNISTLR_MNIST_DIR=... python bench/gpu_carry.py first" >&2; exit 2; }
"$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || { echo "PYTHON312=$py is not Python 3.12" >&2; exit 2; }
mkdir -p "$work"
work=$(cd "$work" && pwd)
if [ ! -x "$work/venv/bin/python3" ]; then
  "$py" -m venv "$work/venv.tmp"
  "$work/venv.tmp/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 pandas matplotlib pyyaml pytest pillow tabulate
  mv "$work/venv.tmp" "$work/venv"  # a venv only once complete: a broken install is redone next time
fi
rm -rf "$work/bin" "$work/tree" "$work/results" "$work/tmp"
mkdir -p "$work/bin" "$work/tree" "$work/tmp"
# PATH without git (and without this machine's python, pip or dvc)
for f in /usr/local/bin/* /usr/bin/* /bin/*; do
  b=${f##*/}
  case $b in git*|python*|pip*|dvc) continue ;; esac
  [ -e "$work/bin/$b" ] || ln -s "$f" "$work/bin/$b"
done
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/tree" && cp -r .gpu-carry "$work/tree/")
commit=$(git -C "$repo" rev-parse --short HEAD)
git -C "$repo" diff --quiet HEAD || commit="$commit+changes"
cd "$work/tree"
env -i HOME="$HOME" PATH="$work/venv/bin:$work/bin" TMPDIR="$work/tmp" MNISTLR_COMMIT="$commit (rehearsal)" \
  GPU_CHECKS="${GPU_CHECKS:-tests bench pipeline}" BENCH_DEVICE=cpu PIPELINE_DEVICES=cpu \
  bash bench/gpu_check.sh "$work/results" 2>&1 | tee "$work/rehearsal.log"
echo "results: $work/results, log: $work/rehearsal.log"

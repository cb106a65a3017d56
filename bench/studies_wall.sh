#!/usr/bin/env bash
# Wall time of a cold run of the studies (root prepare included) at each git revision given, each in a
# fresh clone of this repository, run one after the other on this machine. It measures; it asserts
# nothing. Usage: bench/studies_wall.sh REV [REV...]   (needs .venv and MNISTLR_MNIST_DIR)
# A revision whose studies/ is a DVC project of its own (studies/.dvc) runs `dvc repro -f prepare` and
# `dvc --cd studies repro -f`; an older one, `dvc repro -f studies/dvc.yaml`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export DVC_NO_ANALYTICS=1 PATH="$repo/.venv/bin:$PATH"
: "${MNISTLR_MNIST_DIR:?set MNISTLR_MNIST_DIR to the folder of the four MNIST .gz files}"
out=$(mktemp -d)
for rev in "$@"; do
  clone="$out/$rev"
  git clone -q "$repo" "$clone" && git -C "$clone" checkout -q "$rev"
  if [ -d "$clone/studies/.dvc" ]; then
    what="dvc repro -f prepare && dvc --cd studies repro -f"
  else
    what="dvc repro -f studies/dvc.yaml"
  fi
  start=$(date +%s.%N)
  # PYTHONPATH: the stages import mnistlr from the clone, not the editable install of the working tree
  (cd "$clone" && PYTHONPATH="$clone" bash -c "$what" > "$out/$rev.log" 2>&1)
  end=$(date +%s.%N)
  printf '%s  %s  cold %s: %.0f s\n' "$rev" "$(git -C "$clone" log -1 --format=%s | cut -c1-60)" "$what" \
    "$(echo "$end - $start" | bc)"
done
rm -rf "$out"

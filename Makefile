# Two commands set everything up on a fresh machine with Python 3.11, pip and make:
#   make repro   create .venv, install, run the pipeline (dvc repro)
#   make test    create .venv, install, run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# DVC stages call `python`: make it the venv's. (A shell gets the venv's commands with `source .venv/bin/activate`.)
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: install lock repro studies test bench review storage-up storage-down clean

install: $(STAMP)

# The exact versions (and sha256) of every package, direct and transitive, every extra included (test, cluster):
# the environment that made the committed results. mnistlr itself goes on top, editable, with no dependency of its own.
LOCK := requirements/lock.txt

$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Re-resolve the lock from pyproject.toml's ranges with pip-tools (in a venv of its own, so .venv holds only the lock).
# Pins that still fit the ranges are kept; LOCK_ARGS=--upgrade takes the newest releases instead. Either way, then
# run `make repro` and commit what changed (README, "Reproducibility"). The hashes cover every file of each release.
PIP_TOOLS := build/pip-tools
LOCK_ARGS ?=
lock:
	$(PYTHON) -m venv $(PIP_TOOLS)
	$(PIP_TOOLS)/bin/python -m pip install --quiet pip==26.3 pip-tools==7.7.0
	CUSTOM_COMPILE_COMMAND='make lock' $(PIP_TOOLS)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
		--strip-extras --all-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS) --output-file $(LOCK) pyproject.toml
	sed -i "6a # Resolved on $$(uname -s) $$(uname -m): the environment markers were evaluated for that platform only.\n#" $(LOCK)

repro: $(STAMP)
	$(BIN)/dvc repro

# The studies (docs/studies.md): a DVC project of their own in studies/, on the root prepare stage's data.
# REPRO_ARGS=-f reruns every study, whatever the run cache holds.
studies: $(STAMP)
	$(BIN)/dvc repro prepare
	$(BIN)/dvc --cd studies repro $(REPRO_ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

# Tutorial loop vs trainer, cold and no-op `dvc repro`, peak RSS per stage; then a grid in one pass
# (`mnistlr sweep`) against DVC's queue of the same grid, and a 96-point grid (measurements, not tests).
bench: $(STAMP)
	$(BIN)/python bench/benchmark.py --out bench/results/latest.json | tee bench/results/latest.md
	$(BIN)/python bench/sweep_grid.py --out bench/results/sweep_grid.md

# Pull-request review (also run by .github/workflows/review.yml): run the pipeline,
# write reports/review.md (params and metrics diffs against BASE, figures), then
# the regression gate, which fails the target when a variant's metric drops too far.
# SIGNIFICANCE=0.05 makes the gate fail only on drops the test set can tell from noise (McNemar).
BASE ?= main
GATE_METRIC ?= test.accuracy
MAX_DROP ?= 0.002
SIGNIFICANCE ?=
GATE_ARGS = --base $(BASE) --metric $(GATE_METRIC) --max-drop $(MAX_DROP) $(if $(SIGNIFICANCE),--significance $(SIGNIFICANCE))
REPRO_ARGS ?=
review: $(STAMP)
	$(BIN)/dvc repro $(REPRO_ARGS)
	$(BIN)/mnistlr review $(GATE_ARGS) --out reports/review.md
	$(BIN)/mnistlr gate $(GATE_ARGS)

# A real S3-compatible server (SeaweedFS) on 127.0.0.1 for trying the DVC remote locally; prints the dvc commands.
storage-up: $(STAMP)
	$(BIN)/python scripts/storage.py up --dir .storage

storage-down: $(STAMP)
	$(BIN)/python scripts/storage.py down --dir .storage

clean:
	rm -rf $(VENV) dvc_plots .pytest_cache

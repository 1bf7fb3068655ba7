# lp-train — the two user commands are `make demo` and `make test`; both set themselves up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
PYTEST_ARGS ?=
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: setup demo test test-all test-slurm bench gpu-check lint clean

# Idempotent: re-installs only when pyproject.toml changed (stamp keyed on its hash).
setup:
	@if ! command -v ffmpeg >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "[setup] installing ffmpeg (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) || \
	      { echo "[setup] ERROR: apt-get install ffmpeg failed"; exit 1; }; \
	  else \
	    echo "[setup] ERROR: ffmpeg/ffprobe not found and not root: install ffmpeg (e.g. 'sudo apt-get install ffmpeg')"; exit 1; \
	  fi; \
	fi
	@want=$$(sha256sum pyproject.toml | cut -d' ' -f1); \
	if [ -f "$(STAMP)" ] && [ "$$(cat $(STAMP))" = "$$want" ] && [ -x "$(PY)" ]; then \
	  echo "[setup] up to date ($(VENV))"; \
	else \
	  echo "[setup] creating $(VENV) and installing lp-train[dev] (first run takes a few minutes)"; \
	  [ -x "$(PY)" ] || python3 -m venv $(VENV) || exit 1; \
	  $(PY) -m pip install -q --upgrade pip >/dev/null || exit 1; \
	  $(PY) -m pip install -q -e '.[dev]' || exit 1; \
	  echo "$$want" > $(STAMP); \
	fi

demo: setup
	$(PY) -m lp_train.demo

test: setup
	$(PY) -m pytest -m "not slow and not gpu and not slurm" $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-slurm: setup
	$(PY) -m pytest -m slurm $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run

# GPU readiness (bench/gpu_check.py): make gpu-check GPU_CHECK_ARGS="--budget-min 8 --faces /data/faces";
# GPU_CHECK_ARGS=--dry-run rehearses every section on a CPU at tiny sizes.
GPU_CHECK_ARGS ?=
gpu-check: setup
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

lint: setup
	$(PY) -m ruff check src data_prep eval tests bench
	$(PY) -m ruff format --check src data_prep eval tests bench

clean:
	rm -rf demo_out bench/results .pytest_cache

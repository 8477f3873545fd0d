# dlcore: `make test` and `make bench` each set up .venv on first use (fresh machine: ~2 minutes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dlcore-installed
PYTEST := $(PY) -m pytest

.PHONY: test test-fast test-triton test-slow bench gpu-check lint clean-cache

$(STAMP): pyproject.toml requirements/constraints-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints-dev.txt -e '.[dev]'
	touch $(STAMP)

## The whole suite: CPU backends vs torch, then every Triton kernel through TRITON_INTERPRET=1.
test: $(STAMP)
	$(PYTEST) -q -m "not slow and not gpu" --ignore=tests/kernels/triton
	TRITON_INTERPRET=1 $(PYTEST) -q -m "not slow and not gpu" tests/kernels/triton tests/dlcore/ops/test_triton_backend.py

## Quality runs of the task models (minutes).
test-slow: $(STAMP)
	$(PYTEST) -q -m slow

## Benchmarks: writes bench/RESULTS.md and bench/results.png, prints the table.
bench: $(STAMP)
	$(PY) -m bench.run

## On a machine with a CUDA GPU and no network: GPU tests, then a GPU benchmark table (under 5 minutes).
gpu-check:
	PYTHONPATH=. python3 -m bench.gpu_check

lint: $(STAMP)
	$(PY) -m ruff check dlcore kernels tests bench

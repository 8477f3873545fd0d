# dlcore: `make test` and `make bench` each set up .venv on first use (fresh machine: ~2 minutes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dlcore-installed
PYTEST := $(PY) -m pytest

.PHONY: test test-slow test-boundscheck demo bench cold-start gpu-check lint

$(STAMP): pyproject.toml requirements/constraints-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints-dev.txt -e '.[dev]'
	touch $(STAMP)

## The whole suite: CPU backends vs torch, then every Triton kernel through TRITON_INTERPRET=1, then (on an
## AVX-512 host) the Numba GEMM/attention tests at the AVX2 vector width (tests/numba_avx2_features.py).
test: $(STAMP)
	$(PYTEST) -q -m "not slow and not gpu" --ignore=tests/kernels/triton
	TRITON_INTERPRET=1 $(PYTEST) -q -m "not slow and not gpu" tests/kernels/triton tests/dlcore/ops/test_triton_backend.py
	@F="$$($(PY) -m tests.numba_avx2_features)"; if [ -n "$$F" ]; then \
		echo "AVX-512 host: the Numba GEMM, attention and softmax-family kernel tests again at the AVX2 vector width"; \
		NUMBA_CPU_FEATURES="$$F" $(PYTEST) -q -m "not slow and not gpu" tests/kernels/test_attention.py \
			tests/kernels/test_matmul.py tests/kernels/test_linear_act.py tests/kernels/test_rows.py \
			tests/kernels/test_softmax.py tests/kernels/test_cross_entropy.py; fi

## Quality runs of the task models (minutes).
test-slow: $(STAMP)
	$(PYTEST) -q -m slow --durations=20 --ignore=tests/kernels/triton --ignore=tests/dlcore/ops/test_triton_backend.py

## RELIABILITY 21: the kernel tests with Numba's bounds checks on (its own cache, so every kernel recompiles).
test-boundscheck: $(STAMP)
	NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR=$(CURDIR)/.numba-boundscheck $(PYTEST) -q -m "not slow and not gpu" \
		tests/kernels --ignore=tests/kernels/triton

## One short script per problem type; each prints its metric beside a baseline and saves a PNG in examples/out.
demo: $(STAMP)
	for f in examples/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

## Import time and first-call times, cold and warm Numba cache.
cold-start: $(STAMP)
	$(PY) -m bench.cold_start

## Benchmarks: writes bench/RESULTS.md and bench/results.png, prints the table.
bench: $(STAMP)
	$(PY) -m bench.run

## On a machine with a CUDA GPU and no network: GPU tests, then a GPU benchmark table (under 5 minutes).
gpu-check:
	PYTHONPATH=. python3 -m bench.gpu_check

lint: $(STAMP)
	$(PY) -m ruff check dlcore kernels tests bench

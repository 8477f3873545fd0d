"""matmul and linear, fp32: square sizes and an LLM-like projection. Floor: 2*M*N*K FLOPs at the
measured matmul peak."""
import numpy as np
import pytest
import torch

import dlcore

BACKENDS = ["numpy", "numba", "torch"]
SHAPES = [(256, 256, 256), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 1024, 4096)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mkn", SHAPES, ids=lambda s: "x".join(map(str, s)))
def bench_matmul(run_case, backend, mkn):
    m, k, n = mkn
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fn = (lambda: ta @ tb) if backend == "torch" else (lambda: dlcore.ops.matmul(a, b, backend=backend))
    run_case(fn, expected=ta @ tb, op="matmul", shape=mkn, dtype=np.float32, backend=backend,
             flops=2 * m * k * n, rounds=5 if m * n * k < 2**31 else 3, tol=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def bench_linear(run_case, backend):
    m, k, n = 4096, 1024, 4096
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    fn = (lambda: torch.nn.functional.linear(x, w, bias)) if backend == "torch" else \
        (lambda: dlcore.ops.linear(x, w, bias, backend=backend))
    run_case(fn, expected=torch.nn.functional.linear(x, w, bias), op="linear", shape=(m, k, n), dtype=np.float32,
             backend=backend, flops=2 * m * k * n, rounds=3, tol=1e-2)

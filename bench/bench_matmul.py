"""matmul, linear and the fused linear_act, fp32: square sizes and an LLM-like projection.

Floor: 2*M*N*K FLOPs at the measured matmul peak (linear_act adds one read+write pass over the (M, N)
output, ~2*4*M*N bytes). Rows:

* ``numba``: dlcore's auto backend (BLAS chosen by ``kernels/numba/matmul.blas_for``; `dlcore.explain` says
  which); ``numpy``: the reference; ``torch``: ``a @ b`` / ``F.linear`` / ``F.gelu(F.linear(...))``.
* ``numba-gemm``: dlcore's own Numba GEMM (``kernels/numba/matmul.gemm``) on the same shapes, for its share
  of BLAS (skipped above 2^33 multiply-adds: seconds per round on a 2-core machine).
* ``linear_act`` forward (the issue's target row) and forward+backward (gradients of x, W, b).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dlcore.kernels.numba import matmul as numba_matmul

import dlcore

BACKENDS = ["numpy", "numba", "torch"]
SHAPES = [(256, 256, 256), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (4096, 1024, 4096)]
LLM = (4096, 1024, 4096)  # (tokens, in_features, out_features)


def _ids(s):
    return "x".join(map(str, s))


def _rounds(m, k, n):
    """Rounds for a median that is not noise: ~0.2 s of work per row, at least 3 rounds, at most 200."""
    return int(min(200, max(3, 2e10 / (m * n * k))))


@pytest.mark.parametrize("backend", BACKENDS + ["numba-gemm"])
@pytest.mark.parametrize("mkn", SHAPES, ids=_ids)
def bench_matmul(run_case, backend, mkn):
    m, k, n = mkn
    if backend == "numba-gemm" and m * n * k > 2**33:
        pytest.skip("the own gemm takes seconds per round at this size")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fns = {"torch": lambda: ta @ tb, "numba-gemm": lambda: numba_matmul.gemm(a, b),
           **{name: (lambda name=name: dlcore.ops.matmul(a, b, backend=name)) for name in ("numpy", "numba")}}
    run_case(fns[backend], expected=ta @ tb, op="matmul", shape=mkn, dtype=np.float32, backend=backend,
             flops=2 * m * k * n, rounds=_rounds(m, k, n), tol=1e-2,
             paired={r: fns[r] for r in ("numpy", "torch")} if backend.startswith("numba") else None)


def _linear_inputs(m, k, n):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32))
    w = torch.from_numpy((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    return x, w, bias


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mkn", SHAPES, ids=_ids)
def bench_linear(run_case, backend, mkn):
    m, k, n = mkn
    x, w, bias = _linear_inputs(m, k, n)
    fns = {"torch": lambda: F.linear(x, w, bias),
           **{name: (lambda name=name: dlcore.ops.linear(x, w, bias, backend=name)) for name in ("numpy", "numba")}}
    run_case(fns[backend], expected=F.linear(x, w, bias), op="linear", shape=mkn, dtype=np.float32,
             backend=backend, flops=2 * m * k * n, rounds=_rounds(m, k, n), tol=1e-2,
             paired={r: fns[r] for r in ("numpy", "torch")} if backend == "numba" else None)


@pytest.mark.parametrize("backend", ["numba", "torch"])  # the NumPy reference's erf is a scalar loop: minutes
def bench_linear_gelu(run_case, backend):
    """Forward only: dlcore.ops.linear_act(x, W, b, 'gelu') against F.gelu(F.linear(x, W, b))."""
    m, k, n = LLM
    x, w, bias = _linear_inputs(m, k, n)
    torch_fn = lambda: F.gelu(F.linear(x, w, bias))
    fn = torch_fn if backend == "torch" else (lambda: dlcore.ops.linear_act(x, w, bias, "gelu", backend=backend))
    run_case(fn, expected=F.gelu(F.linear(x, w, bias)), op="linear_act gelu", shape=LLM, dtype=np.float32,
             backend=backend, flops=2 * m * k * n, rounds=5, tol=1e-2,
             paired={"torch": torch_fn} if backend == "numba" else None)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def bench_linear_gelu_fwd_bwd(run_case, backend):
    """Forward + backward (gradients of x, W and b) of the same layer; 3x the forward's FLOPs."""
    m, k, n = LLM
    x, w, bias = (t.clone().requires_grad_(True) for t in _linear_inputs(m, k, n))
    grad = torch.from_numpy(np.random.default_rng(1).standard_normal((m, n)).astype(np.float32))

    def step(use_torch):
        for t in (x, w, bias):
            t.grad = None
        y = F.gelu(F.linear(x, w, bias)) if use_torch else dlcore.ops.linear_act(x, w, bias, "gelu", backend=backend)
        y.backward(grad)
        return x.grad, w.grad, bias.grad

    expected = [g.clone() for g in step(True)]
    run_case(lambda: step(backend == "torch"), expected=expected, op="linear_act gelu fwd+bwd", shape=LLM,
             dtype=np.float32, backend=backend, flops=6 * m * k * n, rounds=3, tol=1e-2)

"""Fused attention forward (and forward+backward) at B1 H8 L2048 D64, fp32, causal and not.

Floor: FLOPs. Forward is 4*B*H*L*S*D (two GEMMs), halved when causal; backward adds 2.5x that
(five GEMMs with recompute). Compared with torch's scaled_dot_product_attention on the same tensors.
At this shape the forward is 8.6 GFLOP (4.3 causal): about 100 ms on one core at the ~86 GFLOP/s the
numba micro-kernel reaches in L2 (AVX2/FMA, 2 x 8 lanes), ~50 ms on two, plus ~15-20% for the online
softmax's exps.

Memory: each NumPy/Numba row also records ``peak_mib``, the tracemalloc peak of one call (NumPy arrays
only: the launcher's packed operands, outputs and partial gradients; the Numba workers' tiles are fixed
size). For numba it must stay O(B*H*L*D), far below one (L, L) score matrix per head; torch's CPU
allocations are not traced, so torch rows carry none.
"""
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlcore

B, H, L, D = 1, 8, 2048, 64
rng = np.random.default_rng(0)
q, k, v = (torch.from_numpy(rng.standard_normal((B, H, L, D)).astype(np.float32)) for _ in range(3))
BACKENDS = ["numpy", "numba", "torch"]
QKV_BYTES = B * H * L * D * 4  # one of q, k, v
SCORES_BYTES = B * H * L * L * 4  # the (L, L) matrices a non-fused implementation forms


def record_peak_memory(benchmark, fn, backend, max_qkv_multiples):
    """tracemalloc peak of one fn() call, in the row's extra_info; numba's must be O(L*D)."""
    if backend == "torch":
        return
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    benchmark.extra_info["peak_mib"] = peak / 2**20
    if backend == "numba":
        # a bounded number of q-sized arrays, and less than the one set of (L, L) scores a non-fused
        # implementation holds; that the peak grows linearly in L is tests/kernels/test_attention.py's job
        assert peak < max_qkv_multiples * QKV_BYTES and peak < SCORES_BYTES, (peak, QKV_BYTES, SCORES_BYTES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def bench_attention_forward(run_case, benchmark, backend, causal):
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    fn = (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)) if backend == "torch" else \
        (lambda: dlcore.ops.scaled_dot_product_attention(q, k, v, is_causal=causal, backend=backend))
    flops = 4 * B * H * L * L * D // (2 if causal else 1)
    run_case(fn, expected=ref, op=f"sdpa fwd{' causal' if causal else ''}", shape=(B, H, L, D), dtype=np.float32,
             backend=backend, flops=flops, rounds=2 if backend == "numpy" else 5, tol=1e-3,
             paired={"torch": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)}
             if backend == "numba" else None)
    record_peak_memory(benchmark, fn, backend, 4)  # out + packed k and v: ~2.9 q-sized arrays


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def bench_attention_forward_backward(run_case, benchmark, backend, causal):
    g = torch.ones(B, H, L, D)

    def make_step(sdpa):
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]

        def step():
            for t in leaves:
                t.grad = None
            out = sdpa(*leaves, is_causal=causal)
            out.backward(g)
            return tuple(t.grad for t in leaves)

        return step

    step = make_step(F.scaled_dot_product_attention if backend == "torch" else
                     (lambda *a, **kw: dlcore.ops.scaled_dot_product_attention(*a, backend=backend, **kw)))
    flops = int(3.5 * 4 * B * H * L * L * D) // (2 if causal else 1)
    run_case(step, op=f"sdpa fwd+bwd{' causal' if causal else ''}", shape=(B, H, L, D), dtype=np.float32,
             backend=backend, flops=flops, rounds=2 if backend == "numpy" else 3,
             paired={"torch": make_step(F.scaled_dot_product_attention)} if backend == "numba" else None)
    record_peak_memory(benchmark, step, backend, 16)  # packed operands, grads, 2 partial dQs: ~13.5 q-sized

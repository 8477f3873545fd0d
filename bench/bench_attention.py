"""Fused attention forward (and forward+backward) at B1 H8 L2048 D64, fp32, causal and not.

Floor: FLOPs. Forward is 4*B*H*L*S*D (two GEMMs), halved when causal; backward adds 2.5x that
(five GEMMs with recompute). Compared with torch's scaled_dot_product_attention on the same tensors.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlcore

B, H, L, D = 1, 8, 2048, 64
rng = np.random.default_rng(0)
q, k, v = (torch.from_numpy(rng.standard_normal((B, H, L, D)).astype(np.float32)) for _ in range(3))
BACKENDS = ["numpy", "numba", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def bench_attention_forward(run_case, backend, causal):
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    fn = (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)) if backend == "torch" else \
        (lambda: dlcore.ops.scaled_dot_product_attention(q, k, v, is_causal=causal, backend=backend))
    flops = 4 * B * H * L * L * D // (2 if causal else 1)
    run_case(fn, expected=ref, op=f"sdpa fwd{' causal' if causal else ''}", shape=(B, H, L, D), dtype=np.float32,
             backend=backend, flops=flops, rounds=2 if backend == "numpy" else 5, tol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def bench_attention_forward_backward(run_case, backend, causal):
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    g = torch.ones(B, H, L, D)
    sdpa = F.scaled_dot_product_attention if backend == "torch" else \
        (lambda *a, **kw: dlcore.ops.scaled_dot_product_attention(*a, backend=backend, **kw))

    def step():
        for t in leaves:
            t.grad = None
        out = sdpa(*leaves, is_causal=causal)
        out.backward(g)
        return tuple(t.grad for t in leaves)

    flops = int(3.5 * 4 * B * H * L * L * D) // (2 if causal else 1)
    run_case(step, op=f"sdpa fwd+bwd{' causal' if causal else ''}", shape=(B, H, L, D), dtype=np.float32,
             backend=backend, flops=flops, rounds=2 if backend == "numpy" else 3)

"""layer_norm forward+backward (8192x1024) and gelu forward+backward (16M), fp32, through torch autograd.

Floors: layer_norm reads x, writes y, then reads x and g and writes dx (16 bytes per element, weights
negligible); gelu reads x, writes y, reads x and g, writes dx (16 bytes per element).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlcore

BACKENDS = ["numpy", "numba", "torch"]


def _step(fn, x, *params):
    leaf = x.detach().requires_grad_(True)
    g = torch.ones_like(x)

    def step():
        leaf.grad = None
        y = fn(leaf, *params)
        y.backward(g)
        return y.detach(), leaf.grad

    return step


@pytest.mark.parametrize("backend", BACKENDS)
def bench_layer_norm(run_case, backend):
    shape = (8192, 1024)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    w = torch.from_numpy(rng.standard_normal(1024).astype(np.float32))
    b = torch.from_numpy(rng.standard_normal(1024).astype(np.float32))
    torch_fn = lambda x_: F.layer_norm(x_, (1024,), w, b)
    ours = lambda x_: dlcore.ops.layer_norm(x_, (1024,), w, b, backend=backend)
    ref = _step(torch_fn, x)()
    run_case(_step(torch_fn if backend == "torch" else ours, x), expected=ref, op="layer_norm fwd+bwd", shape=shape,
             dtype=np.float32, backend=backend, bytes_moved=16 * x.numel(), rounds=5, tol=2e-3,
             paired={"torch": _step(torch_fn, x)} if backend == "numba" else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def bench_gelu(run_case, backend, approximate):
    n = 1 << 24
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(n).astype(np.float32))
    torch_fn = lambda x_: F.gelu(x_, approximate=approximate)
    ours = lambda x_: dlcore.ops.gelu(x_, approximate=approximate, backend=backend)
    ref = _step(torch_fn, x)()
    run_case(_step(torch_fn if backend == "torch" else ours, x), expected=ref, op=f"gelu({approximate}) fwd+bwd",
             shape=(n,), dtype=np.float32, backend=backend, bytes_moved=16 * n, rounds=5, tol=1e-4,
             paired={"torch": _step(torch_fn, x)} if backend == "numba" else None)

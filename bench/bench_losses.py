"""Loss forward+backward: cross_entropy (fused), binary_cross_entropy_with_logits, mse_loss; fp32.

Floors: cross-entropy reads the logits once and writes the gradient once (8 bytes per logit); BCE reads
x and y and writes dx (12); MSE reads x and y and writes dx (12). dlcore runs through torch autograd on
torch tensors (the realistic path), so the bridge overhead is inside the timing.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlcore

BACKENDS = ["numpy", "numba", "torch"]


def _fwd_bwd(fn, *args, **kw):
    leaf = args[0].detach().requires_grad_(True)

    def step():
        leaf.grad = None
        loss = fn(leaf, *args[1:], **kw)
        loss.backward()
        return loss.detach(), leaf.grad

    return step


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(4096, 32000)], ids=str)
def bench_cross_entropy(run_case, backend, shape):
    n, c = shape
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    t = torch.from_numpy(np.random.default_rng(1).integers(0, c, n))
    ref = _fwd_bwd(F.cross_entropy, x, t)()
    fn = _fwd_bwd(F.cross_entropy, x, t) if backend == "torch" else \
        _fwd_bwd(dlcore.ops.cross_entropy, x, t, backend=backend)
    run_case(fn, expected=ref, op="cross_entropy fwd+bwd", shape=shape, dtype=np.float32, backend=backend,
             bytes_moved=8 * n * c, rounds=2 if backend == "numpy" else 5, tol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def bench_bce_with_logits(run_case, backend):
    shape = (8192, 1000)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    y = torch.from_numpy(rng.random(shape).astype(np.float32))
    ref = _fwd_bwd(F.binary_cross_entropy_with_logits, x, y)()
    fn = _fwd_bwd(F.binary_cross_entropy_with_logits, x, y) if backend == "torch" else \
        _fwd_bwd(dlcore.ops.binary_cross_entropy_with_logits, x, y, backend=backend)
    run_case(fn, expected=ref, op="bce_with_logits fwd+bwd", shape=shape, dtype=np.float32, backend=backend,
             bytes_moved=12 * x.numel(), rounds=5, tol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def bench_mse(run_case, backend):
    n = 1 << 24
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    ref = _fwd_bwd(F.mse_loss, x, y)()
    fn = _fwd_bwd(F.mse_loss, x, y) if backend == "torch" else _fwd_bwd(dlcore.ops.mse_loss, x, y, backend=backend)
    run_case(fn, expected=ref, op="mse_loss fwd+bwd", shape=(n,), dtype=np.float32, backend=backend,
             bytes_moved=12 * n, rounds=5, tol=1e-4)

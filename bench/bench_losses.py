"""Loss forward+backward: cross_entropy (fused), binary_cross_entropy_with_logits, mse_loss; fp32.

Floors: cross-entropy reads the logits once and writes the gradient once (8 bytes per logit; a plain store
also reads the gradient line first, so ~12 bytes per logit move through DRAM, see
kernels/numba/cross_entropy.py); BCE reads x and y and writes dx (12); MSE reads x and y and writes dx (12). dlcore runs through torch autograd on
torch tensors (the realistic path), so the bridge overhead is inside the timing.
"""
import gc

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


# (8192, 50257) is GPT-2's vocabulary at 8k tokens: 1.6 GB of logits, 1.6 GB of gradient. The NumPy
# reference (float64 temporaries, ~10 s a round) runs on the smaller shape only.
CE_CASES = [(b, (4096, 32000)) for b in BACKENDS] + [(b, (8192, 50257)) for b in ("numba", "torch")]


@pytest.mark.parametrize("backend, shape", CE_CASES, ids=[f"{b}-{s}" for b, s in CE_CASES])
def bench_cross_entropy(run_case, backend, shape):
    n, c = shape
    big = n * c > 2e8
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
    t = torch.from_numpy(np.random.default_rng(1).integers(0, c, n))
    ref = _fwd_bwd(F.cross_entropy, x, t)()
    fn = _fwd_bwd(F.cross_entropy, x, t) if backend == "torch" else \
        _fwd_bwd(dlcore.ops.cross_entropy, x, t, backend=backend)
    rounds = 2 if backend == "numpy" else 3 if big else 5
    try:
        run_case(fn, expected=ref, op="cross_entropy fwd+bwd", shape=shape, dtype=np.float32, backend=backend,
                 bytes_moved=8 * n * c, rounds=rounds, tol=1e-4,
                 paired={"torch": _fwd_bwd(F.cross_entropy, x, t)} if backend == "numba" else None)
    finally:
        del ref, fn, x  # free the gigabytes before the next case, including numba's idle gradient block
        gc.collect()
        from dlcore.kernels.numba import cross_entropy as numba_ce

        numba_ce._drop_recycled()


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
             bytes_moved=12 * x.numel(), rounds=5, tol=1e-4,
             paired={"torch": _fwd_bwd(F.binary_cross_entropy_with_logits, x, y)} if backend == "numba" else None)


@pytest.mark.parametrize("backend", BACKENDS)
def bench_mse(run_case, backend):
    n = 1 << 24
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal(n).astype(np.float32))
    ref = _fwd_bwd(F.mse_loss, x, y)()
    fn = _fwd_bwd(F.mse_loss, x, y) if backend == "torch" else _fwd_bwd(dlcore.ops.mse_loss, x, y, backend=backend)
    run_case(fn, expected=ref, op="mse_loss fwd+bwd", shape=(n,), dtype=np.float32, backend=backend,
             bytes_moved=12 * n, rounds=5, tol=1e-4,
             paired={"torch": _fwd_bwd(F.mse_loss, x, y)} if backend == "numba" else None)

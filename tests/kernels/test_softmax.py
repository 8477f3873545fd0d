"""softmax / log_softmax kernels (every CPU backend) against torch, forward and backward.

Torch 2.13 policy for non-finite rows (checked on the CPU for float32 and float64, short and long rows): a row
holding a NaN or a +inf, or holding only -inf, is all NaN in softmax, log_softmax and both gradients; a -inf
among finite logits gets probability exactly 0 (log-probability -inf) and a finite gradient.
"""
import importlib
import zlib

import numba
import numpy as np
import pytest
import torch

from tests._compare import assert_close, rand

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (1, 7), (5, 7), (5, 129), (33, 1), (33, 129), (0, 7), (3, 0)]
OPS = ["softmax", "log_softmax"]
TORCH_FN = {"softmax": torch.softmax, "log_softmax": torch.log_softmax}


def kernels(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.softmax")


def run(backend, op, x, grad):
    k = kernels(backend)
    y = getattr(k, f"{op}_forward")(x)
    return y, getattr(k, f"{op}_backward")(y, grad)


def torch_ref(op, x, grad):
    """float64 torch forward and autograd gradient for the (already dtype-rounded) inputs."""
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    y = TORCH_FN[op](xt, dim=1)
    (gx,) = torch.autograd.grad(y, xt, torch.from_numpy(grad.astype(np.float64)))
    return y.detach().numpy(), gx.numpy()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch(backend, dtype, op, shape):
    seed = zlib.crc32(repr((backend, np.dtype(dtype).name, op, shape)).encode())
    x = rand(shape, dtype, seed=seed, scale=3.0)
    grad = rand(shape, dtype, seed=seed + 1)
    y, gx = run(backend, op, x, grad)
    assert y.dtype == dtype and gx.dtype == dtype
    ey, egx = torch_ref(op, x, grad)
    assert_close(y, ey, msg=f"{op} forward")
    assert_close(gx, egx, msg=f"{op} backward")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits(backend, dtype, op):
    # RELIABILITY 5: +-1e4 logits stay finite, rows sum to 1, log-probabilities are <= 0.
    x = rand((5, 129), dtype, seed=11, scale=1e4)
    x[0, :4] = [1e4, -1e4, 1e4 - 1, 1e4]
    x[1, :] = -1e4
    x[2, ::2] = 1e4
    grad = rand(x.shape, dtype, seed=12)
    y, gx = run(backend, op, x, grad)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(gx))
    if op == "softmax":
        assert_close(y.sum(axis=1, dtype=np.float64), np.ones(5), rtol=1e-5, atol=1e-5)
    else:
        assert np.all(y <= 0)
    ey, egx = torch_ref(op, x, grad)
    assert_close(y, ey, msg=f"{op} forward")
    assert_close(gx, egx, msg=f"{op} backward")


@pytest.mark.parametrize("cols", [3, 129])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_rows(backend, dtype, op, cols):
    # RELIABILITY 6/7: same NaN / inf placement as torch, forward and backward.
    base = rand(cols, dtype, seed=21)
    rows = []
    r = base.copy(); r[1] = -np.inf; rows.append(r)                      # some -inf: finite elsewhere
    r = base.copy(); r[::2] = -np.inf; rows.append(r)                    # many -inf
    rows.append(np.full(cols, -np.inf, dtype))                           # all -inf: NaN row (torch)
    r = base.copy(); r[cols // 2] = np.nan; rows.append(r)               # NaN: NaN row
    r = base.copy(); r[-1] = np.inf; rows.append(r)                      # +inf: NaN row
    r = np.full(cols, -np.inf, dtype); r[0] = np.inf; rows.append(r)     # +inf with -inf: NaN row
    r = np.full(cols, -np.inf, dtype); r[-1] = np.nan; rows.append(r)    # NaN with -inf: NaN row
    rows.append(base.copy())                                             # a clean row is untouched
    r = base.copy(); r[cols // 3] = np.copysign(np.nan, -1.0); rows.append(r)  # sign-bit NaN: NaN row
    x = np.stack(rows).astype(dtype)
    grad = rand(x.shape, dtype, seed=22)
    y, gx = run(backend, op, x, grad)
    ey, egx = torch_ref(op, x, grad)
    assert_close(y, ey, msg=f"{op} forward")
    assert_close(gx, egx, msg=f"{op} backward")
    # the documented policy, spelled out
    zero = 0.0 if op == "softmax" else -np.inf
    assert y[0, 1] == zero and np.all(np.isfinite(gx[:2]))
    assert np.all(np.isnan(y[2:7])) and np.all(np.isnan(gx[2:7]))
    assert np.all(np.isfinite(y[7])) and np.all(np.isfinite(gx[7]))
    assert np.all(np.isnan(y[8])) and np.all(np.isnan(gx[8]))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_differences(backend, op):
    # RELIABILITY 15: float64 backward against central differences, eps 1e-6.
    x = rand((2, 5), np.float64, seed=31)
    w = rand((2, 5), np.float64, seed=32)
    k = kernels(backend)
    fwd = getattr(k, f"{op}_forward")
    _, gx = run(backend, op, x, w)
    eps = 1e-6
    fd = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        fd[idx] = (np.sum(fwd(xp) * w) - np.sum(fwd(xm) * w)) / (2 * eps)
    assert_close(gx, fd, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numba_deterministic(dtype, op):
    # RELIABILITY 18: bitwise-equal output twice, and with 1 thread vs all threads.
    x = rand((33, 129), dtype, seed=41, scale=3.0)
    grad = rand(x.shape, dtype, seed=42)
    y1, g1 = run("numba", op, x, grad)
    y2, g2 = run("numba", op, x, grad)
    assert y1.tobytes() == y2.tobytes() and g1.tobytes() == g2.tobytes()
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        y3, g3 = run("numba", op, x, grad)
    finally:
        numba.set_num_threads(n)
    assert y1.tobytes() == y3.tobytes() and g1.tobytes() == g3.tobytes()

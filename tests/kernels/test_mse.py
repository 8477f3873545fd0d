"""mse kernels (every CPU backend) against torch.nn.functional.mse_loss, forward and backward.

Torch 2.13: 'mean' of an empty input is NaN and 'sum' is 0; NaN/inf in x or y reach the loss (inf - inf is
NaN).
The kernels return grad_x only; the contract's grad_y is its negation, checked against torch here.
"""
import importlib
import zlib

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests._compare import assert_close, rand

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
SIZES = [0, 1, 7, 129, 4257, 40001]  # 40001 spans three of the numba kernels' 16K-element blocks
REDUCTIONS = ["none", "mean", "sum"]


def kernels(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.mse")


def upstream(n, reduction, dtype, seed):
    return rand(n, dtype, seed=seed) if reduction == "none" else np.array(rand(1, dtype, seed=seed)[0])


def run(backend, x, y, grad, reduction):
    k = kernels(backend)
    return k.mse_forward(x, y, reduction), k.mse_backward(grad, x, y, reduction)


def torch_ref(x, y, grad, reduction):
    """float64 torch loss and (grad_x, grad_y) for the (already dtype-rounded) inputs."""
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64)).requires_grad_()
    xt, yt = t(x), t(y)
    loss = F.mse_loss(xt, yt, reduction=reduction)
    gx, gy = torch.autograd.grad(loss, [xt, yt], torch.from_numpy(np.asarray(grad, np.float64)))
    return loss.detach().numpy(), gx.numpy(), gy.numpy()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch(backend, dtype, reduction, n):
    seed = zlib.crc32(repr((backend, np.dtype(dtype).name, reduction, n)).encode())
    x = rand(n, dtype, seed=seed, scale=2.0)
    y = rand(n, dtype, seed=seed + 1)
    grad = upstream(n, reduction, dtype, seed + 2)
    loss, gx = run(backend, x, y, grad, reduction)
    assert loss.dtype == dtype and gx.dtype == dtype and gx.shape == (n,)
    assert loss.shape == ((n,) if reduction == "none" else ())
    eloss, egx, egy = torch_ref(x, y, grad, reduction)
    assert_close(loss, eloss, msg="loss")
    assert_close(gx, egx, msg="grad_x")
    assert_close(-gx, egy, msg="grad_y")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend, dtype):
    # RELIABILITY 1: mean of nothing is NaN, sum is 0, 'none' is empty, gradients are empty (torch).
    x = np.empty(0, dtype)
    k = kernels(backend)
    assert np.isnan(k.mse_forward(x, x, "mean")) and k.mse_forward(x, x, "mean").shape == ()
    assert k.mse_forward(x, x, "sum") == 0 and k.mse_forward(x, x, "sum").dtype == dtype
    assert k.mse_forward(x, x, "none").shape == (0,)
    for reduction in REDUCTIONS:
        assert k.mse_backward(upstream(0, reduction, dtype, 0), x, x, reduction).shape == (0,)
        expected = torch_ref(x, x, upstream(0, reduction, dtype, 0), reduction)[0]
        assert_close(k.mse_forward(x, x, reduction), expected)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite(backend, dtype, reduction):
    # RELIABILITY 20/23: NaN and inf land where torch puts them.
    x = np.array([1.0, np.nan, np.inf, np.inf, -np.inf, 2.0, 1e4], dtype)
    y = np.array([0.5, 1.0, 1.0, np.inf, 3.0, np.nan, -1e4], dtype)
    grad = upstream(x.size, reduction, dtype, 3)
    loss, gx = run(backend, x, y, grad, reduction)
    eloss, egx, _ = torch_ref(x, y, grad, reduction)
    assert_close(loss, eloss, msg="loss")
    assert_close(gx, egx, msg="grad_x")
    # a clean input with one NaN: the reduced loss is NaN, the other 'none' entries stay finite
    clean = rand(40001, dtype, seed=4)
    clean[20000] = np.nan
    out = kernels(backend).mse_forward(clean, np.zeros_like(clean), reduction)
    assert np.isnan(out[20000] if reduction == "none" else out)
    if reduction == "none":
        assert np.sum(np.isnan(out)) == 1


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_differences(backend, reduction):
    # RELIABILITY 15: float64 backward against central differences, eps 1e-6.
    x = rand(6, np.float64, seed=31)
    y = rand(6, np.float64, seed=32)
    w = upstream(6, reduction, np.float64, 33)
    k = kernels(backend)
    gx = k.mse_backward(w, x, y, reduction)
    eps = 1e-6
    f = lambda x_: np.sum(k.mse_forward(x_, y, reduction) * w)
    fd = np.array([(f(x + eps * e) - f(x - eps * e)) / (2 * eps) for e in np.eye(6)])
    assert_close(gx, fd, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numba_deterministic(dtype, reduction):
    # RELIABILITY 18: bitwise-equal output twice and with 1 thread vs all threads (fixed-block partial sums).
    x = rand(100003, dtype, seed=41)
    y = rand(100003, dtype, seed=42)
    grad = upstream(x.size, reduction, dtype, 43)
    first = run("numba", x, y, grad, reduction)
    again = run("numba", x, y, grad, reduction)
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = run("numba", x, y, grad, reduction)
    finally:
        numba.set_num_threads(n)
    flat = lambda r: [a.tobytes() for a in r]
    assert flat(first) == flat(again) == flat(single)

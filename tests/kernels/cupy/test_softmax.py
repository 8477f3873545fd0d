"""CuPy softmax / log_softmax kernels against torch (CPU), forward and backward. Needs a GPU (or the emulator)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.cupy._helpers import DTYPES, assert_close, host, rand, tol, torch_tensor

pytestmark = pytest.mark.gpu

SHAPES = [(1, 1), (3, 7), (5, 37), (4, 1000), (2, 4099)]


@pytest.fixture(scope="module")
def K(kernels):
    return kernels("softmax")


def _torch(x, log):
    import torch

    return torch.log_softmax(x, 1) if log else torch.softmax(x, 1)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward_match_torch(cp, K, log, shape, dtype):
    x = rand(shape, dtype, seed=1, scale=3.0)
    g = rand(shape, dtype, seed=2)
    fwd = K.log_softmax_forward if log else K.softmax_forward
    bwd = K.log_softmax_backward if log else K.softmax_backward
    y = fwd(cp.array(x))
    xt = torch_tensor(x, requires_grad=True)
    yt = _torch(xt, log)
    yt.backward(torch_tensor(g))
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(host(y), yt, **tol(dtype), msg="forward")
    gx = bwd(y, cp.array(g))
    assert_close(host(gx), xt.grad, **tol(dtype, 10), msg="backward")  # 10x: the row sum adds C roundings


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_stay_finite(cp, K, dtype):
    x = rand((4, 513), dtype, seed=3) * dtype(1e4)
    y = host(K.softmax_forward(cp.array(x)))
    ly = host(K.log_softmax_forward(cp.array(x)))
    assert np.isfinite(y).all() and np.isfinite(ly).all()
    assert_close(y.sum(1), np.ones(4, dtype), rtol=1e-5, atol=1e-5)
    assert (ly <= 0).all()


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_rows_follow_torch(cp, K, log, dtype):
    """-inf entries get 0 probability; all -inf, NaN and +inf rows are NaN, as torch."""
    import torch

    x = rand((5, 9), dtype, seed=4)
    x[0, [1, 4]] = -np.inf       # some -inf: finite elsewhere
    x[1, :] = -np.inf            # all -inf: NaN (torch)
    x[2, 3] = np.nan             # NaN poisons the row
    x[3, 5] = np.inf             # +inf: NaN row (torch)
    fwd = K.log_softmax_forward if log else K.softmax_forward
    bwd = K.log_softmax_backward if log else K.softmax_backward
    y = fwd(cp.array(x))
    yt = _torch(torch.tensor(x), log)
    assert_close(host(y), yt, **tol(dtype))
    if not log:
        assert host(y)[0, 1] == 0.0 and host(y)[0, 4] == 0.0
    g = rand((5, 9), dtype, seed=5)
    gx = host(bwd(y, cp.array(g)))
    assert np.isfinite(gx[0]).all(), "a row with some -inf must have finite gradients"
    xt = torch.tensor(x, requires_grad=True)
    _torch(xt, log).backward(torch.tensor(g))
    assert_close(gx, xt.grad, **tol(dtype, 10))


@pytest.mark.parametrize("shape", [(0, 5), (3, 0)])
def test_empty(cp, K, shape):
    x = cp.zeros(shape, dtype=np.float32)
    for fwd, bwd in ((K.softmax_forward, K.softmax_backward), (K.log_softmax_forward, K.log_softmax_backward)):
        y = fwd(x)
        assert y.shape == shape
        assert bwd(y, x).shape == shape


def test_non_contiguous_input(cp, K):
    x = rand((37, 6), np.float32, seed=6)
    xd = cp.array(x).T  # (6, 37) view with strides (4, 24)
    assert_close(host(K.softmax_forward(xd)), host(K.softmax_forward(cp.ascontiguousarray(xd))), rtol=0, atol=0)


def test_deterministic(cp, K):
    x = cp.array(rand((8, 3000), np.float32, seed=7))
    a, b = host(K.softmax_forward(x)), host(K.softmax_forward(x))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("log", [False, True])
def test_float16_accumulates_in_float32(cp, K, log):
    x = rand((6, 777), np.float16, seed=8, scale=4.0)
    g = rand((6, 777), np.float16, seed=9)
    fwd = K.log_softmax_forward if log else K.softmax_forward
    bwd = K.log_softmax_backward if log else K.softmax_backward
    y = fwd(cp.array(x))
    assert y.dtype == np.float16
    xt = torch_tensor(x, requires_grad=True)  # float32 reference from the same half inputs
    yt = _torch(xt, log)
    yt.backward(torch_tensor(g))
    assert_close(host(y), yt, **tol(np.float16))
    gx = bwd(y, cp.array(g))
    # the backward sees the half-rounded forward output, so its error is that rounding times |g|
    assert_close(host(gx), xt.grad, rtol=1e-2, atol=1e-2)

"""CuPy mse_loss kernels against torch (CPU), forward and backward. Needs a GPU (or the emulator)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.cupy._helpers import DTYPES, assert_close, host, rand, tol, torch_tensor

pytestmark = pytest.mark.gpu

REDUCTIONS = ["none", "mean", "sum"]


@pytest.fixture(scope="module")
def K(kernels):
    return kernels("mse")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n", [1, 7, 1000, 100003])
@pytest.mark.parametrize("dtype", DTYPES)
def test_match_torch(cp, K, n, reduction, dtype):
    import torch.nn.functional as F

    x, y = rand((n,), dtype, seed=1), rand((n,), dtype, seed=2)
    g = rand((n,), dtype, seed=3) if reduction == "none" else np.array(1.7, dtype)
    xt = torch_tensor(x, requires_grad=True)
    lt = F.mse_loss(xt, torch_tensor(y), reduction=reduction)
    lt.backward(torch_tensor(g))
    loss = K.mse_forward(cp.array(x), cp.array(y), reduction)
    assert loss.dtype == x.dtype and loss.shape == ((n,) if reduction == "none" else ())
    assert_close(host(loss), lt, **tol(dtype, 10), msg="loss")  # different summation order than torch
    gx = K.mse_backward(cp.array(g), cp.array(x), cp.array(y), reduction)
    assert_close(host(gx), xt.grad, **tol(dtype), msg="grad")


def test_empty(cp, K):
    x = cp.zeros((0,), dtype=np.float32)
    assert np.isnan(host(K.mse_forward(x, x, "mean")))  # torch: mean of nothing is NaN
    assert host(K.mse_forward(x, x, "sum")) == 0.0
    assert K.mse_forward(x, x, "none").shape == (0,)
    assert K.mse_backward(cp.array(np.float32(1.0)), x, x, "mean").shape == (0,)


def test_deterministic(cp, K):
    x, y = cp.array(rand((300001,), np.float32, seed=4)), cp.array(rand((300001,), np.float32, seed=5))
    assert host(K.mse_forward(x, y, "sum")).tobytes() == host(K.mse_forward(x, y, "sum")).tobytes()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float16(cp, K, reduction):
    import torch.nn.functional as F

    x, y = rand((5001,), np.float16, seed=6), rand((5001,), np.float16, seed=7)
    loss = K.mse_forward(cp.array(x), cp.array(y), reduction)
    ref = F.mse_loss(torch_tensor(x), torch_tensor(y), reduction=reduction)
    assert loss.dtype == np.float16
    assert_close(host(loss), ref, **tol(np.float16))

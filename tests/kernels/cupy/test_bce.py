"""CuPy binary_cross_entropy_with_logits kernels against torch (CPU). Needs a GPU (or the emulator)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.cupy._helpers import DTYPES, assert_close, host, rand, tol, torch_tensor

pytestmark = pytest.mark.gpu

REDUCTIONS = ["none", "mean", "sum"]


@pytest.fixture(scope="module")
def K(kernels):
    return kernels("bce")


def _check(cp, K, x, y, pw, g, reduction, t, bt):
    import torch.nn.functional as F

    xt = torch_tensor(x, requires_grad=True)
    lt = F.binary_cross_entropy_with_logits(xt, torch_tensor(y), reduction=reduction,
                                            pos_weight=None if pw is None else torch_tensor(pw))
    lt.backward(torch_tensor(g))
    dpw = None if pw is None else cp.array(pw)
    loss = K.bce_with_logits_forward(cp.array(x), cp.array(y), dpw, reduction)
    assert loss.dtype == x.dtype and loss.shape == (x.shape if reduction == "none" else ())
    assert_close(host(loss), lt, **t, msg="loss")
    gx = K.bce_with_logits_backward(cp.array(g), cp.array(x), cp.array(y), dpw, reduction)
    assert_close(host(gx), xt.grad, **bt, msg="grad")
    return host(loss), host(gx)


@pytest.mark.parametrize("pos_weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 129), (1000, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_match_torch(cp, K, shape, reduction, pos_weight, dtype):
    x = rand(shape, dtype, seed=1, scale=3.0)
    y = np.random.default_rng(2).uniform(size=shape).astype(dtype)
    pw = (np.random.default_rng(3).uniform(0.2, 3.0, size=shape[1]).astype(dtype) if pos_weight else None)
    g = rand(shape, dtype, seed=4) if reduction == "none" else np.array(0.75, dtype)
    _check(cp, K, x, y, pw, g, reduction, tol(dtype, 10), tol(dtype, 5))


@pytest.mark.parametrize("pos_weight", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits(cp, K, pos_weight, dtype):
    """Logits of +-100 and +-1e4: finite loss, gradient sigmoid(x) - y (RELIABILITY item 10)."""
    x = np.array([[-1e4, -100.0, 0.0, 100.0, 1e4]] * 2, dtype)
    y = np.array([[0.0, 1.0, 0.5, 0.0, 1.0], [1.0, 0.0, 1.0, 1.0, 0.0]], dtype)
    pw = np.array([2.0, 0.5, 1.0, 3.0, 1.5], dtype) if pos_weight else None
    loss, gx = _check(cp, K, x, y, pw, np.ones_like(x), "none", tol(dtype), tol(dtype))
    assert np.isfinite(loss).all() and np.isfinite(gx).all()


def test_empty(cp, K):
    x = cp.zeros((0, 4), dtype=np.float32)
    assert np.isnan(host(K.bce_with_logits_forward(x, x, None, "mean")))
    assert host(K.bce_with_logits_forward(x, x, None, "sum")) == 0.0
    assert K.bce_with_logits_forward(x, x, None, "none").shape == (0, 4)
    assert K.bce_with_logits_backward(cp.array(np.float32(1)), x, x, None, "mean").shape == (0, 4)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float16(cp, K, reduction):
    x = rand((33, 65), np.float16, seed=5, scale=3.0)
    y = np.random.default_rng(6).uniform(size=(33, 65)).astype(np.float16)
    pw = np.random.default_rng(7).uniform(0.5, 2.0, size=65).astype(np.float16)
    g = rand((33, 65), np.float16, seed=8) if reduction == "none" else np.array(1.0, np.float16)
    _check(cp, K, x, y, pw, g, reduction, tol(np.float16), tol(np.float16))

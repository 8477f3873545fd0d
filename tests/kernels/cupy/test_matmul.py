"""CuPy matmul / linear (cuBLAS) against torch (CPU), forward and backward. Needs a GPU (or the emulator)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.cupy._helpers import DTYPES, assert_close, host, rand, tol, torch_tensor

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def K(kernels):
    return kernels("matmul")


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 64, 33, 17), (1, 0, 4, 5), (2, 3, 0, 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul(cp, K, shape, dtype):
    B, M, Kd, N = shape
    a, b = rand((B, M, Kd), dtype, seed=1), rand((B, Kd, N), dtype, seed=2)
    g = rand((B, M, N), dtype, seed=3)
    at, bt = torch_tensor(a, requires_grad=True), torch_tensor(b, requires_grad=True)
    ct = at @ bt
    ct.backward(torch_tensor(g))
    c = K.matmul(cp.array(a), cp.array(b))
    assert c.shape == (B, M, N) and c.dtype == a.dtype
    assert_close(host(c), ct, **tol(dtype, 10))
    ga, gb = K.matmul_backward(cp.array(g), cp.array(a), cp.array(b))
    assert_close(host(ga), at.grad, **tol(dtype, 10))
    assert_close(host(gb), bt.grad, **tol(dtype, 10))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (130, 64, 33), (0, 4, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(cp, K, shape, bias, dtype):
    import torch.nn.functional as F

    N, Kd, O = shape
    x, w = rand((N, Kd), dtype, seed=4), rand((O, Kd), dtype, seed=5)
    b = rand((O,), dtype, seed=6) if bias else None
    g = rand((N, O), dtype, seed=7)
    xt, wt = torch_tensor(x, requires_grad=True), torch_tensor(w, requires_grad=True)
    bt = torch_tensor(b, requires_grad=True) if bias else None
    yt = F.linear(xt, wt, bt)
    yt.backward(torch_tensor(g))
    y = K.linear(cp.array(x), cp.array(w), cp.array(b) if bias else None)
    assert_close(host(y), yt, **tol(dtype, 10))
    gx, gw, gb = K.linear_backward(cp.array(g), cp.array(x), cp.array(w), bias)
    assert_close(host(gx), xt.grad, **tol(dtype, 10))
    assert_close(host(gw), wt.grad, **tol(dtype, 10))
    if bias:
        assert_close(host(gb), bt.grad if N else np.zeros(O, dtype), **tol(dtype, 10))
    else:
        assert gb is None


def test_backward_skips_gradients_not_needed(cp, K):
    """``needs`` / ``need_input=False``: that gradient is None; the others are the full call's, bitwise."""
    a, b, g = (cp.array(rand(s, np.float32, seed=i)) for i, s in enumerate([(2, 5, 7), (2, 7, 3), (2, 5, 3)]))
    ga, gb = K.matmul_backward(g, a, b)
    none_a, only_b = K.matmul_backward(g, a, b, (False, True))
    only_a, none_b = K.matmul_backward(g, a, b, (True, False))
    assert none_a is None and none_b is None
    np.testing.assert_array_equal(host(only_b), host(gb))
    np.testing.assert_array_equal(host(only_a), host(ga))
    x, w, up = (cp.array(rand(s, np.float32, seed=i)) for i, s in enumerate([(6, 4), (5, 4), (6, 5)]))
    _, gw, gbias = K.linear_backward(up, x, w, True)
    nx, nw, nbias = K.linear_backward(up, x, w, True, need_input=False)
    assert nx is None
    np.testing.assert_array_equal(host(nw), host(gw))
    np.testing.assert_array_equal(host(nbias), host(gbias))


def test_non_contiguous_operands(cp, K):
    a = rand((2, 9, 4), np.float32, seed=8)
    b = rand((2, 6, 9), np.float32, seed=9)
    bd = cp.array(b).transpose(0, 2, 1)  # (2, 9, 6) view
    ad = cp.array(a).transpose(0, 2, 1)  # (2, 4, 9) view
    assert_close(host(K.matmul(ad, bd)), np.matmul(a.transpose(0, 2, 1), b.transpose(0, 2, 1)), rtol=1e-5,
                 atol=1e-5)


def test_float16(cp, K):
    a, b = rand((2, 40, 64), np.float16, seed=10), rand((2, 64, 24), np.float16, seed=11)
    c = K.matmul(cp.array(a), cp.array(b))
    assert c.dtype == np.float16
    assert_close(host(c), np.matmul(a.astype(np.float32), b.astype(np.float32)), rtol=2e-3, atol=2e-2)

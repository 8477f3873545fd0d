"""CuPy GELU / ReLU / SiLU kernels against torch (CPU), forward and backward. Needs a GPU (or the emulator)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.cupy._helpers import DTYPES, assert_close, host, rand, tol, torch_tensor

pytestmark = pytest.mark.gpu

OPS = ["gelu_none", "gelu_tanh", "relu", "silu"]


@pytest.fixture(scope="module")
def K(kernels):
    return kernels("activations")


def _ours(K, op):
    if op.startswith("gelu"):
        approx = op.split("_")[1]
        return (lambda x: K.gelu_forward(x, approx)), (lambda x, g: K.gelu_backward(x, g, approx))
    return getattr(K, f"{op}_forward"), getattr(K, f"{op}_backward")


def _torch(op, x):
    import torch.nn.functional as F

    if op.startswith("gelu"):
        return F.gelu(x, approximate=op.split("_")[1])
    return {"relu": F.relu, "silu": F.silu}[op](x)


def _check(cp, K, op, x, g, fwd_tol, bwd_tol):
    fwd, bwd = _ours(K, op)
    xt = torch_tensor(x, requires_grad=True)
    yt = _torch(op, xt)
    yt.backward(torch_tensor(g))
    y = fwd(cp.array(x))
    assert y.dtype == x.dtype and y.shape == x.shape
    assert_close(host(y), yt, **fwd_tol, msg=f"{op} forward")
    gx = bwd(cp.array(x), cp.array(g))
    assert_close(host(gx), xt.grad, **bwd_tol, msg=f"{op} backward")


@pytest.mark.parametrize("n", [1, 7, 1000, 4099])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_match_torch(cp, K, op, n, dtype):
    x = rand((n,), dtype, seed=n, scale=3.0)
    g = rand((n,), dtype, seed=n + 1)
    _check(cp, K, op, x, g, tol(dtype), tol(dtype, 5))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_inputs(cp, K, op, dtype):
    """+-1e4, +-100, 0 and NaN: finite where torch is finite, NaN where torch is NaN (RELIABILITY item 12)."""
    x = np.array([-1e4, -100.0, -1.0, -0.0, 0.0, 1.0, 100.0, 1e4, np.nan], dtype=dtype)
    g = np.ones_like(x)
    _check(cp, K, op, x, g, tol(dtype), tol(dtype))
    fwd, bwd = _ours(K, op)
    assert np.isfinite(host(fwd(cp.array(x[:-1])))).all()
    assert np.isfinite(host(bwd(cp.array(x[:-1]), cp.array(g[:-1])))).all()


@pytest.mark.parametrize("op", OPS)
def test_empty(cp, K, op):
    fwd, bwd = _ours(K, op)
    x = cp.zeros((0,), dtype=np.float32)
    assert fwd(x).shape == (0,) and bwd(x, x).shape == (0,)


@pytest.mark.parametrize("op", OPS)
def test_float16(cp, K, op):
    x = rand((2049,), np.float16, seed=11, scale=3.0)
    g = rand((2049,), np.float16, seed=12)
    _check(cp, K, op, x, g, tol(np.float16), tol(np.float16, 2))


def test_bad_approximate(cp, K):
    with pytest.raises(ValueError):
        K.gelu_forward(cp.zeros((3,), dtype=np.float32), "fast")

"""CuPy cross_entropy kernels against torch (CPU): fused loss + gradient, and the backward. Needs a GPU (or
the emulator)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.cupy._helpers import DTYPES, assert_close, host, rand, tol, torch_tensor

pytestmark = pytest.mark.gpu

REDUCTIONS = ["none", "mean", "sum"]
IGNORE = -100


@pytest.fixture(scope="module")
def K(kernels):
    return kernels("cross_entropy")


def _targets(N, C, seed, ignore_frac=0.25):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, C, size=N).astype(np.int64)
    t[rng.uniform(size=N) < ignore_frac] = IGNORE
    return t


def _reference(x, t, reduction, smoothing, g):
    import torch
    import torch.nn.functional as F

    xt = torch_tensor(x, requires_grad=True)
    lt = F.cross_entropy(xt, torch.tensor(t), ignore_index=IGNORE, reduction=reduction, label_smoothing=smoothing)
    lt.backward(torch_tensor(g))
    return lt, xt.grad


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (64, 1000), (300, 37)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_match_torch(cp, K, shape, reduction, smoothing, dtype):
    N, C = shape
    x = rand(shape, dtype, seed=1, scale=3.0)
    t = _targets(N, C, seed=2)
    g = rand((N,), dtype, seed=3) if reduction == "none" else np.array(1.3, dtype)
    ones = np.ones((N,), dtype) if reduction == "none" else np.array(1.0, dtype)
    lt, gt1 = _reference(x, t, reduction, smoothing, ones)
    loss, grad = K.cross_entropy_forward(cp.array(x), cp.array(t), IGNORE, smoothing, reduction, True)
    assert loss.dtype == x.dtype and loss.shape == ((N,) if reduction == "none" else ())
    assert_close(host(loss), lt, **tol(dtype, 10), msg="loss")
    assert_close(host(grad), gt1, **tol(dtype, 5), msg="fused grad")
    loss2, none = K.cross_entropy_forward(cp.array(x), cp.array(t), IGNORE, smoothing, reduction, False)
    assert none is None and np.array_equal(host(loss2), host(loss))
    _, gt = _reference(x, t, reduction, smoothing, g)
    gx = K.cross_entropy_backward(cp.array(g), cp.array(x), cp.array(t), IGNORE, smoothing, reduction)
    assert_close(host(gx), gt, **tol(dtype, 5), msg="backward")


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ignored(cp, K, reduction, smoothing, dtype):
    """Every target ignored: torch's values (NaN for 'mean', 0 otherwise) and zero, finite gradients."""
    x = rand((4, 6), dtype, seed=4)
    t = np.full((4,), IGNORE, np.int64)
    ones = np.ones((4,), dtype) if reduction == "none" else np.array(1.0, dtype)
    lt, _ = _reference(x, t, reduction, smoothing, ones)
    loss, grad = K.cross_entropy_forward(cp.array(x), cp.array(t), IGNORE, smoothing, reduction, True)
    assert_close(host(loss), lt, **tol(dtype))
    assert (host(grad) == 0).all()
    gx = K.cross_entropy_backward(cp.array(ones), cp.array(x), cp.array(t), IGNORE, smoothing, reduction)
    assert (host(gx) == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_and_int32_targets(cp, K, dtype):
    x = rand((8, 50), dtype, seed=5) * dtype(1e4)
    t = _targets(8, 50, seed=6, ignore_frac=0.0).astype(np.int32)
    lt, gt = _reference(x, t.astype(np.int64), "mean", 0.0, np.array(1.0, dtype))
    loss, grad = K.cross_entropy_forward(cp.array(x), cp.array(t), IGNORE, 0.0, "mean", True)
    assert np.isfinite(host(loss)) and np.isfinite(host(grad)).all()
    assert_close(host(loss), lt, **tol(dtype, 10))
    assert_close(host(grad), gt, **tol(dtype, 5))


def test_empty(cp, K):
    x = cp.zeros((0, 5), dtype=np.float32)
    t = cp.zeros((0,), dtype=np.int64)
    loss, grad = K.cross_entropy_forward(x, t, IGNORE, 0.0, "mean", True)
    assert np.isnan(host(loss)) and grad.shape == (0, 5)
    assert host(K.cross_entropy_forward(x, t, IGNORE, 0.0, "sum", False)[0]) == 0.0
    assert K.cross_entropy_forward(x, t, IGNORE, 0.0, "none", False)[0].shape == (0,)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_float16(cp, K, reduction):
    x = rand((40, 301), np.float16, seed=7, scale=3.0)
    t = _targets(40, 301, seed=8)
    ones = np.ones((40,), np.float16) if reduction == "none" else np.array(1.0, np.float16)
    lt, gt = _reference(x, t, reduction, 0.1, ones)
    loss, grad = K.cross_entropy_forward(cp.array(x), cp.array(t), IGNORE, 0.1, reduction, True)
    assert loss.dtype == np.float16 and grad.dtype == np.float16
    assert_close(host(loss), lt, **tol(np.float16, 4))
    assert_close(host(grad), gt, **tol(np.float16))

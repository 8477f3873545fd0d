"""CuPy layer_norm kernels against torch (CPU), forward and backward. Needs a GPU (or the emulator)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.cupy._helpers import DTYPES, assert_close, host, rand, tol, torch_tensor

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def K(kernels):
    return kernels("layer_norm")


def _reference(x, w, b, eps, g, float64=False):
    """torch's native_layer_norm and its gradients (mean / rstd flattened to (R,)); in float64 if asked."""
    import torch

    up = (lambda a: None if a is None else np.asarray(a, np.float64)) if float64 else (lambda a: a)
    x, w, b, g = up(x), up(w), up(b), up(g)
    xt = torch_tensor(x, requires_grad=True)
    wt = torch_tensor(w, requires_grad=True) if w is not None else None
    bt = torch_tensor(b, requires_grad=True) if b is not None else None
    y, mean, rstd = torch.native_layer_norm(xt, [x.shape[1]], wt, bt, eps)
    y.backward(torch_tensor(g))
    gb = torch_tensor(g).sum(0)  # grad_bias is returned even without a bias
    return y, mean.reshape(-1), rstd.reshape(-1), xt.grad, (wt.grad if wt is not None else None), gb


def _check(cp, K, x, w, b, eps, g, t, bt, float64_reference=False):
    y, mean, rstd = K.layer_norm_forward(cp.array(x), None if w is None else cp.array(w),
                                         None if b is None else cp.array(b), eps)
    ry, rmean, rrstd, rgx, rgw, rgb = _reference(x, w, b, eps, g, float64_reference)
    assert y.dtype == x.dtype and mean.dtype == x.dtype and rstd.dtype == x.dtype
    assert mean.shape == (x.shape[0],) and rstd.shape == (x.shape[0],)
    assert_close(host(y), ry, **t, msg="y")
    assert_close(host(mean), rmean, **t, msg="mean")
    assert_close(host(rstd), rrstd, **t, msg="rstd")
    gx, gw, gb = K.layer_norm_backward(cp.array(g), cp.array(x), None if w is None else cp.array(w),
                                       mean, rstd)
    assert_close(host(gx), rgx, **bt, msg="grad_x")
    if w is None:
        assert gw is None
    else:
        assert_close(host(gw), rgw, **bt, msg="grad_weight")
    assert_close(host(gb), rgb, **bt, msg="grad_bias")


@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (17, 64), (6, 1000), (130, 33)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_match_torch(cp, K, shape, affine, dtype):
    D = shape[1]
    x = rand(shape, dtype, seed=1, scale=2.0) + dtype(0.5)
    g = rand(shape, dtype, seed=2)
    w = rand((D,), dtype, seed=3) if affine in ("both", "weight") else None
    b = rand((D,), dtype, seed=4) if affine == "both" else None
    # the backward sums R*D products: allow a few roundings per term
    _check(cp, K, x, w, b, 1e-5, g, tol(dtype, 5), tol(dtype, 50))


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_rows(cp, K, dtype):
    """Constant rows (variance 0), mean 1e4 with small noise, and normalized size 1 (RELIABILITY item 11).

    The reference is float64 torch on the same inputs: for the 1e4 + 1e-2 noise row torch's own float32
    result is ~0.1 off (its float32 mean near 1e4 is rounded by 5% of the spread); ours is not.
    """
    D = 48
    x = np.empty((3, D), dtype)
    x[0] = 3.25                                               # constant row
    x[1] = 1e4 + rand((D,), dtype, seed=5) * dtype(1e-2)      # large mean, small spread
    x[2] = rand((D,), dtype, seed=6)
    g = rand((3, D), dtype, seed=7)
    w, b = rand((D,), dtype, seed=8), rand((D,), dtype, seed=9)
    # rstd ~ 100 on row 1 amplifies every rounding of the centred values 100x (relative to the output)
    _check(cp, K, x, w, b, 1e-5, g, tol(dtype, 10), tol(dtype, 1000), float64_reference=True)
    y, _, _ = K.layer_norm_forward(cp.array(x), cp.array(w), cp.array(b), 1e-5)
    assert np.isfinite(host(y)).all()
    x1 = rand((5, 1), dtype, seed=10)
    _check(cp, K, x1, np.ones(1, dtype), np.zeros(1, dtype), 1e-5, rand((5, 1), dtype, seed=11), tol(dtype),
           tol(dtype), float64_reference=True)  # xhat is exactly 0 here; torch float32 leaves ~1e-6 noise


def test_empty_rows(cp, K):
    x = cp.zeros((0, 6), dtype=np.float32)
    w = cp.ones((6,), dtype=np.float32)
    y, mean, rstd = K.layer_norm_forward(x, w, w, 1e-5)
    assert y.shape == (0, 6) and mean.shape == (0,) and rstd.shape == (0,)
    gx, gw, gb = K.layer_norm_backward(x, x, w, mean, rstd)
    assert gx.shape == (0, 6)
    assert (host(gw) == 0).all() and (host(gb) == 0).all()


def test_float16(cp, K):
    x = rand((9, 300), np.float16, seed=12, scale=2.0)
    g = rand((9, 300), np.float16, seed=13)
    w, b = rand((300,), np.float16, seed=14), rand((300,), np.float16, seed=15)
    _check(cp, K, x, w, b, 1e-5, g, tol(np.float16, 4), tol(np.float16, 20))

"""Triton LayerNorm against torch.nn.functional.layer_norm, forward, statistics and backward."""
from tests.kernels.triton._helpers import require_triton

require_triton()

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dlcore.kernels.triton import layer_norm as tk  # noqa: E402

from tests._compare import assert_close  # noqa: E402
from tests.kernels.triton._helpers import device, float_dtypes, tol, trand  # noqa: E402

EPS = 1e-5


@pytest.fixture(params=["fused", "looped"])
def path(request, monkeypatch):
    """Run each case through the one-block kernels and through the looped kernels (32-wide chunks)."""
    if request.param == "looped":
        monkeypatch.setattr(tk, "_MAX_FUSED", 32)
    return request.param


def _ref(x, w, b, g):
    """torch in float64 (the exact answer to compare fp32 against: at D=1 xhat is exactly 0)."""
    xr = x.double().detach().requires_grad_(True)
    wr = w.double().detach().requires_grad_(True) if w is not None else None
    br = b.double().detach().requires_grad_(True) if b is not None else None
    y = F.layer_norm(xr, (x.shape[1],), wr, br, EPS)
    y.backward(g.double())
    var, mean = torch.var_mean(xr.detach(), dim=1, unbiased=False)
    return y.detach(), mean, torch.rsqrt(var + EPS), xr.grad, (wr.grad if w is not None else None), \
        (br.grad if b is not None else g.double().sum(0))


def _check(x, w, b, g, dtype, scale=1.0):
    y_ref, mean_ref, rstd_ref, dx_ref, dw_ref, db_ref = _ref(x, w, b, g)
    y, mean, rstd = tk.layer_norm_forward(x, w, b, EPS)
    assert y.dtype == mean.dtype == rstd.dtype == dtype
    t = tol(dtype, scale)
    assert_close(y, y_ref, **t, msg="y")
    assert_close(mean, mean_ref, **t, msg="mean")
    assert_close(rstd, rstd_ref, **t, msg="rstd")
    dx, dw, db = tk.layer_norm_backward(g, x, w, mean, rstd)
    # backward sums over the row / over rows: widen by the row length for 16-bit stored statistics
    tb = tol(dtype, scale * (1 if dtype == torch.float32 else 4))
    assert_close(dx, dx_ref, **tb, msg="dx")
    if w is None:
        assert dw is None
    else:
        assert_close(dw, dw_ref, **tb, msg="dw")
    assert_close(db, db_ref, **tb, msg="db")


@pytest.mark.parametrize("affine", ["wb", "w", "none"])
@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("shape", [(3, 1), (5, 7), (4, 33), (9, 129)])
def test_forward_backward(shape, dtype, affine, path):
    R, D = shape
    x = trand(shape, dtype, seed=1, scale=2.0) + 0.5
    w = trand((D,), dtype, seed=2) if affine in ("wb", "w") else None
    b = trand((D,), dtype, seed=3) if affine == "wb" else None
    g = trand(shape, dtype, seed=4)
    _check(x, w, b, g, dtype)


def test_float64():
    x, w, b, g = (trand(s, torch.float64, seed=i) for i, s in enumerate([(5, 33), (33,), (33,), (5, 33)]))
    _check(x, w, b, g, torch.float64)


def test_hard_rows(path):
    """A constant row (variance 0), a row at mean 1e4 with small noise."""
    D = 40
    x = torch.stack([torch.full((D,), 3.0), 1e4 + 1e-2 * torch.randn(D, generator=torch.Generator().manual_seed(0))])
    x = x.to(device())
    w, b, g = trand((D,), torch.float32, 1), trand((D,), torch.float32, 2), trand((2, D), torch.float32, 3)
    y_ref, mean_ref, rstd_ref, dx_ref, dw_ref, db_ref = _ref(x, w, b, g)
    y, mean, rstd = tk.layer_norm_forward(x, w, b, EPS)
    # the 1e4 row: x - mean keeps ~1e-3 relative of its 1e-2 spread in fp32, for torch too
    assert_close(y, y_ref, rtol=1e-3, atol=1e-3)
    assert_close(rstd, rstd_ref, rtol=1e-3, atol=1e-3)
    dx, dw, db = tk.layer_norm_backward(g, x, w, mean, rstd)
    assert torch.isfinite(dx).all()
    assert_close(dx[0], dx_ref[0], rtol=1e-4, atol=1e-4)


def test_non_contiguous_and_empty():
    x = trand((40, 6), torch.float32, 1).t()
    g = trand((6, 80), torch.float32, 2)[:, ::2]
    w = trand((40,), torch.float32, 3)
    _check(x, w, None, g, torch.float32)
    e = torch.empty((0, 4), device=device())
    y, mean, rstd = tk.layer_norm_forward(e, None, None, EPS)
    assert y.shape == (0, 4) and mean.shape == rstd.shape == (0,)
    dx, dw, db = tk.layer_norm_backward(e, e, torch.ones(4, device=device()), mean, rstd)
    assert dx.shape == (0, 4) and dw.shape == db.shape == (4,) and not dw.any() and not db.any()


def test_many_rows_partials():
    """More rows than programs: several rows per program, partial grads folded across programs."""
    x, w, b, g = (trand(s, torch.float32, seed=i) for i, s in enumerate([(37, 5), (5,), (5,), (37, 5)]))
    _check(x, w, b, g, torch.float32)

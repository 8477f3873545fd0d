"""Triton MSE loss against torch.nn.functional.mse_loss, every reduction, forward and backward."""
from tests.kernels.triton._helpers import require_triton

require_triton()

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dlcore.kernels.triton import mse as tk  # noqa: E402

from tests._compare import assert_close  # noqa: E402
from tests.kernels.triton._helpers import device, float_dtypes, tol, trand, upcast  # noqa: E402


def _ref(x, y, g, reduction):
    xr = upcast(x).detach().requires_grad_(True)
    loss = F.mse_loss(xr, upcast(y), reduction=reduction)
    loss.backward(upcast(g))
    return loss.detach(), xr.grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", float_dtypes() + [torch.float64])
@pytest.mark.parametrize("n", [1, 7, 33, 1500])
def test_forward_backward(n, dtype, reduction):
    x, y = trand((n,), dtype, seed=1), trand((n,), dtype, seed=2)
    g = trand((n,) if reduction == "none" else (), dtype, seed=3)
    loss_ref, dx_ref = _ref(x, y, g, reduction)
    loss = tk.mse_forward(x, y, reduction)
    assert loss.dtype == dtype and loss.shape == loss_ref.shape
    assert_close(loss, loss_ref, **tol(dtype), msg="loss")
    dx = tk.mse_backward(g, x, y, reduction)
    assert dx.dtype == dtype and dx.shape == (n,)
    assert_close(dx, dx_ref, **tol(dtype), msg="grad")


def test_many_partials():
    """More blocks than programs: the grid-stride loop and the second fold both run."""
    x, y = trand((5000,), torch.float32, seed=4), trand((5000,), torch.float32, seed=5)
    for reduction in ("mean", "sum"):
        assert_close(tk.mse_forward(x, y, reduction), F.mse_loss(x, y, reduction=reduction), rtol=1e-5, atol=1e-5)


def test_empty_and_bad_reduction():
    e = torch.empty(0, device=device())
    assert tk.mse_forward(e, e, "none").shape == (0,)
    assert_close(tk.mse_forward(e, e, "mean"), F.mse_loss(e, e, reduction="mean"))
    assert_close(tk.mse_forward(e, e, "sum"), F.mse_loss(e, e, reduction="sum"))
    assert tk.mse_backward(torch.ones((), device=device()), e, e, "mean").shape == (0,)
    with pytest.raises(ValueError):
        tk.mse_forward(e, e, "avg")

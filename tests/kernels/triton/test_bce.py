"""Triton BCE-with-logits against torch, with and without pos_weight, every reduction, fwd and bwd."""
from tests.kernels.triton._helpers import require_triton

require_triton()

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dlcore.kernels.triton import bce as tk  # noqa: E402

from tests._compare import assert_close  # noqa: E402
from tests.kernels.triton._helpers import device, float_dtypes, tol, trand, upcast  # noqa: E402


def _ref(x, y, pw, g, reduction):
    xr = upcast(x).detach().requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(
        xr, upcast(y), pos_weight=upcast(pw) if pw is not None else None, reduction=reduction
    )
    loss.backward(upcast(g))
    return loss.detach(), xr.grad


def _targets(shape, dtype, seed):
    return torch.sigmoid(trand(shape, torch.float32, seed=seed) * 2).to(dtype)  # soft labels in (0, 1)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("use_pw", [False, True])
@pytest.mark.parametrize("dtype", float_dtypes() + [torch.float64])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 33), (2, 129)])
def test_forward_backward(shape, dtype, use_pw, reduction):
    x, y = trand(shape, dtype, seed=1, scale=3.0), _targets(shape, dtype, 2)
    pw = (trand((shape[1],), torch.float32, seed=3).abs() + 0.5).to(dtype) if use_pw else None
    g = trand(shape if reduction == "none" else (), dtype, seed=4)
    loss_ref, dx_ref = _ref(x, y, pw, g, reduction)
    loss = tk.bce_with_logits_forward(x, y, pw, reduction)
    assert loss.dtype == dtype and loss.shape == loss_ref.shape
    assert_close(loss, loss_ref, **tol(dtype), msg="loss")
    dx = tk.bce_with_logits_backward(g, x, y, pw, reduction)
    assert dx.dtype == dtype and dx.shape == shape
    assert_close(dx, dx_ref, **tol(dtype), msg="grad")


@pytest.mark.parametrize("use_pw", [False, True])
def test_extreme_logits(use_pw):
    """+-100 and +-1e4 give finite losses and a gradient of sigmoid(x) - y (times the weights)."""
    x = torch.tensor([[100.0, -100.0, 1e4, -1e4, 30.0, -30.0, 1e-3, 0.0]], device=device())
    y = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 1.0]], device=device())
    pw = torch.linspace(0.5, 3.0, 8, device=device()) if use_pw else None
    g = torch.ones_like(x)
    loss_ref, dx_ref = _ref(x, y, pw, g, "none")
    loss = tk.bce_with_logits_forward(x, y, pw, "none")
    assert torch.isfinite(loss).all()
    assert_close(loss, loss_ref)
    assert_close(tk.bce_with_logits_backward(g, x, y, pw, "none"), dx_ref)


def test_many_partials_and_empty():
    x, y = trand((40, 129), torch.float32, seed=5), _targets((40, 129), torch.float32, 6)
    assert_close(tk.bce_with_logits_forward(x, y, None, "sum"),
                 F.binary_cross_entropy_with_logits(x, y, reduction="sum"), rtol=1e-5, atol=1e-4)
    e = torch.empty((0, 3), device=device())
    assert tk.bce_with_logits_forward(e, e, None, "none").shape == (0, 3)
    assert_close(tk.bce_with_logits_forward(e, e, None, "mean"), F.binary_cross_entropy_with_logits(e, e))
    assert tk.bce_with_logits_backward(torch.ones((), device=device()), e, e, None, "mean").shape == (0, 3)

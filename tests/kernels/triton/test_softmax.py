"""Triton softmax / log_softmax against torch, forward and backward, fused and looped rows."""
from tests.kernels.triton._helpers import require_triton

require_triton()

import pytest  # noqa: E402
import torch  # noqa: E402
from dlcore.kernels.triton import softmax as tk  # noqa: E402

from tests._compare import assert_close  # noqa: E402
from tests.kernels.triton._helpers import device, float_dtypes, tol, trand, upcast  # noqa: E402

SHAPES = [(3, 1), (5, 7), (4, 33), (2, 129)]


@pytest.fixture(params=["fused", "looped"])
def path(request, monkeypatch):
    """Run each case through the one-block kernel and through the looped online kernel (32-wide chunks)."""
    if request.param == "looped":
        monkeypatch.setattr(tk, "_MAX_FUSED", 32)
    return request.param


def _ref(x, g, log):
    x = upcast(x).detach().requires_grad_(True)
    y = torch.log_softmax(x, 1) if log else torch.softmax(x, 1)
    (y * upcast(g)).sum().backward()
    return y.detach(), x.grad


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(shape, dtype, log, path):
    x, g = trand(shape, dtype, seed=1, scale=3.0), trand(shape, dtype, seed=2)
    fwd, bwd = (tk.log_softmax_forward, tk.log_softmax_backward) if log else (tk.softmax_forward, tk.softmax_backward)
    y = fwd(x)
    assert y.dtype == dtype and y.shape == shape
    y_ref, dx_ref = _ref(x, g, log)
    assert_close(y, y_ref, **tol(dtype), msg="forward")
    dx = bwd(y, g)
    assert dx.dtype == dtype
    # the backward reads the rounded y: widen by the forward's rounding for 16-bit types
    assert_close(dx, dx_ref, **tol(dtype, 1 if dtype == torch.float32 else 3), msg="backward")


def test_float64():
    x, g = trand((3, 33), torch.float64, seed=3), trand((3, 33), torch.float64, seed=4)
    y_ref, dx_ref = _ref(x, g, False)
    y = tk.softmax_forward(x)
    assert_close(y, y_ref)
    assert_close(tk.softmax_backward(y, g), dx_ref)


def test_empty():
    x = torch.empty((0, 5), device=device())
    assert tk.softmax_forward(x).shape == (0, 5)
    assert tk.log_softmax_backward(x, x).shape == (0, 5)
    assert tk.softmax_forward(torch.empty((3, 0), device=device())).shape == (3, 0)


def test_non_contiguous():
    base = trand((33, 6), torch.float32, seed=5)
    x = base.t()  # (6, 33), column stride 6
    g = trand((6, 66), torch.float32, seed=6)[:, ::2]
    y_ref, dx_ref = _ref(x, g, True)
    y = tk.log_softmax_forward(x)
    assert_close(y, y_ref)
    assert_close(tk.log_softmax_backward(y, g), dx_ref)


def test_extremes(path):
    """Large finite logits stay finite; -inf entries get 0; all -inf / NaN / +inf rows follow torch."""
    inf, nan = float("inf"), float("nan")
    x = torch.tensor(
        [
            [1e4, -1e4, 0.0] + [0.0] * 38,
            [-inf, 1.0, 2.0] + [-inf] * 38,
            [-inf] * 41,
            [nan, 1.0, 2.0] + [0.0] * 38,
            [inf, 1.0, 2.0] + [0.0] * 38,
        ],
        device=device(),
    )
    for fwd, ref in [(tk.softmax_forward, torch.softmax), (tk.log_softmax_forward, torch.log_softmax)]:
        assert_close(fwd(x), ref(x, 1))
    y = tk.softmax_forward(x[:2])
    g = trand((2, 41), torch.float32, seed=7)
    _, dx_ref = _ref(x[:2], g, False)
    dx = tk.softmax_backward(y, g)
    assert torch.isfinite(dx).all()
    assert_close(dx, dx_ref)

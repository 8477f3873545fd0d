"""Triton GELU (erf, tanh), ReLU and SiLU against torch.nn.functional, forward and backward."""
from tests.kernels.triton._helpers import require_triton

require_triton()

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dlcore.kernels.triton import activations as tk  # noqa: E402

from tests._compare import assert_close  # noqa: E402
from tests.kernels.triton._helpers import device, float_dtypes, tol, trand, upcast  # noqa: E402

OPS = {
    "relu": (tk.relu_forward, tk.relu_backward, F.relu),
    "silu": (tk.silu_forward, tk.silu_backward, F.silu),
    "gelu": (
        lambda x: tk.gelu_forward(x, "none"),
        lambda x, g: tk.gelu_backward(x, g, "none"),
        lambda x: F.gelu(x, approximate="none"),
    ),
    "gelu_tanh": (
        lambda x: tk.gelu_forward(x, "tanh"),
        lambda x, g: tk.gelu_backward(x, g, "tanh"),
        lambda x: F.gelu(x, approximate="tanh"),
    ),
}


def _ref(fn, x, g):
    xr = upcast(x).detach().requires_grad_(True)
    y = fn(xr)
    y.backward(upcast(g))
    return y.detach(), xr.grad


@pytest.mark.parametrize("n", [1, 7, 33, 1500])
@pytest.mark.parametrize("dtype", float_dtypes() + [torch.float64])
@pytest.mark.parametrize("op", list(OPS))
def test_forward_backward(op, dtype, n):
    fwd, bwd, ref = OPS[op]
    x, g = trand((n,), dtype, seed=n, scale=3.0), trand((n,), dtype, seed=n + 1)
    y_ref, dx_ref = _ref(ref, x, g)
    y = fwd(x)
    assert y.dtype == dtype and y.shape == (n,)
    # fp32: the tanh-GELU's tanh is built from exp (a few ulps from libm's tanh)
    assert_close(y, y_ref, **tol(dtype, 4 if op == "gelu_tanh" else 1), msg="forward")
    assert_close(bwd(x, g), dx_ref, **tol(dtype, 4 if op == "gelu_tanh" else 1), msg="backward")


@pytest.mark.parametrize("op", list(OPS))
def test_extremes(op):
    """+-1e4, +-inf, NaN and 0: no spurious NaN, the same values as torch."""
    fwd, bwd, ref = OPS[op]
    x = torch.tensor([1e4, -1e4, 0.0, -0.0, 1e-30, -3.0, 3.0, float("inf"), float("-inf"), float("nan")],
                     device=device())
    g = torch.ones_like(x)
    # reference in float64: torch 2.13's vectorised float32 erf-GELU gives NaN for +inf on AVX-512 CPUs (its
    # scalar, float64 and AVX2 paths give inf)
    y_ref, dx_ref = _ref(ref, x.double(), g.double())
    assert_close(fwd(x), y_ref)
    assert_close(bwd(x, g), dx_ref)


def test_empty_and_bad_mode():
    x = torch.empty(0, device=device())
    assert tk.gelu_forward(x, "tanh").shape == (0,)
    assert tk.silu_backward(x, x).shape == (0,)
    with pytest.raises(ValueError):
        tk.gelu_forward(torch.ones(3, device=device()), "fast")

"""Triton matmul / linear against torch (float64 references), forward and backward, odd shapes."""
from tests.kernels.triton._helpers import require_triton

require_triton()

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dlcore.kernels.triton import matmul as tk  # noqa: E402

from tests._compare import assert_close  # noqa: E402
from tests.kernels.triton._helpers import device, float_dtypes, gpu, trand  # noqa: E402

# (B, M, K, N)
SHAPES = [(1, 1, 1, 1), (2, 7, 33, 5), (1, 33, 17, 40), (3, 16, 16, 16)]


def _tol(dtype, K):
    # fp32 IEEE: rounding of K products summed (not tf32's ~1e-3); fp16/bf16: the output rounding
    if dtype == torch.float32:
        return dict(rtol=1e-5, atol=1e-5)
    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-12)
    return dict(rtol=2e-3, atol=2e-3 * max(1.0, K**0.5)) if dtype == torch.float16 else dict(rtol=1.6e-2, atol=2e-2 * K**0.5)


def _ref_mm(a, b, g):
    a64 = a.double().requires_grad_(True)
    b64 = b.double().requires_grad_(True)
    c = a64 @ b64
    c.backward(g.double())
    return c.detach(), a64.grad, b64.grad


@pytest.mark.parametrize("dtype", float_dtypes() + [torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matmul(shape, dtype):
    B, M, K, N = shape
    a, b, g = trand((B, M, K), dtype, 1), trand((B, K, N), dtype, 2), trand((B, M, N), dtype, 3)
    c_ref, ga_ref, gb_ref = _ref_mm(a, b, g)
    c = tk.matmul(a, b)
    assert c.dtype == dtype and c.shape == (B, M, N)
    assert_close(c, c_ref, **_tol(dtype, K), msg="c")
    ga, gb = tk.matmul_backward(g, a, b)
    assert ga.shape == a.shape and gb.shape == b.shape
    assert_close(ga, ga_ref, **_tol(dtype, N), msg="grad_a")
    assert_close(gb, gb_ref, **_tol(dtype, M), msg="grad_b")


def test_fp32_is_ieee_not_tf32():
    """fp32 products carry fp32 accuracy (tf32 would be ~1e-3 off)."""
    a, b = trand((1, 32, 64), torch.float32, 4), trand((1, 64, 32), torch.float32, 5)
    ref = a.double() @ b.double()
    err = ((tk.matmul(a, b).double() - ref).norm() / ref.norm()).item()
    assert err < 1e-6, err


def test_non_contiguous():
    a = trand((2, 20, 9), torch.float32, 6).transpose(1, 2)  # (2, 9, 20)
    b = trand((2, 40, 11), torch.float32, 7)[:, ::2]  # (2, 20, 11)
    g = trand((2, 11, 9), torch.float32, 8).transpose(1, 2)
    c_ref, ga_ref, gb_ref = _ref_mm(a, b, g)
    assert_close(tk.matmul(a, b), c_ref, rtol=1e-5, atol=1e-5)
    ga, gb = tk.matmul_backward(g, a, b)
    assert_close(ga, ga_ref, rtol=1e-5, atol=1e-5)
    assert_close(gb, gb_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (20, 17, 3)])
def test_linear(shape, dtype, has_bias):
    N, K, O = shape
    x, w, g = trand((N, K), dtype, 1), trand((O, K), dtype, 2), trand((N, O), dtype, 3)
    bias = trand((O,), dtype, 4) if has_bias else None
    x64, w64 = x.double().requires_grad_(True), w.double().requires_grad_(True)
    b64 = bias.double().requires_grad_(True) if has_bias else None
    y_ref = F.linear(x64, w64, b64)
    y_ref.backward(g.double())
    y = tk.linear(x, w, bias)
    assert y.dtype == dtype and y.shape == (N, O)
    assert_close(y, y_ref.detach(), **_tol(dtype, K), msg="y")
    gx, gw, gb = tk.linear_backward(g, x, w, has_bias)
    assert_close(gx, x64.grad, **_tol(dtype, O), msg="grad_x")
    assert_close(gw, w64.grad, **_tol(dtype, N), msg="grad_w")
    if has_bias:
        assert_close(gb, b64.grad, **_tol(dtype, N), msg="grad_b")
    else:
        assert gb is None


def test_backward_skips_gradients_not_needed():
    """``needs`` / ``need_input=False``: that gradient is None; the others are the full call's, bitwise."""
    a, b, g = trand((2, 5, 7), torch.float32, 1), trand((2, 7, 3), torch.float32, 2), trand((2, 5, 3), torch.float32, 3)
    ga, gb = tk.matmul_backward(g, a, b)
    none_a, only_b = tk.matmul_backward(g, a, b, (False, True))
    only_a, none_b = tk.matmul_backward(g, a, b, (True, False))
    assert none_a is None and none_b is None
    assert torch.equal(only_b, gb) and torch.equal(only_a, ga)
    x, w, up = trand((6, 4), torch.float32, 4), trand((5, 4), torch.float32, 5), trand((6, 5), torch.float32, 6)
    _, gw, gbias = tk.linear_backward(up, x, w, True)
    nx, nw, nbias = tk.linear_backward(up, x, w, True, need_input=False)
    assert nx is None and torch.equal(nw, gw) and torch.equal(nbias, gbias)


def test_empty():
    d = device()
    assert tk.matmul(torch.empty(2, 0, 3, device=d), torch.empty(2, 3, 4, device=d)).shape == (2, 0, 4)
    c = tk.matmul(torch.empty(2, 5, 0, device=d), torch.empty(2, 0, 4, device=d))
    assert c.shape == (2, 5, 4) and not c.any()
    ga, gb = tk.matmul_backward(torch.empty(1, 0, 4, device=d), torch.empty(1, 0, 3, device=d),
                                torch.ones(1, 3, 4, device=d))
    assert ga.shape == (1, 0, 3) and gb.shape == (1, 3, 4) and not gb.any()
    y = tk.linear(torch.empty(0, 3, device=d), torch.ones(2, 3, device=d), torch.ones(2, device=d))
    assert y.shape == (0, 2)
    gx, gw, gb = tk.linear_backward(torch.empty(0, 2, device=d), torch.empty(0, 3, device=d),
                                    torch.ones(2, 3, device=d), True)
    assert gx.shape == (0, 3) and gw.shape == (2, 3) and gb.shape == (2,) and not gw.any() and not gb.any()
    y = tk.linear(torch.empty(4, 0, device=d), torch.empty(2, 0, device=d), torch.ones(2, device=d))
    assert torch.equal(y, torch.ones(4, 2, device=d))


@gpu
def test_large_bf16_gpu():
    """Tensor-core sizes in bf16 and fp16 against an fp32 reference (relative norm error)."""
    for dtype in (torch.bfloat16, torch.float16):
        a, b = trand((2, 1024, 512), dtype, 9), trand((2, 512, 768), dtype, 10)
        ref = a.float() @ b.float()
        err = ((tk.matmul(a, b).float() - ref).norm() / ref.norm()).item()
        assert err < 1e-2, (dtype, err)

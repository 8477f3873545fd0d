"""Triton fused cross-entropy against torch.nn.functional.cross_entropy: loss, fused grad, backward."""
from tests.kernels.triton._helpers import require_triton

require_triton()

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dlcore.kernels.triton import cross_entropy as tk  # noqa: E402

from tests._compare import assert_close  # noqa: E402
from tests.kernels.triton._helpers import device, float_dtypes, gpu, tol, trand, upcast  # noqa: E402

IGNORE = -100


@pytest.fixture(params=["fused", "looped"])
def path(request, monkeypatch):
    """Run each case with the row in registers and through the looped kernel (32-wide chunks)."""
    if request.param == "looped":
        monkeypatch.setattr(tk, "_MAX_FUSED", 32)
    return request.param


def _targets(N, C, seed, ignore_some=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, C, (N,), generator=g)
    if ignore_some and N > 2:
        t[1] = IGNORE
    return t.to(device())


def _ref(logits, target, smoothing, reduction, g):
    x = upcast(logits).detach().requires_grad_(True)
    loss = F.cross_entropy(x, target, ignore_index=IGNORE, label_smoothing=smoothing, reduction=reduction)
    loss.backward(upcast(g))
    return loss.detach(), x.grad


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("shape", [(3, 1), (5, 7), (4, 33), (9, 129)])
def test_forward_backward(shape, dtype, smoothing, reduction, path):
    N, C = shape
    logits, target = trand(shape, dtype, seed=1, scale=2.0), _targets(N, C, 2)
    ones = torch.ones(N if reduction == "none" else (), dtype=dtype, device=device())
    loss_ref, grad1_ref = _ref(logits, target, smoothing, reduction, ones)
    loss, grad1 = tk.cross_entropy_forward(logits, target, IGNORE, smoothing, reduction, True)
    assert loss.dtype == grad1.dtype == dtype and loss.shape == loss_ref.shape
    assert_close(loss, loss_ref, **tol(dtype), msg="loss")
    assert_close(grad1, grad1_ref, **tol(dtype), msg="fused grad")
    loss2, none = tk.cross_entropy_forward(logits, target, IGNORE, smoothing, reduction, False)
    assert none is None
    assert_close(loss2, loss, rtol=0, atol=0, msg="loss without grad")
    g = trand((N,) if reduction == "none" else (), dtype, seed=3)
    _, grad_ref = _ref(logits, target, smoothing, reduction, g)
    grad = tk.cross_entropy_backward(g, logits, target, IGNORE, smoothing, reduction)
    assert_close(grad, grad_ref, **tol(dtype), msg="backward")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_all_ignored(reduction, path):
    """Every target ignored: torch's value (NaN for 'mean'), zero finite gradients, no exception."""
    logits = trand((4, 40), torch.float32, seed=4)
    target = torch.full((4,), IGNORE, device=device())
    ones = torch.ones(4 if reduction == "none" else (), device=device())
    loss_ref, grad_ref = _ref(logits, target, 0.1, reduction, ones)
    loss, grad = tk.cross_entropy_forward(logits, target, IGNORE, 0.1, reduction, True)
    assert_close(loss, loss_ref)
    assert torch.equal(grad, torch.zeros_like(grad)) and torch.equal(grad_ref, torch.zeros_like(grad_ref))


def test_custom_ignore_index_and_extremes(path):
    """ignore_index inside [0, C) is honoured; logits of +-1e4 and -inf (masked vocab) stay finite."""
    logits = trand((3, 41), torch.float32, seed=5)
    logits[0, 5] = 1e4
    logits[1, :20] = float("-inf")
    target = torch.tensor([5, 30, 2], device=device())
    for ign in (2, IGNORE):
        x = logits.detach().requires_grad_(True)
        ref = F.cross_entropy(x, target, ignore_index=ign, reduction="sum")
        ref.backward()
        loss, grad = tk.cross_entropy_forward(logits, target, ign, 0.0, "sum", True)
        assert_close(loss, ref.detach())
        assert torch.isfinite(grad).all()
        assert_close(grad, x.grad)


def test_non_contiguous_and_empty():
    logits = trand((40, 5), torch.float32, seed=6).t()  # (5, 40), column stride 5
    target = _targets(5, 40, 7)
    loss_ref, grad_ref = _ref(logits, target, 0.0, "mean", torch.ones((), device=device()))
    loss, grad = tk.cross_entropy_forward(logits, target, IGNORE, 0.0, "mean", True)
    assert_close(loss, loss_ref)
    assert_close(grad, grad_ref)
    e = torch.empty((0, 7), device=device())
    et = torch.empty(0, dtype=torch.int64, device=device())
    for reduction in ("none", "mean", "sum"):
        loss, grad = tk.cross_entropy_forward(e, et, IGNORE, 0.0, reduction, True)
        assert_close(loss, F.cross_entropy(e, et, reduction=reduction))
        assert grad.shape == (0, 7)


@gpu
def test_int64_offsets_gpu():
    """N*C past 2^31 elements (fp16, ~4.3 GB logits + the same for the gradient): int64 row offsets."""
    N, C = 17, 2**27 + 3
    logits = torch.randn(N, C, device="cuda", dtype=torch.float16)
    target = torch.randint(0, C, (N,), device="cuda")
    loss, grad = tk.cross_entropy_forward(logits, target, IGNORE, 0.0, "none", True)
    for r in (0, N - 1):  # the last row starts past 2^31: wrong without int64 offsets
        x = logits[r].float()
        lse = torch.logsumexp(x, 0)
        assert_close(loss[r], lse - x[target[r]], rtol=2e-3, atol=2e-3)
        p = torch.exp(x - lse)
        p[target[r]] -= 1
        assert_close(grad[r], p, rtol=2e-3, atol=1e-4)


@gpu
def test_bfloat16_gpu():
    logits, target = trand((64, 1000), torch.bfloat16, seed=8), _targets(64, 1000, 9)
    loss_ref, grad_ref = _ref(logits, target, 0.1, "mean", torch.ones((), device="cuda"))
    loss, grad = tk.cross_entropy_forward(logits, target, IGNORE, 0.1, "mean", True)
    assert_close(loss, loss_ref, **tol(torch.bfloat16))
    assert_close(grad, grad_ref, **tol(torch.bfloat16))

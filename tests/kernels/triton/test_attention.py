"""Triton flash attention against torch's scaled_dot_product_attention (float64 math reference)."""
from tests.kernels.triton._helpers import require_triton

require_triton()

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dlcore.kernels.triton import attention as tk  # noqa: E402

from tests._compare import assert_close  # noqa: E402
from tests.kernels.triton._helpers import device, float_dtypes, gpu, trand  # noqa: E402


def _tol(dtype):
    # fp32: IEEE dots, exp2 of scores in base 2 (a few ulps); fp16: P rounded to fp16 before P @ V
    return {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float16: dict(rtol=5e-3, atol=5e-3),
            torch.bfloat16: dict(rtol=3e-2, atol=3e-2), torch.float64: dict(rtol=1e-6, atol=1e-7)}[dtype]


def _ref(q, k, v, mask, causal, scale, g):
    """torch SDPA in float64 on the CPU: output, lse, and the three gradients."""
    q64, k64, v64 = (t.detach().double().cpu().requires_grad_(True) for t in (q, k, v))
    m = mask.cpu() if mask is not None else None
    if m is not None and m.dtype != torch.bool:
        m = m.double()
    out = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=m, is_causal=causal, scale=scale)
    out.backward(g.double().cpu())
    s = (q64 @ k64.transpose(1, 2)).detach() * scale
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[1:], dtype=torch.bool).tril(), float("-inf"))
    if m is not None:
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
    lse = torch.logsumexp(s, dim=-1)
    return out.detach(), lse, q64.grad, k64.grad, v64.grad


def _run(q, k, v, mask, causal, scale, dtype, g=None):
    B, L, _ = q.shape
    g = trand((B, L, v.shape[2]), dtype, seed=99) if g is None else g
    out_ref, lse_ref, dq_ref, dk_ref, dv_ref = _ref(q, k, v, mask, causal, scale, g)
    out, lse = tk.attention_forward(q, k, v, mask, causal, scale)
    assert out.dtype == dtype and out.shape == out_ref.shape and lse.shape == (B, L)
    t = _tol(dtype)
    assert_close(out, out_ref, **t, msg="out")
    assert_close(lse, lse_ref, **t, msg="lse")
    dq, dk, dv = tk.attention_backward(g, q, k, v, out, lse, mask, causal, scale)
    assert dq.dtype == dk.dtype == dv.dtype == dtype
    tb = dict(rtol=t["rtol"] * 2, atol=t["atol"] * 2)  # one more matmul of rounded P
    assert_close(dq, dq_ref, **tb, msg="dq")
    assert_close(dk, dk_ref, **tb, msg="dk")
    assert_close(dv, dv_ref, **tb, msg="dv")
    return out, lse, dq, dk, dv


def _bool_mask(B, L, S, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, L, S, generator=g) > 0.3).to(device())


# (B, L, S, E, Ev)
SHAPES = [(1, 1, 1, 16, 16), (2, 7, 33, 16, 16), (1, 40, 17, 24, 16), (2, 33, 40, 32, 40)]


@pytest.mark.parametrize("variant", ["plain", "causal", "bool", "float"])
@pytest.mark.parametrize("dtype", float_dtypes())
@pytest.mark.parametrize("shape", SHAPES)
def test_attention(shape, dtype, variant):
    B, L, S, E, EV = shape
    q, k, v = trand((B, L, E), dtype, 1), trand((B, S, E), dtype, 2), trand((B, S, EV), dtype, 3)
    mask = None
    if variant == "bool":
        mask = _bool_mask(B, L, S, 4)
    elif variant == "float":
        mask = trand((B, L, S), dtype, 5)
    _run(q, k, v, mask, variant == "causal", 1.0 / math.sqrt(E), dtype)


def test_float64():
    q, k, v = trand((1, 9, 16), torch.float64, 1), trand((1, 20, 16), torch.float64, 2), trand((1, 20, 16), torch.float64, 3)
    _run(q, k, v, _bool_mask(1, 9, 20, 6), False, 0.3, torch.float64)


def test_broadcast_masks_and_fully_masked_rows():
    """Stride-0 masks (one row broadcast over queries and batches); rows with no key give 0 and -inf."""
    B, L, S, E = 2, 20, 30, 16
    q, k, v = trand((B, L, E), torch.float32, 1), trand((B, S, E), torch.float32, 2), trand((B, S, E), torch.float32, 3)
    key_pad = (torch.arange(S) < 25).to(device())  # key padding: the last 5 keys
    bmask = key_pad.view(1, 1, S).expand(B, L, S)
    assert bmask.stride() == (0, 0, 1)
    _run(q, k, v, bmask, False, 0.25, torch.float32)
    # fully masked query rows (rows 3 and 17): bool and additive -inf forms
    m = torch.ones(L, S, dtype=torch.bool, device=device())
    m[3] = False
    m[17] = False
    bm = m.unsqueeze(0).expand(B, L, S)
    out, lse, dq, dk, dv = _run(q, k, v, bm, False, 0.25, torch.float32)
    assert not out[:, 3].any() and not dq[:, 17].any()
    assert torch.isinf(lse[:, 3]).all() and (lse[:, 3] < 0).all()
    fm = torch.zeros(L, S, device=device()).masked_fill(~m, float("-inf")).unsqueeze(0).expand(B, L, S)
    _run(q, k, v, fm, False, 0.25, torch.float32)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e10])
def test_masked_keys_hold_nan_inf_huge(bad):
    """NaN/inf/1e10 in masked-out K and V rows change nothing: output, lse and gradients (dlcore's
    policy, RELIABILITY.md item 8; torch's CPU SDPA lets 0 * NaN through)."""
    B, L, S, E = 2, 9, 20, 16
    q, k, v = trand((B, L, E), torch.float32, 1), trand((B, S, E), torch.float32, 2), trand((B, S, E), torch.float32, 3)
    keep = torch.arange(S, device=device()) < 15
    mask = keep.view(1, 1, S).expand(B, L, S)
    g = trand((B, L, E), torch.float32, 4)
    out_c, lse_c = tk.attention_forward(q, k, v, mask, False, 0.25)
    grads_c = tk.attention_backward(g, q, k, v, out_c, lse_c, mask, False, 0.25)
    k2, v2 = k.clone(), v.clone()
    k2[:, 15:, 3] = bad
    v2[:, 17:, 5] = bad
    v2[0, 16] = -bad
    out, lse = tk.attention_forward(q, k2, v2, mask, False, 0.25)
    assert_close(out, out_c, rtol=0, atol=0)
    assert_close(lse, lse_c, rtol=0, atol=0)
    for name, a, c in zip("qkv", tk.attention_backward(g, q, k2, v2, out, lse, mask, False, 0.25), grads_c):
        assert_close(a, c, rtol=1e-6, atol=1e-7, msg=f"d{name}")


def test_nan_on_admissible_key_propagates():
    """A NaN in an attended V row poisons exactly the rows that attend it (and only those columns)."""
    B, L, S, E = 1, 9, 20, 16
    q, k, v = trand((B, L, E), torch.float32, 1), trand((B, S, E), torch.float32, 2), trand((B, S, E), torch.float32, 3)
    v[0, 4, 2] = float("nan")
    v[0, 6, 7] = float("inf")
    mask = torch.ones(B, L, S, dtype=torch.bool, device=device())
    mask[0, :5, 4] = False  # rows 0-4 do not attend key 4
    mask[0, 3:, 6] = False  # rows 3-8 do not attend key 6
    out, _ = tk.attention_forward(q, k, v, mask, False, 0.25)
    assert torch.isnan(out[0, 5:, 2]).all() and torch.isfinite(out[0, :5, 2]).all()
    assert torch.isposinf(out[0, :3, 7]).all() and torch.isfinite(out[0, 3:5, 7]).all()
    assert torch.isfinite(out[0, :, 0]).all()


def test_causal_rectangular_and_non_contiguous():
    """Causal with L > S and with L < S (top-left aligned, as torch); transposed q/k/v views."""
    for L, S in ((40, 17), (9, 33)):
        q = trand((1, 16, L), torch.float32, 1).transpose(1, 2)
        k = trand((S, 1, 16), torch.float32, 2).transpose(0, 1)
        v = trand((1, S, 32), torch.float32, 3)[:, :, ::2]
        _run(q, k, v, None, True, 0.25, torch.float32)


def test_empty():
    d = device()
    q, k, v = torch.empty(2, 0, 16, device=d), torch.ones(2, 5, 16, device=d), torch.ones(2, 5, 16, device=d)
    out, lse = tk.attention_forward(q, k, v, None, False, 0.25)
    assert out.shape == (2, 0, 16) and lse.shape == (2, 0)
    dq, dk, dv = tk.attention_backward(out, q, k, v, out, lse, None, False, 0.25)
    assert dq.shape == (2, 0, 16) and not dk.any() and not dv.any()
    q = torch.ones(1, 3, 16, device=d)
    k0 = torch.empty(1, 0, 16, device=d)
    out, lse = tk.attention_forward(q, k0, k0, None, False, 0.25)
    assert not out.any() and torch.isinf(lse).all()


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("E", [64, 128])
def test_large_gpu(dtype, E):
    """Real tile sizes: L, S in the hundreds, head dims 64/128, causal, in 16-bit types. Each output's error
    against float64 must stay within 2e-2, or within 1.25x the error of torch's own SDPA in the same dtype
    (a bf16 dK carries the rounding of dS to bf16, which no kernel of this precision avoids)."""
    B, L, S = 2, 300, 300
    q, k, v = trand((B, L, E), dtype, 1), trand((B, S, E), dtype, 2), trand((B, S, E), dtype, 3)
    g = trand((B, L, E), dtype, 4)
    out_ref, lse_ref, dq_ref, dk_ref, dv_ref = _ref(q, k, v, None, True, E**-0.5, g)
    out, lse = tk.attention_forward(q, k, v, None, True, E**-0.5)
    dq, dk, dv = tk.attention_backward(g, q, k, v, out, lse, None, True, E**-0.5)
    qt, kt, vt = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out_t = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=E**-0.5)
    out_t.backward(g)
    torch_side = {"out": out_t, "dq": qt.grad, "dk": kt.grad, "dv": vt.grad}

    def err(a, r):
        return ((a.double().cpu() - r).norm() / r.norm()).item()

    for name, a, r in [("out", out, out_ref), ("dq", dq, dq_ref), ("dk", dk, dk_ref), ("dv", dv, dv_ref)]:
        mine, theirs = err(a, r), err(torch_side[name], r)
        assert mine < max(2e-2, 1.25 * theirs), (name, mine, theirs)

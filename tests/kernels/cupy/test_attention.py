"""CuPy flash-attention kernels against torch's scaled_dot_product_attention (CPU), forward, lse and backward.
Needs a GPU (or the emulator)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.kernels.cupy._helpers import DTYPES, assert_close, host, rand, tol, torch_tensor

pytestmark = pytest.mark.gpu

# (B, L, S, E, Ev): odd sizes, L != S both ways, more than one 32-key tile, head dims not multiples of 32
SHAPES = [(1, 1, 1, 1, 1), (2, 5, 7, 3, 4), (3, 13, 40, 16, 8), (2, 70, 33, 5, 9), (1, 9, 9, 64, 64)]


@pytest.fixture(scope="module")
def K(kernels):
    return kernels("attention")


def _reference(q, k, v, mask, is_causal, scale, g):
    """torch SDPA output, lse of the scaled masked scores, and gradients (all on the CPU)."""
    import torch
    import torch.nn.functional as F

    qt, kt, vt = (torch_tensor(a, requires_grad=True) for a in (q, k, v))
    mt = None if mask is None else torch.tensor(np.ascontiguousarray(mask))
    if mt is not None and mt.dtype != torch.bool:
        mt = mt.to(qt.dtype)
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mt, is_causal=is_causal, scale=scale)
    out.backward(torch_tensor(g))
    with torch.no_grad():
        s = (qt @ kt.transpose(1, 2)) * scale
        if is_causal:
            L, S = s.shape[1:]
            s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), -math.inf)
        elif mt is not None:
            s = s.masked_fill(~mt, -math.inf) if mt.dtype == torch.bool else s + mt
        lse = torch.logsumexp(s, dim=-1)
    return out, lse, qt.grad, kt.grad, vt.grad


def _run(cp, K, q, k, v, mask, is_causal, scale, g, dev_mask=None):
    m = dev_mask if dev_mask is not None else (None if mask is None else cp.array(mask))
    out, lse = K.attention_forward(cp.array(q), cp.array(k), cp.array(v), m, is_causal, scale)
    grads = K.attention_backward(cp.array(g), cp.array(q), cp.array(k), cp.array(v), out, lse, m,
                                 is_causal, scale)
    return out, lse, grads


def _inputs(shape, dtype, seed=0):
    B, L, S, E, Ev = shape
    return (rand((B, L, E), dtype, seed=seed + 1), rand((B, S, E), dtype, seed=seed + 2),
            rand((B, S, Ev), dtype, seed=seed + 3), rand((B, L, Ev), dtype, seed=seed + 4))


def _check(cp, K, shape, dtype, mask=None, is_causal=False, dev_mask=None, t=None, bt=None):
    q, k, v, g = _inputs(shape, dtype)
    scale = 1.0 / math.sqrt(shape[3])
    out, lse, (dq, dk, dv) = _run(cp, K, q, k, v, mask, is_causal, scale, g, dev_mask)
    rout, rlse, rdq, rdk, rdv = _reference(q, k, v, mask, is_causal, scale, g)
    t = t or tol(dtype, 10)
    bt = bt or tol(dtype, 50)  # the backward sums over L or S products of recomputed probabilities
    assert out.shape == rout.shape and out.dtype == q.dtype
    assert_close(host(out), rout, **t, msg="out")
    assert_close(host(lse), rlse, **t, msg="lse")
    assert_close(host(dq), rdq, **bt, msg="grad_q")
    assert_close(host(dk), rdk, **bt, msg="grad_k")
    assert_close(host(dv), rdv, **bt, msg="grad_v")
    return out, lse


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_mask(cp, K, shape, dtype):
    _check(cp, K, shape, dtype)


@pytest.mark.parametrize("shape", [(2, 5, 7, 3, 4), (1, 40, 40, 8, 8), (2, 70, 33, 5, 9), (1, 9, 45, 4, 6)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_causal(cp, K, shape, dtype):
    """torch's is_causal is the top-left tril of (L, S): query i sees keys j <= i (rows with i >= S see all)."""
    _check(cp, K, shape, dtype, is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bool_mask_with_fully_masked_rows(cp, K, dtype):
    """Fully masked rows: output 0, lse -inf and zero gradients, as torch."""
    shape = (2, 11, 37, 6, 5)
    mask = np.random.default_rng(7).uniform(size=(2, 11, 37)) < 0.6
    mask[0, 3] = False
    mask[1, 10] = False
    out, lse = _check(cp, K, shape, dtype, mask=mask)
    assert (host(out)[0, 3] == 0).all() and host(lse)[0, 3] == -np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_additive_mask(cp, K, dtype):
    shape = (2, 9, 35, 4, 7)
    mask = rand((2, 9, 35), dtype, seed=8)
    mask[np.random.default_rng(9).uniform(size=mask.shape) < 0.3] = -np.inf
    mask[1, 4] = -np.inf  # a fully masked row through the additive path
    _check(cp, K, shape, dtype, mask=mask)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_broadcast_and_negative_stride_masks(cp, K, kind):
    """A (1, 1, S) mask broadcast to (B, L, S) by a stride-0 view, and a reversed (negative-stride) view."""
    B, L, S, E, Ev = 3, 6, 40, 4, 4
    rng = np.random.default_rng(10)
    base = rng.uniform(size=(1, 1, S)) < 0.7 if kind == "bool" else rand((1, 1, S), np.float64, seed=11)
    full = np.broadcast_to(base, (B, L, S))
    dev = cp.broadcast_to(cp.array(base), (B, L, S))
    assert dev.strides[0] == 0 and dev.strides[1] == 0
    _check(cp, K, (B, L, S, E, Ev), np.float64, mask=full, dev_mask=dev)
    full2 = rng.uniform(size=(B, L, S)) < 0.7 if kind == "bool" else rand((B, L, S), np.float64, seed=12)
    rev = cp.array(full2)[:, ::-1, ::-1]
    _check(cp, K, (B, L, S, E, Ev), np.float64, mask=full2[:, ::-1, ::-1], dev_mask=rev)


@pytest.mark.parametrize("kind", ["bool", "float", "causal"])
def test_nan_in_masked_kv_does_not_leak(cp, K, kind):
    """NaN / 1e10 in masked-out K and V positions must not change the output (select, not multiply)."""
    B, L, S, E, Ev = 2, 8, 40, 5, 6
    q, k, v, g = _inputs((B, L, S, E, Ev), np.float32)
    if kind == "causal":
        mask, causal = None, True
        bad = np.zeros((B, S), bool)
        bad[:, L:] = True  # keys beyond the last query are never visible
    else:
        keep = np.ones((B, L, S), bool)
        keep[:, :, 30:] = False
        mask = keep if kind == "bool" else np.where(keep, 0.0, -np.inf).astype(np.float32)
        causal = False
        bad = np.zeros((B, S), bool)
        bad[:, 30:] = True
    k2, v2 = k.copy(), v.copy()
    k2[bad] = np.nan
    v2[bad] = 1e10
    v2[bad[:, :], 0] = np.nan
    clean, clean_lse = K.attention_forward(cp.array(q), cp.array(k), cp.array(v),
                                           None if mask is None else cp.array(mask), causal, 0.5)
    dirty, dirty_lse = K.attention_forward(cp.array(q), cp.array(k2), cp.array(v2),
                                           None if mask is None else cp.array(mask), causal, 0.5)
    assert np.array_equal(host(clean), host(dirty)) and np.array_equal(host(clean_lse), host(dirty_lse))
    grads = K.attention_backward(cp.array(g), cp.array(q), cp.array(k2), cp.array(v2), dirty, dirty_lse,
                                 None if mask is None else cp.array(mask), causal, 0.5)
    assert all(np.isfinite(host(x)[~bad] if x.shape[1] == S else host(x)).all() for x in grads)


def test_no_keys(cp, K):
    """S == 0: every row sees no key: output 0, lse -inf, zero gradients."""
    q, k, v = (cp.array(rand(s, np.float32, seed=1)) for s in ((2, 3, 4), (2, 0, 4), (2, 0, 5)))
    out, lse = K.attention_forward(q, k, v, None, False, 0.5)
    assert out.shape == (2, 3, 5) and (host(out) == 0).all() and (host(lse) == -np.inf).all()
    dq, dk, dv = K.attention_backward(cp.ones((2, 3, 5), np.float32), q, k, v, out, lse, None, False, 0.5)
    assert (host(dq) == 0).all() and dk.shape == (2, 0, 4) and dv.shape == (2, 0, 5)


def test_no_queries(cp, K):
    q, k, v = (cp.array(rand(s, np.float32, seed=1)) for s in ((2, 0, 4), (2, 5, 4), (2, 5, 3)))
    out, lse = K.attention_forward(q, k, v, None, False, 0.5)
    assert out.shape == (2, 0, 3) and lse.shape == (2, 0)
    dq, dk, dv = K.attention_backward(cp.zeros((2, 0, 3), np.float32), q, k, v, out, lse, None, False, 0.5)
    assert dq.shape == (2, 0, 4) and (host(dk) == 0).all() and (host(dv) == 0).all()


def test_wide_heads_are_chunked(cp, K):
    """E and Ev above 256 columns: the launcher loops over column chunks (and opts into > 48 KiB smem)."""
    _check(cp, K, (1, 3, 5, 300, 270), np.float32, t=tol(np.float32, 20), bt=tol(np.float32, 100))


def test_float16(cp, K):
    shape = (2, 17, 45, 16, 8)
    q, k, v, g = _inputs(shape, np.float16)
    scale = 0.25
    out, lse, (dq, dk, dv) = _run(cp, K, q, k, v, None, True, scale, g)
    rout, rlse, rdq, rdk, rdv = _reference(q, k, v, None, True, scale, g)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    assert_close(host(out), rout, **tol(np.float16))
    assert_close(host(lse), rlse, rtol=1e-5, atol=1e-5)  # lse is computed and kept in float32
    for ours, ref in ((dq, rdq), (dk, rdk), (dv, rdv)):
        assert_close(host(ours), ref, rtol=1e-2, atol=1e-2)  # sees the half-rounded output in delta

"""Scaled dot-product attention on CuPy arrays: flash-style RawKernels in ``cuda/attention.cu``.

The forward walks the keys in tiles of 32 with an online softmax and never materialises the (L, S) score
matrix; the backward recomputes the probabilities tile by tile from the saved log-sum-exp (one kernel for
dq over query rows, one for dk/dv over key rows: no atomics, deterministic). Masks may be bool (True =
attend) or additive float, given as any (B, L, S)-broadcastable view, stride-0 dimensions included; they
are read through their strides, never copied (a float mask of another dtype is cast, which does copy).

Policy, as torch: a query row that sees no key (fully masked, or S == 0) gets output 0, lse -inf and zero
gradients; NaN or huge values in masked-out K/V positions never reach the output (masking is a select).
Heads wider than 256 columns are handled by looping over 256-column chunks of the output (the scores are
recomputed per chunk); q/k and v rows must fit a shared-memory tile (E, Ev up to several hundred).
"""
from __future__ import annotations

import numpy as np

from . import _source as src

_CU = "attention.cu"
_WARPS = 8          # ATT_WARPS in attention.cu: rows per block, one warp each
_THREADS = 32 * _WARPS
_COLS = 256         # ATT_COLS in attention.cu: output columns per launch


def _chunks(n: int):
    """(start, count) column windows of at most _COLS covering n columns (one empty window when n == 0)."""
    return [(s, min(_COLS, n - s)) for s in range(0, n, _COLS)] or [(0, 0)]


def _mask_args(cp, mask, is_causal, shape, dtype):
    """Kernel arguments (mask_b, mask_f, msb, msl, mss, kind) for the mask, read through its strides."""
    B, L, S = shape
    dummy_b = cp.zeros((1,), dtype=np.uint8)
    if mask is None:
        return dummy_b, None, 0, 0, 0, (1 if is_causal else 0)
    if is_causal:
        raise ValueError("attention: pass either a mask or is_causal, not both")
    if tuple(mask.shape) != (B, L, S):
        mask = cp.broadcast_to(mask, (B, L, S))  # a view with stride-0 dimensions, no copy
    if mask.dtype == np.bool_:
        kind, mb, mf = 2, mask, None
    elif np.dtype(mask.dtype).kind == "f":
        kind, mb = 3, dummy_b
        mf = mask if mask.dtype == np.dtype(dtype) else mask.astype(dtype)
    else:
        raise TypeError(f"attention: mask must be bool or floating, got {mask.dtype}")
    arr = mb if kind == 2 else mf
    item = arr.itemsize
    msb, msl, mss = (int(s) // item for s in arr.strides)
    return mb, mf, msb, msl, mss, kind


def _smem(*counts: int, acc_itemsize: int) -> int:
    return int(sum(counts)) * acc_itemsize


def attention_forward(q, k, v, mask, is_causal, scale):
    """Attention output and per-row log-sum-exp, without materialising the score matrix.

    Args:
        q: ``(B, L, E)`` float CuPy array.
        k: ``(B, S, E)`` array of the same dtype.
        v: ``(B, S, Ev)`` array of the same dtype.
        mask: None, or a bool (True = attend) or additive float array broadcastable to ``(B, L, S)``
            (stride-0 views welcome).
        is_causal: mask key j from query i when ``j > i`` (never together with ``mask``).
        scale: multiplies ``q . k`` before masking and softmax.

    Returns:
        ``(out, lse)``: out ``(B, L, Ev)`` in q's dtype; lse ``(B, L)`` in the accumulation dtype (q's dtype,
        float32 for float16 inputs), ``-inf`` on rows that see no key (whose output is 0).

    Example:
        >>> out, lse = attention_forward(q, k, v, None, True, 1 / 8.0)  # doctest: +SKIP
    """
    cp = src.cupy()
    dtype = src.check_float(q, k, v)
    q, k, v = (cp.ascontiguousarray(a) for a in (q, k, v))
    B, L, E = q.shape
    S, Ev = k.shape[1], v.shape[2]
    acc = src.acc_dtype(dtype)
    out = cp.empty((B, L, Ev), dtype=q.dtype)
    lse = cp.empty((B, L), dtype=acc)
    if B * L == 0:
        return out, lse
    mb, mf, msb, msl, mss, kind = _mask_args(cp, mask, is_causal, (B, L, S), dtype)
    kern = src.function(_CU, "attn_fwd", dtype)
    items = B * (-(-L // _WARPS))
    for n, (c0, cn) in enumerate(_chunks(Ev)):
        smem = _smem(32 * (E | 1), 32 * cn, _WARPS * E, acc_itemsize=acc.itemsize)
        src.launch_with_smem(
            kern, (src.grid(items),), (_THREADS,),
            (q, k, v, mb, mf if mf is not None else q, src.i64(msb), src.i64(msl), src.i64(mss), src.i32(kind),
             out, lse, src.i64(B), src.i64(L), src.i64(S), src.i32(E), src.i32(Ev), src.i32(c0), src.i32(cn),
             src.acc_scalar(dtype, scale), src.i32(n == 0)),
            smem)
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, mask, is_causal, scale):
    """Gradients of `attention_forward`, recomputing the probabilities tile by tile from ``lse``.

    Args:
        grad_out: ``(B, L, Ev)`` upstream gradient.
        q: ``(B, L, E)`` forward query.
        k: ``(B, S, E)`` forward key.
        v: ``(B, S, Ev)`` forward value.
        out: ``(B, L, Ev)`` forward output.
        lse: ``(B, L)`` forward log-sum-exp (any float dtype; used in the accumulation dtype).
        mask: the forward's mask (or None).
        is_causal: the forward's flag.
        scale: the forward's scale.

    Returns:
        ``(grad_q, grad_k, grad_v)`` with the shapes and dtype of q, k, v; rows that saw no key contribute 0.
    """
    cp = src.cupy()
    dtype = src.check_float(grad_out, q, k, v, out)
    q, k, v, grad_out, out = (cp.ascontiguousarray(a) for a in (q, k, v, grad_out, out))
    B, L, E = q.shape
    S, Ev = k.shape[1], v.shape[2]
    acc = src.acc_dtype(dtype)
    dq = cp.zeros_like(q)
    dk = cp.zeros_like(k)
    dv = cp.zeros_like(v)
    if B * L == 0 or S == 0:
        return dq, dk, dv
    lse = cp.ascontiguousarray(lse.astype(acc, copy=False))
    mb, mf, msb, msl, mss, kind = _mask_args(cp, mask, is_causal, (B, L, S), dtype)
    mf = mf if mf is not None else q
    mask_args = (mb, mf, src.i64(msb), src.i64(msl), src.i64(mss), src.i32(kind))
    sizes = (src.i64(B), src.i64(L), src.i64(S), src.i32(E), src.i32(Ev))
    sc = src.acc_scalar(dtype, scale)

    rows = B * L
    delta = cp.empty((rows,), dtype=acc)
    src.function(_CU, "attn_bwd_delta", dtype)(
        (src.grid(-(-rows // _WARPS)),), (_THREADS,), (grad_out, out, delta, src.i64(rows), src.i32(Ev)))

    kern = src.function(_CU, "attn_bwd_dq", dtype)
    items = B * (-(-L // _WARPS))
    smem = _smem(32 * (E | 1), 32 * (Ev | 1), _WARPS * E, _WARPS * Ev, acc_itemsize=acc.itemsize)
    for e0, en in _chunks(E):
        if en:
            src.launch_with_smem(kern, (src.grid(items),), (_THREADS,),
                                 (q, k, v, grad_out, lse, delta, *mask_args, dq, *sizes, src.i32(e0), src.i32(en), sc),
                                 smem)

    kern = src.function(_CU, "attn_bwd_dkdv", dtype)
    items = B * (-(-S // _WARPS))
    smem = _smem(32 * (E | 1), 32 * (Ev | 1), 64, _WARPS * E, _WARPS * Ev, acc_itemsize=acc.itemsize)
    ck, cv = _chunks(E), _chunks(Ev)
    for c in range(max(len(ck), len(cv))):
        ek0, ekn = ck[c] if c < len(ck) else (0, 0)
        ev0, evn = cv[c] if c < len(cv) else (0, 0)
        if ekn or evn:
            src.launch_with_smem(kern, (src.grid(items),), (_THREADS,),
                                 (q, k, v, grad_out, lse, delta, *mask_args, dk, dv, *sizes,
                                  src.i32(ek0), src.i32(ekn), src.i32(ev0), src.i32(evn), sc),
                                 smem)
    return dq, dk, dv

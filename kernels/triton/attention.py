"""Triton flash attention (FlashAttention-2), forward and backward, with causal or boolean/additive masks.

Forward: one program per (query tile of BLOCK_M rows, batch). It walks the keys in tiles of BLOCK_N with
an online softmax (running max ``m``, running sum ``l``, output accumulator rescaled by ``exp(m_old - m)``),
so the ``(L, S)`` score matrix never exists. Scores are kept in base 2 (``scale * log2(e)`` folded into
the scale, ``exp2`` instead of ``exp``). Causal attention stops at the diagonal tile (tiles above it are
skipped, not masked). It writes ``out`` and the natural-log ``lse`` per query row.

Backward: ``delta = rowsum(dO * O)`` first, then one kernel per key tile accumulating ``dK, dV`` over the
query tiles and one kernel per query tile accumulating ``dQ`` over the key tiles, each recomputing the
probabilities ``P = exp(S - lse)`` tile by tile from the saved lse instead of storing them (no atomics).

Masks: a bool mask (True = attend, torch's convention) is applied with a select; a float mask is added
to the scaled scores. Both may be stride-0 broadcast views: the kernels take the mask's strides. A query
row with no admissible key gets output 0, lse -inf and zero gradients, as torch's CPU attention does.

NaN/inf policy (the NumPy reference's, RELIABILITY.md item 8): a key whose probability is exactly 0
contributes nothing, even when its K or V row holds NaN, inf or 1e10. Masked scores are removed with a
select; for ``P @ V`` (and ``dS @ K`` in the backward) a tiny pre-pass flags the key tiles holding
non-finite values, and only those tiles take a slow key-by-key path with a select; the others use
``tl.dot``. ``dS`` is set to exactly 0 where ``P`` is 0. Other NaN/inf propagate as in torch.

Head dims E and Ev are padded to powers of two (>= 16) with masked loads. All products accumulate in fp32
(fp64 for fp64); fp32 operands use IEEE dot products, fp16/bf16 run on the tensor cores.

Floors: forward ``4*B*L*S*E``-ish FLOPs (2 matmuls; half of it when causal); backward ~2.5x the forward
(5 matmuls); bytes ``(q, k, v, out)`` once each, plus the mask when given.
"""
import torch
import triton
import triton.language as tl

from ._common import acc_dtype, dot_precision, interpreting

_LOG2E = 1.4426950408889634

_NO_MASK, _BOOL_MASK, _FLOAT_MASK = 0, 1, 2


@triton.jit
def _tile_scores(
    s,  # (BM, BN) q.k^T already multiplied by scale*log2(e)
    rows,  # (BM,) query indices
    cols,  # (BN,) key indices
    mask_base,  # mask pointer at this batch
    stride_ml, stride_ms,
    L, S,
    CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
):
    """Apply bounds, causal and user masks to a (query, key) score tile: -inf where not admissible."""
    valid = (rows < L)[:, None] & (cols < S)[None, :]
    if CAUSAL:
        valid = valid & (cols[None, :] <= rows[:, None])  # torch's top-left aligned causal mask
    if MASK_KIND != 0:
        m_ptrs = mask_base + rows.to(tl.int64)[:, None] * stride_ml + cols.to(tl.int64)[None, :] * stride_ms
        m_ok = (rows < L)[:, None] & (cols < S)[None, :]
        if MASK_KIND == 1:
            valid = valid & (tl.load(m_ptrs, mask=m_ok, other=0) != 0)
        else:
            s = s + tl.load(m_ptrs, mask=m_ok, other=0.0).to(s.dtype) * 1.4426950408889634
    # a select, never a multiply: NaN/inf scores of masked keys disappear
    return tl.where(valid, s, -float("inf"))


@triton.jit
def _skip_zero_products(
    a,  # (BM, BN) fp32 coefficients (probabilities or dS) of this key tile
    x_base,  # pointer to row 0 of the (S, D) operand (V or K) at this batch
    start_n, offs_n, offs_d,
    stride_xs, stride_xd,
    S, D,
    BLOCK_N: tl.constexpr,
):
    """``a @ x_tile`` where a zero coefficient contributes nothing even against a NaN/inf row of x.

    Slow (one key row at a time, BLOCK_N rank-1 updates): used only for tiles flagged as holding NaN/inf.
    """
    out = tl.zeros([a.shape[0], offs_d.shape[0]], dtype=a.dtype)
    for j in range(BLOCK_N):
        a_col = tl.sum(tl.where(offs_n[None, :] == j, a, 0.0), axis=1)  # column j of the tile
        key = tl.cast(start_n + j, tl.int64)
        # (a past-the-end key loads nothing: its column of a is 0. The bound is folded into one
        # comparison because the interpreter mishandles a 0-d & 1-d boolean mask.)
        x_row = tl.load(x_base + key * stride_xs + offs_d * stride_xd, mask=offs_d < tl.where(key < S, D, 0),
                        other=0.0).to(a.dtype)
        out += tl.where(a_col[:, None] != 0, a_col[:, None] * x_row[None, :], 0.0)
    return out


@triton.jit
def _nonfinite_tiles_kernel(
    x_ptr,  # (B, S, D) any strides
    flag_ptr,  # *int8 (B, cdiv(S, BLOCK_N))
    S, D,
    stride_xb, stride_xs, stride_xd,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Flag the BLOCK_N-row tiles of x that hold a NaN or inf (reads x once: B*S*D elements)."""
    tile = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    bad = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.int32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + offs_d
        x = tl.load(x_ptr + b * stride_xb + rows.to(tl.int64)[:, None] * stride_xs + cols[None, :] * stride_xd,
                    mask=(rows < S)[:, None] & (cols < D)[None, :], other=0.0).to(tl.float32)
        bad += ((x != x) | (tl.abs(x) == float("inf"))).to(tl.int32)  # noqa: PLR0124 (x != x: NaN)
    tl.store(flag_ptr + b * tl.num_programs(0) + tile, (tl.sum(tl.sum(bad, axis=1), axis=0) > 0).to(tl.int8))


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, lse_ptr,
    vbad_ptr,  # *int8 (B, cdiv(S, BLOCK_N)): 1 where a tile of V rows holds NaN/inf
    stride_qb, stride_ql, stride_qe,
    stride_kb, stride_ks, stride_ke,
    stride_vb, stride_vs, stride_ve,
    stride_mb, stride_ml, stride_ms,  # may be 0 (broadcast mask)
    stride_ob, stride_ol, stride_oe,
    L, S, E, EV,
    qk_scale,  # scale * log2(e)
    CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,  # 0 none, 1 bool, 2 additive float
    ACC: tl.constexpr,  # fp32 (fp64 for fp64)
    PREC: tl.constexpr,  # tl.dot input_precision ("ieee" for fp32)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    b = tl.program_id(1).to(tl.int64)  # int64 batch offsets
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < L
    q = tl.load(q_ptr + b * stride_qb + rows.to(tl.int64)[:, None] * stride_ql + offs_d[None, :] * stride_qe,
                mask=row_ok[:, None] & (offs_d < E)[None, :], other=0.0)
    k_base = k_ptr + b * stride_kb
    v_base = v_ptr + b * stride_vb
    mask_base = mask_ptr + b * stride_mb

    m_i = tl.full([BLOCK_M], -float("inf"), dtype=ACC)  # running max, base 2
    l_i = tl.zeros([BLOCK_M], dtype=ACC)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=ACC)  # accumulate P @ V in fp32

    hi = S
    if CAUSAL:
        hi = tl.minimum(S, start_m + BLOCK_M)  # skip the key tiles wholly above the diagonal
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < S
        kT = tl.load(k_base + cols.to(tl.int64)[None, :] * stride_ks + offs_d[:, None] * stride_ke,
                     mask=col_ok[None, :] & (offs_d < E)[:, None], other=0.0)
        s = tl.dot(q, kT, input_precision=PREC, out_dtype=ACC) * qk_scale
        s = _tile_scores(s, rows, cols, mask_base, stride_ml, stride_ms, L, S, CAUSAL, MASK_KIND)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # a row with nothing admissible so far keeps m = -inf: shift by 0 there so that
        # exp2(-inf - -inf) = NaN never happens (its p and alpha come out 0 instead)
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if tl.load(vbad_ptr + b * tl.cdiv(S, BLOCK_N) + start_n // BLOCK_N) != 0:
            # rare: NaN/inf in this tile of V. A dot would turn 0 * NaN into NaN for rows that never
            # attend that key; add the nonzero probabilities key by key with a select instead
            pv = _skip_zero_products(p, v_base, start_n, offs_n, offs_dv, stride_vs, stride_ve, S, EV, BLOCK_N)
        else:
            v = tl.load(v_base + cols.to(tl.int64)[:, None] * stride_vs + offs_dv[None, :] * stride_ve,
                        mask=col_ok[:, None] & (offs_dv < EV)[None, :], other=0.0)
            pv = tl.dot(p.to(v.dtype), v, input_precision=PREC, out_dtype=ACC)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    has_any = l_i != 0  # NaN (a NaN score on an admissible key) propagates; only 0 means "no key"
    out = tl.where(has_any[:, None], acc / tl.where(has_any, l_i, 1.0)[:, None], 0.0)  # fully masked: 0
    lse = tl.where(has_any, (m_i + tl.log2(tl.where(has_any, l_i, 1.0))) * 0.6931471805599453, -float("inf"))
    tl.store(out_ptr + b * stride_ob + rows.to(tl.int64)[:, None] * stride_ol + offs_dv[None, :] * stride_oe,
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_dv < EV)[None, :])
    tl.store(lse_ptr + b * L + rows, lse.to(lse_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _attn_bwd_preprocess_kernel(
    o_ptr, do_ptr, delta_ptr,  # out (B, L, EV) and grad_out (B, L, EV) contiguous; delta (B, L) ACC
    L, EV,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """delta_i = sum_j dO_ij * O_ij, the softmax-backward row term, in fp32. Reads O and dO once."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    b = tl.program_id(1).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV)
    ptrs = b * L * EV + rows.to(tl.int64)[:, None] * EV + offs_dv[None, :]
    ok = (rows < L)[:, None] & (offs_dv < EV)[None, :]
    o = tl.load(o_ptr + ptrs, mask=ok, other=0.0).to(ACC)
    do = tl.load(do_ptr + ptrs, mask=ok, other=0.0).to(ACC)
    tl.store(delta_ptr + b * L + rows, tl.sum(o * do, axis=1), mask=rows < L)


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_ql, stride_qe,
    stride_kb, stride_ks, stride_ke,
    stride_vb, stride_vs, stride_ve,
    stride_mb, stride_ml, stride_ms,
    L, S, E, EV,
    qk_scale,  # scale * log2(e)
    scale,
    CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One key tile: dV = sum_i P^T dO, dK = scale * sum_i dS^T Q with dS = P * (dP - delta).

    dO, dk, dv are contiguous (B, L, EV) / (B, S, E) / (B, S, EV).
    """
    start_n = tl.program_id(0) * BLOCK_N
    b = tl.program_id(1).to(tl.int64)
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = cols < S
    cols64 = cols.to(tl.int64)
    k = tl.load(k_ptr + b * stride_kb + cols64[:, None] * stride_ks + offs_d[None, :] * stride_ke,
                mask=col_ok[:, None] & (offs_d < E)[None, :], other=0.0)
    v = tl.load(v_ptr + b * stride_vb + cols64[:, None] * stride_vs + offs_dv[None, :] * stride_ve,
                mask=col_ok[:, None] & (offs_dv < EV)[None, :], other=0.0)
    q_base = q_ptr + b * stride_qb
    do_base = do_ptr + b * L * EV
    mask_base = mask_ptr + b * stride_mb
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=ACC)

    lo = 0
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M  # query tiles wholly above this key tile see none of it
    for start_m in range(lo, L, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < L
        rows64 = rows.to(tl.int64)
        q = tl.load(q_base + rows64[:, None] * stride_ql + offs_d[None, :] * stride_qe,
                    mask=row_ok[:, None] & (offs_d < E)[None, :], other=0.0)
        do = tl.load(do_base + rows64[:, None] * EV + offs_dv[None, :],
                     mask=row_ok[:, None] & (offs_dv < EV)[None, :], other=0.0)
        lse = tl.load(lse_ptr + b * L + rows, mask=row_ok, other=0.0).to(ACC) * 1.4426950408889634
        lse = tl.where(lse == -float("inf"), float("inf"), lse)  # fully masked row: every P is 0
        delta = tl.load(delta_ptr + b * L + rows, mask=row_ok, other=0.0)
        # recompute P for this (query, key) tile from lse instead of storing it in the forward
        s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=ACC) * qk_scale
        s = _tile_scores(s, rows, cols, mask_base, stride_ml, stride_ms, L, S, CAUSAL, MASK_KIND)
        p = tl.exp2(s - lse[:, None])  # (BM, BN); masked entries: exp2(-inf) = 0
        dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PREC, out_dtype=ACC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC, out_dtype=ACC)
        ds = tl.where(p == 0, 0.0, p * (dp - delta[:, None]))  # a select: dP may be NaN at masked keys
        dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PREC, out_dtype=ACC)
    dk = dk * scale
    tl.store(dk_ptr + b * S * E + cols64[:, None] * E + offs_d[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=col_ok[:, None] & (offs_d < E)[None, :])
    tl.store(dv_ptr + b * S * EV + cols64[:, None] * EV + offs_dv[None, :], dv.to(dv_ptr.dtype.element_ty),
             mask=col_ok[:, None] & (offs_dv < EV)[None, :])


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    kbad_ptr,  # *int8 (B, cdiv(S, BLOCK_N)): 1 where a tile of K rows holds NaN/inf
    stride_qb, stride_ql, stride_qe,
    stride_kb, stride_ks, stride_ke,
    stride_vb, stride_vs, stride_ve,
    stride_mb, stride_ml, stride_ms,
    L, S, E, EV,
    qk_scale,
    scale,
    CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One query tile: dQ = scale * sum_j dS K, dS = P * (dO V^T - delta). dq is contiguous (B, L, E)."""
    start_m = tl.program_id(0) * BLOCK_M
    b = tl.program_id(1).to(tl.int64)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < L
    rows64 = rows.to(tl.int64)
    q = tl.load(q_ptr + b * stride_qb + rows64[:, None] * stride_ql + offs_d[None, :] * stride_qe,
                mask=row_ok[:, None] & (offs_d < E)[None, :], other=0.0)
    do = tl.load(do_ptr + b * L * EV + rows64[:, None] * EV + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv < EV)[None, :], other=0.0)
    lse = tl.load(lse_ptr + b * L + rows, mask=row_ok, other=0.0).to(ACC) * 1.4426950408889634
    lse = tl.where(lse == -float("inf"), float("inf"), lse)
    delta = tl.load(delta_ptr + b * L + rows, mask=row_ok, other=0.0)
    k_base = k_ptr + b * stride_kb
    v_base = v_ptr + b * stride_vb
    mask_base = mask_ptr + b * stride_mb
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)

    hi = S
    if CAUSAL:
        hi = tl.minimum(S, start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < S
        cols64 = cols.to(tl.int64)
        k = tl.load(k_base + cols64[:, None] * stride_ks + offs_d[None, :] * stride_ke,
                    mask=col_ok[:, None] & (offs_d < E)[None, :], other=0.0)
        vT = tl.load(v_base + cols64[None, :] * stride_vs + offs_dv[:, None] * stride_ve,
                     mask=col_ok[None, :] & (offs_dv < EV)[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=ACC) * qk_scale
        s = _tile_scores(s, rows, cols, mask_base, stride_ml, stride_ms, L, S, CAUSAL, MASK_KIND)
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, vT, input_precision=PREC, out_dtype=ACC)
        ds = tl.where(p == 0, 0.0, p * (dp - delta[:, None]))
        if tl.load(kbad_ptr + b * tl.cdiv(S, BLOCK_N) + start_n // BLOCK_N) != 0:
            # NaN/inf keys in this tile: skip zero dS entries instead of 0 * NaN in the dot
            dq += _skip_zero_products(ds, k_base, start_n, offs_n, offs_d, stride_ks, stride_ke, S, E, BLOCK_N)
        else:
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC, out_dtype=ACC)
    dq = dq * scale
    tl.store(dq_ptr + b * L * E + rows64[:, None] * E + offs_d[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d < E)[None, :])


def _head_block(d):
    return max(16, triton.next_power_of_2(d))


def _fwd_blocks(dtype, bd):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the forward."""
    if interpreting():
        return 16, 16, 4, 1
    if dtype in (torch.float16, torch.bfloat16):
        return (128, 64, 4, 3) if bd <= 64 else (128, 64, 8, 3)
    if dtype == torch.float32:  # IEEE fp32 dots run on FMA units: smaller tiles, fewer registers
        return (64, 32, 4, 2) if bd <= 64 else (32, 32, 4, 2)
    return 32, 16, 4, 1  # fp64


def _bwd_blocks(dtype, bd):
    """((BLOCK_M, BLOCK_N) for dK/dV, (BLOCK_M, BLOCK_N) for dQ, num_warps, num_stages)."""
    if interpreting():
        return (16, 16), (16, 16), 4, 1
    if dtype in (torch.float16, torch.bfloat16):
        if bd <= 64:
            return (32, 128), (128, 32), 4, 3
        return (32, 64), (64, 32), 8, 2
    if dtype == torch.float32:
        return (32, 32), (32, 32), 4, 2
    return (16, 32), (32, 16), 4, 1


def _nonfinite_tiles(x, block_n):
    """(B, cdiv(S, block_n)) int8 flags: which tiles of key rows of x (B, S, D) hold NaN/inf."""
    B, S, D = x.shape
    flags = torch.empty((B, triton.cdiv(S, block_n)), dtype=torch.int8, device=x.device)
    _nonfinite_tiles_kernel[(flags.shape[1], B)](
        x, flags, S, D, *x.stride(), BLOCK_N=block_n, BLOCK_D=min(_head_block(D), 128)
    )
    return flags


def _mask_args(mask, q):
    """(pointer tensor, strides, kind) for the kernels: a dummy pointer and 0 strides without a mask."""
    if mask is None:
        return q, (0, 0, 0), _NO_MASK
    kind = _BOOL_MASK if mask.dtype == torch.bool else _FLOAT_MASK
    return mask, tuple(mask.stride()), kind


def attention_forward(q, k, v, mask, is_causal, scale):
    """Scaled dot-product attention ``softmax(q k^T * scale + mask) v`` without materialising scores.

    Args:
        q: ``(B, L, E)`` float tensor (fp16/bf16/fp32/fp64), any strides.
        k: ``(B, S, E)``, q's dtype.
        v: ``(B, S, Ev)``, q's dtype.
        mask: None, or a ``(B, L, S)`` bool (True = attend) or float (added to the scores) tensor;
            may be a stride-0 broadcast view.
        is_causal: query i attends keys j <= i (top-left aligned, as torch); never set with a mask.
        scale: float multiplying the scores.

    Returns:
        ``(out, lse)``: out ``(B, L, Ev)`` of q's dtype (0 for a query row with no admissible key); lse
        ``(B, L)`` the natural log-sum-exp of the scaled, masked scores (-inf for such a row), fp32 for
        fp16/bf16/fp32 inputs (fp64 for fp64): the backward needs it unrounded.
    """
    B, L, E = q.shape
    S, EV = k.shape[1], v.shape[2]
    acc = acc_dtype(q.dtype)
    lse_dtype = torch.float64 if acc == tl.float64 else torch.float32
    out = torch.empty((B, L, EV), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, L), dtype=lse_dtype, device=q.device)
    if B == 0 or L == 0:
        return out, lse
    if S == 0:  # no keys: every row fully masked
        return out.zero_(), lse.fill_(float("-inf"))
    bd, bdv = _head_block(E), _head_block(EV)
    bm, bn, warps, stages = _fwd_blocks(q.dtype, max(bd, bdv))
    m, m_strides, kind = _mask_args(mask, q)
    vbad = _nonfinite_tiles(v, bn)
    _attn_fwd_kernel[(triton.cdiv(L, bm), B)](
        q, k, v, m, out, lse, vbad,
        *q.stride(), *k.stride(), *v.stride(), *m_strides, *out.stride(),
        L, S, E, EV, float(scale) * _LOG2E,
        CAUSAL=bool(is_causal), MASK_KIND=kind, ACC=acc, PREC=dot_precision(q.dtype),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DV=bdv, num_warps=warps, num_stages=stages,
    )
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, mask, is_causal, scale):
    """Gradients of attention, recomputing the probabilities tile by tile from ``lse``.

    Args:
        grad_out: ``(B, L, Ev)`` upstream gradient, q's dtype.
        q, k, v, mask, is_causal, scale: as in the forward.
        out: ``(B, L, Ev)`` forward output.
        lse: ``(B, L)`` forward log-sum-exp.

    Returns:
        ``(grad_q (B, L, E), grad_k (B, S, E), grad_v (B, S, Ev))``, q's dtype.
    """
    B, L, E = q.shape
    S, EV = k.shape[1], v.shape[2]
    dev, dt = q.device, q.dtype
    dq = torch.empty((B, L, E), dtype=dt, device=dev)
    dk = torch.empty((B, S, E), dtype=dt, device=dev)
    dv = torch.empty((B, S, EV), dtype=dt, device=dev)
    if B == 0 or (L == 0 and S == 0):
        return dq, dk, dv
    if L == 0 or S == 0:  # nothing attends to anything: all gradients are 0
        return dq.zero_(), dk.zero_(), dv.zero_()
    acc = acc_dtype(dt)
    grad_out, out, lse = grad_out.contiguous(), out.contiguous(), lse.contiguous()
    bd, bdv = _head_block(E), _head_block(EV)
    (m1, n1), (m2, n2), warps, stages = _bwd_blocks(dt, max(bd, bdv))
    delta = torch.empty((B, L), dtype=torch.float64 if acc == tl.float64 else torch.float32, device=dev)
    pre_m = 16 if interpreting() else 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(L, pre_m), B)](
        out, grad_out, delta, L, EV, ACC=acc, BLOCK_M=pre_m, BLOCK_DV=bdv
    )
    m, m_strides, kind = _mask_args(mask, q)
    common = (
        *q.stride(), *k.stride(), *v.stride(), *m_strides,
        L, S, E, EV, float(scale) * _LOG2E, float(scale),
    )
    meta = dict(CAUSAL=bool(is_causal), MASK_KIND=kind, ACC=acc, PREC=dot_precision(dt), BLOCK_D=bd, BLOCK_DV=bdv,
                num_warps=warps, num_stages=stages)
    _attn_bwd_dkdv_kernel[(triton.cdiv(S, n1), B)](
        q, k, v, m, grad_out, lse, delta, dk, dv, *common, BLOCK_M=m1, BLOCK_N=n1, **meta
    )
    _attn_bwd_dq_kernel[(triton.cdiv(L, m2), B)](
        q, k, v, m, grad_out, lse, delta, dq, _nonfinite_tiles(k, n2), *common, BLOCK_M=m2, BLOCK_N=n2, **meta
    )
    return dq, dk, dv

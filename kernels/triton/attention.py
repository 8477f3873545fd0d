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
select; for ``P @ V`` (and ``dS @ K`` in the backward) a tiny pre-pass flags the 16-row groups of keys
holding non-finite values. Every tile takes ``tl.dot`` (its loads and dots stay in the software pipeline);
a flagged tile then redoes that product: with the non-finite rows of keys nobody in the tile attends set
to 0 (the common case, key padding: bit-identical to a clean tile), else key by key with a select.
``dS`` is set to exactly 0 where ``P`` is 0. Other NaN/inf propagate as in torch.

Head dims E and Ev that are not powers of two (>= 16) are zero-padded on the host (one copy of q, k, v;
the kernels then load whole rows with no head-dim mask: a masked head dim gave wrong fp16 results through
Hopper's pipelined tensor-core path). All products accumulate in fp32 (fp64 for fp64); fp32 operands use
IEEE dot products, fp16/bf16 run on the tensor cores, fp64 products are broadcast multiply-sums (Triton
has no fp64 MMA for these shapes on Hopper). On a GPU, problems of 2^22+ score elements pick their tile
sizes by autotuning (once per head dim, dtype, mask kind and length bucket).

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
    BOUNDS: tl.constexpr = True,  # False: every key of the tile exists (a full tile), no check needed
):
    """Apply bounds, causal and user masks to a (query, key) score tile: -inf where not admissible."""
    if BOUNDS or CAUSAL or MASK_KIND != 0:  # else: a full tile below the diagonal, nothing to remove
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
        s = tl.where(valid, s, -float("inf"))
    return s


FLAG_N = 16  # key rows per non-finite flag (the smallest BLOCK_N)


@triton.jit
def _mm(a, b, PREC: tl.constexpr, ACC: tl.constexpr):
    """``a @ b`` accumulated in ACC: tl.dot, or for fp64 a broadcast multiply-sum (no fp64 MMA on Hopper)."""
    if ACC == tl.float64:
        out = tl.sum(a.to(ACC)[:, :, None] * b.to(ACC)[None, :, :], axis=1)
    else:
        out = tl.dot(a, b, input_precision=PREC, out_dtype=ACC)
    return out


@triton.jit
def _tile_flagged(flag_ptr, b, n_flags, start_n, BLOCK_N: tl.constexpr):
    """True when any FLAG_N-row group of keys in [start_n, start_n + BLOCK_N) holds a NaN/inf."""
    idx = start_n // 16 + tl.arange(0, BLOCK_N // 16)
    f = tl.load(flag_ptr + b * n_flags + idx, mask=idx < n_flags, other=0)
    return tl.max(f.to(tl.int32), axis=0) != 0


@triton.jit
def _product_skipping_zeros(
    a,  # (BM, BN) ACC coefficients (probabilities or dS) of this key tile
    x,  # (BN, D) the key tile's rows of V or K, some non-finite
    offs_n,  # (BN,) 0..BN-1
    PREC: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``a @ x`` where a zero coefficient contributes nothing even against a NaN/inf row of x.

    Rows of x that hold NaN/inf and that no row of ``a`` uses are zeroed and the product stays one dot:
    bit-identical to the same tile with finite values there. Only when a used key row is non-finite
    does it go key by key (BLOCK_N rank-1 updates with a select), from the registers already loaded.
    """
    xf = x.to(ACC)
    row_bad = tl.max(((xf != xf) | (tl.abs(xf) == float("inf"))).to(tl.int32), axis=1)  # noqa: PLR0124
    used = tl.max((a != 0).to(tl.int32), axis=0)  # NaN coefficients count as used
    if tl.sum(row_bad * used, axis=0) == 0:
        out = _mm(a.to(x.dtype), tl.where(row_bad[:, None] != 0, 0.0, xf).to(x.dtype), PREC, ACC)
    else:
        out = tl.zeros([a.shape[0], x.shape[1]], dtype=ACC)
        for j in range(BLOCK_N):
            a_col = tl.sum(tl.where(offs_n[None, :] == j, a, 0.0), axis=1)  # column j of a
            x_row = tl.sum(tl.where(offs_n[:, None] == j, xf, 0.0), axis=0)  # row j of x (a select)
            out += tl.where(a_col[:, None] != 0, a_col[:, None] * x_row[None, :], 0.0)
    return out


@triton.jit
def _nonfinite_rows_kernel(
    x_ptr,  # (B, S, D) any strides
    flag_ptr,  # *int8 (B, cdiv(S, FLAG_N))
    S, D,
    stride_xb, stride_xs, stride_xd,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Flag the BLOCK_N-row groups of x that hold a NaN or inf (reads x once: B*S*D elements)."""
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
def _fwd_tile(acc, l_i, m_i, q, start_n, rows, offs_n, offs_d, offs_dv, k_base, v_base, mask_base, vbad_ptr, b,
              n_flags, stride_ks, stride_ke, stride_vs, stride_ve, stride_ml, stride_ms, L, S, qk_scale,
              CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, BOUNDS: tl.constexpr, ACC: tl.constexpr,
              PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key tile of the online softmax: returns the updated (acc, l_i, m_i)."""
    cols = start_n + offs_n
    col_ok = cols < S
    # both tiles load unconditionally, so the pipeliner can prefetch them stages ahead
    kT = tl.load(k_base + cols.to(tl.int64)[None, :] * stride_ks + offs_d[:, None] * stride_ke,
                 mask=col_ok[None, :], other=0.0)
    v = tl.load(v_base + cols.to(tl.int64)[:, None] * stride_vs + offs_dv[None, :] * stride_ve,
                mask=col_ok[:, None], other=0.0)
    s = _mm(q, kT, PREC, ACC) * qk_scale
    s = _tile_scores(s, rows, cols, mask_base, stride_ml, stride_ms, L, S, CAUSAL, MASK_KIND, BOUNDS)
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # a row with nothing admissible so far keeps m = -inf: shift by 0 there so that
    # exp2(-inf - -inf) = NaN never happens (its p and alpha come out 0 instead)
    m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    pv = _mm(p.to(v.dtype), v, PREC, ACC)
    if _tile_flagged(vbad_ptr, b, n_flags, start_n, BLOCK_N):
        # rare: NaN/inf in this tile of V; the dot turned 0 * NaN into NaN for rows that never attend it
        pv = _product_skipping_zeros(p, v, offs_n, PREC, ACC, BLOCK_N)
    acc = acc * alpha[:, None] + pv
    return acc, l_i, m_new


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, lse_ptr,
    vbad_ptr,  # *int8 (B, n_flags): 1 where a FLAG_N-row group of V holds NaN/inf
    stride_qb, stride_ql, stride_qe,
    stride_kb, stride_ks, stride_ke,
    stride_vb, stride_vs, stride_ve,
    stride_mb, stride_ml, stride_ms,  # may be 0 (broadcast mask)
    stride_ob, stride_ol, stride_oe,
    L, S, n_flags,
    qk_scale,  # scale * log2(e)
    LEN_BUCKET,  # autotuning key only (a power of two >= max(L, S))
    CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,  # 0 none, 1 bool, 2 additive float
    ACC: tl.constexpr,  # fp32 (fp64 for fp64)
    PREC: tl.constexpr,  # tl.dot input_precision ("ieee" for fp32)
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,  # the (padded) head dims
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    b = tl.program_id(1).to(tl.int64)  # int64 batch offsets
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < L
    q = tl.load(q_ptr + b * stride_qb + rows.to(tl.int64)[:, None] * stride_ql + offs_d[None, :] * stride_qe,
                mask=row_ok[:, None], other=0.0)
    k_base = k_ptr + b * stride_kb
    v_base = v_ptr + b * stride_vb
    mask_base = mask_ptr + b * stride_mb

    m_i = tl.full([BLOCK_M], -float("inf"), dtype=ACC)  # running max, base 2
    l_i = tl.zeros([BLOCK_M], dtype=ACC)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=ACC)  # accumulate P @ V in fp32

    # Phase 1: full key tiles wholly below the diagonal (every key exists and is admissible to every row of
    # this tile, causal or not): no bounds or causal selects. Phase 2: the rest (the diagonal tiles, the
    # partial last tile) with every check. start_m is a multiple of BLOCK_N (BLOCK_M % BLOCK_N == 0).
    full = (S // BLOCK_N) * BLOCK_N
    hi = S
    if CAUSAL:
        hi = tl.minimum(S, start_m + BLOCK_M)  # skip the key tiles wholly above the diagonal
        full = tl.minimum(full, start_m)
    for start_n in range(0, full, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, start_n, rows, offs_n, offs_d, offs_dv, k_base, v_base,
                                  mask_base, vbad_ptr, b, n_flags, stride_ks, stride_ke, stride_vs, stride_ve,
                                  stride_ml, stride_ms, L, S, qk_scale, False, MASK_KIND, False, ACC, PREC, BLOCK_N)
    for start_n in range(full, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, start_n, rows, offs_n, offs_d, offs_dv, k_base, v_base,
                                  mask_base, vbad_ptr, b, n_flags, stride_ks, stride_ke, stride_vs, stride_ve,
                                  stride_ml, stride_ms, L, S, qk_scale, CAUSAL, MASK_KIND, True, ACC, PREC, BLOCK_N)

    has_any = l_i != 0  # NaN (a NaN score on an admissible key) propagates; only 0 means "no key"
    out = tl.where(has_any[:, None], acc / tl.where(has_any, l_i, 1.0)[:, None], 0.0)  # fully masked: 0
    lse = tl.where(has_any, (m_i + tl.log2(tl.where(has_any, l_i, 1.0))) * 0.6931471805599453, -float("inf"))
    tl.store(out_ptr + b * stride_ob + rows.to(tl.int64)[:, None] * stride_ol + offs_dv[None, :] * stride_oe,
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    tl.store(lse_ptr + b * L + rows, lse.to(lse_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _attn_bwd_preprocess_kernel(
    o_ptr, do_ptr, delta_ptr,  # out (B, L, BLOCK_DV) and grad_out (B, L, BLOCK_DV) contiguous; delta (B, L) ACC
    L,
    ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """delta_i = sum_j dO_ij * O_ij, the softmax-backward row term, in fp32. Reads O and dO once."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    b = tl.program_id(1).to(tl.int64)
    offs_dv = tl.arange(0, BLOCK_DV)
    ptrs = b * L * BLOCK_DV + rows.to(tl.int64)[:, None] * BLOCK_DV + offs_dv[None, :]
    ok = (rows < L)[:, None]
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
    L, S,
    qk_scale,  # scale * log2(e)
    scale,
    LEN_BUCKET,  # autotuning key only
    CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One key tile: dV = sum_i P^T dO, dK = scale * sum_i dS^T Q with dS = P * (dP - delta).

    dO, dk, dv are contiguous (B, L, BLOCK_DV) / (B, S, BLOCK_D) / (B, S, BLOCK_DV).
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
                mask=col_ok[:, None], other=0.0)
    v = tl.load(v_ptr + b * stride_vb + cols64[:, None] * stride_vs + offs_dv[None, :] * stride_ve,
                mask=col_ok[:, None], other=0.0)
    q_base = q_ptr + b * stride_qb
    do_base = do_ptr + b * L * BLOCK_DV
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
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + rows64[:, None] * BLOCK_DV + offs_dv[None, :], mask=row_ok[:, None], other=0.0)
        lse = tl.load(lse_ptr + b * L + rows, mask=row_ok, other=0.0).to(ACC) * 1.4426950408889634
        lse = tl.where(lse == -float("inf"), float("inf"), lse)  # fully masked row: every P is 0
        delta = tl.load(delta_ptr + b * L + rows, mask=row_ok, other=0.0)
        # recompute P for this (query, key) tile from lse instead of storing it in the forward
        s = _mm(q, tl.trans(k), PREC, ACC) * qk_scale
        s = _tile_scores(s, rows, cols, mask_base, stride_ml, stride_ms, L, S, CAUSAL, MASK_KIND)
        p = tl.exp2(s - lse[:, None])  # (BM, BN); masked entries: exp2(-inf) = 0
        dv += _mm(tl.trans(p).to(do.dtype), do, PREC, ACC)
        dp = _mm(do, tl.trans(v), PREC, ACC)
        ds = tl.where(p == 0, 0.0, p * (dp - delta[:, None]))  # a select: dP may be NaN at masked keys
        dk += _mm(tl.trans(ds).to(q.dtype), q, PREC, ACC)
    dk = dk * scale
    tl.store(dk_ptr + b * S * BLOCK_D + cols64[:, None] * BLOCK_D + offs_d[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=col_ok[:, None])
    tl.store(dv_ptr + b * S * BLOCK_DV + cols64[:, None] * BLOCK_DV + offs_dv[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    kbad_ptr,  # *int8 (B, n_flags): 1 where a FLAG_N-row group of K holds NaN/inf
    stride_qb, stride_ql, stride_qe,
    stride_kb, stride_ks, stride_ke,
    stride_vb, stride_vs, stride_ve,
    stride_mb, stride_ml, stride_ms,
    L, S, n_flags,
    qk_scale,
    scale,
    LEN_BUCKET,  # autotuning key only
    CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One query tile: dQ = scale * sum_j dS K, dS = P * (dO V^T - delta). dq is contiguous (B, L, BLOCK_D)."""
    start_m = tl.program_id(0) * BLOCK_M
    b = tl.program_id(1).to(tl.int64)
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = rows < L
    rows64 = rows.to(tl.int64)
    q = tl.load(q_ptr + b * stride_qb + rows64[:, None] * stride_ql + offs_d[None, :] * stride_qe,
                mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptr + b * L * BLOCK_DV + rows64[:, None] * BLOCK_DV + offs_dv[None, :],
                 mask=row_ok[:, None], other=0.0)
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
                    mask=col_ok[:, None], other=0.0)
        vT = tl.load(v_base + cols64[None, :] * stride_vs + offs_dv[:, None] * stride_ve,
                     mask=col_ok[None, :], other=0.0)
        s = _mm(q, tl.trans(k), PREC, ACC) * qk_scale
        s = _tile_scores(s, rows, cols, mask_base, stride_ml, stride_ms, L, S, CAUSAL, MASK_KIND)
        p = tl.exp2(s - lse[:, None])
        dp = _mm(do, vT, PREC, ACC)
        ds = tl.where(p == 0, 0.0, p * (dp - delta[:, None]))
        dsk = _mm(ds.to(k.dtype), k, PREC, ACC)
        if _tile_flagged(kbad_ptr, b, n_flags, start_n, BLOCK_N):
            # NaN/inf keys in this tile: zero dS entries must not meet them as 0 * NaN
            dsk = _product_skipping_zeros(ds, k, offs_n, PREC, ACC, BLOCK_N)
        dq += dsk
    dq = dq * scale
    tl.store(dq_ptr + b * L * BLOCK_D + rows64[:, None] * BLOCK_D + offs_d[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------------
# Tile sizes. (BLOCK_M, BLOCK_N, num_warps, num_stages); the first entry is the fixed choice for small
# problems, the whole list is autotuned for big ones on a GPU.
def _head_block(d):
    return max(16, triton.next_power_of_2(d))


_TUNE_MIN_SCORES = 1 << 22  # B * L * S at or above which a GPU launch autotunes its tiles


def _fwd_configs(dtype, bd):
    if interpreting():
        return [(16, 16, 4, 1)]
    if dtype in (torch.float16, torch.bfloat16):
        if bd <= 64:
            return [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 4)]
        return [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)]
    if dtype == torch.float32:  # IEEE fp32 dots run on FMA units: smaller tiles, fewer registers
        return [(64, 32, 4, 2), (32, 32, 4, 2)] if bd <= 64 else [(32, 32, 4, 2), (32, 16, 4, 2)]
    return [(16, 16, 4, 1)]  # fp64: broadcast multiply-sums in registers


def _dkdv_configs(dtype, bd):
    # Never a 32-row query tile under 8 warps: (32, 64, 8, 2), the old D=128 choice, gave dK 100x less
    # accurate than torch's and different on every call on an H200 (Triton 3.6); each config below gave
    # the same bits three times and torch-level error (2026-11-26, bench/RESULTS.md).
    if interpreting():
        return [(16, 16, 4, 1)]
    if dtype in (torch.float16, torch.bfloat16):
        if bd <= 64:
            return [(32, 128, 4, 3), (32, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 2)]
        return [(64, 64, 4, 3), (32, 64, 4, 1), (32, 128, 4, 3), (64, 128, 4, 2)]
    if dtype == torch.float32:
        return [(32, 32, 4, 2)]
    return [(16, 16, 4, 1)]


def _dq_configs(dtype, bd):
    # 8 warps only with 128-row query tiles (see _dkdv_configs)
    if interpreting():
        return [(16, 16, 4, 1)]
    if dtype in (torch.float16, torch.bfloat16):
        if bd <= 64:
            return [(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3)]
        return [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 3)]
    if dtype == torch.float32:
        return [(32, 32, 4, 2)]
    return [(16, 16, 4, 1)]


_TUNE_KEY = ["LEN_BUCKET", "BLOCK_D", "BLOCK_DV", "CAUSAL", "MASK_KIND", "PREC"]


def _autotuned(kernel, configs):
    return triton.autotune(
        [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in configs],
        key=_TUNE_KEY,
    )(kernel)


_TUNED = {}


def _launcher(kernel, configs, n_scores):
    """(kernel to launch, extra launch kwargs): the autotuned kernel for big GPU problems with several
    candidate tile sizes, else the plain kernel with the first candidate."""
    if len(configs) > 1 and n_scores >= _TUNE_MIN_SCORES:
        key = (kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__, tuple(configs))
        if key not in _TUNED:
            _TUNED[key] = _autotuned(kernel, configs)
        return _TUNED[key], {}
    m, n, w, st = configs[0]
    return kernel, {"BLOCK_M": m, "BLOCK_N": n, "num_warps": w, "num_stages": st}


# the forward's two-phase loop needs query tiles that start on key-tile boundaries; no config puts a
# 32-row dot under 8 warps (see _dkdv_configs)
assert all(m % n == 0 for dt in (torch.float16, torch.float32, torch.float64) for bd in (16, 128)
           for m, n, _, _ in _fwd_configs(dt, bd))
assert not any(w == 8 and m < 128 for dt in (torch.float16, torch.float32) for bd in (16, 128)
               for m, _, w, _ in _dkdv_configs(dt, bd) + _dq_configs(dt, bd) + _fwd_configs(dt, bd))


def tuned_configs():
    """{kernel name: [(autotuning key, chosen config), ...]} of what autotuning picked in this process."""
    out = {}
    for (name, _), tuner in _TUNED.items():
        out.setdefault(name, []).extend((key, str(cfg)) for key, cfg in getattr(tuner, "cache", {}).items())
    return out


def _len_bucket(L, S):
    return triton.next_power_of_2(max(L, S, 1))


def _nonfinite_rows(x):
    """(B, cdiv(S, FLAG_N)) int8 flags: which FLAG_N-row groups of key rows of x (B, S, D) hold NaN/inf."""
    B, S, D = x.shape
    flags = torch.empty((B, triton.cdiv(S, FLAG_N)), dtype=torch.int8, device=x.device)
    _nonfinite_rows_kernel[(flags.shape[1], B)](
        x, flags, S, D, *x.stride(), BLOCK_N=FLAG_N, BLOCK_D=min(_head_block(D), 128)
    )
    return flags


def _padded(x, width):
    """x (B, N, D) with its last dim zero-padded to ``width`` (x itself when D == width)."""
    if x.shape[-1] == width:
        return x
    out = x.new_zeros(x.shape[:-1] + (width,))
    out[..., : x.shape[-1]] = x
    return out


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
    lse = torch.empty((B, L), dtype=lse_dtype, device=q.device)
    if B == 0 or L == 0 or S == 0:
        out = torch.empty((B, L, EV), dtype=q.dtype, device=q.device)
        if S == 0:  # no keys: every row fully masked
            out.zero_(), lse.fill_(float("-inf"))
        return out, lse
    bd, bdv = _head_block(E), _head_block(EV)
    q, k, v = _padded(q, bd), _padded(k, bd), _padded(v, bdv)
    out = torch.empty((B, L, bdv), dtype=q.dtype, device=q.device)
    m, m_strides, kind = _mask_args(mask, q)
    vbad = _nonfinite_rows(v)
    kernel, blocks = _launcher(_attn_fwd_kernel, _fwd_configs(q.dtype, max(bd, bdv)), B * L * S)
    kernel[lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B)](
        q, k, v, m, out, lse, vbad,
        *q.stride(), *k.stride(), *v.stride(), *m_strides, *out.stride(),
        L, S, vbad.shape[1], float(scale) * _LOG2E, _len_bucket(L, S),
        CAUSAL=bool(is_causal), MASK_KIND=kind, ACC=acc, PREC=dot_precision(q.dtype),
        BLOCK_D=bd, BLOCK_DV=bdv, **blocks,
    )
    return (out if bdv == EV else out[..., :EV].contiguous()), lse


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
    if B == 0 or L == 0 or S == 0:  # nothing attends to anything: all gradients are 0
        return (torch.zeros((B, L, E), dtype=dt, device=dev), torch.zeros((B, S, E), dtype=dt, device=dev),
                torch.zeros((B, S, EV), dtype=dt, device=dev))
    acc = acc_dtype(dt)
    bd, bdv = _head_block(E), _head_block(EV)
    q, k, v = _padded(q, bd), _padded(k, bd), _padded(v, bdv)
    grad_out, out = _padded(grad_out.contiguous(), bdv), _padded(out.contiguous(), bdv)
    lse = lse.contiguous()
    dq = torch.empty((B, L, bd), dtype=dt, device=dev)
    dk = torch.empty((B, S, bd), dtype=dt, device=dev)
    dv = torch.empty((B, S, bdv), dtype=dt, device=dev)
    delta = torch.empty((B, L), dtype=torch.float64 if acc == tl.float64 else torch.float32, device=dev)
    pre_m = 16 if interpreting() else 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(L, pre_m), B)](out, grad_out, delta, L, ACC=acc, BLOCK_M=pre_m,
                                                           BLOCK_DV=bdv)
    m, m_strides, kind = _mask_args(mask, q)
    common = (*q.stride(), *k.stride(), *v.stride(), *m_strides)
    meta = dict(CAUSAL=bool(is_causal), MASK_KIND=kind, ACC=acc, PREC=dot_precision(dt), BLOCK_D=bd, BLOCK_DV=bdv)
    n_scores, bucket = B * L * S, _len_bucket(L, S)
    kernel, blocks = _launcher(_attn_bwd_dkdv_kernel, _dkdv_configs(dt, max(bd, bdv)), n_scores)
    kernel[lambda meta_: (triton.cdiv(S, meta_["BLOCK_N"]), B)](
        q, k, v, m, grad_out, lse, delta, dk, dv, *common,
        L, S, float(scale) * _LOG2E, float(scale), bucket, **meta, **blocks,
    )
    kbad = _nonfinite_rows(k)
    kernel, blocks = _launcher(_attn_bwd_dq_kernel, _dq_configs(dt, max(bd, bdv)), n_scores)
    kernel[lambda meta_: (triton.cdiv(L, meta_["BLOCK_M"]), B)](
        q, k, v, m, grad_out, lse, delta, dq, kbad, *common,
        L, S, kbad.shape[1], float(scale) * _LOG2E, float(scale), bucket, **meta, **blocks,
    )
    if bd != E:
        dq, dk = dq[..., :E].contiguous(), dk[..., :E].contiguous()
    if bdv != EV:
        dv = dv[..., :EV].contiguous()
    return dq, dk, dv

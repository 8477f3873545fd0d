"""Numba CPU scaled dot-product attention: fused FlashAttention-2 forward and backward, no (L, S) matrix.

Forward: one task per (batch entry, pair of query blocks of ``BLOCK_M`` rows). A task walks the keys in tiles
of ``BLOCK_N``: score tile ``S = (q * scale) k^T`` by a register-blocked GEMM, then the mask (bool select,
float add, or causal), an online softmax (running max ``m`` and sum ``l`` per row; the accumulator is
rescaled by ``exp(m_old - m_new)``), and ``acc += P v``. At the end ``out = acc / l``, ``lse = m + log l``.
Under ``is_causal`` the key tiles past a block's last row are never visited; a task's pair is block ``i``
and block ``n-1-i``, so causal tasks carry equal work.

Backward: one task per (batch entry, group of key blocks). For each of its key blocks the task walks the
query tiles (under ``is_causal`` only those at or below the diagonal), recomputes ``P^T = exp(S^T - lse)``
and accumulates ``dV += P^T dO``, ``dS^T = P^T * (V dO^T - D)`` with ``D = rowsum(dO * O)``,
``dK += dS^T (q * scale)``, and ``dQ_g += dS k`` into the group's own partial dQ buffer, so every output
element has exactly one writer (no atomics, no races). The partial buffers are added in group order at the
end; the grouping depends on the shape only, so results are bitwise reproducible for any thread count.

Parallelism: the task loops are ``nogil`` njit functions, run on ``numba.get_num_threads()`` Python threads
(`_parallel`, task t on worker t % n). Not ``prange``: numba's parfor lowering re-optimises and re-emits
the whole task body for the gufunc and again for its caller, which tripled the compile time (forward +
backward took about 30 s of CPU per dtype, against 11 s now); the tasks and results are identical.

GEMMs: every product runs through one micro-kernel (``_mm_set`` / ``_mm_acc`` / ``_mm_acc_at``), a 6 x (2
vectors) register tile written in LLVM IR (the loop vectoriser does not keep a C tile in registers across the
k loop by itself: 87 against 44 GFLOP/s on one core here). Its B operand is packed in panels of ``NR`` columns
(16 for float32, 8 for float64), contiguous per k; all operands are packed and zero-padded to the block
sizes once per call: O(B (L + S) (E + Ev)) extra memory, never O(L S). float32 accumulates in float32 (like
torch's CPU flash kernel), float64 in float64. ``exp`` is a Cody-Waite reduction plus polynomial (Cephes;
float32 <= 1 ulp, float64 <= 2 ulp) that vectorises; libm's exp is a scalar call.

Cost: forward ``4 * B * L * S * E`` FLOPs for E == Ev (``2 B L S E`` for q k^T, ``2 B L S Ev`` for P v; about
half under ``is_causal`` with L == S) plus ``B L S`` exps; backward 5 GEMMs, ``10 * B * L * S * E``. Memory
traffic: the forward reads q once and k, v once per query block, ``B (L E + ceil(L / BLOCK_M) S (E + Ev))``
elements (each k/v tile is reused by BLOCK_M rows from cache), and writes out and lse; the backward reads
k, v once and q, dO once per key block of ``BWD_BLOCK_N``.

Semantics (torch 2.13 ``scaled_dot_product_attention``, measured on the CPU for float32 and float64, math
and flash paths alike): ``is_causal`` is the top-left aligned ``tril`` of ``(L, S)``; a bool mask keeps
True; a float mask is added. A row that sees no key (all False, all -inf, or ``S == 0``) gets output 0
and zero gradients (torch's "safe softmax"); its ``lse`` is -inf here (torch's flash kernel stores 0).
Masking is a select: masked keys get probability exactly 0 and contribute nothing even when their K or V
rows hold NaN/inf (torch lets a NaN in a masked V row through as 0 * NaN; dlcore does not, RELIABILITY.md
item 8). Any key with probability exactly 0 is skipped the same way; all other NaN/inf propagate as in
torch (a +inf or NaN in a float mask makes its row NaN). fastmath is limited to contract / reassoc / nsz /
arcp: -inf masking and NaN propagation need IEEE infinities and NaNs.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

BLOCK_M = 96  # query rows per forward task (a multiple of _MR)
BLOCK_N = 128  # keys per forward tile (a multiple of the panel width: 16 float32, 8 float64)
BWD_BLOCK_N = 48  # keys per backward block (a multiple of _MR)
BWD_BLOCK_M = 96  # queries per backward tile (a multiple of the panel width)
_BWD_TASKS = 16  # the backward splits each batch entry's keys into groups until ~this many tasks exist

_MR = 6  # micro-tile rows
_NV = 2  # micro-tile vectors per row; the panel width NR is _NV * lanes
_LANES = {np.dtype(np.float32): 8, np.dtype(np.float64): 4}  # 256-bit vectors

# -inf masking and NaN propagation need IEEE semantics: never nnan / ninf. reassoc only vectorises sums.
_FASTMATH = {"contract", "reassoc", "nsz", "arcp"}


# ------------------------------------------------------------------------------------------ micro-kernel
def _micro_gemm_typer(c, a, b):
    arrays = (c, a, b)
    ok = all(isinstance(x, types.Array) and x.layout == "C" for x in arrays)  # flat offsets need C order
    ok = ok and c.dtype in (types.float32, types.float64) and a.dtype == b.dtype == c.dtype
    if not ok:
        return None
    ip = types.intp
    return types.void(c, ip, ip, a, ip, ip, b, ip, ip, ip)


def _micro_gemm_codegen(accumulate, a_trans):
    """LLVM IR for ``C[MR, NR] (+)= A[MR, K] @ B[K, NR]`` with the C tile held in vector registers.

    Element (r, k) of A sits at ``a_off + r*lda + k`` (``a_off + k*lda + r`` when ``a_trans``); row k of B
    at ``b_off + k*ldb`` (NR contiguous values); row r of C at ``c_off + r*ldc``. Offsets count elements
    from each array's data pointer; all three arrays must be C-contiguous and in bounds (not checked).
    """

    def codegen(context, builder, sig, args):
        c_arr, c_off, ldc, a_arr, a_off, lda, b_arr, b_off, ldb, kdim = args
        dtype = sig.args[0].dtype
        et = context.get_value_type(dtype)
        lanes = 8 if dtype == types.float32 else 4
        vt = ir.VectorType(et, lanes)
        i64 = context.get_value_type(types.intp)
        align = dtype.bitwidth // 8
        cptr = context.make_array(sig.args[0])(context, builder, c_arr).data
        aptr = context.make_array(sig.args[3])(context, builder, a_arr).data
        bptr = context.make_array(sig.args[6])(context, builder, b_arr).data
        fma_name = f"llvm.fmuladd.v{lanes}{'f32' if lanes == 8 else 'f64'}"
        fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), fma_name)

        def vec_ptr(base, off):
            return builder.bitcast(builder.gep(base, [off], inbounds=True), vt.as_pointer())

        def c_index(r, v):
            return builder.add(builder.add(c_off, builder.mul(ldc, i64(r))), i64(v * lanes))

        if accumulate:
            init = [builder.load(vec_ptr(cptr, c_index(r, v)), align=align)
                    for r in range(_MR) for v in range(_NV)]
        else:
            init = [ir.Constant(vt, None)] * (_MR * _NV)
        entry = builder.block
        loop = builder.append_basic_block("mm_loop")
        done = builder.append_basic_block("mm_done")
        builder.cbranch(builder.icmp_signed(">", kdim, i64(0)), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(i64)
        k.add_incoming(i64(0), entry)
        accs = []
        for x in init:
            phi = builder.phi(vt)
            phi.add_incoming(x, entry)
            accs.append(phi)
        brow = builder.add(b_off, builder.mul(k, ldb))
        bvec = [builder.load(vec_ptr(bptr, builder.add(brow, i64(v * lanes))), align=align)
                for v in range(_NV)]
        undef = ir.Constant(vt, ir.Undefined)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        new = []
        for r in range(_MR):
            if a_trans:
                ai = builder.add(builder.add(a_off, builder.mul(k, lda)), i64(r))
            else:
                ai = builder.add(builder.add(a_off, builder.mul(lda, i64(r))), k)
            a_val = builder.load(builder.gep(aptr, [ai], inbounds=True), align=align)
            a_one = builder.insert_element(undef, a_val, ir.IntType(32)(0))
            a_vec = builder.shuffle_vector(a_one, undef, splat)  # broadcast A[r, k]
            for v in range(_NV):
                new.append(builder.call(fmuladd, [a_vec, bvec[v], accs[r * _NV + v]]))
        k_next = builder.add(k, i64(1))
        tail = builder.block
        k.add_incoming(k_next, tail)
        for phi, x in zip(accs, new):
            phi.add_incoming(x, tail)
        builder.cbranch(builder.icmp_signed("<", k_next, kdim), loop, done)

        builder.position_at_end(done)
        final = []
        for x0, x1 in zip(init, new):
            phi = builder.phi(vt)
            phi.add_incoming(x0, entry)
            phi.add_incoming(x1, tail)
            final.append(phi)
        for r in range(_MR):
            for v in range(_NV):
                builder.store(final[r * _NV + v], vec_ptr(cptr, c_index(r, v)), align=align)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _mm_set(typingctx, c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim):
    """C tile = A @ B (see `_micro_gemm_codegen`)."""
    sig = _micro_gemm_typer(c, a, b)
    return (sig, _micro_gemm_codegen(False, False)) if sig is not None else None


@intrinsic
def _mm_acc(typingctx, c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim):
    """C tile += A @ B."""
    sig = _micro_gemm_typer(c, a, b)
    return (sig, _micro_gemm_codegen(True, False)) if sig is not None else None


@intrinsic
def _mm_acc_at(typingctx, c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim):
    """C tile += A @ B with A stored transposed (A[r, k] at ``a_off + k*lda + r``)."""
    sig = _micro_gemm_typer(c, a, b)
    return (sig, _micro_gemm_codegen(True, True)) if sig is not None else None


# ---------------------------------------------------------------------------------------------- exp
# exp(x) = 2**n * exp(r), n = round(x / ln2), r = x - n ln2 (ln2 split in two so n * ln2_hi is exact). n is
# rounded by adding a magic number (1.5 * 2**mantissa_bits): the integer then sits in the low bits of the sum,
# so 2**n is built from those bits with integer adds and a shift. No float -> int conversion, no floor.
_MAGIC32, _MAGIC64 = np.float32(1.5 * 2**23), 1.5 * 2**52


@intrinsic
def _pow2_from_magic(typingctx, t):
    """2**n from ``t = n + magic`` (see above); n must lie in the normal exponent range."""
    if t not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        if sig.args[0] == types.float32:
            it, magic_bits, bias, shift = ir.IntType(32), 0x4B400000, 127, 23
        else:
            it, magic_bits, bias, shift = ir.IntType(64), 0x4338000000000000, 1023, 52
        n = builder.sub(builder.bitcast(args[0], it), it(magic_bits))
        return builder.bitcast(builder.shl(builder.add(n, it(bias)), it(shift)), args[0].type)

    return t(t), codegen


@intrinsic
def _fmax(typingctx, a, b):
    """llvm.maxnum: the larger of a and b, ignoring a NaN operand (vectorisable as a reduction)."""
    if a not in (types.float32, types.float64) or a != b:
        return None

    def codegen(context, builder, sig, args):
        t = args[0].type
        name = "llvm.maxnum." + ("f32" if sig.args[0] == types.float32 else "f64")
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t]), name)
        return builder.call(fn, args)

    return a(a, b), codegen


# float32 constants (a float64 literal would promote the whole computation to float64)
_LO32, _LOG2E32 = np.float32(-87.0), np.float32(1.4426950408889634)
_ONE32, _ZERO32 = np.float32(1.0), np.float32(0.0)
_LN2HI32, _LN2LO32 = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 = hi + lo, hi exact in 9 bits
_P32_0, _P32_1, _P32_2 = np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3)
_P32_3, _P32_4, _P32_5 = np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1)


@numba.njit(cache=True, fastmath={"contract"})  # no reassoc: it would cancel the magic number and fold ln2
def _exp_f32(x):
    # Cephes expf: exp(r) by a degree-7 polynomial on |r| <= ln2 / 2, about 1 ulp. Domain: x <= 88 (the
    # kernels only pass x <= 0 up to rounding). exp(x) is 0 for x < -87 (-inf included, and the ~1e-38
    # denormal range); NaN stays NaN.
    xc = x
    if xc < _LO32:  # noqa: PLR1730 (a select that keeps NaN)
        xc = _LO32
    t = xc * _LOG2E32 + _MAGIC32
    n = t - _MAGIC32
    r = xc - n * _LN2HI32
    r = r - n * _LN2LO32
    y = (((((_P32_0 * r + _P32_1) * r + _P32_2) * r + _P32_3) * r + _P32_4) * r + _P32_5) * (r * r)
    y = y + r + _ONE32
    y = y * _pow2_from_magic(t)
    return _ZERO32 if x < _LO32 else y


_P64 = (1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1)
_Q64 = (3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1,
        2.00000000000000000009e0)
_P64_0, _P64_1, _P64_2 = _P64
_Q64_0, _Q64_1, _Q64_2, _Q64_3 = _Q64
_LN2HI64, _LN2LO64 = 6.93145751953125e-1, 1.42860682030941723212e-6


@numba.njit(cache=True, fastmath={"contract"})
def _exp_f64(x):
    # Cephes exp: exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)), about 1 ulp; 0 below -708; x <= 709.
    xc = x
    if xc < -708.0:  # noqa: PLR1730 (a select that keeps NaN)
        xc = -708.0
    t = xc * 1.4426950408889634 + _MAGIC64
    n = t - _MAGIC64
    r = xc - n * _LN2HI64
    r = r - n * _LN2LO64
    rr = r * r
    px = r * ((_P64_0 * rr + _P64_1) * rr + _P64_2)
    qx = ((_Q64_0 * rr + _Q64_1) * rr + _Q64_2) * rr + _Q64_3
    y = 1.0 + 2.0 * (px / (qx - px))
    y = y * _pow2_from_magic(t)
    return 0.0 if x < -708.0 else y


def _fexp(x):
    """exp in x's own precision, vectorisable (see `_exp_f32` / `_exp_f64`)."""
    raise NotImplementedError("jit only")


@overload(_fexp)
def _fexp_overload(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    if x == types.float64:
        return lambda x: _exp_f64(x)
    return None


# ---------------------------------------------------------------------------------------------- forward
@numba.njit(cache=True, fastmath=_FASTMATH)
def _apply_mask_row(s, i, nc, gi, j0, b, causal, mode, bmask, fmask, msb, msl, mss):
    """Mask row i of a score tile (keys j0 .. j0+nc, query gi) in place, by selects."""
    ninf = s.dtype.type(-np.inf)
    if causal:
        for j in range(max(gi - j0 + 1, 0), nc):
            s[i, j] = ninf
    elif mode == 1:
        base = b * msb + gi * msl + j0 * mss
        for j in range(nc):
            if bmask[base + j * mss] == 0:
                s[i, j] = ninf
    elif mode == 2:
        base = b * msb + gi * msl + j0 * mss
        for j in range(nc):
            f = fmask[base + j * mss]
            s[i, j] = ninf if f == ninf else s[i, j] + f


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _fwd_worker(w, nw, qs, kt, vpk, v, vbad, bmask, fmask, msb, msl, mss, mode, causal, L, S, out, lse):
    # Tasks w, w + nw, ... of B * ceil(nqb / 2); task (b, i) does query blocks i and nqb-1-i of batch entry b
    # (equal work under is_causal). qs: (B, Lp, Ep) q * scale, zero-padded (Lp a multiple of BLOCK_M);
    # kt: (B, Sp/NR, Ep, NR) k^T in panels of NR keys; vpk: (B, Evp/NR, Sp, NR) v in panels of NR columns
    # (Sp a multiple of BLOCK_N); v: (B, S, Ev) raw values, used for the tiles flagged in vbad (B, Sp/BLOCK_N)
    # as holding NaN/inf. Writes out (B, L, Ev) and lse (B, L).
    B, Lp, Ep = qs.shape
    NR = kt.shape[3]
    Sp = kt.shape[1] * NR
    nvp = vpk.shape[1]
    Evp = nvp * NR
    Ev = out.shape[2]
    BM, BN = BLOCK_M, BLOCK_N
    dt = qs.dtype.type
    ninf, zero, one = dt(-np.inf), dt(0.0), dt(1.0)
    s = np.empty((BM, BN), qs.dtype)  # score tile, then probabilities
    acc = np.empty((BM, Evp), qs.dtype)  # unnormalised output rows
    m = np.empty(BM, qs.dtype)  # running row max
    l = np.empty(BM, qs.dtype)  # running row sum of exp(s - m)
    nqb = (L + BM - 1) // BM
    npair = (nqb + 1) // 2
    for t in range(w, B * npair, nw):
        b = t // npair
        pair = t % npair
        for half in range(2):
            qb = pair if half == 0 else nqb - 1 - pair
            if half == 1 and qb == pair:
                break
            i0 = qb * BM
            nr = min(BM, L - i0)
            nrp = (nr + _MR - 1) // _MR * _MR
            for i in range(nrp):
                m[i] = ninf
                l[i] = zero
                for e in range(Evp):
                    acc[i, e] = zero
            kend = min(S, i0 + nr) if causal else S  # causal: keys past the block's last row are all masked
            for j0 in range(0, kend, BN):
                nc = min(BN, kend - j0)
                ncp = (nc + NR - 1) // NR * NR
                for ii in range(0, nrp, _MR):  # s = (q * scale) @ k^T
                    for jj in range(0, ncp, NR):
                        _mm_set(s, ii * BN + jj, BN, qs, (b * Lp + i0 + ii) * Ep, Ep,
                                kt, (b * (Sp // NR) + (j0 + jj) // NR) * Ep * NR, NR, Ep)
                for i in range(nr):
                    gi = i0 + i
                    if causal or mode != 0:
                        _apply_mask_row(s, i, nc, gi, j0, b, causal, mode, bmask, fmask, msb, msl, mss)
                    mx = ninf
                    for j in range(nc):  # NaN is skipped here and poisons the row through exp below
                        mx = _fmax(mx, s[i, j])
                    m_old = m[i]
                    m_new = m_old
                    if mx > m_old:
                        m_new = mx
                    m_use = zero if m_new == ninf else m_new  # nothing seen yet: exp(-inf - 0) = 0, not NaN
                    alpha = _fexp(m_old - m_use)  # rescale what was accumulated under the old max
                    row_sum = zero
                    for j in range(nc):
                        p = _fexp(s[i, j] - m_use)
                        s[i, j] = p
                        row_sum += p
                    l[i] = l[i] * alpha + row_sum
                    m[i] = m_new
                    if alpha != one:
                        for e in range(Evp):
                            acc[i, e] *= alpha
                for i in range(nr, nrp):  # padded rows: finite zeros
                    for j in range(nc):
                        s[i, j] = zero
                if vbad[b, j0 // BN]:  # rare: NaN/inf in the tile: add nonzero probabilities one by one
                    for i in range(nr):
                        for j in range(nc):
                            p = s[i, j]
                            if p != zero:
                                for e in range(Ev):
                                    acc[i, e] += p * v[b, j0 + j, e]
                else:
                    for ii in range(0, nrp, _MR):  # acc += P @ v
                        for ee in range(0, Evp, NR):
                            _mm_acc(acc, ii * Evp + ee, Evp, s, ii * BN, BN,
                                    vpk, ((b * nvp + ee // NR) * Sp + j0) * NR, NR, nc)
            for i in range(nr):
                gi = i0 + i
                if l[i] == zero:  # the row saw no key
                    for e in range(Ev):
                        out[b, gi, e] = zero
                    lse[b, gi] = ninf
                else:
                    inv = one / l[i]
                    for e in range(Ev):
                        out[b, gi, e] = acc[i, e] * inv
                    lse[b, gi] = m[i] + np.log(l[i])


# --------------------------------------------------------------------------------------------- backward
@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _bwd_worker(w, nw, kp, qtk, dok, vp, dotk, qsk, kpk, k, kbad, lse_use, dsum, bmask, fmask, msb, msl, mss,
                mode, causal, L, S, ngroup, dk, dv, dq_part):
    # Tasks w, w + nw, ... of B * ngroup; task (b, g) does key blocks g, g + ngroup, ... of batch entry b.
    # Row-major, zero-padded: kp (B, Sp, Ep) k; vp (B, Sp, Evp) v. Panels of NR columns (see _fwd_worker):
    # qtk (B, Lp/NR, Ep, NR) (q*scale)^T; dok (B, Evp/NR, Lp, NR) dO; dotk (B, Lp/NR, Evp, NR) dO^T;
    # qsk (B, Ep/NR, Lp, NR) q*scale; kpk (B, Ep/NR, Sp, NR) k. k (B, S, E) raw keys, used for the blocks
    # flagged in kbad (B, Sp/BWD_BLOCK_N) as holding NaN/inf. lse_use (B, Lp): lse, +inf for rows that saw no
    # key (so P = 0 there); dsum (B, Lp): rowsum(dO * O). Writes dk (B, S, E), dv (B, S, Ev) and the group's
    # partial dQ / scale into dq_part (B, ngroup, Lp, Ep).
    B, Sp, Ep = kp.shape
    Evp = vp.shape[2]
    NR = qtk.shape[3]
    Lp = qtk.shape[1] * NR
    E = dk.shape[2]
    Ev = dv.shape[2]
    BN, BM = BWD_BLOCK_N, BWD_BLOCK_M
    dt = kp.dtype.type
    ninf, zero = dt(-np.inf), dt(0.0)
    pt = np.empty((BN, BM), kp.dtype)  # P^T tile
    dst = np.empty((BN, BM), kp.dtype)  # dP^T tile, then dS^T
    dk_acc = np.empty((BN, Ep), kp.dtype)
    dv_acc = np.empty((BN, Evp), kp.dtype)
    nkb = (S + BN - 1) // BN
    for t in range(w, B * ngroup, nw):
        b = t // ngroup
        g = t % ngroup
        for kb in range(g, nkb, ngroup):
            j0 = kb * BN
            nc = min(BN, S - j0)
            ncp = (nc + _MR - 1) // _MR * _MR
            for j in range(ncp):
                for e in range(Ep):
                    dk_acc[j, e] = zero
                for e in range(Evp):
                    dv_acc[j, e] = zero
            istart = (j0 // BM) * BM if causal else 0  # causal: rows above the block see none of its keys
            for i0 in range(istart, L, BM):
                nr = min(BM, L - i0)
                nrp = (nr + NR - 1) // NR * NR
                nrm = (nr + _MR - 1) // _MR * _MR
                for jj in range(0, ncp, _MR):  # S^T = k @ (q * scale)^T
                    for ii in range(0, nrp, NR):
                        _mm_set(pt, jj * BM + ii, BM, kp, (b * Sp + j0 + jj) * Ep, Ep,
                                qtk, (b * (Lp // NR) + (i0 + ii) // NR) * Ep * NR, NR, Ep)
                lrow = lse_use[b, i0 : i0 + BM]  # 1-D views: indices provably >= 0, so the loops vectorise
                drow = dsum[b, i0 : i0 + BM]
                for j in range(nc):  # P^T = exp(S^T - lse), masked by selects
                    prow = pt[j]
                    gj = j0 + j
                    if mode == 1:
                        base = b * msb + gj * mss + i0 * msl
                        for i in range(nr):
                            x = ninf if bmask[base + i * msl] == 0 else prow[i]
                            prow[i] = _fexp(x - lrow[i])
                    elif mode == 2:
                        base = b * msb + gj * mss + i0 * msl
                        for i in range(nr):
                            f = fmask[base + i * msl]
                            x = ninf if f == ninf else prow[i] + f
                            prow[i] = _fexp(x - lrow[i])
                    else:
                        vis = gj - i0 if causal else 0  # causal: query i0 + i sees key gj iff i >= gj - i0
                        for i in range(nr):
                            x = prow[i] if i >= vis else ninf
                            prow[i] = _fexp(x - lrow[i])
                    for i in range(nr, nrm):
                        prow[i] = zero
                for jj in range(0, ncp, _MR):  # dV += P^T @ dO
                    for ee in range(0, Evp, NR):
                        _mm_acc(dv_acc, jj * Evp + ee, Evp, pt, jj * BM, BM,
                                dok, ((b * (Evp // NR) + ee // NR) * Lp + i0) * NR, NR, nr)
                for jj in range(0, ncp, _MR):  # dP^T = v @ dO^T
                    for ii in range(0, nrp, NR):
                        _mm_set(dst, jj * BM + ii, BM, vp, (b * Sp + j0 + jj) * Evp, Evp,
                                dotk, (b * (Lp // NR) + (i0 + ii) // NR) * Evp * NR, NR, Evp)
                for j in range(nc):  # dS^T = P^T * (dP^T - D), exactly 0 where P is 0
                    prow = pt[j]
                    drow_t = dst[j]
                    for i in range(nr):
                        p = prow[i]
                        drow_t[i] = zero if p == zero else p * (drow_t[i] - drow[i])
                    for i in range(nr, nrm):
                        drow_t[i] = zero
                for jj in range(0, ncp, _MR):  # dK += dS^T @ (q * scale)
                    for ee in range(0, Ep, NR):
                        _mm_acc(dk_acc, jj * Ep + ee, Ep, dst, jj * BM, BM,
                                qsk, ((b * (Ep // NR) + ee // NR) * Lp + i0) * NR, NR, nr)
                if kbad[b, kb]:  # rare: NaN/inf keys in this block; add nonzero dS entries one by one
                    for i in range(nr):
                        for j in range(nc):
                            d = dst[j, i]
                            if d != zero:
                                for e in range(E):
                                    dq_part[b, g, i0 + i, e] += d * k[b, j0 + j, e]
                else:
                    for ii in range(0, nrm, _MR):  # dQ_g += dS @ k (dS read transposed from dS^T)
                        for ee in range(0, Ep, NR):
                            _mm_acc_at(dq_part, ((b * ngroup + g) * Lp + i0 + ii) * Ep + ee, Ep, dst, ii, BM,
                                       kpk, ((b * (Ep // NR) + ee // NR) * Sp + j0) * NR, NR, nc)
            for j in range(nc):
                for e in range(E):
                    dk[b, j0 + j, e] = dk_acc[j, e]
                for e in range(Ev):
                    dv[b, j0 + j, e] = dv_acc[j, e]


# -------------------------------------------------------------------------------------------- launchers
_pool = None  # (pid, ThreadPoolExecutor): a forked child builds its own
_pool_lock = threading.Lock()


def _parallel(worker, ntasks, *args):
    """Run ``worker(w, n, *args)`` for w < n on n threads, n = numba's thread count (at most ntasks).

    The workers are nogil and split the tasks statically (task t goes to worker t % n); every task writes
    its own outputs, so the result does not depend on n.
    """
    n = max(1, min(numba.get_num_threads(), ntasks))
    if n == 1:
        worker(0, 1, *args)
        return
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            pool = ThreadPoolExecutor(numba.config.NUMBA_NUM_THREADS, thread_name_prefix="dlcore-attn")
            _pool = (os.getpid(), pool)
        pool = _pool[1]
    futures = [pool.submit(worker, w, n, *args) for w in range(1, n)]
    worker(0, n, *args)
    for f in futures:
        f.result()


def _ceil(n, m):
    return -(-n // m) * m


def _panel_width(dtype):
    return _NV * _LANES[np.dtype(dtype)]


def _pad(x, rows, cols, mult=None):
    """x (B, R, C) zero-padded to (B, rows, cols), times mult (one pass over x)."""
    out = np.zeros((x.shape[0], rows, cols), x.dtype)
    _copy(out[:, : x.shape[1], : x.shape[2]], x, mult)
    return out


def _copy(dst, src, mult):
    if mult is None:
        dst[...] = src
    else:
        np.multiply(src, mult, out=dst)


def _panels_kn(x, rows, cols, nr, mult=None):
    """B operand whose K dim is x's rows: (B, cols/nr, rows, nr) panels of nr columns, zero-padded."""
    B, R, C = x.shape
    if C != cols:  # rare (head dims are usually multiples of the panel width): pad the columns first
        x, mult = _pad(x, R, cols, mult), None
    out = np.zeros((B, cols // nr, rows, nr), x.dtype)
    _copy(out[:, :, :R], x.reshape(B, R, cols // nr, nr).transpose(0, 2, 1, 3), mult)
    return out


def _panels_nk(x, rows, cols, nr, mult=None):
    """B operand x^T (K dim = x's columns): (B, rows/nr, cols, nr) panels of nr rows of x, zero-padded."""
    B, R, C = x.shape
    out = np.zeros((B, rows // nr, cols, nr), x.dtype)
    full = R // nr
    _copy(out[:, :full, :C], x[:, : full * nr].reshape(B, full, nr, C).transpose(0, 1, 3, 2), mult)
    if R > full * nr:
        _copy(out[:, full, :C, : R - full * nr], x[:, full * nr :].transpose(0, 2, 1), mult)
    return out


def _bad_blocks(x, block, nblocks):
    """(B, nblocks) uint8: 1 where a block of `block` rows of x (B, R, C) holds a NaN or inf."""
    B, R = x.shape[:2]
    bad = np.zeros((B, nblocks * block), np.bool_)
    bad[:, :R] = ~np.isfinite(x).all(axis=2)
    return np.ascontiguousarray(bad.reshape(B, nblocks, block).any(axis=2).astype(np.uint8))


def _readonly(a):
    a.setflags(write=False)
    return a


def _mask_args(mask, dtype):
    """(bmask uint8 1-D, fmask 1-D, msb, msl, mss, mode): the mask as a flat view plus element strides.

    A stride-0 broadcast view stays a view (nothing is copied); a view with negative strides is copied.
    Both flat arrays are read-only whatever the input, so the kernels compile once per dtype.
    """
    dummy_b = _readonly(np.zeros(1, np.uint8))
    dummy_f = _readonly(np.zeros(1, dtype))
    if mask is None:
        return dummy_b, dummy_f, 0, 0, 0, 0
    if mask.dtype == np.bool_:
        mode, m = 1, mask.view(np.uint8)
    else:
        mode, m = 2, mask if mask.dtype == dtype else mask.astype(dtype)
    if any(st < 0 or st % m.itemsize for st in m.strides):
        m = np.ascontiguousarray(m)
    strides = [st // m.itemsize for st in m.strides]
    span = 1 + sum((n - 1) * st for n, st in zip(m.shape, strides))
    flat = np.lib.stride_tricks.as_strided(m, shape=(span,), strides=(m.itemsize,), writeable=False)
    if mode == 1:
        return flat, dummy_f, strides[0], strides[1], strides[2], mode
    return dummy_b, flat, strides[0], strides[1], strides[2], mode


def attention_forward(q, k, v, mask, is_causal, scale):
    """Fused attention forward ``softmax(q k^T * scale + mask) v`` with an online softmax over key tiles.

    Args:
        q: ``(B, L, E)`` C-contiguous float32/float64 queries.
        k: ``(B, S, E)`` keys, same dtype.
        v: ``(B, S, Ev)`` values, same dtype.
        mask: None, or ``(B, L, S)`` bool (True = attend) or float (added to the scores); may be a stride-0
            broadcast view (read through its strides, never copied). Never set together with ``is_causal``.
        is_causal: keep key ``j`` for query ``i`` only when ``j <= i`` (top-left aligned).
        scale: the factor applied to ``q k^T``.

    Returns:
        ``(out, lse)``: out ``(B, L, Ev)``, lse ``(B, L)`` (log-sum-exp of the scaled masked scores; -inf and
        an output row of 0 for a row that sees no key). Both in the input dtype.

    Example:
        >>> q = k = v = np.ones((1, 2, 4), np.float32)
        >>> out, lse = attention_forward(q, k, v, None, True, 0.5)
        >>> out.shape, lse.shape
        ((1, 2, 4), (1, 2))
    """
    B, L, E = q.shape
    S, Ev = k.shape[1], v.shape[2]
    dt = q.dtype
    out = np.zeros((B, L, Ev), dt)
    lse = np.full((B, L), -np.inf, dt)
    if B == 0 or L == 0 or S == 0:
        return out, lse  # no key at all: every row is fully masked
    nr = _panel_width(dt)
    Lp, Sp, Ep, Evp = _ceil(L, BLOCK_M), _ceil(S, BLOCK_N), _ceil(E, nr), _ceil(Ev, nr)
    qs = _pad(q, Lp, Ep, dt.type(scale))  # fold the scale into q once (L E multiplies, not L S)
    kt = _panels_nk(k, Sp, Ep, nr)
    vpk = _panels_kn(v, Sp, Evp, nr)
    vbad = _bad_blocks(v, BLOCK_N, Sp // BLOCK_N)
    bm, fm, msb, msl, mss, mode = _mask_args(mask, dt)
    ntasks = B * ((Lp // BLOCK_M + 1) // 2)
    _parallel(_fwd_worker, ntasks, qs, kt, vpk, np.ascontiguousarray(v), vbad, bm, fm, msb, msl, mss, mode,
              bool(is_causal), L, S, out, lse)
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, mask, is_causal, scale):
    """Fused attention backward (FlashAttention-2): recomputes the probabilities tile by tile from lse.

    Args:
        grad_out: ``(B, L, Ev)`` upstream gradient of ``out``.
        q, k, v, mask, is_causal, scale: as passed to `attention_forward`.
        out: ``(B, L, Ev)`` forward output.
        lse: ``(B, L)`` forward log-sum-exp (-inf for rows that saw no key).

    Returns:
        ``(grad_q, grad_k, grad_v)`` shaped like q, k, v, in the input dtype. Rows that saw no key get zero
        gradients; masked keys get zero gradients even when they hold NaN/inf.

    Example:
        >>> q = k = v = g = np.ones((1, 2, 4))
        >>> out, lse = attention_forward(q, k, v, None, False, 0.5)
        >>> [x.shape for x in attention_backward(g, q, k, v, out, lse, None, False, 0.5)]
        [(1, 2, 4), (1, 2, 4), (1, 2, 4)]
    """
    B, L, E = q.shape
    S, Ev = k.shape[1], v.shape[2]
    dt = q.dtype
    gq, gk, gv = np.zeros((B, L, E), dt), np.zeros((B, S, E), dt), np.zeros((B, S, Ev), dt)
    if B == 0 or L == 0 or S == 0:
        return gq, gk, gv
    nr = _panel_width(dt)
    Lp, Sp, Ep, Evp = _ceil(L, BWD_BLOCK_M), _ceil(S, BWD_BLOCK_N), _ceil(E, nr), _ceil(Ev, nr)
    sc = dt.type(scale)
    nkb = Sp // BWD_BLOCK_N
    ngroup = int(min(nkb, max(1, -(-_BWD_TASKS // B))))  # a function of the shape only: reproducible
    dsum = np.zeros((B, Lp), dt)
    dsum[:, :L] = np.einsum("ble,ble->bl", grad_out, out)  # D_i = rowsum(dO * O)
    lse_use = np.full((B, Lp), np.inf, dt)
    lse_use[:, :L] = np.where(lse == -np.inf, np.inf, lse)  # rows that saw no key: exp(s - inf) = 0
    bm, fm, msb, msl, mss, mode = _mask_args(mask, dt)
    dq_part = np.zeros((B, ngroup, Lp, Ep), dt)
    _parallel(_bwd_worker, B * ngroup, _pad(k, Sp, Ep), _panels_nk(q, Lp, Ep, nr, sc),
              _panels_kn(grad_out, Lp, Evp, nr), _pad(v, Sp, Evp), _panels_nk(grad_out, Lp, Evp, nr),
              _panels_kn(q, Lp, Ep, nr, sc), _panels_kn(k, Sp, Ep, nr), np.ascontiguousarray(k),
              _bad_blocks(k, BWD_BLOCK_N, nkb), lse_use, dsum, bm, fm, msb, msl, mss, mode, bool(is_causal),
              L, S, ngroup, gk, gv, dq_part)
    gq[...] = dq_part[:, :, :L, :E].sum(axis=1) * sc  # partial dQs added in group order: reproducible
    return gq, gk, gv

"""Numba CPU scaled dot-product attention: fused FlashAttention-2 forward and backward, no (L, S) matrix.

Forward: one task per (batch entry, query block of ``BLOCK_M`` rows). A task copies its queries times scale
into a padded block, then walks the keys in tiles of ``BLOCK_N``: score tile ``S = (q * scale) k^T`` by a
register-blocked GEMM, then the mask (bool select, float add, or causal), an online softmax (running max
``m`` and sum ``l`` per row; the accumulator is rescaled by ``exp(m_old - m_new)``), and ``acc += P v``. At
the end ``out = acc / l``, ``lse = m + log l``. Under ``is_causal`` the key tiles past a block's last row are
never visited, and in a tile crossing the diagonal the work past it is skipped, not masked: score micro-tiles
whose keys all lie past their rows are not computed, each row's max and exps stop at its last visible key
(the rest of the row is set to probability 0), and ``P v`` stops at the micro-tile's last visible key
(B1 H8 L2048 E64 float32, 2 threads, interleaved in one process, 2026-11-26: 44.3 -> 40.8 ms, ~8% of the
causal work sat above the diagonal in these 96 x 128 tiles). The blocks are handed out largest first (the
last block of every batch entry, then the one before, ...), so the dynamic schedule ends evenly.

Backward: one task per (batch entry, group of key blocks). For each of its key blocks the task walks the
query tiles (under ``is_causal`` only those at or below the diagonal), recomputes ``P^T = exp(S^T - lse)``
and accumulates ``dV += P^T dO``, ``dS^T = P^T * (V dO^T - D)`` with ``D = rowsum(dO * O)``,
``dK += dS^T (q * scale)``, and ``dQ_g += dS k`` into the group's own partial dQ buffer, so every output
element has exactly one writer (no atomics, no races). The partial buffers are added in group order at the
end; the grouping depends on the shape only, so results are bitwise reproducible for any thread count.

Parallelism: the task loops are ``nogil`` njit functions, run on ``numba.get_num_threads()`` Python threads
(`_attention_tasks.run_tasks`); each worker takes the next task from one shared atomic counter, so a worker
that the OS deschedules on a shared machine, or that drew cheaper tasks, just does more or fewer of them.
Each task computes and writes its own outputs the same way on any thread: results do not depend on the
thread count or the schedule. Not ``prange``: numba's parfor lowering re-optimises and re-emits the whole
task body for the gufunc and again for its caller, which tripled the compile time (forward + backward took
about 30 s of CPU per dtype, against 11 s); the tasks and results are identical. The operand packing runs
as parallel tasks too (`_fwd_pack_worker`, `_bwd_pack_worker`): done in NumPy on the calling thread it was
10-15 ms of serial time in a ~70 ms two-thread forward at B*H = 8, L = 2048, E = 64.

GEMMs: every product runs through one micro-kernel (``_mm_set`` / ``_mm_acc`` / ``_mm_acc_at``), a 6 x (2
vectors) register tile written in LLVM IR (the loop vectoriser does not keep a C tile in registers across the
k loop by itself: 87 against 44 GFLOP/s on one core here). Its B operand is packed in panels of ``NR`` columns
(two vectors: 16 float32 / 8 float64 with AVX2, 32 / 16 where Numba compiles for AVX-512, see `_vector_bytes`),
contiguous per k; k and v (forward) and q, k, v, dO (backward) are packed
and zero-padded to the block sizes once per call: O(B (L + S) (E + Ev)) extra memory, never O(L S) (forward
about 2 arrays of k's size; forward + backward through autograd about 13 q-sized arrays in all at the bench
shape, measured by tracemalloc in bench/bench_attention.py). float32 accumulates in float32 (like
torch's CPU flash kernel), float64 in float64. ``exp`` is a Cody-Waite reduction plus polynomial (Cephes;
float32 <= 1 ulp, float64 <= 2 ulp) that vectorises; libm's exp is a scalar call.

Cost: forward ``4 * B * L * S * E`` FLOPs for E == Ev (``2 B L S E`` for q k^T, ``2 B L S Ev`` for P v; about
half under ``is_causal`` with L == S) plus ``B L S`` exps; backward 5 GEMMs, ``10 * B * L * S * E``. Memory
traffic: the forward reads q once and k, v once per query block, ``B (L E + ceil(L / BLOCK_M) S (E + Ev))``
elements (each k/v tile is reused by BLOCK_M rows from cache), and writes out and lse; the backward reads
k, v once and q, dO once per key block of ``BWD_BLOCK_N``. Measured on the project machine (Zen 3, AVX2, one
thread, B*H = 8, L = S = 2048, E = 64, float32): q k^T runs at ~86 GFLOP/s (the FMA peak there, so ~50 ms),
the online softmax takes ~24 ms (33.5 M exps), P v ~53 ms; ~130 ms of CPU per forward, ~5% of it packing.

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
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from . import _blocks
from ._attention_tasks import next_task, run_tasks


def numba_target_features():
    """The CPU feature flags Numba compiles for (``NUMBA_CPU_FEATURES`` when set, else the host's), as a list
    like ``['+avx2', '-avx512f', ...]``. The same string is part of Numba's cache key."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return str(features).split(",")


def _vector_bytes():
    """Bytes per SIMD register of the micro-kernel: 64 (AVX-512) when Numba compiles for a CPU with avx512f,
    else 32 (AVX2). Read from `numba_target_features`, which also keys Numba's cache: cached machine code
    always matches the panel width chosen here."""
    return 64 if "+avx512f" in numba_target_features() else 32


# AVX-512 against AVX2 on a Zen 5 VM (2 cores, 2026-11-27, medians of 9 gapped rounds; AVX2 forced through
# NUMBA_CPU_FEATURES): forward B*H=8 L=2048 E=64 47.8 -> 33.7 ms (torch 50-52 ms); B*H=64 L=256 E=64 causal
# forward 5.33 -> 3.90 ms, backward 14.3 -> 10.2 ms.

BLOCK_M = 96  # query rows per forward task (a multiple of _MR)
BLOCK_N = 128  # keys per forward tile (a multiple of the panel width: at most 32 float32, 16 float64)
BWD_BLOCK_N = 48  # keys per backward block (a multiple of _MR)
BWD_BLOCK_M = 96  # queries per backward tile (a multiple of the panel width)
_BWD_TASKS = 16  # the backward splits each batch entry's keys into groups until ~this many tasks exist

_MR = 6  # micro-tile rows
_VECTOR_BYTES = _vector_bytes()
_NV = 2  # micro-tile vectors per row; the panel width NR is _NV * lanes
_LANES = {np.dtype(np.float32): _VECTOR_BYTES // 4, np.dtype(np.float64): _VECTOR_BYTES // 8}

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
        lanes = _LANES[np.dtype(np.float32 if dtype == types.float32 else np.float64)]
        vt = ir.VectorType(et, lanes)
        i64 = context.get_value_type(types.intp)
        align = dtype.bitwidth // 8
        cptr = context.make_array(sig.args[0])(context, builder, c_arr).data
        aptr = context.make_array(sig.args[3])(context, builder, a_arr).data
        bptr = context.make_array(sig.args[6])(context, builder, b_arr).data
        fma_name = f"llvm.fmuladd.v{lanes}{'f32' if dtype == types.float32 else 'f64'}"
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
def _mm_set_at(typingctx, c, c_off, ldc, a, a_off, lda, b, b_off, ldb, kdim):
    """C tile = A @ B with A stored transposed (A[r, k] at ``a_off + k*lda + r``)."""
    sig = _micro_gemm_typer(c, a, b)
    return (sig, _micro_gemm_codegen(False, True)) if sig is not None else None


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


# ------------------------------------------------------------------------------------------- packing
@numba.njit(cache=True, nogil=True)
def _pack_kn(x, b, r0, r1, mult, out):
    # out (B, Cp/NR, Rp, NR) rows r0 .. r1 of batch entry b: out[b, c // NR, r, c % NR] = x[b, r, c] * mult,
    # zero past x's rows and columns (a B operand whose K dim is x's rows: panels of NR columns). Inner
    # loops are contiguous copies of NR values, without conditions except in the last, partial panel.
    R, C = x.shape[1], x.shape[2]
    NR = out.shape[3]
    zero = out.dtype.type(0.0)
    for r in range(r0, r1):
        for pc in range(out.shape[1]):
            orow = out[b, pc, r]
            c0 = pc * NR
            if r < R and c0 + NR <= C:
                xr = x[b, r, c0 : c0 + NR]
                for rr in range(NR):
                    orow[rr] = xr[rr] * mult
            else:
                for rr in range(NR):
                    orow[rr] = x[b, r, c0 + rr] * mult if r < R and c0 + rr < C else zero


@numba.njit(cache=True, nogil=True)
def _pack_nk(x, b, r0, r1, mult, out):
    # out (B, Rp/NR, Cp, NR) rows r0 .. r1 (multiples of NR) of batch entry b: out[b, r // NR, c, r % NR] =
    # x[b, r, c] * mult, zero-padded (x^T as a B operand: panels of NR rows of x, contiguous per column).
    R, C = x.shape[1], x.shape[2]
    NR = out.shape[3]
    zero = out.dtype.type(0.0)
    for pnl in range(r0 // NR, r1 // NR):
        opan = out[b, pnl]
        for rr in range(NR):
            r = pnl * NR + rr
            if r < R:
                xr = x[b, r]
                for c in range(C):
                    opan[c, rr] = xr[c] * mult
                for c in range(C, opan.shape[0]):
                    opan[c, rr] = zero
            else:
                for c in range(opan.shape[0]):
                    opan[c, rr] = zero


@numba.njit(cache=True, nogil=True)
def _pack_rows(x, b, r0, r1, out):
    # out (B, Rp, Cp) rows r0 .. r1 of batch entry b: x zero-padded, row-major.
    R, C = x.shape[1], x.shape[2]
    zero = out.dtype.type(0.0)
    for r in range(r0, r1):
        orow = out[b, r]
        if r < R:
            xr = x[b, r]
            for c in range(C):
                orow[c] = xr[c]
            for c in range(C, orow.shape[0]):
                orow[c] = zero
        else:
            for c in range(orow.shape[0]):
                orow[c] = zero


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _nonfinite(x, b, r0, r1):
    # True when rows r0 .. r1 (clipped to x's rows) of x[b] hold a NaN or inf: x * 0 is NaN exactly for
    # those; reassoc only lets LLVM keep vector partial sums (no nnan/ninf, so NaN survives the sum).
    t = x.dtype.type(0.0)
    for r in range(r0, min(r1, x.shape[1])):
        xr = x[b, r]
        for c in range(xr.shape[0]):
            t += xr[c] * x.dtype.type(0.0)
    return np.isnan(t)


@numba.njit(cache=True, nogil=True)
def _fwd_pack_worker(counter, ntasks, k, v, kt, vpk, vbad):
    # Task t = (b, kb): key tile kb (BLOCK_N keys) of batch entry b. Packs k^T into kt (B, Sp/NR, Ep, NR)
    # (panels of NR keys, each Ep x NR, contiguous per feature) and v into vpk (B, Evp/NR, Sp, NR) (panels of
    # NR value columns, contiguous per key), zero-padded past S, E and Ev; vbad[b, kb] = 1 when the tile's
    # v rows hold a NaN or inf. Every element of the three outputs is written by exactly one task.
    nkt = vbad.shape[1]
    one = k.dtype.type(1.0)
    t = next_task(counter)
    while t < ntasks:
        b = t // nkt
        kb = t % nkt
        j0 = kb * BLOCK_N
        _pack_nk(k, b, j0, j0 + BLOCK_N, one, kt)
        _pack_kn(v, b, j0, j0 + BLOCK_N, one, vpk)
        vbad[b, kb] = 1 if _nonfinite(v, b, j0, j0 + BLOCK_N) else 0
        t = next_task(counter)


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _fwd_worker(counter, ntasks, q, scale, kt, vpk, v, vbad, bmask, fmask, msb, msl, mss, mode, causal, L, S, out,
                lse):
    # Task t = (b, query block qb of BLOCK_M rows); tasks are taken in order from the shared counter. Under
    # is_causal the most expensive blocks (the last ones, which see the most keys) go first, across all
    # batch entries, so the dynamic schedule ends evenly; otherwise one batch entry's blocks are consecutive
    # (they share its k/v in cache). q: (B, L, E) raw queries, copied times scale into a zero-padded
    # per-worker block; kt, vpk, vbad: see _fwd_pack_worker (Sp a multiple of BLOCK_N); v: (B, S, Ev) raw
    # values, used for the tiles flagged in vbad. Writes out (B, L, Ev) and lse (B, L), every row once.
    B, _, E = q.shape
    NR = kt.shape[3]
    Ep = kt.shape[2]
    Sp = kt.shape[1] * NR
    nvp = vpk.shape[1]
    Evp = nvp * NR
    Ev = out.shape[2]
    BM, BN = BLOCK_M, BLOCK_N
    dt = q.dtype.type
    ninf, zero, one = dt(-np.inf), dt(0.0), dt(1.0)
    qblk = np.empty((BM, Ep), q.dtype)  # this task's queries times scale, zero-padded
    s = np.empty((BM, BN), q.dtype)  # score tile, then probabilities
    acc = np.empty((BM, Evp), q.dtype)  # unnormalised output rows
    m = np.empty(BM, q.dtype)  # running row max
    l = np.empty(BM, q.dtype)  # running row sum of exp(s - m)
    nqb = (L + BM - 1) // BM
    t = next_task(counter)
    while t < ntasks:
        if causal:
            qb = nqb - 1 - t // B
            b = t % B
        else:
            b = t // nqb
            qb = t % nqb
        i0 = qb * BM
        nr = min(BM, L - i0)
        nrp = (nr + _MR - 1) // _MR * _MR
        for i in range(nrp):
            m[i] = ninf
            l[i] = zero
            for e in range(Evp):
                acc[i, e] = zero
            for e in range(Ep):
                qblk[i, e] = q[b, i0 + i, e] * scale if i < nr and e < E else zero  # fold the scale into q
        kend = min(S, i0 + nr) if causal else S  # causal: keys past the block's last row are all masked
        for j0 in range(0, kend, BN):
            nc = min(BN, kend - j0)
            ncp = (nc + NR - 1) // NR * NR
            diag = causal and j0 + nc - 1 > i0  # a causal tile crossing the diagonal
            for jj in range(0, ncp, NR):  # s = (q * scale) @ k^T; one k panel (Ep x NR) stays in L1
                for ii in range(0, nrp, _MR):
                    if diag and j0 + jj > i0 + ii + _MR - 1:
                        continue  # every key of the panel is past every row of the micro-tile: all masked
                    _mm_set(s, ii * BN + jj, BN, qblk, ii * Ep, Ep,
                            kt, (b * (Sp // NR) + (j0 + jj) // NR) * Ep * NR, NR, Ep)
            for i in range(nr):
                gi = i0 + i
                vis = nc  # keys of this tile the row sees
                if diag:  # keys past gi: probability exactly 0, no exp (and their scores were not computed)
                    vis = min(max(gi - j0 + 1, 0), nc)
                    for j in range(vis, nc):
                        s[i, j] = zero
                elif mode != 0:
                    _apply_mask_row(s, i, nc, gi, j0, b, causal, mode, bmask, fmask, msb, msl, mss)
                mx = ninf
                for j in range(vis):  # NaN is skipped here and poisons the row through exp below
                    mx = _fmax(mx, s[i, j])
                m_old = m[i]
                m_new = m_old
                if mx > m_old:
                    m_new = mx
                m_use = zero if m_new == ninf else m_new  # nothing seen yet: exp(-inf - 0) = 0, not NaN
                alpha = _fexp(m_old - m_use)  # rescale what was accumulated under the old max
                row_sum = zero
                for j in range(vis):
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
                for ee in range(0, Evp, NR):  # acc += P @ v; one v panel (nc x NR) stays in L1
                    for ii in range(0, nrp, _MR):
                        kc = nc  # causal diagonal tile: the micro-tile's rows see keys j0 .. i0 + ii + _MR - 1
                        if diag:
                            kc = min(nc, i0 + ii + _MR - j0)
                        if kc > 0:
                            _mm_acc(acc, ii * Evp + ee, Evp, s, ii * BN, BN,
                                    vpk, ((b * nvp + ee // NR) * Sp + j0) * NR, NR, kc)
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
        t = next_task(counter)


# --------------------------------------------------------------------------------------------- backward
@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _bwd_worker(counter, ntasks, kp, qtk, dok, vp, dotk, qsk, kpk, k, kbad, lse_use, dsum, bmask, fmask, msb, msl, mss,
                mode, causal, L, S, ngroup, dk, dv, dq_part):
    # Tasks of B * ngroup, taken from the shared counter; task (b, g) does key blocks g, g + ngroup, ... of
    # batch entry b.
    # Row-major, zero-padded: kp (B, Sp, Ep) k; vp (B, Sp, Evp) v. Panels of NR columns (see _fwd_worker):
    # qtk (B, Lp/NR, Ep, NR) (q*scale)^T; dok (B, Evp/NR, Lp, NR) dO; dotk (B, Lp/NR, Evp, NR) dO^T;
    # qsk (B, Ep/NR, Lp, NR) q*scale; kpk (B, Ep/NR, Sp, NR) k. k (B, S, E) raw keys, used for the blocks
    # flagged in kbad (B, Sp/BWD_BLOCK_N) as holding NaN/inf. lse_use (B, Lp): lse, +inf for rows that saw no
    # key (so P = 0 there); dsum (B, Lp): rowsum(dO * O). Writes dk (B, S, E), dv (B, S, Ev) and the group's
    # partial dQ / scale into dq_part (B, ngroup, Lp, Ep).
    Sp, Ep = kp.shape[1], kp.shape[2]
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
    t = next_task(counter)
    while t < ntasks:
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
        t = next_task(counter)


@numba.njit(cache=True, nogil=True)
def _bwd_pack_worker(counter, ntasks, q, k, v, grad_out, out, lse, scale, kp, qtk, dok, vp, dotk, qsk, kpk, kbad,
                     lse_use, dsum):
    # Packs every operand of _bwd_worker (layouts there) in parallel. Tasks t < B * Lp / BWD_BLOCK_M: a block
    # of BWD_BLOCK_M query rows (q * scale and dO in both panel layouts, dsum = rowsum(dO * O) in float64
    # then rounded, lse_use); the rest: a block of BWD_BLOCK_N key rows (k row-major and in panels, v, kbad).
    B, L = q.shape[:2]
    Ev = v.shape[2]
    nqb = lse_use.shape[1] // BWD_BLOCK_M
    dt = q.dtype.type
    one, zero, inf = dt(1.0), dt(0.0), dt(np.inf)
    t = next_task(counter)
    while t < ntasks:
        if t < B * nqb:
            b, r0 = t // nqb, (t % nqb) * BWD_BLOCK_M
            r1 = r0 + BWD_BLOCK_M
            _pack_nk(q, b, r0, r1, scale, qtk)
            _pack_kn(q, b, r0, r1, scale, qsk)
            _pack_kn(grad_out, b, r0, r1, one, dok)
            _pack_nk(grad_out, b, r0, r1, one, dotk)
            for i in range(r0, r1):
                if i < L:
                    d = 0.0
                    for e in range(Ev):
                        d += np.float64(grad_out[b, i, e]) * np.float64(out[b, i, e])
                    dsum[b, i] = dt(d)
                    lse_use[b, i] = inf if lse[b, i] == -inf else lse[b, i]  # no key seen: exp(s - inf) = 0
                else:
                    dsum[b, i] = zero
                    lse_use[b, i] = inf
        else:
            nkb = kbad.shape[1]
            b, kb = (t - B * nqb) // nkb, (t - B * nqb) % nkb
            j0 = kb * BWD_BLOCK_N
            _pack_rows(k, b, j0, j0 + BWD_BLOCK_N, kp)
            _pack_rows(v, b, j0, j0 + BWD_BLOCK_N, vp)
            _pack_kn(k, b, j0, j0 + BWD_BLOCK_N, one, kpk)
            kbad[b, kb] = 1 if _nonfinite(k, b, j0, j0 + BWD_BLOCK_N) else 0
        t = next_task(counter)


# -------------------------------------------------------------------------------------------- launchers
def _ceil(n, m):
    return -(-n // m) * m


def _panel_width(dtype):
    return _NV * _LANES[np.dtype(dtype)]


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
    if B == 0 or L == 0 or S == 0:  # no key at all: every row is fully masked
        return np.zeros((B, L, Ev), dt), np.full((B, L), -np.inf, dt)
    out = _blocks.empty((B, L, Ev), dt)  # every row is written by exactly one task
    lse = np.empty((B, L), dt)
    nr = _panel_width(dt)
    Sp, Ep, Evp = _ceil(S, BLOCK_N), _ceil(E, nr), _ceil(Ev, nr)
    nkt = Sp // BLOCK_N
    kt = _blocks.empty((B, Sp // nr, Ep, nr), dt)  # packed in parallel: no serial NumPy pass over q, k or v
    vpk = _blocks.empty((B, Evp // nr, Sp, nr), dt)  # (recycled scratch: no page faults in a training loop)
    vbad = np.empty((B, nkt), np.uint8)
    k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)
    run_tasks(_fwd_pack_worker, B * nkt, k, v, kt, vpk, vbad)
    bm, fm, msb, msl, mss, mode = _mask_args(mask, dt)
    run_tasks(_fwd_worker, B * (-(-L // BLOCK_M)), np.ascontiguousarray(q), dt.type(scale), kt, vpk, v, vbad,
              bm, fm, msb, msl, mss, mode, bool(is_causal), L, S, out, lse)
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
    if B == 0 or L == 0 or S == 0:
        return np.zeros((B, L, E), dt), np.zeros((B, S, E), dt), np.zeros((B, S, Ev), dt)
    # every row of dK and dV is written by the task that owns its key block (zeros where no query sees it)
    gk, gv = _blocks.empty((B, S, E), dt), _blocks.empty((B, S, Ev), dt)
    nr = _panel_width(dt)
    Lp, Sp, Ep, Evp = _ceil(L, BWD_BLOCK_M), _ceil(S, BWD_BLOCK_N), _ceil(E, nr), _ceil(Ev, nr)
    sc = dt.type(scale)
    nkb = Sp // BWD_BLOCK_N
    ngroup = int(min(nkb, max(1, -(-_BWD_TASKS // B))))  # a function of the shape only: reproducible
    bm, fm, msb, msl, mss, mode = _mask_args(mask, dt)
    q, k, v = np.ascontiguousarray(q), np.ascontiguousarray(k), np.ascontiguousarray(v)
    grad_out, out, lse = np.ascontiguousarray(grad_out), np.ascontiguousarray(out), np.ascontiguousarray(lse)
    scratch = _blocks.empty  # recycled between calls: 7 packed copies of the operands, no page faults
    ops = (scratch((B, Sp, Ep), dt), scratch((B, Lp // nr, Ep, nr), dt), scratch((B, Evp // nr, Lp, nr), dt),
           scratch((B, Sp, Evp), dt), scratch((B, Lp // nr, Evp, nr), dt), scratch((B, Ep // nr, Lp, nr), dt),
           scratch((B, Ep // nr, Sp, nr), dt), np.empty((B, nkb), np.uint8), np.empty((B, Lp), dt),
           np.empty((B, Lp), dt))  # kp, qtk, dok, vp, dotk, qsk, kpk, kbad, lse_use, dsum: packed in parallel
    run_tasks(_bwd_pack_worker, B * (Lp // BWD_BLOCK_M + nkb), q, k, v, grad_out, out, lse, sc, *ops)
    dq_part = _blocks.zeros((B, ngroup, Lp, Ep), dt)
    run_tasks(_bwd_worker, B * ngroup, *ops[:7], k, *ops[7:], bm, fm, msb, msl, mss, mode, bool(is_causal),
              L, S, ngroup, gk, gv, dq_part)
    gq = _blocks.empty((B, L, E), dt)
    if ngroup == 1:  # dQ = dq_part * scale, one pass
        np.multiply(dq_part[:, 0, :L, :E], sc, out=gq)
    else:  # partial dQs added in group order (reproducible), then scaled: the same roundings as sum(...) * sc
        np.sum(dq_part[:, :, :L, :E], axis=1, out=gq)
        gq *= sc
    return gq, gk, gv

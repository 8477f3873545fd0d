"""Batched matmul and linear for the Numba backend, plus dlcore's own blocked GEMM kernel (:func:`gemm`).

The contract functions (``matmul``, ``matmul_backward``, ``linear``, ``linear_backward``) call BLAS
through :func:`blas_matmul`: a vendor BLAS is faster than our kernel (``gemm`` measured 0.69-0.96x of the
faster BLAS on 256^3 .. 2048^3 fp32; bench/bench_matmul.py has a ``numba-gemm`` row per shape). Two BLAS
libraries are in reach: NumPy's OpenBLAS (``np.matmul``) and, when torch is already imported, torch's MKL
(``torch.matmul`` on zero-copy ``torch.from_numpy`` views). Measured against each other in one process,
interleaved, medians of 7-15, fp32 (2026-11-26, shared 2-core AMD EPYC at load average 4-8), OpenBLAS took
0.6-0.9x of MKL's time on every shape: 256^3, 1024^3, 2048^3, 4096^3, 4096x1024x4096 and the linear
layout ``x @ W.T``. So :func:`blas_for` picks OpenBLAS (the MKL path stays, tested, for shapes where a
future measurement says otherwise), and `dlcore.explain` prints the choice and the reason. Transposed
operands (``W.T``, ``b^T`` in the backward) are passed as views: BLAS reads them through its transpose
flag, no copy. ``linear`` adds the bias in place into the BLAS output instead of allocating a second
array (a test checks the peak allocation is one output).

Known, not acted on: on an oversubscribed machine a small product (<= 512^3) with two BLAS threads can
take 30-50 ms instead of < 1 ms (the second thread waits for a core), for OpenBLAS and MKL alike; one
BLAS thread avoids it (threadpoolctl, ~3 us to switch) but is 1.3-2.4x slower when the second core is free
(256^3: 0.3 ms with two threads, 0.4-0.75 ms with one), and switching OpenBLAS's thread count while another
Python thread is inside BLAS is not safe.

:func:`gemm` is the own kernel (BLIS's loop structure on the attention kernels' micro-kernel):

* B is packed one ``(KC, NC)`` panel at a time (KC = 16 KiB / (NR * itemsize): 256 with AVX2, 128 with
  AVX-512; NC = 2048) into NR-column micro-panels, each contiguous per k (NR = two vectors: 16 float32 / 8
  float64 columns with AVX2, 32 / 16 when Numba compiles for AVX-512), zero-padded past N; a row-major B
  is packed one row per parallel iteration (`_pack_b`), a transposed view such as ``W^T`` one column of B
  (a row of W) at a time (`_pack_bt`), so either is read front to back;
* the C panel is cut into ``_MC x _NB`` (96 x 256) tasks run in parallel (``prange`` over all tasks, so
  short and wide products are parallel too); in a task, each B micro-panel (16 KiB, in L1) meets the
  task's A rows (in L2) one 6-row micro-tile at a time through `attention._mm_set` / `_mm_acc`: a 6 x 16
  C tile held in 12 vector registers, one broadcast of A and two FMAs per row per k (LLVM IR; the loop
  vectoriser does not keep a C tile in registers by itself). The first k-panel stores, later ones add;
* tiles past row M or column N run on padded scratch rows of A and a scratch C tile (`_edge_tile`).
  Measured (2026-11-26, 2 threads, one process, against the faster of OpenBLAS and MKL): 0.69-0.96x of
  BLAS on 256^3 .. 2048^3 and 4096x1024x4096 (the previous dot-product kernel: 0.41-0.58x). Not packed:
  A (read in place through its row stride), which is what BLAS does next and what is left of the gap.

A (and B) may be transposed views: A^T stored row-major (a weight gradient's ``grad^T``) is read in place
through the micro-kernel's transposed-A form, and B through the packing's strides (``W^T``), so the products
of a linear layer's forward and backward need no copies. Where Numba compiles for AVX-512, `blas_for` sends
the large 2-D products inside autograd steps here (`OWN_GEMM_IN_STEP`): measured there, 1024^3 took 8.5 ms
against OpenBLAS's 10.2 and the LM training step's GEMMs ~25% less time than on torch's MKL.

Each C element's summation order depends only on the shapes, never on the thread count, so results are
bitwise reproducible across thread counts. FMAs (``llvm.fmuladd``), no fast-math flags: NaN and inf
propagate.

Floor: 2*M*N*K flops (compute-bound); ``gemm`` reads B once per panel for packing.
"""
import math
import sys
import threading

import numba
import numpy as np
from numba import njit, prange

from . import _blas_threads, _blocks
from .attention import _LANES, _MR, _NV, _VECTOR_BYTES, _mm_acc, _mm_acc_at, _mm_set, _mm_set_at

_MICRO_PANEL_BYTES = 16 << 10  # one B micro-panel (KC x NR): 16 KiB, in L1 -> KC = 256 (AVX2) or 128 (AVX-512)
_MC = 96  # rows of C per parallel task (a multiple of the micro-tile's _MR rows)
_NB = 256  # columns of C per parallel task (a multiple of the micro-panel width NR)
_NC = 2048  # columns of B per packed panel (KC x NC: 2 MiB of float32, in L3)


@njit(parallel=True, cache=True)
def _pack_b(b, k0, kc, j0, nc, nr, bp):
    """bp[(jr * kc + kk) * nr + x] = B[k0 + kk, j0 + jr * nr + x]: the panel's NR-column micro-panels, each
    contiguous per k (the micro-kernel reads one NR-wide row per k); columns past N are zero.

    For a row-major B: one row of B per parallel iteration, read front to back, so each thread streams a
    contiguous block of rows (the hardware prefetchers follow it). Walking one micro-panel at a time instead
    (kc rows of NR values, a page apart for N >= 1024) took 2.3x longer with B out of cache, as it is in a
    training step (4096 x 1024 float32, kc 128: 273-316 us against 116-134 us; 2026-11-27, Zen 5 VM)."""
    n = b.shape[1]
    zero = b.dtype.type(0.0)
    n_jr = (nc + nr - 1) // nr
    for kk in prange(kc):
        row = k0 + kk
        for jr in range(n_jr):
            base = (jr * kc + kk) * nr
            col = j0 + jr * nr
            if col + nr <= n:
                for x in range(nr):
                    bp[base + x] = b[row, col + x]
            else:
                for x in range(nr):
                    bp[base + x] = b[row, col + x] if col + x < n else zero


@njit(parallel=True, cache=True)
def _pack_bt(bt, k0, kc, j0, nc, nr, bp):
    """The same panel as `_pack_b` from ``bt`` = B^T stored row-major (B = W^T, a linear layer's weight read
    in place): one column of B (a row of W, contiguous in k) per step, scattered NR apart into its
    micro-panel (16 KiB, in L1)."""
    n = bt.shape[0]
    zero = bt.dtype.type(0.0)
    for jr in prange((nc + nr - 1) // nr):
        for x in range(nr):
            col = j0 + jr * nr + x
            base = jr * kc * nr + x
            if col < n:
                for kk in range(kc):
                    bp[base + kk * nr] = bt[col, k0 + kk]
            else:
                for kk in range(kc):
                    bp[base + kk * nr] = zero


@njit(cache=True)
def _edge_tile(a, a_trans, c, bp, bp_off, i, j, k0, kc, nr, first, a_s, c_s):
    """A tile that sticks out of C (past row M or column N): computed whole on padded scratch rows of A
    and a scratch C tile, then its valid part stored (first k-panel) or added. ``a`` holds A, or A^T
    (row-major) when ``a_trans``."""
    m, n = c.shape
    rows = min(_MR, m - i)
    cols = min(nr, n - j)
    zero = a.dtype.type(0.0)
    for r in range(_MR):
        for kk in range(kc):
            if r < rows:
                a_s[r, kk] = a[k0 + kk, i + r] if a_trans else a[i + r, k0 + kk]
            else:
                a_s[r, kk] = zero
    _mm_set(c_s, 0, nr, a_s, 0, a_s.shape[1], bp, bp_off, nr, kc)
    for r in range(rows):
        for x in range(cols):
            if first:
                c[i + r, j + x] = c_s[r, x]
            else:
                c[i + r, j + x] += c_s[r, x]


@njit(parallel=True, cache=True)
def _gemm_panel(a, a_trans, c, bp, k0, kc, j0, nc, nr, first):
    """C[:, j0:j0+nc] (+)= A[:, k0:k0+kc] @ packed panel, in (_MC rows x _NB columns) tasks over all threads.
    In a task each NR-wide micro-panel of B (KC x NR, in L1) meets the task's A rows (in L2) one
    _MR-row micro-tile at a time (`attention._mm_set` / `_mm_acc`: a 6 x 2-vector C tile in registers).
    ``a`` is A (M, K), or A^T (K, M) when ``a_trans`` (read through the micro-kernel's transposed-A form:
    a weight gradient ``grad^T @ x`` needs no copy of grad)."""
    m, n = c.shape
    lda = a.shape[1]  # row stride of A, or of A^T (= M) when a_trans
    n_ib = (m + _MC - 1) // _MC
    n_jb = (nc + _NB - 1) // _NB
    for t in prange(n_ib * n_jb):
        ib = t // n_jb  # consecutive tasks share an A row block
        jb = t - ib * n_jb
        i_hi = min(m, (ib + 1) * _MC)
        a_s = np.empty((_MR, kc), a.dtype)
        c_s = np.empty((_MR, nr), a.dtype)
        for jr in range(jb * _NB // nr, (min(nc, (jb + 1) * _NB) + nr - 1) // nr):
            j = j0 + jr * nr
            bp_off = jr * kc * nr
            for i in range(ib * _MC, i_hi, _MR):
                if i + _MR <= m and j + nr <= n:
                    if a_trans:
                        if first:
                            _mm_set_at(c, i * n + j, n, a, k0 * lda + i, lda, bp, bp_off, nr, kc)
                        else:
                            _mm_acc_at(c, i * n + j, n, a, k0 * lda + i, lda, bp, bp_off, nr, kc)
                    elif first:
                        _mm_set(c, i * n + j, n, a, i * lda + k0, lda, bp, bp_off, nr, kc)
                    else:
                        _mm_acc(c, i * n + j, n, a, i * lda + k0, lda, bp, bp_off, nr, kc)
                else:
                    _edge_tile(a, a_trans, c, bp, bp_off, i, j, k0, kc, nr, first, a_s, c_s)


def _gemm_kernel(a, a_trans, b, c):
    k = a.shape[0] if a_trans else a.shape[1]
    n = b.shape[1]
    nr = _NV * _LANES[a.dtype]
    kc_max = _MICRO_PANEL_BYTES // (nr * a.itemsize)
    nc_max = min(_NC, (n + nr - 1) // nr * nr)
    bp = np.empty(min(kc_max, k) * nc_max, a.dtype)
    b_trans = not b.flags.c_contiguous  # then b.T is (gemm makes one of the two C-contiguous)
    for j0 in range(0, n, _NC):
        nc = min(_NC, n - j0)
        for k0 in range(0, k, kc_max):
            kc = min(kc_max, k - k0)
            if b_trans:
                _pack_bt(b.T, k0, kc, j0, nc, nr, bp)
            else:
                _pack_b(b, k0, kc, j0, nc, nr, bp)
            _gemm_panel(a, a_trans, c, bp, k0, kc, j0, nc, nr, k0 == 0)


def gemm(a, b, out=None):
    """dlcore's own blocked, parallel GEMM ``a @ b`` for 2-D arrays (see the module docstring).

    Args:
        a: ``(M, K)`` float32/float64 array (made C-contiguous if it is not).
        b: ``(K, N)`` array of the same dtype (made C-contiguous if it is not).
        out: optional ``(M, N)`` C-contiguous array of that dtype to write into (overwritten); it must
            not overlap ``a`` or ``b``.

    Returns:
        The ``(M, N)`` product (``out`` when given); zeros when K == 0.

    Raises:
        TypeError: non-float or mismatched dtypes.
        ValueError: wrong ranks or shapes, a bad ``out``, or ``out`` overlapping an input.

    Example:
        >>> gemm(np.ones((2, 3), np.float32), np.ones((3, 5), np.float32))[0].tolist()
        [3.0, 3.0, 3.0, 3.0, 3.0]
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"gemm needs two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm needs (M, K) @ (K, N), got {a.shape} @ {b.shape}")
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = _blocks.empty((m, n), a.dtype)  # every element is written (zeros when K == 0)
    elif out.shape != (m, n) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {a.dtype} array of shape {(m, n)}, got "
                         f"{out.dtype}{out.shape}")
    elif np.may_share_memory(out, a) or np.may_share_memory(out, b):
        raise ValueError("gemm: out must not overlap a or b")
    if k == 0:
        out[...] = 0
    elif m and n:
        # A^T stored row-major (a weight gradient's grad^T) is read in place by the transposed-A micro-kernel;
        # B is read once per panel by the packing, so a transposed view (W^T) is read in place too
        a_trans = not a.flags.c_contiguous and a.T.flags.c_contiguous
        a_data = a.T if a_trans else np.ascontiguousarray(a)
        if not (b.flags.c_contiguous or b.T.flags.c_contiguous):
            b = np.ascontiguousarray(b)
        _gemm_kernel(a_data, a_trans, b, out)
    return out


class _StepDepth(threading.local):
    depth = 0  # > 0: inside an autograd op (products between Numba kernels), per Python thread


_between_kernels = _StepDepth()


class _BetweenNumbaKernels:
    """The context manager `between_numba_kernels` returns: a class, not a generator (autograd enters one
    per op; ~0.3 us instead of ~3 us), stateless (the depth is per thread), so one instance serves all."""

    __slots__ = ()

    def __enter__(self):
        _between_kernels.depth += 1
        return self

    def __exit__(self, *exc):
        _between_kernels.depth -= 1
        return False


_BETWEEN = _BetweenNumbaKernels()


def between_numba_kernels():
    """Mark the products made inside as part of a training step, between Numba kernels (autograd uses it).

    There a multi-threaded OpenBLAS call costs more than its own time: its workers spin ~0.1 s before they
    sleep, and on a 2-core machine they take a core from the Numba kernel that runs next. So big products
    (2^26+ flops) go to torch's MKL when torch is loaded (its OpenMP workers sleep within ~1 ms), else
    to row blocks over dlcore's own threads with OpenBLAS at one thread (`_blas_threads`). The
    transformer-LM step (bench/bench_train_step.py, 5 separate runs each, 2026-11-26): plain OpenBLAS
    1384-1482 ms, split OpenBLAS 1268-1409, MKL 955-1242. Outside (a lone ``dlcore.ops.matmul``) OpenBLAS
    stays: it is the faster GEMM by itself. Nestable; use as ``with between_numba_kernels(): ...``.
    """
    return _BETWEEN


def _in_step() -> bool:
    return _between_kernels.depth > 0


def _product_flops(shape_a, shape_b) -> int:
    return 2 * math.prod(shape_a[:-1]) * shape_a[-1] * shape_b[-1]


def blas_for(shape_a, shape_b):
    """Which BLAS :func:`blas_matmul` uses for ``a @ b`` of these shapes, and why.

    Args:
        shape_a, shape_b: the operand shapes, ``(..., M, K)`` and ``(..., K, N)``.

    Returns:
        ``(name, reason)``: name is ``'openblas'`` (``np.matmul``), ``'openblas-split'`` (row blocks over
        dlcore's threads, `_blas_threads`), ``'mkl'`` (``torch.matmul``) or ``'gemm'`` (dlcore's own
        :func:`gemm` on AVX-512 targets: inside autograd steps, `OWN_GEMM_IN_STEP`, and for large lone
        products, `LONE_GEMM_MIN`).
    """
    m, k, n = shape_a[-2], shape_a[-1], shape_b[-1]
    if (not _in_step() and OWN_GEMM_IN_STEP and _one_product(shape_a, shape_b)
            and m >= LONE_GEMM_MIN[0] and k >= LONE_GEMM_MIN[1] and n >= LONE_GEMM_MIN[2]):
        return "gemm", (f"dlcore's own gemm (512-bit micro-kernel, AVX-512 target): 1.2-1.9x OpenBLAS on lone "
                        f"products of {LONE_GEMM_MIN[0]}+ rows, {LONE_GEMM_MIN[1]}+ deep, {LONE_GEMM_MIN[2]}+ "
                        "columns (measured, LONE_GEMM_MIN)")
    if _mkl_wins(m, k, n) and "torch" in sys.modules:
        return "mkl", f"torch's MKL is faster than OpenBLAS for {m}x{k}x{n} (measured, bench/bench_matmul.py)"
    if _in_step() and _product_flops(shape_a, shape_b) >= _blas_threads.SPLIT_MIN_FLOPS:
        if OWN_GEMM_IN_STEP and len(shape_a) == 2 and len(shape_b) == 2 and m >= OWN_GEMM_MIN_ROWS:
            return "gemm", ("inside an autograd step on an AVX-512 target: dlcore's own gemm (512-bit micro-kernel, "
                            "Numba's threads, no spinning BLAS workers) took ~25% less GEMM time than torch's MKL "
                            "in the transformer LM step (OWN_GEMM_IN_STEP)")
        if "torch" in sys.modules:
            return "mkl", ("inside an autograd step, between Numba kernels: torch's MKL, whose workers sleep "
                           "at once instead of spinning on the core the next kernel needs (between_numba_kernels)")
        return "openblas-split", ("inside an autograd step: row blocks over dlcore's threads, OpenBLAS at one "
                                  "thread (no spinning workers; torch is not loaded for MKL)")
    return "openblas", ("NumPy's OpenBLAS: faster than torch's MKL on every measured fp32 shape "
                        "(256^3 .. 4096x1024x4096, interleaved, one process) and faster than the own Numba gemm")


# Inside autograd steps, 2-D products of SPLIT_MIN_FLOPS or more run on the own `gemm` where Numba compiles for
# AVX-512. Measured in the LM training step of bench/bench_train_step.py (2-core Zen 5 VM, 2026-11-27, five
# alternating processes each, 10 gapped steps, medians): GEMM time per step 316-376 ms with the own gemm
# (~247 GFLOP/s) against 419-598 ms with torch's MKL (~190); the step 521-662 ms against 585-830 ms. With AVX2
# the own gemm measured 0.69-0.96x of BLAS (module docstring), so MKL stays the in-step choice there.
OWN_GEMM_IN_STEP = _VECTOR_BYTES == 64
# ... and only for products of at least this many rows: with fewer, the own gemm's parallel tasks (96-row
# blocks) are too few and each k-panel launch costs more than its work. Measured back to back against MKL
# (x @ W^T, K x N in {256x1024, 1024x256, 4096x256, 4096x4096}; own speed / MKL's): M = 32 0.34-0.92,
# M = 128 0.74-1.10, M = 256 0.98-1.54, M = 512 1.44-1.71, M = 4096 1.92-2.35.
OWN_GEMM_MIN_ROWS = 256


# Lone products (outside autograd steps) of at least these (rows, depth, columns) run on the own gemm where Numba
# compiles for AVX-512. Measured against np.matmul (OpenBLAS, the faster BLAS here), each call after 0.15 s idle,
# medians of 5 x 3 (2-core Zen 5 VM, 2026-11-27), own time / OpenBLAS time as speed-ups, a @ b | x @ W^T:
# 1024^3 1.43 | 1.19, 1024x2048x1024 1.56 | 1.39, 1536^3 1.69-1.79 | 1.48-1.53, 2048^3 1.64 | 1.51,
# 2047x1023x2049 1.57 | 1.44, 2048x512x2048 1.55 | 1.43, 2048x4096x512 1.70 | 1.54, 4096x256x4096 1.93 | 1.64,
# 8192x1024x1024 1.73 | 1.74, 4096^3 1.63 | 1.57. Left on OpenBLAS: 1024x1024x512 (1.07 | 1.32) and
# 4096x64x4096 (0.96 | 2.03), mixed; fewer rows (0.15-0.9x at 32-512 rows, see OWN_GEMM_MIN_ROWS).
LONE_GEMM_MIN = (1024, 256, 1024)


def _one_product(shape_a, shape_b) -> bool:
    """Whether ``a @ b`` is one 2-D product: 2-D operands, or 3-D with a single batch entry each."""
    if len(shape_a) == 2 and len(shape_b) == 2:
        return True
    return len(shape_a) == 3 and len(shape_b) == 3 and shape_a[0] == 1 and shape_b[0] == 1


def _mkl_wins(m, k, n):
    """Shapes where torch's MKL measured faster than OpenBLAS here: none so far (see the module docstring)."""
    return False


def blas_matmul(a, b, out=None):
    """``a @ b`` (2-D or batched, any strides) on the BLAS :func:`blas_for` picks; writes ``out`` when given.

    Args:
        a: ``(..., M, K)`` float32/float64 array.
        b: ``(..., K, N)`` array of the same dtype (a transposed view is read without a copy).
        out: optional C-contiguous ``(..., M, N)`` array of that dtype.

    Returns:
        The product (``out`` when given).
    """
    name = blas_for(a.shape, b.shape)[0]
    if name == "gemm":
        if a.dtype == b.dtype and a.dtype in (np.float32, np.float64) and a.shape[-1] == b.shape[-2]:
            if a.ndim == 2:
                return gemm(a, b, out)
            if out is None:  # (1, M, K) @ (1, K, N)
                return gemm(a[0], b[0])[None]
            gemm(a[0], b[0], out[0])
            return out
        name = "mkl" if "torch" in sys.modules else "openblas"  # mixed dtypes: BLAS's promotion rules
    if name == "mkl":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        if out is None:
            out = _pooled_out(a, b)
            if out is None:
                return torch.matmul(ta, tb).numpy()
        torch.matmul(ta, tb, out=torch.from_numpy(out))
        return out
    threads = _split_threads(a, b) if name == "openblas-split" else 1
    if threads > 1:  # row/batch blocks over dlcore's threads, BLAS held at one thread (_blas_threads)
        if out is None:
            out = _blocks.empty(a.shape[:-1] + (b.shape[-1],), a.dtype)
        return _blas_threads.split_matmul(a, b, out, threads)
    return np.matmul(a, b, out=_pooled_out(a, b) if out is None else out)


def _pooled_out(a, b):
    """The product's output as a recycled block (`_blocks`: no page faults for a large one in a training loop),
    or None where NumPy's own allocation and error messages should stand (mixed dtypes, bad shapes)."""
    if a.dtype != b.dtype or a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        return None
    if a.shape[-2] * b.shape[-1] * a.itemsize < _blocks.MIN_BYTES and a.ndim == 2 and b.ndim == 2:
        return None  # a small 2-D product: NumPy's own allocation (no shape arithmetic on the hot path)
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        return None
    return _blocks.empty(batch + (a.shape[-2], b.shape[-1]), a.dtype)


def _split_threads(a, b) -> int:
    """How many single-threaded BLAS calls :func:`blas_matmul` cuts ``a @ b`` into (1: no split)."""
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64) or a.ndim < 2 or b.ndim < 2:
        return 1
    if not (b.ndim == 2 or (a.ndim == b.ndim and a.shape[:-2] == b.shape[:-2])):
        return 1  # broadcast batch dims: leave them to np.matmul
    if a.shape[-1] != b.shape[-2]:
        return 1  # np.matmul raises its own error
    flops = 2 * math.prod(a.shape[:-1]) * a.shape[-1] * b.shape[-1]
    if flops < _blas_threads.SPLIT_MIN_FLOPS:
        return 1
    return min(numba.get_num_threads(), max(1, math.prod(a.shape[:-1])))


def matmul(a, b):
    """Batched matrix product through BLAS (:func:`blas_matmul`).

    Args:
        a: ``(B, M, K)`` float32/float64 array.
        b: ``(B, K, N)`` array of the same dtype.

    Returns:
        ``(B, M, N)`` array ``a @ b``.

    Example:
        >>> matmul(np.ones((1, 2, 3)), np.ones((1, 3, 4))).shape
        (1, 2, 4)
    """
    return blas_matmul(a, b)


def matmul_backward(grad, a, b, needs=(True, True)):
    """Gradients of :func:`matmul` through BLAS.

    Args:
        grad: ``(B, M, N)`` upstream gradient.
        a, b: the forward inputs, ``(B, M, K)`` and ``(B, K, N)``.
        needs: ``(need_a, need_b)``; a gradient not needed is not computed and comes back as None.

    Returns:
        ``(grad_a, grad_b)``: ``grad @ b^T`` of shape ``(B, M, K)`` and ``a^T @ grad`` of shape ``(B, K, N)``.

    Example:
        >>> ga, gb = matmul_backward(np.ones((1, 2, 4)), np.ones((1, 2, 3)), np.ones((1, 3, 4)))
        >>> ga.shape, gb.shape
        ((1, 2, 3), (1, 3, 4))
    """
    return (blas_matmul(grad, b.transpose(0, 2, 1)) if needs[0] else None,
            blas_matmul(a.transpose(0, 2, 1), grad) if needs[1] else None)


def linear(x, weight, bias):
    """Affine map ``x @ weight^T + bias`` through BLAS, the bias added in place into the product.

    Args:
        x: ``(N, K)`` float32/float64 array.
        weight: ``(O, K)`` array of the same dtype.
        bias: ``(O,)`` array or None.

    Returns:
        ``(N, O)`` array.

    Example:
        >>> linear(np.ones((2, 3)), np.ones((4, 3)), np.arange(4.0)).tolist()[0]
        [3.0, 4.0, 5.0, 6.0]
    """
    y = blas_matmul(x, weight.T)  # weight.T is a view: BLAS reads it transposed, no copy
    if bias is not None:
        np.add(y, bias, out=y)  # in place: one (N, O) allocation in all
    return y


def linear_backward(grad, x, weight, has_bias, need_input=True):
    """Gradients of :func:`linear` through BLAS.

    Args:
        grad: ``(N, O)`` upstream gradient.
        x: ``(N, K)`` forward input.
        weight: ``(O, K)`` forward weight.
        has_bias: whether the forward had a bias.
        need_input: False when no gradient w.r.t. x is wanted (a first layer): grad_x is then None, one GEMM fewer.

    Returns:
        ``(grad_x, grad_weight, grad_bias_or_None)`` of shapes ``(N, K)``, ``(O, K)``, ``(O,)``.

    Example:
        >>> gx, gw, gb = linear_backward(np.ones((2, 4)), np.ones((2, 3)), np.ones((4, 3)), True)
        >>> gx.shape, gw.shape, gb.tolist()
        ((2, 3), (4, 3), [2.0, 2.0, 2.0, 2.0])
    """
    grad_bias = grad.sum(axis=0) if has_bias else None
    return (blas_matmul(grad, weight) if need_input else None), blas_matmul(grad.T, x), grad_bias


# What `dlcore.explain` adds for ops this module serves (the dispatch reads this table).
def _explain_blas(op):
    def explain(named):
        a = named.get("input")
        b = named.get("other") if op == "matmul" else named.get("weight")
        if a is None or b is None or a.ndim == 0 or b.ndim == 0:
            return f"{op} runs on BLAS (OpenBLAS via np.matmul unless blas_for picks torch's MKL)"
        shape_b = tuple(b.shape) if op == "matmul" else tuple(b.shape)[::-1]
        shape_a = (1,) + tuple(a.shape) if a.ndim == 1 else tuple(a.shape)
        shape_b = shape_b + (1,) if len(shape_b) == 1 else shape_b
        name, why = blas_for(shape_a, shape_b)
        tail = ", bias added in place into its output" if op == "linear" else ""
        return f"BLAS: {name} ({why}){tail}"
    return explain


# What `dlcore.explain` adds for ops this module serves (the dispatch reads this table; a callable gets the
# named arrays of the call).
EXPLAIN = {"matmul": _explain_blas("matmul"), "linear": _explain_blas("linear")}

"""Batched matmul and linear for the Numba backend, plus dlcore's own blocked GEMM kernel (:func:`gemm`).

The contract functions (``matmul``, ``matmul_backward``, ``linear``, ``linear_backward``) call BLAS
through :func:`blas_matmul`: a vendor BLAS is faster than our kernel (``gemm`` measured 0.45-0.6x of the
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

:func:`gemm` is the own kernel that fused epilogues (bias, activation) will build on:

* B is packed, one ``(KC, NC)`` panel at a time, into a transposed buffer ``bt`` so that every C element
  is a dot product of two unit-stride rows (A's row, bt's row);
* the C panel is cut into ``_MB x _JB`` tiles, processed in parallel (``prange`` over all tiles, so short
  and wide products are parallel too); in a tile, a 2x4 register block of C accumulates 2 rows of A
  against 4 rows of bt over the whole k-panel: 8 dot products that LLVM vectorizes along k into 8 SIMD
  accumulators (``fastmath`` ``reassoc`` + ``contract`` only: FMAs and a reordered sum, never
  ``nnan``/``ninf``, so NaN and inf propagate);
* tile edges (M % 2, N % 4) fall back to single dot products. A k-panel after the first accumulates
  into C.

Each C element's summation order depends only on the shapes, never on the thread count, so results are
bitwise reproducible across thread counts.

Floor: 2*M*N*K flops (compute-bound); ``gemm`` reads B once per panel for packing.
"""
import contextlib
import math
import sys
import threading

import numba
import numpy as np
from numba import njit, prange

from . import _blas_threads, _blocks

_FASTMATH = {"reassoc", "contract"}  # vectorized k-sums with FMAs; no nnan/ninf (RELIABILITY 20)
_MB = 48  # rows of C per parallel tile (a multiple of the 2-row register block)
_JB = 128  # columns of C per parallel tile (a multiple of the 4-column register block)
_NC = 512  # columns of B per packed panel
_PANEL_BYTES = 2048  # one k-panel row of A or bt: KC = 2048 / itemsize (512 float32, 256 float64)


@njit(fastmath=_FASTMATH, cache=True)
def _dot_kernel(x, y, zero):
    """Dot product of two equal-length unit-stride rows (vectorized along k)."""
    s = zero
    for k in range(x.shape[0]):
        s += x[k] * y[k]
    return s


@njit(fastmath=_FASTMATH, cache=True)
def _gemm_tile_kernel(a, bt, c, i_lo, i_hi, j_lo, j_hi, j0, k0, kc, first, zero):
    """C[i_lo:i_hi, j0+j_lo:j0+j_hi] (+)= A[rows, k0:k0+kc] @ bt[j_lo:j_hi, :kc]^T."""
    i_end = i_lo + (i_hi - i_lo) // 2 * 2
    j_end = j_lo + (j_hi - j_lo) // 4 * 4
    for j in range(j_lo, j_end, 4):
        # 4 rows of the packed panel (4 * kc elements) stay in L1 while A's rows stream past
        b0 = bt[j, :kc]
        b1 = bt[j + 1, :kc]
        b2 = bt[j + 2, :kc]
        b3 = bt[j + 3, :kc]
        for i in range(i_lo, i_end, 2):
            a0 = a[i, k0:k0 + kc]
            a1 = a[i + 1, k0:k0 + kc]
            # 2x4 register block: 8 dot products sharing 6 loads per k
            c00 = c01 = c02 = c03 = zero
            c10 = c11 = c12 = c13 = zero
            for k in range(kc):
                x0 = a0[k]
                x1 = a1[k]
                y0 = b0[k]
                y1 = b1[k]
                y2 = b2[k]
                y3 = b3[k]
                c00 += x0 * y0
                c01 += x0 * y1
                c02 += x0 * y2
                c03 += x0 * y3
                c10 += x1 * y0
                c11 += x1 * y1
                c12 += x1 * y2
                c13 += x1 * y3
            jc = j0 + j
            if first:
                c[i, jc] = c00
                c[i, jc + 1] = c01
                c[i, jc + 2] = c02
                c[i, jc + 3] = c03
                c[i + 1, jc] = c10
                c[i + 1, jc + 1] = c11
                c[i + 1, jc + 2] = c12
                c[i + 1, jc + 3] = c13
            else:
                c[i, jc] += c00
                c[i, jc + 1] += c01
                c[i, jc + 2] += c02
                c[i, jc + 3] += c03
                c[i + 1, jc] += c10
                c[i + 1, jc + 1] += c11
                c[i + 1, jc + 2] += c12
                c[i + 1, jc + 3] += c13
    # edges: the last odd row across the tile, and the last N % 4 columns of the other rows
    for i in range(i_lo, i_hi):
        for j in range(j_end if i < i_end else j_lo, j_hi):
            s = _dot_kernel(a[i, k0:k0 + kc], bt[j, :kc], zero)
            if first:
                c[i, j0 + j] = s
            else:
                c[i, j0 + j] += s


@njit(parallel=True, fastmath=_FASTMATH, cache=True)
def _gemm_kernel(a, b, c, kc_max):
    m, k = a.shape
    n = b.shape[1]
    zero = np.zeros(1, a.dtype)[0]
    bt = np.empty((min(_NC, n), min(kc_max, k)), a.dtype)
    n_ib = (m + _MB - 1) // _MB
    for j0 in range(0, n, _NC):
        nc = min(_NC, n - j0)
        n_jb = (nc + _JB - 1) // _JB
        for k0 in range(0, k, kc_max):
            kc = min(kc_max, k - k0)
            # pack B[k0:k0+kc, j0:j0+nc] transposed: bt[j, kk] = B[k0 + kk, j0 + j]
            for j in prange(nc):
                for kk in range(kc):
                    bt[j, kk] = b[k0 + kk, j0 + j]
            # consecutive tiles share an A row block, so a thread's A rows stay in its cache
            for t in prange(n_ib * n_jb):
                ib = t // n_jb
                jb = t - ib * n_jb
                _gemm_tile_kernel(a, bt, c, ib * _MB, min(m, (ib + 1) * _MB), jb * _JB,
                                  min(nc, (jb + 1) * _JB), j0, k0, kc, k0 == 0, zero)


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
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"gemm needs two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm needs (M, K) @ (K, N), got {a.shape} @ {b.shape}")
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = np.empty((m, n), a.dtype)
    elif out.shape != (m, n) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {a.dtype} array of shape {(m, n)}, got "
                         f"{out.dtype}{out.shape}")
    elif np.may_share_memory(out, a) or np.may_share_memory(out, b):
        raise ValueError("gemm: out must not overlap a or b")
    if k == 0:
        out[...] = 0
    elif m and n:
        _gemm_kernel(a, b, out, _PANEL_BYTES // a.itemsize)
    return out


_between_kernels = threading.local()  # .depth > 0: inside an autograd op (products between Numba kernels)


@contextlib.contextmanager
def between_numba_kernels():
    """Mark the products made inside as part of a training step, between Numba kernels (autograd uses it).

    There a multi-threaded OpenBLAS call costs more than its own time: its workers spin ~0.1 s before they
    sleep, and on a 2-core machine they take a core from the Numba kernel that runs next. So big products
    (2^26+ flops) go to torch's MKL when torch is loaded (its OpenMP workers sleep within ~1 ms), else
    to row blocks over dlcore's own threads with OpenBLAS at one thread (`_blas_threads`). The
    transformer-LM step (bench/bench_train_step.py, 5 separate runs each, 2026-11-26): plain OpenBLAS
    1384-1482 ms, split OpenBLAS 1268-1409, MKL 955-1242. Outside (a lone ``dlcore.ops.matmul``) OpenBLAS
    stays: it is the faster GEMM by itself.
    """
    _between_kernels.depth = getattr(_between_kernels, "depth", 0) + 1
    try:
        yield
    finally:
        _between_kernels.depth -= 1


def _in_step() -> bool:
    return getattr(_between_kernels, "depth", 0) > 0


def _product_flops(shape_a, shape_b) -> int:
    return 2 * math.prod(shape_a[:-1]) * shape_a[-1] * shape_b[-1]


def blas_for(shape_a, shape_b):
    """Which BLAS :func:`blas_matmul` uses for ``a @ b`` of these shapes, and why.

    Args:
        shape_a, shape_b: the operand shapes, ``(..., M, K)`` and ``(..., K, N)``.

    Returns:
        ``(name, reason)``: name is ``'openblas'`` (``np.matmul``), ``'openblas-split'`` (row blocks over
        dlcore's threads, `_blas_threads`) or ``'mkl'`` (``torch.matmul``).
    """
    m, k, n = shape_a[-2], shape_a[-1], shape_b[-1]
    if _mkl_wins(m, k, n) and "torch" in sys.modules:
        return "mkl", f"torch's MKL is faster than OpenBLAS for {m}x{k}x{n} (measured, bench/bench_matmul.py)"
    if _in_step() and _product_flops(shape_a, shape_b) >= _blas_threads.SPLIT_MIN_FLOPS:
        if "torch" in sys.modules:
            return "mkl", ("inside an autograd step, between Numba kernels: torch's MKL, whose workers sleep "
                           "at once instead of spinning on the core the next kernel needs (between_numba_kernels)")
        return "openblas-split", ("inside an autograd step: row blocks over dlcore's threads, OpenBLAS at one "
                                  "thread (no spinning workers; torch is not loaded for MKL)")
    return "openblas", ("NumPy's OpenBLAS: faster than torch's MKL on every measured fp32 shape "
                        "(256^3 .. 4096x1024x4096, interleaved, one process) and faster than the own Numba gemm")


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
    if name == "mkl":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        if out is None:
            return torch.matmul(ta, tb).numpy()
        torch.matmul(ta, tb, out=torch.from_numpy(out))
        return out
    threads = _split_threads(a, b) if name == "openblas-split" else 1
    if threads > 1:  # row/batch blocks over dlcore's threads, BLAS held at one thread (_blas_threads)
        if out is None:
            out = _blocks.empty(a.shape[:-1] + (b.shape[-1],), a.dtype)
        return _blas_threads.split_matmul(a, b, out, threads)
    return np.matmul(a, b, out=out)


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


def matmul_backward(grad, a, b):
    """Gradients of :func:`matmul` through BLAS.

    Args:
        grad: ``(B, M, N)`` upstream gradient.
        a, b: the forward inputs, ``(B, M, K)`` and ``(B, K, N)``.

    Returns:
        ``(grad_a, grad_b)``: ``grad @ b^T`` of shape ``(B, M, K)`` and ``a^T @ grad`` of shape ``(B, K, N)``.

    Example:
        >>> ga, gb = matmul_backward(np.ones((1, 2, 4)), np.ones((1, 2, 3)), np.ones((1, 3, 4)))
        >>> ga.shape, gb.shape
        ((1, 2, 3), (1, 3, 4))
    """
    return blas_matmul(grad, b.transpose(0, 2, 1)), blas_matmul(a.transpose(0, 2, 1), grad)


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


def linear_backward(grad, x, weight, has_bias):
    """Gradients of :func:`linear` through BLAS.

    Args:
        grad: ``(N, O)`` upstream gradient.
        x: ``(N, K)`` forward input.
        weight: ``(O, K)`` forward weight.
        has_bias: whether the forward had a bias.

    Returns:
        ``(grad_x, grad_weight, grad_bias_or_None)`` of shapes ``(N, K)``, ``(O, K)``, ``(O,)``.

    Example:
        >>> gx, gw, gb = linear_backward(np.ones((2, 4)), np.ones((2, 3)), np.ones((4, 3)), True)
        >>> gx.shape, gw.shape, gb.tolist()
        ((2, 3), (4, 3), [2.0, 2.0, 2.0, 2.0])
    """
    grad_bias = grad.sum(axis=0) if has_bias else None
    return blas_matmul(grad, weight), blas_matmul(grad.T, x), grad_bias


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
        return f"BLAS: {name} ({why}){tail}; the own Numba `gemm` reaches ~0.4-0.6x of it"
    return explain


# What `dlcore.explain` adds for ops this module serves (the dispatch reads this table; a callable gets the
# named arrays of the call).
EXPLAIN = {"matmul": _explain_blas("matmul"), "linear": _explain_blas("linear")}

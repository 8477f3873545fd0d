"""Batched matmul and linear for the Numba backend, plus dlcore's own blocked GEMM kernel (:func:`gemm`).

The contract functions (``matmul``, ``matmul_backward``, ``linear``, ``linear_backward``) call BLAS
through ``np.matmul``: the vendor BLAS is faster than our kernel (one 1024^3 float32
GEMM, one thread, measured in CPU time on a shared 2-core AMD EPYC: ``gemm`` ~45 GFLOP/s, NumPy's
OpenBLAS ~75 GFLOP/s). ``linear`` adds the bias in place into the BLAS output instead of allocating a
second array.

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
import numpy as np
from numba import njit, prange

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


def matmul(a, b):
    """Batched matrix product through BLAS (``np.matmul``).

    Args:
        a: ``(B, M, K)`` float32/float64 array.
        b: ``(B, K, N)`` array of the same dtype.

    Returns:
        ``(B, M, N)`` array ``a @ b``.

    Example:
        >>> matmul(np.ones((1, 2, 3)), np.ones((1, 3, 4))).shape
        (1, 2, 4)
    """
    return np.matmul(a, b)


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
    return np.matmul(grad, b.transpose(0, 2, 1)), np.matmul(a.transpose(0, 2, 1), grad)


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
    y = np.matmul(x, weight.T)
    if bias is not None:
        np.add(y, bias, out=y)
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
    return np.matmul(grad, weight), np.matmul(grad.T, x), grad_bias


# What `dlcore.explain` adds for ops this module serves (the dispatch reads this table).
EXPLAIN = {
    "matmul": "calls BLAS through np.matmul: the vendor BLAS beats the own Numba GEMM (`gemm`, ~60% of it)",
    "linear": "calls BLAS through np.matmul and adds the bias in place into its output",
}

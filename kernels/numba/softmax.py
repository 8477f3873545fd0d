"""Numba CPU softmax / log_softmax over the rows of a 2-D array, one row per parallel iteration.

Floor: forward reads x once and writes y once (2 x itemsize bytes per element); backward reads y and
grad and writes grad_x (3 x itemsize). The extra passes over a row (max, exp+sum, scale) hit cache, not
DRAM, while a row fits in L2.

Rows run in parallel (``prange``); each row is reduced in a fixed order, so the output does not depend on
the thread count. ``exp`` runs in the input dtype (float32 ``expf`` is about twice as fast as ``exp`` and
accurate to an ulp); sums and the final scaling run in float64 and are cast on store.
Only the pure reductions (``_sum_f64``, ``_dot_f64``) use fastmath, and only ``reassoc``/``contract``
(vectorised partial sums); no ``nnan``/``ninf`` anywhere, so -inf masking and NaN propagation hold.

Non-finite rows follow torch 2.13: a row holding a NaN or +inf, or only -inf, is all NaN in both outputs
and in both backwards (``x - max`` or the row sum is NaN). A -inf among finite logits gets probability
exactly 0 / log-probability -inf and a finite gradient. The max pass skips NaN on purpose: the NaN then
reaches the row sum and poisons the whole row, which is the torch result.
"""
import math

import numba
import numpy as np

# Reduction-only fast-math: reassociation lets LLVM keep several partial sums in vector lanes.
_FM_SUM = {"reassoc", "contract", "nsz", "arcp"}


@numba.njit(cache=True, fastmath=_FM_SUM)
def _sum_f64(a):
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i])
    return s


@numba.njit(cache=True, fastmath=_FM_SUM)
def _dot_f64(a, b):
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


@numba.njit(cache=True)
def _row_max(row):
    # In the row's dtype. A NaN compares false: if it is row[0] the max stays NaN, otherwise it is skipped
    # here; either way it reaches the row sum and poisons the whole row (see module docstring).
    m = row[0]
    for i in range(1, row.shape[0]):
        m = max(m, row[i])  # numba's max(m, NaN) keeps m, as a `>` compare would
    return m


@numba.njit(parallel=True, cache=True)
def _softmax_fwd_kernel(x, y):
    # x: (R, C) logits, y: (R, C) output, written twice (exp, then scaled in place).
    R, C = x.shape
    for r in numba.prange(R):
        xr = x[r]
        yr = y[r]
        m = _row_max(xr)  # subtract the max for numerical stability
        s = 0.0  # accumulate in float64
        for c in range(C):
            e = math.exp(xr[c] - m)  # exp in x's dtype: expf for float32, half the cost of exp
            yr[c] = e
            s += np.float64(e)
        inv = 1.0 / s
        for c in range(C):
            yr[c] = np.float64(yr[c]) * inv


@numba.njit(parallel=True, cache=True)
def _log_softmax_fwd_kernel(x, y):
    # x: (R, C) logits, y: (R, C) log-probabilities.
    R, C = x.shape
    for r in numba.prange(R):
        xr = x[r]
        yr = y[r]
        m = _row_max(xr)
        s = 0.0
        for c in range(C):
            s += np.float64(math.exp(xr[c] - m))
        lse = math.log(s)
        m64 = np.float64(m)
        for c in range(C):
            # (x - max) - log(sum) in float64: never x - (max + lse), which loses digits at |x| ~ 1e4.
            yr[c] = (np.float64(xr[c]) - m64) - lse


@numba.njit(parallel=True, cache=True)
def _softmax_bwd_kernel(y, g, gx):
    # y: (R, C) forward output, g: upstream gradient, gx: output = y * (g - sum(g * y)).
    R, C = y.shape
    for r in numba.prange(R):
        yr = y[r]
        gr = g[r]
        out = gx[r]
        dot = _dot_f64(gr, yr)
        for c in range(C):
            out[c] = np.float64(yr[c]) * (np.float64(gr[c]) - dot)


@numba.njit(parallel=True, cache=True)
def _log_softmax_bwd_kernel(y, g, gx):
    # y: (R, C) log-probabilities, g: upstream gradient, gx: output = g - exp(y) * sum(g).
    R, C = y.shape
    for r in numba.prange(R):
        yr = y[r]
        gr = g[r]
        out = gx[r]
        s = _sum_f64(gr)
        for c in range(C):
            out[c] = np.float64(gr[c]) - np.float64(math.exp(yr[c])) * s


def softmax_forward(x):
    """Softmax of each row.

    Args:
        x: ``(R, C)`` C-contiguous float32/float64 array.

    Returns:
        ``(R, C)`` array of the same dtype; each finite row sums to 1.
    """
    y = np.empty_like(x)
    if x.size:
        _softmax_fwd_kernel(x, y)
    return y


def softmax_backward(y, grad):
    """Gradient of softmax: ``y * (grad - sum(grad * y))`` per row.

    Args:
        y: ``(R, C)`` forward output.
        grad: ``(R, C)`` upstream gradient, same dtype.

    Returns:
        ``(R, C)`` gradient w.r.t. the logits.
    """
    gx = np.empty_like(y)
    if y.size:
        _softmax_bwd_kernel(y, grad, gx)
    return gx


def log_softmax_forward(x):
    """Log-softmax of each row: ``(x - max) - log(sum(exp(x - max)))``.

    Args:
        x: ``(R, C)`` C-contiguous float32/float64 array.

    Returns:
        ``(R, C)`` array of the same dtype, every finite entry <= 0.
    """
    y = np.empty_like(x)
    if x.size:
        _log_softmax_fwd_kernel(x, y)
    return y


def log_softmax_backward(y, grad):
    """Gradient of log_softmax: ``grad - exp(y) * sum(grad)`` per row.

    Args:
        y: ``(R, C)`` forward output (log-probabilities).
        grad: ``(R, C)`` upstream gradient, same dtype.

    Returns:
        ``(R, C)`` gradient w.r.t. the logits.
    """
    gx = np.empty_like(y)
    if y.size:
        _log_softmax_bwd_kernel(y, grad, gx)
    return gx

"""Numba CPU softmax / log_softmax over the rows of a 2-D array, one row per parallel iteration.

Floor: forward reads x once and writes y once (2 x itemsize bytes per element); backward reads y and
grad and writes grad_x (3 x itemsize). The extra passes over a row (max, exp+store, sum, scale) hit cache,
not DRAM, while a row fits in L2.

Every pass is a vectorised loop (AVX2 on this code's test machine): the max uses IEEE ``maxNum``
(`_vmath.maxnum`, a reduction LLVM vectorises without fast-math), ``exp`` is `_vmath.exp_neg` / `_vmath.exp`
(branch-free polynomial, <= 1 ulp, in the input dtype), and the float64 row sums run in separate
``reassoc`` helpers. Forward: max pass (reads x from DRAM), ``y = exp(x - max)`` (x from cache, writes y),
float64 sum of y, then y scaled in place by ``1 / sum`` rounded to x's dtype. log_softmax uses y as the
scratch for the exps, then overwrites it with ``(x - max) - log(sum)``. Backward: one float64 reduction
(``sum(g * y)`` or ``sum(g)``) and one elementwise pass per row (softmax: in float64, cast on store;
log_softmax: ``g - exp(y) * sum`` in y's dtype). Elementwise float32 steps cost at most 1-2 ulp each
(noted beside them); every sum over a row is float64.

Rows run in parallel (``prange``); each row is reduced in a fixed order, so the output does not depend on
the thread count. Only the pure reductions (``_sum_f64``, ``_dot_f64``) use fastmath, and only
``reassoc``/``contract`` (vectorised partial sums); no ``nnan``/``ninf`` anywhere, so -inf masking and NaN
propagation hold.

Non-finite rows follow torch 2.13: a row holding a NaN or +inf, or only -inf, is all NaN in both outputs
and in both backwards (``x - max`` or the row sum is NaN). A -inf among finite logits gets probability
exactly 0 (``_vmath.exp(-inf) == 0``) / log-probability -inf and a finite gradient. The max pass skips NaN
on purpose (maxNum): the NaN then reaches the row sum and poisons the whole row, which is the torch result.
"""
import math

import numba
import numpy as np

from . import _blocks
from . import _vmath as vm

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
    # In the row's dtype, vectorised. maxNum ignores a NaN (the max of the other entries is returned); the
    # NaN still reaches the row sum and poisons the whole row (see module docstring).
    m = row[0]
    for i in range(1, row.shape[0]):
        m = vm.maxnum(m, row[i])
    return m


@numba.njit(cache=True)
def _exp_shifted(row, m, out):
    # out = exp(row - m) in the row's dtype. m is the row's maxNum, so x - m <= 0 (or NaN): exp_neg, the
    # exp for non-positive arguments (no overflow branch; exp(-inf) is exactly 0; NaN stays NaN).
    for i in range(row.shape[0]):
        out[i] = vm.exp_neg(row[i] - m)


@numba.njit(parallel=True, cache=True)
def _softmax_fwd_kernel(x, y):
    # x: (R, C) logits, y: (R, C) output, written twice (exp, then scaled in place while still in cache).
    R, C = x.shape
    for r in numba.prange(R):
        xr = x[r]
        yr = y[r]
        m = _row_max(xr)  # subtract the max for numerical stability
        _exp_shifted(xr, m, yr)
        inv = vm.like(m, 1.0 / _sum_f64(yr))  # accumulate in float64; 1 / sum rounded to x's dtype
        for c in range(C):
            yr[c] = yr[c] * inv  # two roundings in float32: <= 1 ulp


@numba.njit(parallel=True, cache=True)
def _log_softmax_fwd_kernel(x, y):
    # x: (R, C) logits, y: (R, C) log-probabilities (first used as scratch for exp(x - max)).
    R, C = x.shape
    for r in numba.prange(R):
        xr = x[r]
        yr = y[r]
        m = _row_max(xr)
        _exp_shifted(xr, m, yr)
        lse = vm.like(m, math.log(_sum_f64(yr)))
        for c in range(C):
            # (x - max) - log(sum), never x - (max + lse), which loses digits at |x| ~ 1e4. Both terms are
            # <= 0, so nothing cancels: two roundings in x's dtype, <= 1 ulp (plus lse's own rounding).
            yr[c] = (xr[c] - m) - lse


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
        s = vm.like(yr[0], _sum_f64(gr))  # float64 sum, rounded to y's dtype
        for c in range(C):
            out[c] = gr[c] - vm.exp(yr[c]) * s  # in y's dtype; exp <= 1 ulp


def softmax_forward(x):
    """Softmax of each row.

    Args:
        x: ``(R, C)`` C-contiguous float32/float64 array.

    Returns:
        ``(R, C)`` array of the same dtype; each finite row sums to 1.
    """
    y = _blocks.empty_like(x)
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
    gx = _blocks.empty_like(y)
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
    y = _blocks.empty_like(x)
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
    gx = _blocks.empty_like(y)
    if y.size:
        _log_softmax_bwd_kernel(y, grad, gx)
    return gx

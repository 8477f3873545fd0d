"""Numba CPU layer norm over the rows of a 2-D array (the launcher flattens normalized_shape into D).

Floor: forward reads x and writes y (2 x itemsize bytes per element, plus weight/bias once per row from
cache); backward reads grad and x and writes grad_x (3 x itemsize). Each row is visited a few times
(mean, variance, normalise; refine-mean, sums, write), all from cache while a row fits in L2.

Forward: one row per parallel iteration; two-pass mean and biased variance in float64 (exact enough at
mean 1e4 with small noise, where a float32 running sum is not), ``rstd = 1 / sqrt(var + eps)``, then
``y = (x - mean) * rstd * weight + bias`` in float64, cast on store. mean and rstd are stored in x's dtype.

Backward: rows are split into a fixed number of chunks (a function of the shape only, never of the thread
count); each chunk writes its own float64 partial sums of grad*xhat and grad, which are added in chunk order
afterwards, so grad_weight/grad_bias are bitwise reproducible. Before recomputing xhat the stored mean is
refined by one pass, ``mean += mean(x - mean)``: a float32 mean of a row with |mean| >> std is off by up to
half an ulp, which rstd would otherwise amplify into grad_x.

Every pass is a vectorised loop. Only the row sums use fastmath (``reassoc``/``contract``, vectorised
partial sums; in the backward the first pass also carries the elementwise column partials); no
``nnan``/``ninf``. The compiled summation order depends on the row length only, never on the thread count.
"""
import math

import numba
import numpy as np

from . import _blocks

_FM_SUM = {"reassoc", "contract", "nsz", "arcp"}
_MAX_CHUNKS = 64  # row chunks in the backward: enough parallel work, few partial rows to add up
_MAX_PARTIAL = 1 << 21  # cap on chunks * D float64 partials per array (16 MiB)


@numba.njit(cache=True, fastmath=_FM_SUM)
def _sum_dev_f64(a, mu):
    # sum(a - mu) in float64
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i]) - mu
    return s


@numba.njit(cache=True, fastmath=_FM_SUM)
def _sum_sq_dev_f64(a, mu):
    # sum((a - mu)**2) in float64: the second pass of a two-pass variance
    s = 0.0
    for i in range(a.shape[0]):
        d = np.float64(a[i]) - mu
        s += d * d
    return s


@numba.njit(parallel=True, cache=True)
def _layer_norm_fwd_kernel(x, w, b, eps, y, mean, rstd):
    # x, y: (R, D); w, b: (D,) float64 (ones / zeros when absent: exact identities); mean, rstd: (R,) outputs.
    R, D = x.shape
    for r in numba.prange(R):
        xr = x[r]
        yr = y[r]
        mu = _sum_dev_f64(xr, 0.0) / D
        var = _sum_sq_dev_f64(xr, mu) / D  # biased variance, as torch
        rs = 1.0 / math.sqrt(var + eps)
        mean[r] = mu
        rstd[r] = rs
        for j in range(D):
            yr[j] = (np.float64(xr[j]) - mu) * rs * np.float64(w[j]) + np.float64(b[j])


@numba.njit(cache=True, fastmath=_FM_SUM)
def _bwd_row_sums(xr, gr, w, mu, rs, dw, db):
    # One vectorised pass over a row: returns (sum(a), sum(a * xhat)) with a = g * w, xhat = (x - mu) * rs,
    # and adds the row's g * xhat and g into the chunk's column partials dw, db (elementwise, in order).
    # reassoc lets LLVM keep the two row sums in vector lanes; it only reorders sums and products, and the
    # compiled order depends on nothing but the row length (never on the thread count).
    sa = 0.0
    saxh = 0.0
    for j in range(xr.shape[0]):
        xh = (np.float64(xr[j]) - mu) * rs
        gj = np.float64(gr[j])
        a = gj * np.float64(w[j])
        sa += a
        saxh += a * xh
        dw[j] += gj * xh
        db[j] += gj
    return sa, saxh


@numba.njit(parallel=True, cache=True)
def _layer_norm_bwd_kernel(g, x, w, mean, rstd, gx, dw_part, db_part):
    # g, x, gx: (R, D); w: (D,) float64 (ones when absent); mean, rstd: (R,) from the forward;
    # dw_part, db_part: (n_chunks, D) float64 zeros, one row of partial column sums per chunk.
    R, D = x.shape
    n_chunks = dw_part.shape[0]
    rows = (R + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        dw = dw_part[c]
        db = db_part[c]
        for r in range(c * rows, min(R, (c + 1) * rows)):
            xr = x[r]
            gr = g[r]
            out = gx[r]
            rs = np.float64(rstd[r])
            mu = np.float64(mean[r])
            mu += _sum_dev_f64(xr, mu) / D  # refine the stored mean (see module docstring)
            # pass 1: row means of a = g * w and a * xhat; column partials of g * xhat and g
            sa, saxh = _bwd_row_sums(xr, gr, w, mu, rs, dw, db)
            # pass 2: grad_x = rstd * (a - mean(a) - xhat * mean(a * xhat)) = c1 * a + c2 * (x - mu) + c0,
            # recomputing x - mu in float64 (exact for float32 x)
            c1 = rs
            c2 = -(rs * rs) * (saxh / D)
            c0 = -rs * (sa / D)
            for j in range(D):
                a = np.float64(gr[j]) * np.float64(w[j])
                out[j] = c1 * a + (c2 * (np.float64(xr[j]) - mu) + c0)


def _n_chunks(R, D):
    return max(1, min(R, _MAX_CHUNKS, _MAX_PARTIAL // max(D, 1)))


def layer_norm_forward(x, weight, bias, eps):
    """Normalise each row to zero mean and unit (biased) variance, then apply the affine map.

    Args:
        x: ``(R, D)`` C-contiguous float32/float64 array.
        weight: ``(D,)`` array or None (no scale).
        bias: ``(D,)`` array or None (no shift).
        eps: float added to the variance before the square root.

    Returns:
        ``(y, mean, rstd)``: y ``(R, D)``; mean and rstd ``(R,)``; all of x's dtype. For D == 0 the mean
        is 0 and rstd NaN, as torch.native_layer_norm.
    """
    R, D = x.shape
    y = _blocks.empty_like(x)
    if D == 0:
        return y, np.zeros(R, x.dtype), np.full(R, np.nan, x.dtype)
    mean = np.empty(R, x.dtype)
    rstd = np.empty(R, x.dtype)
    if R:
        # float64 copies of the (D,) parameters: the kernels use them in float64 for every row
        w = weight.astype(np.float64) if weight is not None else np.ones(D)
        b = bias.astype(np.float64) if bias is not None else np.zeros(D)
        _layer_norm_fwd_kernel(x, w, b, float(eps), y, mean, rstd)
    return y, mean, rstd


def layer_norm_backward(grad, x, weight, mean, rstd):
    """Gradients of `layer_norm_forward`.

    ``grad_x = rstd * (a - mean(a) - xhat * mean(a * xhat))`` with ``a = grad * weight``;
    ``grad_weight = sum_rows(grad * xhat)``; ``grad_bias = sum_rows(grad)``.

    Args:
        grad: ``(R, D)`` upstream gradient.
        x: ``(R, D)`` forward input.
        weight: ``(D,)`` or None.
        mean, rstd: ``(R,)`` as returned by the forward.

    Returns:
        ``(grad_x, grad_weight or None, grad_bias)``: ``(R, D)``, ``(D,)`` or None, ``(D,)``; x's dtype.
        grad_bias is always computed (it is cheap); the launcher drops it when there is no bias.
    """
    R, D = x.shape
    dt = x.dtype
    gx = _blocks.empty_like(x)
    if x.size == 0:
        return gx, (None if weight is None else np.zeros(D, dt)), np.zeros(D, dt)
    n_chunks = _n_chunks(R, D)
    dw_part = np.zeros((n_chunks, D))
    db_part = np.zeros((n_chunks, D))
    w = weight.astype(np.float64) if weight is not None else np.ones(D)  # float64 once, not per row
    _layer_norm_bwd_kernel(grad, x, w, mean, rstd, gx, dw_part, db_part)
    # add the chunk partials in chunk order: deterministic whatever the thread count
    grad_weight = None if weight is None else dw_part.sum(axis=0).astype(dt)
    return gx, grad_weight, db_part.sum(axis=0).astype(dt)

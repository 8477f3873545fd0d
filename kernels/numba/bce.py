"""Numba CPU binary_cross_entropy_with_logits on ``(R, C)`` logits, pos_weight ``(C,)`` or None.

Floor: reads x and y once (2 x itemsize bytes per element; pos_weight once per row, from cache); ``'none'``
also writes the loss (3 x itemsize); the backward reads x and y and writes grad_x (3 x itemsize, plus grad
for ``'none'``).

Stable form (torch's): with ``log_weight = 1 + (pos_weight - 1) * y``,
``loss = (1 - y) * x + log_weight * (log1p(exp(-|x|)) + max(-x, 0))``, finite for any finite x, and
``grad_x = ((pos_weight * y + 1 - y) * sigmoid(x) - pos_weight * y) * grad`` (``sigmoid(x) - y`` without
pos_weight, evaluated in that exact form so no rounding of ``y + 1 - y`` creeps in).

Rows are cut into fixed blocks of about 16K elements run in parallel (``prange``). For ``'mean'``/``'sum'``
each row's losses go to a float64 scratch row, summed by a vectorised ``reassoc`` helper; each block adds
its rows in order and writes one float64 partial, and the partials are added in block order afterwards: the
result depends on the shape only, never on the thread count. Every loop is one vectorised pass: the
transcendental parts run in the input dtype through `_vmath` (``softplus(-x) = log1p(exp(-|x|)) +
max(-x, 0)`` <= 2 ulp, ``sigmoid`` <= 3 ulp), the rest of each element's math in float64, cast on store
(``(1 - y) * x + softplus(-x)`` cancels for negative x; float64 keeps it exact to the softplus's ulps).
No fastmath in elementwise code (NaN/inf must reach the loss as in torch); ``error_model='numpy'`` keeps
zero-divisor branches out of the loops. ``'mean'`` of an empty input is NaN, ``'sum'`` is 0 (torch).
"""
import numba
import numpy as np

from . import _blocks
from . import _rows as rows
from . import _vmath as vm

_BLOCK = 16384  # elements per parallel work item (whole rows)
_REDUCTIONS = ("none", "mean", "sum")


_JIT = {"parallel": True, "cache": True, "error_model": "numpy"}


@numba.njit(inline="always")
def _bce_loss(xv, t, p, has_pw):
    # one element: logit xv in x's dtype (softplus runs there), target t and pos_weight p (ignored unless
    # has_pw) in float64; returns float64
    softplus_neg = np.float64(vm.softplus(-xv))  # log1p(exp(-|x|)) + max(-x, 0), stable
    if has_pw:
        return (1.0 - t) * np.float64(xv) + (1.0 + (p - 1.0) * t) * softplus_neg
    return (1.0 - t) * np.float64(xv) + softplus_neg


@numba.njit(inline="always")
def _bce_grad(xv, t, p, has_pw):
    # d loss / d x for one element, before the upstream gradient (xv in x's dtype, as in _bce_loss)
    sig = np.float64(vm.sigmoid(xv))
    if has_pw:
        pt = p * t
        return (pt + 1.0 - t) * sig - pt
    return sig - t


@numba.njit(cache=True, error_model="numpy")
def _loss_row(xr, yr, pw, has_pw, out):
    # out[c] = loss of row element c (out: float64 scratch or the loss row itself); has_pw is the same for
    # the whole row, so LLVM unswitches the branch out of the vectorised loop
    for c in range(xr.shape[0]):
        p = np.float64(pw[c]) if has_pw else 1.0
        out[c] = _bce_loss(xr[c], np.float64(yr[c]), p, has_pw)


@numba.njit(**_JIT)
def _bce_fwd_kernel(x, y, pw, has_pw, rows_per_block, loss):
    # x, y, loss: (R, C); pw: (C,) (unused unless has_pw)
    R = x.shape[0]
    for blk in numba.prange((R + rows_per_block - 1) // rows_per_block):
        for r in range(blk * rows_per_block, min(R, (blk + 1) * rows_per_block)):
            _loss_row(x[r], y[r], pw, has_pw, loss[r])


@numba.njit(**_JIT)
def _bce_sum_kernel(x, y, pw, has_pw, rows_per_block, partials):
    # partials[blk] = float64 sum of the loss over the rows of block blk (one row of float64 scratch)
    R, C = x.shape
    for blk in numba.prange(partials.shape[0]):
        tmp = np.empty(C, np.float64)
        s = 0.0
        for r in range(blk * rows_per_block, min(R, (blk + 1) * rows_per_block)):
            _loss_row(x[r], y[r], pw, has_pw, tmp)
            s += rows.sum_f64(tmp)
        partials[blk] = s


@numba.njit(cache=True, error_model="numpy")
def _grad_row(xr, yr, pw, has_pw, gr, out):
    # out[c] = dloss/dx * gr[c]: one vectorised pass over a row
    for c in range(xr.shape[0]):
        p = np.float64(pw[c]) if has_pw else 1.0
        out[c] = _bce_grad(xr[c], np.float64(yr[c]), p, has_pw) * np.float64(gr[c])


@numba.njit(cache=True, error_model="numpy")
def _grad_row_scaled(xr, yr, pw, has_pw, scale, out):
    # out[c] = dloss/dx * scale
    for c in range(xr.shape[0]):
        p = np.float64(pw[c]) if has_pw else 1.0
        out[c] = _bce_grad(xr[c], np.float64(yr[c]), p, has_pw) * scale


@numba.njit(**_JIT)
def _bce_bwd_kernel(x, y, pw, has_pw, rows_per_block, g, gx):
    # reduction 'none': gx = dloss/dx * g elementwise
    R = x.shape[0]
    for blk in numba.prange((R + rows_per_block - 1) // rows_per_block):
        for r in range(blk * rows_per_block, min(R, (blk + 1) * rows_per_block)):
            _grad_row(x[r], y[r], pw, has_pw, g[r], gx[r])


@numba.njit(**_JIT)
def _bce_bwd_scaled_kernel(x, y, pw, has_pw, rows_per_block, scale, gx):
    # reduced loss: gx = dloss/dx * scale, scale = grad (/ numel for 'mean')
    R = x.shape[0]
    for blk in numba.prange((R + rows_per_block - 1) // rows_per_block):
        for r in range(blk * rows_per_block, min(R, (blk + 1) * rows_per_block)):
            _grad_row_scaled(x[r], y[r], pw, has_pw, scale, gx[r])


def _check(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"bce_with_logits: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _layout(x, pos_weight):
    # (pos_weight array, has_pw, rows per parallel block): blocks depend on the shape only
    has_pw = pos_weight is not None
    pw = pos_weight if has_pw else np.ones(1, x.dtype)
    return pw, has_pw, max(1, _BLOCK // max(x.shape[1], 1))


def bce_with_logits_forward(x, y, pos_weight, reduction):
    """Binary cross-entropy of sigmoid(x) against targets y, computed from the logits.

    Args:
        x: ``(R, C)`` C-contiguous float32/float64 logits.
        y: ``(R, C)`` targets in [0, 1], same dtype.
        pos_weight: ``(C,)`` weight of the positive term per column, or None.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(R, C)`` for ``'none'``, else a 0-d array; x's dtype.
    """
    _check(reduction)
    pw, has_pw, rows = _layout(x, pos_weight)
    if reduction == "none":
        loss = _blocks.empty_like(x)
        if x.size:
            _bce_fwd_kernel(x, y, pw, has_pw, rows, loss)
        return loss
    partials = np.zeros((x.shape[0] + rows - 1) // rows)
    if x.size:
        _bce_sum_kernel(x, y, pw, has_pw, rows, partials)
    total = float(partials.sum())  # block order: deterministic
    if reduction == "mean":
        total = total / x.size if x.size else np.nan
    return np.array(total, dtype=x.dtype)


def bce_with_logits_backward(grad, x, y, pos_weight, reduction):
    """Gradient w.r.t. the logits: ``((pos_weight * y + 1 - y) * sigmoid(x) - pos_weight * y) * grad``.

    Args:
        grad: ``(R, C)`` for ``'none'``, else a 0-d array.
        x, y: ``(R, C)`` forward logits and targets.
        pos_weight: ``(C,)`` or None.
        reduction: ``'none'``, ``'mean'`` (also divides by numel) or ``'sum'``.

    Returns:
        ``(R, C)`` gradient of x's dtype.
    """
    _check(reduction)
    gx = _blocks.empty_like(x)
    if x.size == 0:
        return gx
    pw, has_pw, rows = _layout(x, pos_weight)
    if reduction == "none":
        _bce_bwd_kernel(x, y, pw, has_pw, rows, grad, gx)
    else:
        scale = float(grad) / x.size if reduction == "mean" else float(grad)
        _bce_bwd_scaled_kernel(x, y, pw, has_pw, rows, scale, gx)
    return gx

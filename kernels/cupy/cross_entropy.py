"""Softmax cross-entropy on CuPy arrays: one fused RawKernel pass per row (``cuda/cross_entropy.cu``) gives
the per-row loss and, on request, d(loss)/d(logits); ``cuda/reduce.cu`` folds the rows for 'mean' / 'sum'.

Logits are ``(N, C)``, targets ``(N,)`` integers already checked to lie in ``[0, C)`` or equal ignore_index.
'mean' divides by the number of non-ignored targets (NaN when there are none, as torch); every gradient
stays on the device (the count is computed by a kernel, never copied to the host).
"""
from __future__ import annotations

import numpy as np

from . import _source as src

_CU = "cross_entropy.cu"


def _run(x, target, ignore_index, label_smoothing, g, g_stride, mean_scale, want_loss, want_grad):
    """Launch the fused row kernel; returns (row_losses or None, grad or None, count)."""
    cp = src.cupy()
    dtype = src.check_float(x)
    x = cp.ascontiguousarray(x)
    t = cp.ascontiguousarray(target.astype(np.int64, copy=False))
    N, C = x.shape
    acc = src.acc_dtype(dtype)
    count = cp.zeros((1,), dtype=acc)
    inv = cp.zeros((1,), dtype=acc)
    if N:
        src.function(_CU, "ce_count_valid", dtype)((1,), (256,), (t, src.i64(N), src.i64(ignore_index), count, inv))
    scale = inv if mean_scale else cp.ones((1,), dtype=acc)
    loss = cp.empty((N,), dtype=acc) if want_loss else None
    gx = cp.empty_like(x) if want_grad else None
    if N:
        src.function(_CU, "ce_fwd_bwd", dtype)(
            (src.grid(N),), (src.threads_for(C),),
            (x, t, src.i64(N), src.i64(C), src.i64(ignore_index), src.acc_scalar(dtype, label_smoothing),
             g, src.i64(g_stride), scale, loss if want_loss else count, gx if want_grad else x,
             src.i32(want_loss), src.i32(want_grad)))
    return loss, gx, count


def cross_entropy_forward(logits, target, ignore_index, label_smoothing, reduction, compute_grad):
    """Cross-entropy loss, and optionally its gradient, in one pass over the logits.

    Args:
        logits: ``(N, C)`` float CuPy array.
        target: ``(N,)`` integer class indices (cast to int64), each in ``[0, C)`` or ``ignore_index``.
        ignore_index: targets equal to this add no loss and get zero gradient.
        label_smoothing: eps in [0, 1]; the target distribution is ``(1 - eps) onehot + eps / C``.
        reduction: ``'none'``, ``'mean'`` (over non-ignored rows) or ``'sum'``.
        compute_grad: also return d(loss)/d(logits) for an upstream gradient of 1 (of ones for 'none').

    Returns:
        ``(loss, grad_logits_or_None)``: loss ``(N,)`` for ``'none'``, else 0-d, in the logits' dtype;
        grad ``(N, C)`` or None.

    Example:
        >>> loss, grad = cross_entropy_forward(x, t, -100, 0.0, "mean", True)  # doctest: +SKIP
    """
    cp = src.cupy()
    dtype = src.check_float(logits)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"cross_entropy_forward: unknown reduction {reduction!r}")
    ones = cp.ones((1,), dtype=logits.dtype)
    rows, gx, count = _run(logits, target, ignore_index, label_smoothing, ones, 0, reduction == "mean",
                           True, bool(compute_grad))
    N = logits.shape[0]
    if reduction == "none":
        return rows.astype(logits.dtype), gx
    part = rows if N else cp.zeros((1,), dtype=src.acc_dtype(dtype))
    divisor = count if reduction == "mean" else 1.0
    return src.finish_sum(part, N, divisor, dtype), gx


def cross_entropy_backward(grad, logits, target, ignore_index, label_smoothing, reduction):
    """Gradient of `cross_entropy_forward` w.r.t. the logits, recomputing the softmax.

    Args:
        grad: upstream gradient, ``(N,)`` for ``'none'``, else a 0-d array.
        logits: ``(N, C)`` forward logits.
        target: ``(N,)`` class indices.
        ignore_index: as in the forward.
        label_smoothing: as in the forward.
        reduction: the forward's reduction ('mean' scales by 1 / number of non-ignored rows).

    Returns:
        ``(N, C)`` gradient ``grad_row * (softmax(x) - (1 - eps) onehot - eps / C)``, zero on ignored rows.
    """
    cp = src.cupy()
    src.check_float(grad, logits)
    if reduction == "none":
        g, stride = cp.ascontiguousarray(grad).reshape(-1), 1
    elif reduction in ("mean", "sum"):
        g, stride = cp.ascontiguousarray(grad).reshape(1), 0
    else:
        raise ValueError(f"cross_entropy_backward: unknown reduction {reduction!r}")
    _, gx, _ = _run(logits, target, ignore_index, label_smoothing, g, stride, reduction == "mean", False, True)
    return gx

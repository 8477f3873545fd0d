"""mse_loss on 1-D CuPy arrays: ElementwiseKernels for 'none' and the gradient, a two-stage RawKernel
reduction (``cuda/mse.cu`` then ``cuda/reduce.cu``) for 'mean' / 'sum'.

The launcher has broadcast and ravelled input and target; both are C-contiguous ``(n,)`` arrays of one dtype.
Floors: 'none' reads 2n and writes n elements; 'mean'/'sum' read 2n (the partials are a few KB); the
gradient reads 2n (+n for 'none') and writes n.
"""
from __future__ import annotations

from . import _source as src

# Elementwise squared error, computed in the accumulation type (float for float16) and rounded once.
_NONE = src.Elementwise(
    "T x, T y", "T out",
    "typedef dl_acc_of<T>::type A; const A d = (A)x - (A)y; out = (T)(d * d);",
    "dl_mse_none")

# grad_x = (x - y) * (norm * g), torch's order: norm = 2 (or 2 / n for 'mean') times the upstream gradient,
# which is g[i] ('none', g_stride 1) or the single g[0] ('mean' / 'sum', g_stride 0).
_BACKWARD = src.Elementwise(
    "T x, T y, raw T g, int64 g_stride, float64 norm", "T gx",
    "typedef dl_acc_of<T>::type A;"
    " const A scale = (A)norm * (A)g[i * g_stride];"
    " gx = (T)(((A)x - (A)y) * scale);",
    "dl_mse_backward")


def mse_forward(x, y, reduction):
    """Mean squared error between two equally shaped 1-D arrays.

    Args:
        x: ``(n,)`` float CuPy array (input).
        y: ``(n,)`` array of the same dtype (target).
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(n,)`` squared errors for ``'none'``; else a 0-d array (``'mean'`` of an empty input is NaN).

    Example:
        >>> loss = mse_forward(x, y, "mean")  # doctest: +SKIP
    """
    cp = src.cupy()
    dtype = src.check_float(x, y)
    x, y = cp.ascontiguousarray(x), cp.ascontiguousarray(y)
    n = x.size
    if reduction == "none":
        return _NONE(x, y)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"mse_forward: unknown reduction {reduction!r}")
    blocks = src.partial_blocks(n)
    part = cp.zeros((blocks,), dtype=src.acc_dtype(dtype))
    if n:
        src.function("mse.cu", "mse_partial", dtype)((blocks,), (256,), (x, y, src.i64(n), part))
    return src.finish_sum(part, blocks, float(n) if reduction == "mean" else 1.0, dtype)


def mse_backward(grad, x, y, reduction):
    """Gradient of `mse_forward` w.r.t. ``x`` (the gradient w.r.t. ``y`` is its negative).

    Args:
        grad: upstream gradient: ``(n,)`` for ``'none'``, else a 0-d array.
        x: ``(n,)`` forward input.
        y: ``(n,)`` forward target.
        reduction: the forward's reduction.

    Returns:
        ``(n,)`` array ``2 (x - y) * grad`` (divided by n for ``'mean'``).
    """
    cp = src.cupy()
    src.check_float(grad, x, y)
    x, y = cp.ascontiguousarray(x), cp.ascontiguousarray(y)
    if reduction == "none":
        g, stride, norm = cp.ascontiguousarray(grad).reshape(-1), 1, 2.0
    elif reduction in ("mean", "sum"):
        g, stride = cp.ascontiguousarray(grad).reshape(1), 0
        norm = 2.0 / x.size if (reduction == "mean" and x.size) else 2.0
    else:
        raise ValueError(f"mse_backward: unknown reduction {reduction!r}")
    if x.size == 0:
        return cp.empty_like(x)
    return _BACKWARD(x, y, g, stride, norm)

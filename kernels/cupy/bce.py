"""binary_cross_entropy_with_logits on ``(R, C)`` CuPy arrays.

'none' and the gradient are ElementwiseKernels, the 'mean' / 'sum' loss a two-stage RawKernel reduction
(``cuda/bce.cu`` then ``cuda/reduce.cu``). The per-element formulas live once, in ``cuda/losses.cuh``, which
is both included by bce.cu and used as the ElementwiseKernels' preamble: the stable form
``(1 - y) x + (1 + (pw - 1) y) (log1p(exp(-|x|)) + max(-x, 0))`` stays finite at x = +-1e4, and the gradient
is ``(1 + (pw - 1) y) sigmoid(x) - pw y`` (``sigmoid(x) - y`` without pos_weight).
Floors: 'none' reads 2n and writes n elements; 'mean'/'sum' read 2n; the gradient reads 2n (+n for 'none')
and writes n (pos_weight's C values stay in cache).
"""
from __future__ import annotations

from . import _source as src

# Per-element loss; pos_weight (C,) is indexed by the column i % C of the flattened (R, C) array.
_NONE = src.Elementwise(
    "T x, T y, raw T pw, int64 C, int32 has_pw", "T out",
    "typedef dl_acc_of<T>::type A;"
    " const A p = has_pw ? (A)pw[i % C] : A(1);"
    " out = (T)dl_bce_loss<A>((A)x, (A)y, p);",
    "dl_bce_none", headers=("losses.cuh",))

# grad_x = dloss/dx * g / divisor, in torch's order; g is g[i] ('none') or g[0] (g_stride 0), divisor is
# n for 'mean' and 1 otherwise.
_BACKWARD = src.Elementwise(
    "T x, T y, raw T pw, int64 C, int32 has_pw, raw T g, int64 g_stride, float64 divisor", "T gx",
    "typedef dl_acc_of<T>::type A;"
    " const A p = has_pw ? (A)pw[i % C] : A(1);"
    " gx = (T)(dl_bce_grad<A>((A)x, (A)y, p) * (A)g[i * g_stride] / (A)divisor);",
    "dl_bce_backward", headers=("losses.cuh",))


def _prep(x, y, pos_weight):
    cp = src.cupy()
    dtype = src.check_float(x, y, pos_weight)
    x, y = cp.ascontiguousarray(x), cp.ascontiguousarray(y)
    C = x.shape[-1] if x.ndim else 1
    pw = cp.ascontiguousarray(pos_weight) if pos_weight is not None else x
    return cp, dtype, x, y, pw, C


def bce_with_logits_forward(x, y, pos_weight, reduction):
    """Binary cross-entropy on logits, torch's numerically stable form.

    Args:
        x: ``(R, C)`` float CuPy array of logits.
        y: ``(R, C)`` targets in [0, 1], same dtype.
        pos_weight: ``(C,)`` weight of the positive term per column, or None.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(R, C)`` losses for ``'none'``, else a 0-d array (``'mean'`` of an empty input is NaN).

    Example:
        >>> loss = bce_with_logits_forward(logits, targets, None, "mean")  # doctest: +SKIP
    """
    cp, dtype, x, y, pw, C = _prep(x, y, pos_weight)
    has_pw = int(pos_weight is not None)
    n = x.size
    if reduction == "none":
        if n == 0:
            return cp.empty_like(x)
        return _NONE(x, y, pw, C, has_pw)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"bce_with_logits_forward: unknown reduction {reduction!r}")
    blocks = src.partial_blocks(n)
    part = cp.zeros((blocks,), dtype=src.acc_dtype(dtype))
    if n:
        src.function("bce.cu", "bce_partial", dtype)(
            (blocks,), (256,), (x, y, pw, src.i64(n), src.i64(C), src.i32(has_pw), part))
    return src.finish_sum(part, blocks, float(n) if reduction == "mean" else 1.0, dtype)


def bce_with_logits_backward(grad, x, y, pos_weight, reduction):
    """Gradient of `bce_with_logits_forward` w.r.t. the logits.

    Args:
        grad: upstream gradient, ``(R, C)`` for ``'none'``, else a 0-d array.
        x: ``(R, C)`` logits.
        y: ``(R, C)`` targets.
        pos_weight: ``(C,)`` or None.
        reduction: the forward's reduction.

    Returns:
        ``(R, C)`` array ``((1 + (pw - 1) y) sigmoid(x) - pw y) * grad`` (divided by R*C for ``'mean'``).
    """
    cp, _, x, y, pw, C = _prep(x, y, pos_weight)
    src.check_float(grad, x)
    if reduction == "none":
        g, stride, divisor = cp.ascontiguousarray(grad).reshape(-1), 1, 1.0
    elif reduction in ("mean", "sum"):
        g, stride = cp.ascontiguousarray(grad).reshape(1), 0
        divisor = float(x.size) if (reduction == "mean" and x.size) else 1.0
    else:
        raise ValueError(f"bce_with_logits_backward: unknown reduction {reduction!r}")
    if x.size == 0:
        return cp.empty_like(x)
    return _BACKWARD(x, y, pw, C, int(pos_weight is not None), g, stride, divisor)

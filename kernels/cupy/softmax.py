"""Row-wise softmax and log_softmax on CuPy arrays: RawKernels in ``cuda/softmax.cu``, one block per row.

The launcher has already moved the reduced dimension last and made the input C-contiguous ``(R, C)``.
Numerics and the non-finite policy (all -inf, NaN or +inf rows give NaN, as torch) are described in the
.cu file.
"""
from __future__ import annotations

from . import _source as src

_CU = "softmax.cu"


def _forward(x, log_y: int):
    cp = src.cupy()
    dtype = src.check_float(x)
    x = cp.ascontiguousarray(x)
    R, C = x.shape
    y = cp.empty_like(x)
    if R and C:
        k = src.function(_CU, "softmax_fwd", dtype)
        k((src.grid(R),), (src.threads_for(C),), (x, y, src.i64(R), src.i64(C), src.i32(log_y)))
    return y


def _backward(y, grad, log_y: int):
    cp = src.cupy()
    dtype = src.check_float(y, grad)
    y, grad = cp.ascontiguousarray(y), cp.ascontiguousarray(grad)
    R, C = y.shape
    gx = cp.empty_like(y)
    if R and C:
        k = src.function(_CU, "softmax_bwd", dtype)
        k((src.grid(R),), (src.threads_for(C),), (y, grad, gx, src.i64(R), src.i64(C), src.i32(log_y)))
    return gx


def softmax_forward(x):
    """Softmax along the last axis of a 2-D array.

    Args:
        x: ``(R, C)`` float16/float32/float64 CuPy array.

    Returns:
        ``(R, C)`` array of the same dtype; each row sums to 1 (a row of all -inf, or holding NaN/+inf, is
        NaN, as in torch).

    Example:
        >>> y = softmax_forward(cupy.random.randn(4, 10, dtype=cupy.float32))  # doctest: +SKIP
    """
    return _forward(x, 0)


def softmax_backward(y, grad):
    """Gradient of softmax: ``y * (grad - sum(grad * y, axis=-1))``.

    Args:
        y: ``(R, C)`` forward output.
        grad: ``(R, C)`` upstream gradient, same dtype.

    Returns:
        ``(R, C)`` gradient w.r.t. the softmax input.
    """
    return _backward(y, grad, 0)


def log_softmax_forward(x):
    """Log-softmax along the last axis: ``x - max - log(sum(exp(x - max)))``.

    Args:
        x: ``(R, C)`` float CuPy array.

    Returns:
        ``(R, C)`` array of the same dtype, every entry <= 0 for finite rows.
    """
    return _forward(x, 1)


def log_softmax_backward(y, grad):
    """Gradient of log-softmax: ``grad - exp(y) * sum(grad, axis=-1)``.

    Args:
        y: ``(R, C)`` forward output (log-probabilities).
        grad: ``(R, C)`` upstream gradient, same dtype.

    Returns:
        ``(R, C)`` gradient w.r.t. the log-softmax input.
    """
    return _backward(y, grad, 1)

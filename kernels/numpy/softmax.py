"""NumPy reference softmax / log_softmax over the rows of a 2-D array (the launcher moves ``dim`` last).

Plain, obviously-correct NumPy: subtract the row max for numerical stability, exponentiate, normalise.
Exponentials run in the input dtype; row sums accumulate in float64 and the result is cast back.

Non-finite rows follow torch (checked against torch 2.13 on the CPU): a row that holds a NaN, a +inf, or
only -inf comes out all NaN, forward and backward (``x - max`` is NaN for every element of such a row, or
the sum is NaN). A -inf among finite logits gets probability exactly 0 (log-probability -inf).
"""
import numpy as np


def _row_max(x):
    # np.max propagates NaN, which is what torch's max-subtraction does.
    return np.max(x, axis=1, keepdims=True)


def softmax_forward(x):
    """Softmax of each row.

    Args:
        x: ``(R, C)`` float32/float64 array.

    Returns:
        ``(R, C)`` array of the same dtype; each finite row sums to 1.
    """
    if x.size == 0:
        return np.empty_like(x)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(x - _row_max(x))  # subtract the max for numerical stability
        s = np.sum(e, axis=1, keepdims=True, dtype=np.float64)
        return (e / s).astype(x.dtype, copy=False)


def softmax_backward(y, grad):
    """Gradient of softmax: ``y * (grad - sum(grad * y))`` per row.

    Args:
        y: ``(R, C)`` forward output.
        grad: ``(R, C)`` upstream gradient, same dtype.

    Returns:
        ``(R, C)`` gradient w.r.t. the logits.
    """
    if y.size == 0:
        return np.empty_like(y)
    with np.errstate(invalid="ignore", over="ignore"):
        dot = np.sum(grad * y, axis=1, keepdims=True, dtype=np.float64)
        return (y * (grad - dot)).astype(y.dtype, copy=False)


def log_softmax_forward(x):
    """Log-softmax of each row: ``(x - max) - log(sum(exp(x - max)))``.

    Args:
        x: ``(R, C)`` float32/float64 array.

    Returns:
        ``(R, C)`` array of the same dtype, every finite entry <= 0.
    """
    if x.size == 0:
        return np.empty_like(x)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        shifted = x - _row_max(x)  # subtract the max for numerical stability
        lse = np.log(np.sum(np.exp(shifted), axis=1, keepdims=True, dtype=np.float64))
        return (shifted - lse).astype(x.dtype, copy=False)


def log_softmax_backward(y, grad):
    """Gradient of log_softmax: ``grad - exp(y) * sum(grad)`` per row.

    Args:
        y: ``(R, C)`` forward output (log-probabilities).
        grad: ``(R, C)`` upstream gradient, same dtype.

    Returns:
        ``(R, C)`` gradient w.r.t. the logits.
    """
    if y.size == 0:
        return np.empty_like(y)
    with np.errstate(invalid="ignore", over="ignore"):
        s = np.sum(grad, axis=1, keepdims=True, dtype=np.float64)
        return (grad - np.exp(y) * s).astype(y.dtype, copy=False)

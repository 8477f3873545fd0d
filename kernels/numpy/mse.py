"""NumPy reference mean-squared-error loss over 1-D arrays (the launcher broadcasts and ravels).

``loss_i = (x_i - y_i)**2``; ``'mean'`` divides the sum by numel (NaN for an empty input, as torch),
``'sum'`` is 0 for an empty input. Reductions accumulate in float64.
"""
import numpy as np

_REDUCTIONS = ("none", "mean", "sum")


def _check(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"mse: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def mse_forward(x, y, reduction):
    """Squared error, optionally reduced.

    Args:
        x: ``(n,)`` float32/float64 input.
        y: ``(n,)`` target, same dtype.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(n,)`` for ``'none'``, else a 0-d array; x's dtype.
    """
    _check(reduction)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, as in torch
        d = x - y
        if reduction == "none":
            return d * d
        total = np.sum(np.square(d, dtype=np.float64))
    if reduction == "mean":
        total = total / x.size if x.size else np.nan
    return np.array(total, dtype=x.dtype)


def mse_backward(grad, x, y, reduction):
    """Gradient w.r.t. x: ``2 * (x - y) * grad`` (divided by numel for ``'mean'``); grad_y is its negation.

    Args:
        grad: ``(n,)`` for ``'none'``, else a 0-d array.
        x, y: ``(n,)`` forward operands.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(n,)`` gradient of x's dtype.
    """
    _check(reduction)
    with np.errstate(invalid="ignore", over="ignore"):
        if reduction == "none":
            return 2 * (x - y) * grad
        norm = 2.0 / x.size if reduction == "mean" and x.size else 2.0
        return (norm * float(grad) * (x.astype(np.float64) - y)).astype(x.dtype)

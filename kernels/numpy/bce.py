"""NumPy reference binary_cross_entropy_with_logits on ``(R, C)`` logits, pos_weight ``(C,)`` or None.

Stable form (torch's): with ``log_weight = 1 + (pos_weight - 1) * y``,
``loss = (1 - y) * x + log_weight * (log1p(exp(-|x|)) + max(-x, 0))``, finite for any finite x.
The gradient is ``(log_weight * sigmoid(x) - pos_weight * y)``, i.e. ``sigmoid(x) - y`` without pos_weight.
``'mean'`` divides by numel (NaN for an empty input, as torch); ``'sum'`` of nothing is 0. Reductions
accumulate in float64.
"""
import numpy as np

_REDUCTIONS = ("none", "mean", "sum")


def _check(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"bce_with_logits: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def bce_with_logits_forward(x, y, pos_weight, reduction):
    """Binary cross-entropy of sigmoid(x) against targets y, computed from the logits.

    Args:
        x: ``(R, C)`` float32/float64 logits.
        y: ``(R, C)`` targets in [0, 1], same dtype.
        pos_weight: ``(C,)`` weight of the positive term per column, or None.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(R, C)`` for ``'none'``, else a 0-d array; x's dtype.
    """
    _check(reduction)
    with np.errstate(over="ignore", invalid="ignore"):
        softplus_neg = np.log1p(np.exp(-np.abs(x))) + np.maximum(-x, 0)  # log(1 + exp(-x)), stable
        log_weight = 1 + (pos_weight - 1) * y if pos_weight is not None else 1
        loss = (1 - y) * x + log_weight * softplus_neg
    if reduction == "none":
        return loss.astype(x.dtype, copy=False)
    total = np.sum(loss, dtype=np.float64)
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
    with np.errstate(over="ignore"):
        sig = 1 / (1 + np.exp(-x))  # exp overflow -> inf -> 0: the correct limit
    if pos_weight is None:
        g = sig - y
    else:
        t = pos_weight * y
        g = (t + 1 - y) * sig - t
    if reduction == "none":
        return (g * grad).astype(x.dtype, copy=False)
    scale = float(grad) / x.size if reduction == "mean" and x.size else float(grad)
    return (g * scale).astype(x.dtype)

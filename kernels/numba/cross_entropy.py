"""Cross-entropy over class logits in Numba: loss and gradient in one fused, row-parallel pass.

Same semantics as the NumPy reference (``kernels/numpy/cross_entropy.py``, torch 2.13's
``F.cross_entropy`` with class-index targets): label smoothing, ``ignore_index`` (loss 0, gradient 0),
``'mean'`` over the non-ignored rows (NaN when there is none), ``'sum'``, ``'none'``.

One kernel serves forward and backward. Each row is handled by one thread (``prange`` over rows from
32768 logits on, a serial loop below that): a max pass (plus the row sum when smoothing), then an exp
pass that accumulates the partition sum in float64 and parks ``exp(x - max)`` in the gradient row, then
a rescale of that row, which is still in cache, into ``scale * (softmax - (1 - eps) * onehot - eps / C)``.
The per-row losses are summed serially afterwards, so results do not depend on the thread count.

Floor: reads N*C logits once from memory (writes N*C gradients when asked); N*C exps and ~4*N*C flops.
"""
import numpy as np
from numba import njit, prange

_REDUCTIONS = ("none", "mean", "sum")


# Below this many logits the kernel runs serially: waking the thread pool costs more than the work.
_SERIAL_BELOW = 32768


@njit(inline="always", error_model="numpy")
def _cross_entropy_row(logits, target, i, ignore_index, label_smoothing, scale, compute_grad, loss, grad):
    """Loss of row i into loss[i] and, if asked, scale * d(loss_i)/d(logits[i]) into grad[i]."""
    c = logits.shape[1]
    t = target[i]
    if t == ignore_index:
        loss[i] = 0.0
        if compute_grad:
            for j in range(c):
                grad[i, j] = 0  # ignored rows: exactly 0, whatever their logits hold
        return
    # pass 1: row max (subtracted before exp so +-1e4 logits cannot overflow) and row sum
    m = logits[i, 0]
    row_sum = 0.0
    for j in range(c):
        x = logits[i, j]
        m = max(m, x)
        row_sum += x
    # pass 2: partition sum in float64; exp(x - m) is parked in the gradient row for pass 3
    s = 0.0
    if compute_grad:
        for j in range(c):
            e = np.exp(logits[i, j] - m)
            grad[i, j] = e
            s += e
    else:
        for j in range(c):
            s += np.exp(logits[i, j] - m)
    lse = m + np.log(s)
    row_loss = lse - logits[i, t]
    if label_smoothing != 0:  # skipped at 0 so that a -inf logit cannot turn 0 * inf into NaN
        row_loss = (1.0 - label_smoothing) * row_loss + label_smoothing * (lse - row_sum / c)
    loss[i] = row_loss
    if compute_grad:
        # pass 3, on the cached row: grad = scale * (softmax - eps / C); the target column loses
        # scale * (1 - eps)
        inv = scale / s
        shift = scale * label_smoothing / c
        for j in range(c):
            grad[i, j] = grad[i, j] * inv - shift
        grad[i, t] -= scale * (1.0 - label_smoothing)


@njit(parallel=True, cache=True, error_model="numpy")
def _cross_entropy_kernel(logits, target, ignore_index, label_smoothing, row_scale, scale_per_row,
                          compute_grad, loss, grad):
    # one thread per row; row_scale holds one upstream factor per row ('none' backward) or one in all
    for i in prange(logits.shape[0]):
        scale = row_scale[i] if scale_per_row else row_scale[0]
        _cross_entropy_row(logits, target, i, ignore_index, label_smoothing, scale, compute_grad, loss, grad)


@njit(cache=True, error_model="numpy")
def _cross_entropy_serial_kernel(logits, target, ignore_index, label_smoothing, row_scale, scale_per_row,
                                 compute_grad, loss, grad):
    for i in range(logits.shape[0]):
        scale = row_scale[i] if scale_per_row else row_scale[0]
        _cross_entropy_row(logits, target, i, ignore_index, label_smoothing, scale, compute_grad, loss, grad)


def _run(logits, target, ignore_index, label_smoothing, row_scale, scale_per_row, compute_grad):
    """Launch the kernel; returns (per-row float64 losses, gradient or None)."""
    n, c = logits.shape
    loss = np.empty(n, np.float64)
    grad = np.empty((n, c) if compute_grad else (0, 0), logits.dtype)
    kernel = _cross_entropy_kernel if logits.size >= _SERIAL_BELOW else _cross_entropy_serial_kernel
    row_scale = np.ascontiguousarray(row_scale, dtype=np.float64).reshape(-1)
    kernel(logits, target, ignore_index, float(label_smoothing), row_scale, scale_per_row, compute_grad, loss,
           grad)
    return loss, (grad if compute_grad else None)


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def cross_entropy_forward(logits, target, ignore_index, label_smoothing, reduction, compute_grad):
    """Cross-entropy loss of class logits and, optionally, its gradient, in one fused pass per row.

    Args:
        logits: ``(N, C)`` C-contiguous float32/float64 array.
        target: ``(N,)`` int64 class indices in ``[0, C)`` or equal to ``ignore_index`` (checked by the
            launcher; not re-checked here).
        ignore_index: int; rows with this target contribute nothing (loss 0, gradient 0).
        label_smoothing: float in ``[0, 1]``.
        reduction: ``'none'``, ``'mean'`` (over non-ignored rows) or ``'sum'``.
        compute_grad: if True also return d(loss)/d(logits) for an upstream gradient of 1 (of ones for
            ``'none'``).

    Returns:
        ``(loss, grad_logits_or_None)``: loss is ``(N,)`` for ``'none'``, else a 0-d array (``'mean'`` is
        NaN when every target is ignored or N == 0); grad is ``(N, C)``; both in the logits' dtype.

    Example:
        >>> x = np.array([[0.0, 0.0]]); t = np.array([1])
        >>> loss, g = cross_entropy_forward(x, t, -100, 0.0, "mean", True)
        >>> float(loss), g.tolist()
        (0.6931471805599453, [[0.5, -0.5]])
    """
    _check_reduction(reduction)
    n_valid = int(np.count_nonzero(target != ignore_index)) if reduction == "mean" else 0
    scale = 1.0 / n_valid if reduction == "mean" and n_valid else 1.0
    loss, grad = _run(logits, target, ignore_index, label_smoothing, np.full(1, scale), False, compute_grad)
    if reduction == "none":
        out = loss
    elif reduction == "sum":
        out = np.asarray(loss.sum())
    else:
        out = np.asarray(loss.sum() / n_valid if n_valid else np.nan)
    return out.astype(logits.dtype), grad


def cross_entropy_backward(grad, logits, target, ignore_index, label_smoothing, reduction):
    """Gradient of the cross-entropy loss with respect to the logits (softmax recomputed, one pass).

    Args:
        grad: upstream gradient, ``(N,)`` for ``'none'``, else a 0-d array.
        logits, target, ignore_index, label_smoothing, reduction: as for :func:`cross_entropy_forward`.

    Returns:
        ``(N, C)`` gradient in the logits' dtype; 0 on ignored rows.

    Example:
        >>> x = np.array([[0.0, 0.0]]); t = np.array([1])
        >>> cross_entropy_backward(np.array(2.0), x, t, -100, 0.0, "sum").tolist()
        [[1.0, -1.0]]
    """
    _check_reduction(reduction)
    g = np.asarray(grad, dtype=np.float64)
    if reduction == "mean":
        n_valid = int(np.count_nonzero(target != ignore_index))
        g = g / n_valid if n_valid else np.zeros(())  # no valid row: every gradient row is 0 anyway
    return _run(logits, target, ignore_index, label_smoothing, g, reduction == "none", True)[1]

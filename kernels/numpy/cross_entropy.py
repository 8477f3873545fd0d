"""Cross-entropy over class logits in NumPy: the reference for torch.nn.functional.cross_entropy.

Semantics (torch 2.13, class-index targets, no class weights), for a row i with target t_i and
log-probabilities ``logp = log_softmax(logits[i])``:

* ``nll_i = -logp[t_i]`` and, with label smoothing eps over C classes,
  ``loss_i = (1 - eps) * nll_i + eps * mean_c(-logp[c])``;
* rows whose target equals ``ignore_index`` have loss 0 and gradient 0;
* ``'mean'`` divides the sum by the number of non-ignored rows: NaN when there is none (every target
  ignored, or N == 0), as torch returns; ``'sum'`` is then 0;
* ``d loss_i / d logits[i] = softmax(logits[i]) - (1 - eps) * onehot(t_i) - eps / C``.

Everything is computed in float64 and cast to the logits' dtype at the end.

Floor: reads N*C logits (and writes N*C gradients when asked); about 2*N*C flops plus N*C exps.
"""
import numpy as np

_REDUCTIONS = ("none", "mean", "sum")


def _rows(logits, target, ignore_index, label_smoothing):
    """Per-row loss (float64, 0 on ignored rows), softmax (float64) and the non-ignored mask."""
    x = logits.astype(np.float64)
    n, c = x.shape
    valid = target != ignore_index
    safe_target = np.where(valid, target, 0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # subtract the row max so that exp never overflows (+-1e4 logits stay finite)
        m = np.max(x, axis=1, keepdims=True, initial=-np.inf)
        e = np.exp(x - m)
        s = e.sum(axis=1, keepdims=True)
        lse = (m + np.log(s))[:, 0]
        nll = lse - x[np.arange(n), safe_target] if c else np.zeros(n)
        loss = nll if label_smoothing == 0 else (
            (1 - label_smoothing) * nll + label_smoothing * (lse - x.mean(axis=1)))
        softmax = e / s
    return np.where(valid, loss, 0.0), softmax, valid, safe_target


def _grad(softmax, valid, safe_target, label_smoothing, row_scale):
    """Gradient rows ``row_scale * (softmax - (1-eps) onehot - eps/C)``; exactly 0 on ignored rows."""
    n, c = softmax.shape
    g = softmax - label_smoothing / c if c else softmax.copy()
    g[np.arange(n), safe_target] -= 1 - label_smoothing
    with np.errstate(invalid="ignore"):
        g *= np.asarray(row_scale, dtype=np.float64).reshape(-1, 1)
    g[~valid] = 0.0
    return g


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def cross_entropy_forward(logits, target, ignore_index, label_smoothing, reduction, compute_grad):
    """Cross-entropy loss of class logits and, optionally, its gradient in the same call.

    Args:
        logits: ``(N, C)`` float32/float64 array.
        target: ``(N,)`` int64 class indices in ``[0, C)`` or equal to ``ignore_index``.
        ignore_index: int; rows with this target contribute nothing (loss 0, gradient 0).
        label_smoothing: float in ``[0, 1]``.
        reduction: ``'none'``, ``'mean'`` (over non-ignored rows) or ``'sum'``.
        compute_grad: if True also return d(loss)/d(logits) for an upstream gradient of 1 (of ones for
            ``'none'``).

    Returns:
        ``(loss, grad_logits_or_None)``: loss is ``(N,)`` for ``'none'``, else a 0-d array; grad is
        ``(N, C)``; both in the logits' dtype.

    Example:
        >>> x = np.array([[0.0, 0.0]]); t = np.array([1])
        >>> loss, g = cross_entropy_forward(x, t, -100, 0.0, "mean", True)
        >>> float(loss), g.tolist()
        (0.6931471805599453, [[0.5, -0.5]])
    """
    _check_reduction(reduction)
    loss, softmax, valid, safe_target = _rows(logits, target, ignore_index, label_smoothing)
    n_valid = int(valid.sum())
    if reduction == "none":
        out, scale = loss, 1.0
    elif reduction == "sum":
        out, scale = np.asarray(loss.sum()), 1.0
    else:
        out = np.asarray(loss.sum() / n_valid if n_valid else np.nan)
        scale = 1.0 / n_valid if n_valid else 0.0
    grad = _grad(softmax, valid, safe_target, label_smoothing, scale).astype(logits.dtype) if compute_grad \
        else None
    return out.astype(logits.dtype), grad


def cross_entropy_backward(grad, logits, target, ignore_index, label_smoothing, reduction):
    """Gradient of the cross-entropy loss with respect to the logits, for an upstream gradient.

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
    _, softmax, valid, safe_target = _rows(logits, target, ignore_index, label_smoothing)
    g = np.asarray(grad, dtype=np.float64)
    if reduction == "mean":
        n_valid = int(valid.sum())
        g = g / n_valid if n_valid else np.zeros(())
    return _grad(softmax, valid, safe_target, label_smoothing, g).astype(logits.dtype)

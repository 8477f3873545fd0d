"""NumPy reference layer norm over the rows of a 2-D array (the launcher flattens normalized_shape into D).

``y = (x - mean) * rstd * weight + bias`` with the biased variance and ``rstd = 1 / sqrt(var + eps)``, as
torch. Row statistics accumulate in float64 (a float32 mean of values near 1e4 keeps only ~3 decimals);
mean and rstd are returned in x's dtype, as the contract asks.

The backward refines the stored mean by one extra pass, ``mean += mean(x - mean)``, before recomputing
``xhat``: a float32-stored mean of a row with |mean| >> std is off by up to half an ulp of the mean, which
rstd would otherwise amplify into the gradient.
"""
import numpy as np


def layer_norm_forward(x, weight, bias, eps):
    """Normalise each row to zero mean and unit (biased) variance, then apply the affine map.

    Args:
        x: ``(R, D)`` float32/float64 array.
        weight: ``(D,)`` array or None (no scale).
        bias: ``(D,)`` array or None (no shift).
        eps: float added to the variance before the square root.

    Returns:
        ``(y, mean, rstd)``: y ``(R, D)``; mean and rstd ``(R,)``; all of x's dtype. For D == 0 the mean
        is 0 and rstd NaN, as torch.native_layer_norm.
    """
    R, D = x.shape
    if D == 0:
        return np.empty_like(x), np.zeros(R, x.dtype), np.full(R, np.nan, x.dtype)
    mean = np.mean(x, axis=1, dtype=np.float64)
    centered = x - mean[:, None]  # float64
    var = np.mean(centered * centered, axis=1)  # biased variance, two-pass for stability
    rstd = 1.0 / np.sqrt(var + eps)
    y = centered * rstd[:, None]
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)


def layer_norm_backward(grad, x, weight, mean, rstd):
    """Gradients of `layer_norm_forward`.

    ``grad_x = rstd * (a - mean(a) - xhat * mean(a * xhat))`` with ``a = grad * weight``;
    ``grad_weight = sum_rows(grad * xhat)``; ``grad_bias = sum_rows(grad)``.

    Args:
        grad: ``(R, D)`` upstream gradient.
        x: ``(R, D)`` forward input.
        weight: ``(D,)`` or None.
        mean, rstd: ``(R,)`` as returned by the forward.

    Returns:
        ``(grad_x, grad_weight or None, grad_bias)``: ``(R, D)``, ``(D,)`` or None, ``(D,)``; x's dtype.
        grad_bias is always computed (it is cheap); the launcher drops it when there is no bias.
    """
    D = x.shape[1]
    dt = x.dtype
    if x.size == 0:
        gw = None if weight is None else np.zeros(D, dt)
        return np.empty_like(x), gw, np.zeros(D, dt)
    mu = mean.astype(np.float64)
    mu = mu + np.mean(x - mu[:, None], axis=1)  # refine the stored mean (see module docstring)
    rs = rstd.astype(np.float64)[:, None]
    xhat = (x - mu[:, None]) * rs
    a = grad * weight if weight is not None else grad.astype(np.float64)
    grad_x = rs * (a - np.mean(a, axis=1, keepdims=True, dtype=np.float64)
                   - xhat * np.mean(a * xhat, axis=1, keepdims=True))
    grad_weight = None if weight is None else np.sum(grad * xhat, axis=0).astype(dt)
    grad_bias = np.sum(grad, axis=0, dtype=np.float64).astype(dt)
    return grad_x.astype(dt), grad_weight, grad_bias

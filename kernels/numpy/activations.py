"""NumPy reference GELU (exact erf and tanh forms), ReLU and SiLU, elementwise over a 1-D array.

Formulas are torch's, evaluated in float64 and cast back to the input dtype: torch's own float32 evaluation
of the gelu 'tanh' gradient loses up to ~2e-6 absolute near x = -5 (``1 + tanh`` and ``1 - tanh**2``
cancel), so a float32-evaluated reference would not be one. erf goes through ``math.erf`` (NumPy has none).

NaN propagates as in torch: relu(NaN) = NaN, gelu/silu(NaN) = NaN; relu's backward passes the gradient
through at NaN (torch masks only ``x <= 0``). At +-inf torch's formulas give gelu(+inf) = +inf,
gelu(-inf) = NaN (``-inf * 0``), silu(-inf) = NaN and NaN gradients; these follow.
"""
import math

import numpy as np

_SQRT1_2 = 0.70710678118654752440  # 1 / sqrt(2)
_KBETA = 0.79788456080286535588  # sqrt(2 / pi), torch's kBeta for gelu 'tanh'
_KKAPPA = 0.044715
_INV_SQRT_2PI = 0.39894228040143267794  # 1 / sqrt(2 pi): the normal pdf's constant

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _check_approximate(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_forward(x, approximate):
    """GELU: ``x * Phi(x)`` (``approximate='none'``) or torch's tanh approximation.

    Args:
        x: ``(n,)`` float32/float64 array.
        approximate: ``'none'`` for ``0.5 * x * (1 + erf(x / sqrt(2)))``, ``'tanh'`` for
            ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))``.

    Returns:
        ``(n,)`` array of x's dtype.
    """
    _check_approximate(approximate)
    v = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if approximate == "tanh":
            inner = _KBETA * (v + _KKAPPA * (v * v * v))
            y = 0.5 * v * (1 + np.tanh(inner))
        else:
            y = v * (0.5 * (1 + _erf(v * _SQRT1_2)))
    return y.astype(x.dtype)


def gelu_backward(x, grad, approximate):
    """Gradient of `gelu_forward` w.r.t. x (torch's formulas).

    Args:
        x: ``(n,)`` forward input.
        grad: ``(n,)`` upstream gradient, same dtype.
        approximate: ``'none'`` or ``'tanh'``, as in the forward.

    Returns:
        ``(n,)`` gradient w.r.t. x.
    """
    _check_approximate(approximate)
    v = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        if approximate == "tanh":
            v_sq = v * v
            t = np.tanh(_KBETA * (v + _KKAPPA * (v_sq * v)))
            left = 0.5 * v
            right = 1 + t
            left_derivative = 0.5 * right
            inner_derivative = _KBETA * (1 + 3 * _KKAPPA * v_sq)
            right_derivative = left * (1 - t * t) * inner_derivative
            d = left_derivative + right_derivative
        else:
            cdf = 0.5 * (1 + _erf(v * _SQRT1_2))
            pdf = _INV_SQRT_2PI * np.exp(-0.5 * v * v)
            d = cdf + v * pdf
    return (grad * d).astype(x.dtype)


def relu_forward(x):
    """ReLU ``max(x, 0)``; NaN stays NaN.

    Args:
        x: ``(n,)`` float array.

    Returns:
        ``(n,)`` array of x's dtype.
    """
    return np.maximum(x, x.dtype.type(0))  # np.maximum propagates NaN, like torch's clamp_min


def relu_backward(x, grad):
    """Gradient of ReLU: ``grad`` where ``x > 0`` or x is NaN, else 0 (torch masks ``x <= 0``).

    Args:
        x: ``(n,)`` forward input.
        grad: ``(n,)`` upstream gradient.

    Returns:
        ``(n,)`` gradient w.r.t. x.
    """
    return np.where(x <= 0, grad.dtype.type(0), grad)


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))  # exp overflow -> inf -> 0: the correct limit


def silu_forward(x):
    """SiLU ``x * sigmoid(x)``.

    Args:
        x: ``(n,)`` float array.

    Returns:
        ``(n,)`` array of x's dtype.
    """
    v = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        return (v * _sigmoid(v)).astype(x.dtype)


def silu_backward(x, grad):
    """Gradient of SiLU: ``grad * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)`` (torch's form).

    Args:
        x: ``(n,)`` forward input.
        grad: ``(n,)`` upstream gradient.

    Returns:
        ``(n,)`` gradient w.r.t. x.
    """
    v = x.astype(np.float64)
    s = _sigmoid(v)
    with np.errstate(invalid="ignore"):
        return (grad * s * (1 + v * (1 - s))).astype(x.dtype)

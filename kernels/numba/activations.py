"""Numba CPU GELU (exact erf and tanh forms), ReLU and SiLU, elementwise over a 1-D array.

Floor: forward reads x and writes y (2 x itemsize bytes per element); backward reads x and grad and
writes grad_x (3 x itemsize). GELU/SiLU are bound by the scalar libm call (erf/tanh/exp), ReLU by memory.

The array is cut into fixed 16K-element blocks run in parallel (``prange``); each element is computed in
float64 and cast on store, with torch's formulas, except SiLU's ``exp``, which runs in the input dtype
(float32 ``expf`` is about twice as fast and its ulp of error is not amplified). GELU keeps erf/tanh in
float64: torch's float32 evaluation of the 'tanh' gradient loses ~2e-6 near x = -5 to cancellation.

No fastmath: NaN and inf must flow exactly as in torch (relu(NaN) = NaN and its gradient passes through;
gelu(-inf) and silu(-inf) are NaN, as torch's formulas give ``-inf * 0``).
"""
import math

import numba
import numpy as np

_BLOCK = 16384  # elements per parallel work item: big enough to amortise scheduling, fits in L2

_SQRT1_2 = 0.70710678118654752440  # 1 / sqrt(2)
_KBETA = 0.79788456080286535588  # sqrt(2 / pi), torch's kBeta for gelu 'tanh'
_KKAPPA = 0.044715
_INV_SQRT_2PI = 0.39894228040143267794  # 1 / sqrt(2 pi): the normal pdf's constant


@numba.njit(cache=True)
def _sigmoid(v):
    # v in x's dtype: exp runs there (float32 expf is ~2x faster than exp), the rest in float64.
    return 1.0 / (1.0 + np.float64(math.exp(-v)))  # exp overflow -> inf -> 0: the correct limit


@numba.njit(parallel=True, cache=True)
def _gelu_erf_fwd_kernel(x, y):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            v = np.float64(x[i])
            y[i] = v * (0.5 * (1.0 + math.erf(v * _SQRT1_2)))


@numba.njit(parallel=True, cache=True)
def _gelu_tanh_fwd_kernel(x, y):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            v = np.float64(x[i])
            inner = _KBETA * (v + _KKAPPA * (v * v * v))
            y[i] = 0.5 * v * (1.0 + math.tanh(inner))


@numba.njit(parallel=True, cache=True)
def _gelu_erf_bwd_kernel(x, g, gx):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            v = np.float64(x[i])
            cdf = 0.5 * (1.0 + math.erf(v * _SQRT1_2))
            pdf = _INV_SQRT_2PI * math.exp(-0.5 * v * v)
            gx[i] = np.float64(g[i]) * (cdf + v * pdf)


@numba.njit(parallel=True, cache=True)
def _gelu_tanh_bwd_kernel(x, g, gx):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            v = np.float64(x[i])
            v_sq = v * v
            t = math.tanh(_KBETA * (v + _KKAPPA * (v_sq * v)))
            left = 0.5 * v
            left_derivative = 0.5 * (1.0 + t)
            inner_derivative = _KBETA * (1.0 + 3.0 * _KKAPPA * v_sq)
            right_derivative = left * (1.0 - t * t) * inner_derivative
            gx[i] = np.float64(g[i]) * (left_derivative + right_derivative)


@numba.njit(parallel=True, cache=True)
def _relu_fwd_kernel(x, y):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            v = x[i]
            y[i] = v if not v < 0 else 0  # keeps NaN (NaN < 0 is false)


@numba.njit(parallel=True, cache=True)
def _relu_bwd_kernel(x, g, gx):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            gx[i] = 0 if x[i] <= 0 else g[i]  # torch masks x <= 0; NaN passes the gradient through


@numba.njit(parallel=True, cache=True)
def _silu_fwd_kernel(x, y):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            y[i] = np.float64(x[i]) * _sigmoid(x[i])


@numba.njit(parallel=True, cache=True)
def _silu_bwd_kernel(x, g, gx):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
            v = np.float64(x[i])
            s = _sigmoid(x[i])
            gx[i] = np.float64(g[i]) * s * (1.0 + v * (1.0 - s))


def _check_approximate(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def _launch(kernel, x, *inputs):
    # Allocate the output, skip the kernel for an empty input.
    out = np.empty_like(x)
    if x.size:
        kernel(x, *inputs, out)
    return out


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
    return _launch(_gelu_tanh_fwd_kernel if approximate == "tanh" else _gelu_erf_fwd_kernel, x)


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
    return _launch(_gelu_tanh_bwd_kernel if approximate == "tanh" else _gelu_erf_bwd_kernel, x, grad)


def relu_forward(x):
    """ReLU ``max(x, 0)``; NaN stays NaN.

    Args:
        x: ``(n,)`` float array.

    Returns:
        ``(n,)`` array of x's dtype.
    """
    return _launch(_relu_fwd_kernel, x)


def relu_backward(x, grad):
    """Gradient of ReLU: ``grad`` where ``x > 0`` or x is NaN, else 0 (torch masks ``x <= 0``).

    Args:
        x: ``(n,)`` forward input.
        grad: ``(n,)`` upstream gradient.

    Returns:
        ``(n,)`` gradient w.r.t. x.
    """
    return _launch(_relu_bwd_kernel, x, grad)


def silu_forward(x):
    """SiLU ``x * sigmoid(x)``.

    Args:
        x: ``(n,)`` float array.

    Returns:
        ``(n,)`` array of x's dtype.
    """
    return _launch(_silu_fwd_kernel, x)


def silu_backward(x, grad):
    """Gradient of SiLU: ``grad * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)`` (torch's form).

    Args:
        x: ``(n,)`` forward input.
        grad: ``(n,)`` upstream gradient.

    Returns:
        ``(n,)`` gradient w.r.t. x.
    """
    return _launch(_silu_bwd_kernel, x, grad)

"""GELU, ReLU and SiLU on 1-D CuPy arrays, forward and backward, as ElementwiseKernels.

Each body computes in ``A = dl_acc_of<T>::type`` (float for float16) and rounds once on the store, with
torch's formulas term for term. Every kernel is memory-bound: its floor is one read per input and one write
(8 bytes per float32 element forward, 12 backward).

Large |x| (RELIABILITY.md item 12): erf, tanh and exp saturate cleanly (erf(+-7071) = +-1, exp(-5e7) = 0),
and no formula forms inf * 0, so GELU and SiLU stay finite at +-1e4 in both directions.
"""
from __future__ import annotations

from . import _source as src

_GELU_PREAMBLE = r"""
// torch's constants: 1/sqrt(2), sqrt(2/pi) and 1/sqrt(2 pi) (M_2_SQRTPI * M_SQRT1_2 * 0.5), 0.044715
#define DL_SQRT1_2 0.70710678118654752440
#define DL_SQRT_2_OVER_PI 0.79788456080286535588
#define DL_INV_SQRT_2PI 0.39894228040143267794
#define DL_GELU_KAPPA 0.044715

template <typename A> __device__ __forceinline__ A dl_gelu_erf(A x) {
  return x * A(0.5) * (A(1) + dl_erf(x * A(DL_SQRT1_2)));
}
template <typename A> __device__ __forceinline__ A dl_gelu_tanh(A x) {
  const A inner = A(DL_SQRT_2_OVER_PI) * (x + A(DL_GELU_KAPPA) * x * x * x);
  return A(0.5) * x * (A(1) + dl_tanh(inner));
}
// d/dx [x Phi(x)] = Phi(x) + x phi(x); phi underflows to exactly 0 for |x| > ~40 (no inf * 0).
template <typename A> __device__ __forceinline__ A dl_gelu_erf_grad(A x) {
  const A cdf = A(0.5) * (A(1) + dl_erf(x * A(DL_SQRT1_2)));
  const A pdf = dl_exp(A(-0.5) * x * x) * A(DL_INV_SQRT_2PI);
  return cdf + x * pdf;
}
// torch's tanh-GELU derivative, left/right factor form.
template <typename A> __device__ __forceinline__ A dl_gelu_tanh_grad(A x) {
  const A x_sq = x * x;
  const A inner = A(DL_SQRT_2_OVER_PI) * (x + A(DL_GELU_KAPPA) * x_sq * x);
  const A t = dl_tanh(inner);
  const A left = A(0.5) * x, right = A(1) + t;
  const A left_derivative = A(0.5) * right;
  const A right_derivative = A(1) - t * t;
  const A inner_derivative = A(DL_SQRT_2_OVER_PI) * (A(1) + A(3) * A(DL_GELU_KAPPA) * x_sq);
  return left_derivative + left * right_derivative * inner_derivative;
}
"""

_ACC = "typedef dl_acc_of<T>::type A; "

_GELU_FWD = {
    "none": src.Elementwise("T x", "T y", _ACC + "y = (T)dl_gelu_erf<A>((A)x);", "dl_gelu_erf_fwd",
                            preamble=_GELU_PREAMBLE),
    "tanh": src.Elementwise("T x", "T y", _ACC + "y = (T)dl_gelu_tanh<A>((A)x);", "dl_gelu_tanh_fwd",
                            preamble=_GELU_PREAMBLE),
}
_GELU_BWD = {
    "none": src.Elementwise("T x, T g", "T gx", _ACC + "gx = (T)((A)g * dl_gelu_erf_grad<A>((A)x));",
                            "dl_gelu_erf_bwd", preamble=_GELU_PREAMBLE),
    "tanh": src.Elementwise("T x, T g", "T gx", _ACC + "gx = (T)((A)g * dl_gelu_tanh_grad<A>((A)x));",
                            "dl_gelu_tanh_bwd", preamble=_GELU_PREAMBLE),
}

# relu(x) = max(x, 0) with NaN propagated (torch's clamp_min keeps NaN); the gradient is g where x > 0,
# else 0 (torch's threshold_backward: x <= 0 gives 0, so a NaN x passes g through).
_RELU_FWD = src.Elementwise("T x", "T y", _ACC + "const A v = (A)x; y = (T)(v < A(0) ? A(0) : v);",
                            "dl_relu_fwd")
_RELU_BWD = src.Elementwise("T x, T g", "T gx", _ACC + "gx = (A)x <= A(0) ? (T)A(0) : g;", "dl_relu_bwd")

# silu(x) = x / (1 + exp(-x)) (torch's form: exp(1e4) = inf gives x / inf = -0, not NaN);
# silu'(x) = s (1 + x (1 - s)), s = 1 / (1 + exp(-x)).
_SILU_FWD = src.Elementwise("T x", "T y", _ACC + "const A v = (A)x; y = (T)(v / (A(1) + dl_exp(-v)));",
                            "dl_silu_fwd")
_SILU_BWD = src.Elementwise(
    "T x, T g", "T gx",
    _ACC + "const A v = (A)x; const A s = A(1) / (A(1) + dl_exp(-v));"
    " gx = (T)((A)g * (s * (A(1) + v * (A(1) - s))));",
    "dl_silu_bwd")


def _prep(*arrays):
    cp = src.cupy()
    src.check_float(*arrays)
    return cp, [cp.ascontiguousarray(a) for a in arrays]


def _approx(approximate):
    if approximate not in _GELU_FWD:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


def gelu_forward(x, approximate):
    """GELU: ``x * Phi(x)`` (``approximate='none'``, via erf) or torch's tanh approximation.

    Args:
        x: 1-D float CuPy array.
        approximate: ``'none'`` or ``'tanh'``.

    Returns:
        Array of x's shape and dtype.

    Example:
        >>> y = gelu_forward(cupy.linspace(-3, 3, 7, dtype=cupy.float32), "tanh")  # doctest: +SKIP
    """
    cp, (x,) = _prep(x)
    return _GELU_FWD[_approx(approximate)](x) if x.size else cp.empty_like(x)


def gelu_backward(x, grad, approximate):
    """Gradient of `gelu_forward`: ``grad * gelu'(x)``.

    Args:
        x: 1-D forward input.
        grad: upstream gradient, same shape and dtype.
        approximate: ``'none'`` or ``'tanh'``, as in the forward.

    Returns:
        Array of x's shape and dtype.
    """
    cp, (x, grad) = _prep(x, grad)
    return _GELU_BWD[_approx(approximate)](x, grad) if x.size else cp.empty_like(x)


def relu_forward(x):
    """ReLU: ``max(x, 0)``, NaN propagated.

    Args:
        x: 1-D float CuPy array.

    Returns:
        Array of x's shape and dtype.
    """
    cp, (x,) = _prep(x)
    return _RELU_FWD(x) if x.size else cp.empty_like(x)


def relu_backward(x, grad):
    """Gradient of ReLU: ``grad`` where ``x > 0``, else 0.

    Args:
        x: 1-D forward input.
        grad: upstream gradient, same shape and dtype.

    Returns:
        Array of x's shape and dtype.
    """
    cp, (x, grad) = _prep(x, grad)
    return _RELU_BWD(x, grad) if x.size else cp.empty_like(x)


def silu_forward(x):
    """SiLU (swish): ``x * sigmoid(x)``, computed as ``x / (1 + exp(-x))``.

    Args:
        x: 1-D float CuPy array.

    Returns:
        Array of x's shape and dtype.
    """
    cp, (x,) = _prep(x)
    return _SILU_FWD(x) if x.size else cp.empty_like(x)


def silu_backward(x, grad):
    """Gradient of SiLU: ``grad * s * (1 + x (1 - s))`` with ``s = sigmoid(x)``.

    Args:
        x: 1-D forward input.
        grad: upstream gradient, same shape and dtype.

    Returns:
        Array of x's shape and dtype.
    """
    cp, (x, grad) = _prep(x, grad)
    return _SILU_BWD(x, grad) if x.size else cp.empty_like(x)

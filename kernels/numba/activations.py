"""Numba CPU GELU (exact erf and tanh forms), ReLU and SiLU, elementwise over a 1-D array.

Floor: forward reads x and writes y (2 x itemsize bytes per element); backward reads x and grad and
writes grad_x (3 x itemsize). Each kernel is one vectorised pass (AVX2: 8 float32 lanes): the transcendental
parts come from `_vmath` (branch-free polynomials, see its accuracy table), so the GELU/SiLU kernels run
close to memory speed instead of being bound by scalar libm calls.

The array is cut into fixed 16K-element blocks run in parallel (``prange``), each handed to a ``_block``
loop as a view (0-based loops over contiguous views compile to the tightest vector code); elements are
independent, so the result never depends on the thread count. Each element is computed in the input dtype:

* gelu 'none': ``y = x * Phi(x)`` with `_vmath.ndtr` (the normal CDF ``0.5 * (1 + erf(x / sqrt 2))``,
  evaluated as ``0.5 * erfc(-x / sqrt 2)``: no cancellation for negative x, <= 5 ulp everywhere);
  ``dy/dx = Phi(x) + x * phi(x)`` (`_vmath.ndtr_npdf`: both from one exp).
* gelu 'tanh': torch's ``0.5 * x * (1 + tanh(u))``, ``u = sqrt(2/pi) * (x + 0.044715 x^3)``, rewritten
  exactly as ``x * s`` with ``s = sigmoid(2u)`` (``1 + tanh(u) = 2 sigmoid(2u)``), and the gradient's
  ``1 - tanh(u)^2 = 4 s (1 - s)`` as ``4 e / (1 + e)^2`` with ``e = exp(-2|u|)``: accurate in both tails,
  where torch's float32 evaluation of ``1 - t * t`` cancels.
* silu: ``x * s``, ``s = sigmoid(x)``; gradient ``s * (1 + x * (1 - s))`` (torch's form) with ``1 - s``
  taken from the same exp (no cancellation).

No fastmath: NaN and inf must flow exactly as in torch (relu(NaN) = NaN and its gradient passes through;
gelu(-inf) and silu(-inf) are NaN, as torch's formulas give ``-inf * 0``; gelu/silu gradients at +-inf are
NaN). Kernels that divide use ``error_model='numpy'`` (IEEE division, no zero-divisor branch in the loop).
"""
import numba

from . import _blocks
from . import _vmath as vm

_BLOCK = 16384  # elements per parallel work item: big enough to amortise scheduling, fits in L2

_SQRT1_2 = 0.70710678118654752440  # 1 / sqrt(2)
_KBETA = 0.79788456080286535588  # sqrt(2 / pi), torch's kBeta for gelu 'tanh'
_KKAPPA = 0.044715
_INV_SQRT_2PI = 0.39894228040143267794  # 1 / sqrt(2 pi): the normal pdf's constant


@numba.njit(cache=True, error_model="numpy")
def _gelu_erf_fwd_block(x, y):
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = v * vm.ndtr(v)


@numba.njit(parallel=True, cache=True)
def _gelu_erf_fwd_kernel(x, y):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        _gelu_erf_fwd_block(x[lo:hi], y[lo:hi])


@numba.njit(cache=True, error_model="numpy")
def _gelu_tanh_fwd_block(x, y):
    for i in range(x.shape[0]):
        v = x[i]
        u2 = vm.like(v, 2 * _KBETA) * (v + vm.like(v, _KKAPPA) * (v * v * v))  # 2u, in x's dtype
        y[i] = v * vm.sigmoid(u2)  # 0.5 (1 + tanh(u)) = sigmoid(2u)


@numba.njit(parallel=True, cache=True)
def _gelu_tanh_fwd_kernel(x, y):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        _gelu_tanh_fwd_block(x[lo:hi], y[lo:hi])


@numba.njit(cache=True, error_model="numpy")
def _gelu_erf_bwd_block(x, g, gx):
    for i in range(x.shape[0]):
        v = x[i]
        cdf, pdf = vm.ndtr_npdf(v)  # one shared exp(-v^2 / 2)
        gx[i] = g[i] * (cdf + v * pdf)


@numba.njit(parallel=True, cache=True)
def _gelu_erf_bwd_kernel(x, g, gx):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        _gelu_erf_bwd_block(x[lo:hi], g[lo:hi], gx[lo:hi])


@numba.njit(cache=True, error_model="numpy")
def _gelu_tanh_bwd_block(x, g, gx):
    for i in range(x.shape[0]):
        v = x[i]
        one = vm.like(v, 1.0)
        two = vm.like(v, 2.0)
        v_sq = v * v
        u2 = vm.like(v, 2 * _KBETA) * (v + vm.like(v, _KKAPPA) * (v_sq * v))
        e = vm.exp_neg(-abs(u2))
        r = one / (one + e)
        s = r if u2 >= 0 else e * r  # left derivative 0.5 (1 + tanh(u)) = sigmoid(2u)
        ds = e * r * r  # s (1 - s) = (1 - tanh(u)^2) / 4
        inner_derivative = vm.like(v, _KBETA) * (one + vm.like(v, 3 * _KKAPPA) * v_sq)
        # right derivative 0.5 x (1 - tanh^2) u' = 2 x s (1 - s) u'; where s (1 - s) underflowed to 0
        # it is 0 * x (NaN only at x = +-inf, as torch), not 0 * u' (u' overflows beyond 1e19 in float32)
        right = two * v * ds * inner_derivative if ds > 0 else ds * v
        gx[i] = g[i] * (s + right)


@numba.njit(parallel=True, cache=True)
def _gelu_tanh_bwd_kernel(x, g, gx):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        _gelu_tanh_bwd_block(x[lo:hi], g[lo:hi], gx[lo:hi])


@numba.njit(cache=True)
def _relu_fwd_block(x, y):
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = v if not v < 0 else 0  # keeps NaN (NaN < 0 is false)


@numba.njit(parallel=True, cache=True)
def _relu_fwd_kernel(x, y):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        _relu_fwd_block(x[lo:hi], y[lo:hi])


@numba.njit(cache=True)
def _relu_bwd_block(x, g, gx):
    for i in range(x.shape[0]):
        gx[i] = 0 if x[i] <= 0 else g[i]  # torch masks x <= 0; NaN passes the gradient through


@numba.njit(parallel=True, cache=True)
def _relu_bwd_kernel(x, g, gx):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        _relu_bwd_block(x[lo:hi], g[lo:hi], gx[lo:hi])


@numba.njit(cache=True, error_model="numpy")
def _silu_fwd_block(x, y):
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = v * vm.sigmoid(v)


@numba.njit(parallel=True, cache=True)
def _silu_fwd_kernel(x, y):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        _silu_fwd_block(x[lo:hi], y[lo:hi])


@numba.njit(cache=True, error_model="numpy")
def _silu_bwd_block(x, g, gx):
    for i in range(x.shape[0]):
        v = x[i]
        one = vm.like(v, 1.0)
        e = vm.exp_neg(-abs(v))
        r = one / (one + e)
        s = r if v >= 0 else e * r  # sigmoid(v)
        s_c = e * r if v >= 0 else r  # 1 - sigmoid(v), without cancellation
        gx[i] = g[i] * (s * (one + v * s_c))


@numba.njit(parallel=True, cache=True)
def _silu_bwd_kernel(x, g, gx):
    n = x.shape[0]
    for b in numba.prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        _silu_bwd_block(x[lo:hi], g[lo:hi], gx[lo:hi])


def _check_approximate(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def _launch(kernel, x, *inputs):
    # Allocate the output, skip the kernel for an empty input.
    out = _blocks.empty_like(x)
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

"""SGD and Adam/AdamW updates in NumPy, bit-for-bit the arithmetic of torch.optim's single-tensor path.

torch.optim (``foreach=False, fused=False``) updates a parameter with a chain of tensor ops; this module
replays that chain operation by operation in the parameter's dtype so that a model trained here and one
trained by torch stay bitwise equal. What that takes:

* Python-float hyper-parameters are cast to the parameter dtype before each op, exactly as torch's CPU
  kernels cast a wrapped scalar (``lr``, ``beta2``, ``eps``...), while the scalars torch itself computes in
  Python (``1 - beta1``, ``lr / (1 - beta1**step)``, ``(1 - beta2**step) ** 0.5``) are computed in double
  first.
* torch's CPU kernels for ``add(alpha=)``, ``lerp`` and ``addcmul`` compute ``a * b + c`` with one
  rounding (a fused multiply-add: ``vec::fmadd`` in the vector path, compiler contraction in the scalar
  tail; checked on torch 2.13, AVX2 build). NumPy has no FMA, so :func:`_fma` emulates a correctly rounded
  one with error-free transforms. ``mul``, ``div``, ``sqrt`` and ``addcdiv`` round every op.
* ``sqrt`` is IEEE's; ``torch.sqrt`` on MKL builds is MKL's VML_HA sqrt, which is one ulp off on some
  inputs (see tests/kernels/test_optimizers.py).

Floor: memory-bound; Adam reads param, grad, exp_avg, exp_avg_sq and writes three of them (7 words per
element), SGD with momentum 5 words. This reference spends about 20 passes per element on the emulation.
"""
import numpy as np

_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's constant that splits a double into two 26-bit halves


def _two_sum(a, b):
    """Knuth's TwoSum: s + e == a + b exactly, s = fl(a + b)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _two_prod(a, b):
    """Dekker's exact product of doubles: p + e == a * b exactly (no overflow/underflow assumed)."""
    p = a * b
    t = _SPLIT * a
    ah = t - (t - a)
    al = a - ah
    t = _SPLIT * b
    bh = t - (t - b)
    bl = b - bh
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def _add_round_to_odd(a, b):
    """fl_odd(a + b) for doubles: round toward zero, then set the last bit if the sum was inexact."""
    s, e = _two_sum(a, b)
    even = (s.view(np.uint64) & np.uint64(1)) == 0
    fix = (e != 0) & even & np.isfinite(s) & np.isfinite(e)
    # A round-to-nearest sum with a nonzero error sits one ulp from the odd neighbour on e's side.
    return np.where(fix, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)


def _fma(a, b, c):
    """``a * b + c`` rounded once to the arrays' dtype (float32 or float64), as an FMA instruction does.

    float32: the product of two floats is exact in double; rounding the double sum to odd and then to
    float32 rounds correctly (53 >= 24 + 2 bits). float64: Boldo and Melquiond's emulation (IEEE TC 2008),
    ``RN(th + RO(tl + ul))`` with ``uh + ul = a*b`` and ``th + tl = c + uh``. Operands whose product or sum
    is not finite, and exact zeros (where the sign rules matter), take the plain ``a * b + c``, which is
    then the same value.
    """
    dtype = np.result_type(a, b, c)
    a, b, c = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, c)))
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == np.float32:
            return _add_round_to_odd(a * b, c).astype(np.float32)
        uh, ul = _two_prod(a, b)
        th, tl = _two_sum(c, uh)
        z = th + _add_round_to_odd(tl, ul)
        plain = a * b + c
        return np.where(np.isfinite(z) & np.isfinite(plain) & (plain != 0) & (z != 0), z, plain)


def _lerp(start, end, weight):
    """torch.lerp with a scalar weight (in the arrays' dtype), FMA form of torch's vector kernel."""
    one = weight.dtype.type(1)
    if abs(weight) < 0.5:
        return _fma(weight, end - start, start)
    return _fma(weight - one, end - start, end)


def sgd_step(param, grad, momentum_buffer, lr, momentum, dampening, nesterov, weight_decay):
    """One torch.optim.SGD step (single-tensor arithmetic), updating ``param`` in place.

    Args:
        param: 1-D float32/float64 array, updated in place.
        grad: gradient, same shape and dtype; never modified.
        momentum_buffer: the buffer returned by the previous step, or None before the first step (torch
            then starts it as a copy of the weight-decayed gradient, without dampening).
        lr, momentum, dampening, weight_decay: Python floats, as given to torch.optim.SGD.
        nesterov: bool, Nesterov momentum.

    Returns:
        The momentum buffer (updated in place, or freshly allocated on the first step); None when
        ``momentum == 0``.

    Example:
        >>> p, g = np.ones(3, np.float32), np.full(3, 0.5, np.float32)
        >>> buf = sgd_step(p, g, None, 0.1, 0.9, 0.0, False, 0.0)
        >>> float(p[0]), float(buf[0])
        (0.949999988079071, 0.5)
    """
    f = param.dtype.type
    if weight_decay != 0:
        grad = _fma(param, f(weight_decay), grad)
    if momentum != 0:
        if momentum_buffer is None:
            momentum_buffer = np.array(grad, dtype=param.dtype, copy=True)
        else:
            momentum_buffer *= f(momentum)
            momentum_buffer[...] = _fma(grad, f(1 - dampening), momentum_buffer)
        grad = _fma(momentum_buffer, f(momentum), grad) if nesterov else momentum_buffer
    param[...] = _fma(grad, f(-lr), param)
    return momentum_buffer if momentum != 0 else None


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """One torch.optim.Adam (``decoupled=False``) or AdamW (``decoupled=True``) step, in place.

    Replays ``_single_tensor_adam`` (amsgrad=False, maximize=False) op by op in the parameter dtype.

    Args:
        param: 1-D float32/float64 array, updated in place.
        grad: gradient, same shape and dtype; never modified.
        exp_avg, exp_avg_sq: the first and second moment state (zeros before the first step), updated in
            place.
        step: this update's 1-based count (torch's ``state['step']`` after its increment).
        lr, beta1, beta2, eps, weight_decay: Python floats, as given to the torch optimizer.
        decoupled: False for Adam's L2 penalty (``grad + weight_decay * param``), True for AdamW's decay
            (``param *= 1 - lr * weight_decay`` before the update).

    Returns:
        None.

    Example:
        >>> p, g = np.ones(2), np.full(2, 0.5)
        >>> m, v = np.zeros(2), np.zeros(2)
        >>> adam_step(p, g, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
        >>> round(float(p[0]), 6)
        0.999
    """
    f = param.dtype.type
    if weight_decay != 0:
        if decoupled:
            param *= f(1 - lr * weight_decay)
        else:
            grad = _fma(param, f(weight_decay), grad)
    exp_avg[...] = _lerp(exp_avg, grad, f(1 - beta1))
    exp_avg_sq *= f(beta2)
    exp_avg_sq[...] = _fma(f(1 - beta2) * grad, grad, exp_avg_sq)
    step = float(step)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    denom = np.sqrt(exp_avg_sq) / f(bias_correction2_sqrt) + f(eps)
    param += (f(-step_size) * exp_avg) / denom

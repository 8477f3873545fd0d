"""SGD and Adam/AdamW updates on 1-D CuPy arrays, in place, as ElementwiseKernels.

Each kernel fuses one step of torch.optim's single-tensor loop (``_single_tensor_sgd`` / ``_single_tensor_adam``)
into a single pass, op by op in torch's order: every Python scalar is rounded to the compute type
(``A = float`` for float16/float32, as torch's opmath) exactly where torch rounds it, and the moments are
stored back in the parameter's dtype after each step. Each element reads its own param/grad/state before
writing, so ``grad`` may alias ``param``. Floor: SGD reads 2-3 and writes 1-2 arrays; Adam reads 4, writes 3.
"""
from __future__ import annotations

from . import _source as src

_ACC = "typedef dl_acc_of<T>::type A; "

# torch.lerp(self, end, w): self + w (end - self) for |w| < 0.5, else end - (end - self)(1 - w).
_LERP = r"""
template <typename A> __device__ __forceinline__ A dl_lerp(A self, A end, A w) {
  return (w < A(0.5) && w > A(-0.5)) ? self + w * (end - self) : end - (end - self) * (A(1) - w);
}
"""

# param -= lr * (grad + wd * param), no momentum (grad is read, never written).
_SGD_PLAIN = src.Elementwise(
    "T grad, float64 lr, float64 weight_decay", "T param",
    _ACC + "A g = (A)grad;"
    " if (weight_decay != 0.0) g = (A)(T)(g + (A)weight_decay * (A)param);"
    " param = (T)((A)param + (A)(-lr) * g);",
    "dl_sgd_plain")

# With momentum. first != 0: buf = clone(grad'); else buf = momentum * buf + (1 - dampening) * grad'.
# nesterov: the step direction is grad' + momentum * buf, else buf.
_SGD_MOMENTUM = src.Elementwise(
    "T grad, float64 lr, float64 momentum, float64 dampening, int32 nesterov, float64 weight_decay, int32 first",
    "T param, T buf",
    _ACC + "A g = (A)grad;"
    " if (weight_decay != 0.0) g = (A)(T)(g + (A)weight_decay * (A)param);"
    " if (first) { buf = (T)g; }"
    " else { const A b = (A)(T)((A)buf * (A)momentum); buf = (T)(b + (A)(1.0 - dampening) * g); }"
    " const A d = nesterov ? (A)(T)(g + (A)momentum * (A)buf) : (A)buf;"
    " param = (T)((A)param + (A)(-lr) * d);",
    "dl_sgd_momentum")

# Adam (decoupled == 0: grad' = grad + wd * param) or AdamW (decoupled != 0: param *= 1 - lr * wd first):
#   exp_avg    = lerp(exp_avg, grad', 1 - beta1)
#   exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad' * grad'
#   param     += -step_size * exp_avg / (sqrt(exp_avg_sq) / bc2_sqrt + eps)
# step_size = lr / (1 - beta1^step) and bc2_sqrt = sqrt(1 - beta2^step) come from the host in float64.
# Zero gradients give 0 / eps = 0 (no NaN); lr == 0 leaves param bit-unchanged (adds -0).
_ADAM = src.Elementwise(
    "T grad, float64 lr, float64 beta1, float64 beta2, float64 eps, float64 weight_decay, int32 decoupled,"
    " float64 step_size, float64 bc2_sqrt",
    "T param, T exp_avg, T exp_avg_sq",
    _ACC + "A g = (A)grad;"
    " if (weight_decay != 0.0) {"
    "   if (decoupled) param = (T)((A)param * (A)(1.0 - lr * weight_decay));"
    "   else g = (A)(T)(g + (A)weight_decay * (A)param);"
    " }"
    " const A m = (A)(T)dl_lerp<A>((A)exp_avg, g, (A)(1.0 - beta1));"
    " exp_avg = (T)m;"
    " const A v0 = (A)(T)((A)exp_avg_sq * (A)beta2);"
    " const A v = (A)(T)(v0 + (A)(1.0 - beta2) * g * g);"
    " exp_avg_sq = (T)v;"
    " const A denom = (A)(T)((A)(T)((A)(T)dl_sqrt(v) / (A)bc2_sqrt) + (A)eps);"
    " param = (T)((A)param + (A)(-step_size) * (m / denom));",
    "dl_adam", preamble=_LERP)


def sgd_step(param, grad, momentum_buffer, lr, momentum, dampening, nesterov, weight_decay):
    """One in-place SGD step, as ``torch.optim.SGD`` (single-tensor, ``maximize=False``).

    Args:
        param: 1-D float CuPy array, updated in place.
        grad: its gradient, same shape and dtype (may alias param).
        momentum_buffer: the buffer from the previous step, or None on the first step.
        lr: learning rate.
        momentum: momentum factor (0 for plain SGD).
        dampening: dampening for momentum.
        nesterov: use Nesterov momentum.
        weight_decay: L2 penalty added to the gradient.

    Returns:
        The momentum buffer (allocated on the first step as a copy of the decayed gradient, like torch), or
        None when ``momentum == 0``.

    Example:
        >>> buf = sgd_step(p, g, None, 0.1, 0.9, 0.0, False, 0.0)  # doctest: +SKIP
    """
    cp = src.cupy()
    src.check_float(param, grad, momentum_buffer)
    grad = cp.ascontiguousarray(grad)
    if momentum == 0:
        if param.size:
            _SGD_PLAIN(grad, float(lr), float(weight_decay), param)
        return None
    first = momentum_buffer is None
    buf = cp.empty_like(param) if first else momentum_buffer
    if param.size:
        _SGD_MOMENTUM(grad, float(lr), float(momentum), float(dampening), int(bool(nesterov)),
                      float(weight_decay), int(first), param, buf)
    return buf


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """One in-place Adam (``decoupled=False``) or AdamW (``decoupled=True``) step, as torch.optim.

    Args:
        param: 1-D float CuPy array, updated in place.
        grad: its gradient, same shape and dtype (may alias param).
        exp_avg: first moment, updated in place (zeros before the first step).
        exp_avg_sq: second moment, updated in place.
        step: the step number after incrementing (1 on the first step).
        lr: learning rate.
        beta1: first-moment decay.
        beta2: second-moment decay.
        eps: added to the denominator.
        weight_decay: L2 penalty (Adam) or decoupled decay (AdamW).
        decoupled: False for Adam, True for AdamW.

    Returns:
        None.
    """
    cp = src.cupy()
    src.check_float(param, grad, exp_avg, exp_avg_sq)
    grad = cp.ascontiguousarray(grad)
    step = int(step)
    if step < 1:
        raise ValueError(f"adam_step: step counts from 1, got {step}")
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bc2_sqrt = bias_correction2 ** 0.5
    if param.size:
        _ADAM(grad, float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), int(bool(decoupled)),
              float(step_size), float(bc2_sqrt), param, exp_avg, exp_avg_sq)

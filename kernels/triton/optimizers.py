"""Triton fused optimizer updates (SGD with momentum/Nesterov, Adam, AdamW), in place on 1-D tensors.

One elementwise kernel per parameter tensor does the whole update, reproducing torch.optim's
single-tensor arithmetic step by step: every state tensor is read once and written once (SGD: read
param, grad, buffer; write param, buffer; Adam: read 4, write 3 tensors: 7*n*itemsize bytes, the floor).
16-bit parameters and states are updated in fp32 and rounded once on store. Scalar combinations
(bias corrections, ``lr / bc1``, ``1 - lr * wd``) are formed on the host in double precision, exactly
where torch forms them, and reach the kernel as fp32 (Triton passes Python floats as fp32).
"""
import math

import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, acc_dtype, sqrt_ieee


@triton.jit
def _sgd_kernel(
    p_ptr,  # *T (n,) parameter, updated in place
    g_ptr,  # *T (n,) gradient
    buf_ptr,  # *T (n,) momentum buffer (written when MOMENTUM; initialised from d on FIRST)
    n,
    lr,
    momentum,
    one_minus_dampening,
    weight_decay,
    HAS_WD: tl.constexpr,
    MOMENTUM: tl.constexpr,
    FIRST: tl.constexpr,  # the buffer did not exist yet: buf = d (torch clones d_p)
    NESTEROV: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: n may pass 2^31
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask).to(ACC)
    d = tl.load(g_ptr + offs, mask=mask).to(ACC)  # loaded before any store: param and grad may alias
    if HAS_WD:
        d = d + weight_decay * p
    if MOMENTUM:
        if FIRST:
            buf = d
        else:
            buf = tl.load(buf_ptr + offs, mask=mask).to(ACC) * momentum + one_minus_dampening * d
        tl.store(buf_ptr + offs, buf.to(buf_ptr.dtype.element_ty), mask=mask)
        if NESTEROV:
            d = d + momentum * buf
        else:
            d = buf
    tl.store(p_ptr + offs, (p - lr * d).to(p_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adam_kernel(
    p_ptr,  # *T (n,) parameter, in place
    g_ptr,  # *T (n,) gradient
    m_ptr,  # *T (n,) exp_avg, in place
    v_ptr,  # *T (n,) exp_avg_sq, in place
    n,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    step_size,  # lr / (1 - beta1^step)
    bc2_sqrt,  # sqrt(1 - beta2^step)
    eps,
    weight_decay,
    decay,  # 1 - lr * weight_decay (AdamW)
    HAS_WD: tl.constexpr,
    DECOUPLED: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask).to(ACC)
    g = tl.load(g_ptr + offs, mask=mask).to(ACC)
    m = tl.load(m_ptr + offs, mask=mask).to(ACC)
    v = tl.load(v_ptr + offs, mask=mask).to(ACC)
    if HAS_WD:
        if DECOUPLED:
            p = p * decay  # AdamW: shrink the parameter first
        else:
            g = g + weight_decay * p  # Adam: L2 term added to the gradient
    m = m + one_minus_beta1 * (g - m)  # torch's lerp_(g, 1 - beta1) for a weight below 0.5
    v = v * beta2 + one_minus_beta2 * (g * g)
    denom = sqrt_ieee(v) / bc2_sqrt + eps
    p = p - step_size * (m / denom)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


def _require_contiguous(**tensors):
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(f"optimizer step: {name} must be contiguous (it is updated in place)")


def sgd_step(param, grad, momentum_buffer, lr, momentum, dampening, nesterov, weight_decay):
    """One SGD update in place, as torch.optim.SGD (single-tensor path) does it.

    Args:
        param: ``(n,)`` contiguous float tensor, updated in place.
        grad: ``(n,)`` gradient, param's dtype.
        momentum_buffer: ``(n,)`` buffer from the previous step, or None on the first step.
        lr, momentum, dampening, weight_decay: floats.
        nesterov: bool.

    Returns:
        The momentum buffer (allocated here on the first step when momentum != 0, as torch does, and
        then equal to the first step's gradient), or None when momentum == 0.
    """
    _require_contiguous(param=param, momentum_buffer=momentum_buffer)
    grad = grad.contiguous()
    n = param.numel()
    use_momentum = momentum != 0
    first = use_momentum and momentum_buffer is None
    if first:
        momentum_buffer = torch.empty_like(param)
    if n:
        _sgd_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
            param, grad, momentum_buffer if use_momentum else param, n,
            float(lr), float(momentum), 1.0 - float(dampening), float(weight_decay),
            HAS_WD=weight_decay != 0, MOMENTUM=use_momentum, FIRST=first, NESTEROV=bool(nesterov),
            ACC=acc_dtype(param.dtype), BLOCK=ELEMENTWISE_BLOCK,
        )
    return momentum_buffer if use_momentum else None


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) update in place.

    Args:
        param: ``(n,)`` contiguous float tensor, updated in place.
        grad: ``(n,)`` gradient, param's dtype.
        exp_avg: ``(n,)`` first-moment state (zeros before the first step), updated in place.
        exp_avg_sq: ``(n,)`` second-moment state, updated in place.
        step: int, the 1-based number of this update (bias corrections use it).
        lr, beta1, beta2, eps, weight_decay: floats.
        decoupled: False adds ``weight_decay * param`` to the gradient (Adam); True first scales the
            parameter by ``1 - lr * weight_decay`` (AdamW).

    Returns:
        None.
    """
    _require_contiguous(param=param, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    if step < 1:
        raise ValueError(f"adam_step: step counts from 1, got {step}")
    grad = grad.contiguous()
    n = param.numel()
    if n == 0:
        return
    bc1 = 1 - beta1**step
    bc2 = 1 - beta2**step
    _adam_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
        param, grad, exp_avg, exp_avg_sq, n,
        1.0 - beta1, float(beta2), 1.0 - beta2, lr / bc1, math.sqrt(bc2), float(eps),
        float(weight_decay), 1.0 - lr * weight_decay,
        HAS_WD=weight_decay != 0, DECOUPLED=bool(decoupled), ACC=acc_dtype(param.dtype), BLOCK=ELEMENTWISE_BLOCK,
    )

"""Triton fused optimizer updates (SGD with momentum/Nesterov, Adam, AdamW), in place on 1-D tensors.

One elementwise kernel per parameter tensor does the whole update, reproducing torch.optim's
single-tensor arithmetic step by step: every state tensor is read once and written once (SGD: read
param, grad, buffer; write param, buffer; Adam: read 4, write 3 tensors: 7*n*itemsize bytes, the floor).
16-bit parameters and states are updated in fp32 and rounded once on store. Scalar combinations
(bias corrections, ``lr / bc1``, ``1 - lr * wd``) are formed on the host in double precision, exactly
where torch forms them, and reach the kernel as fp32 (Triton passes Python floats as fp32).

The Adam kernels compile without fused multiply-adds (``enable_fp_fusion=False``): each operation rounds
as torch's separate ops do, and the per-tensor and multi-tensor kernels give the same bits (with contraction
the compiler fused differently in each on an H200: 1-ulp float16 differences).
`adam_multi_step` updates a whole list in one launch through a table of tensor addresses.
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
def _adam_update(p, g, m, v, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps, weight_decay, decay,
                 HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr):
    """torch's single-tensor Adam/AdamW chain on one block (in ACC); returns the new (p, m, v)."""
    if HAS_WD:
        if DECOUPLED:
            p = p * decay  # AdamW: shrink the parameter first
        else:
            g = g + weight_decay * p  # Adam: L2 term added to the gradient
    m = m + one_minus_beta1 * (g - m)  # torch's lerp_(g, 1 - beta1) for a weight below 0.5
    v = v * beta2 + one_minus_beta2 * (g * g)
    denom = sqrt_ieee(v) / bc2_sqrt + eps
    p = p - step_size * (m / denom)
    return p, m, v


@triton.jit
def _adam_block(p_ptr, g_ptr, m_ptr, v_ptr, offs, mask, one_minus_beta1, beta2, one_minus_beta2, step_size,
                bc2_sqrt, eps, weight_decay, decay, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr,
                ACC: tl.constexpr):
    """Load one block of the four arrays, apply `_adam_update` in ACC, store param and moments back."""
    p = tl.load(p_ptr + offs, mask=mask).to(ACC)
    g = tl.load(g_ptr + offs, mask=mask).to(ACC)
    m = tl.load(m_ptr + offs, mask=mask).to(ACC)
    v = tl.load(v_ptr + offs, mask=mask).to(ACC)
    p, m, v = _adam_update(p, g, m, v, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps,
                           weight_decay, decay, HAS_WD, DECOUPLED)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


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
    _adam_block(p_ptr, g_ptr, m_ptr, v_ptr, offs, offs < n, one_minus_beta1, beta2, one_minus_beta2, step_size,
                bc2_sqrt, eps, weight_decay, decay, HAS_WD, DECOUPLED, ACC)


@triton.jit
def _adam_multi_kernel(
    addr_ptr,  # *int64 (4, T): addresses of each tensor's param, grad, exp_avg, exp_avg_sq
    size_ptr,  # *int64 (T,) elements of each tensor
    work_tensor_ptr,  # *int32 (W,) the tensor of each program
    work_start_ptr,  # *int64 (W,) the first element of each program's CHUNK
    T,
    one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps, weight_decay, decay,
    HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr,
    DT: tl.constexpr,  # the tensors' element type
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """One program per CHUNK of one tensor of the list: the whole list in one launch (torch's fused idea)."""
    w = tl.program_id(0)
    t = tl.load(work_tensor_ptr + w)
    start = tl.load(work_start_ptr + w)
    n = tl.load(size_ptr + t)
    p_ptr = tl.load(addr_ptr + t).to(tl.pointer_type(DT))
    g_ptr = tl.load(addr_ptr + T + t).to(tl.pointer_type(DT))
    m_ptr = tl.load(addr_ptr + 2 * T + t).to(tl.pointer_type(DT))
    v_ptr = tl.load(addr_ptr + 3 * T + t).to(tl.pointer_type(DT))
    for i in range(0, CHUNK, BLOCK):
        offs = start + i + tl.arange(0, BLOCK)
        _adam_block(p_ptr, g_ptr, m_ptr, v_ptr, offs, offs < n, one_minus_beta1, beta2, one_minus_beta2,
                    step_size, bc2_sqrt, eps, weight_decay, decay, HAS_WD, DECOUPLED, ACC)


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
    _adam_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
        param, grad, exp_avg, exp_avg_sq, n, *_adam_scalars(step, lr, beta1, beta2, eps, weight_decay),
        HAS_WD=weight_decay != 0, DECOUPLED=bool(decoupled), ACC=acc_dtype(param.dtype), BLOCK=ELEMENTWISE_BLOCK,
        enable_fp_fusion=False,  # torch's op-by-op chain, no fused multiply-adds (see the module docstring)
    )


def _adam_scalars(step, lr, beta1, beta2, eps, weight_decay):
    """The kernels' scalar arguments, formed in double precision where torch forms them."""
    bc1 = 1 - beta1**step
    bc2 = 1 - beta2**step
    return (1.0 - beta1, float(beta2), 1.0 - beta2, lr / bc1, math.sqrt(bc2), float(eps), float(weight_decay),
            1.0 - lr * weight_decay)


_MULTI_CHUNK = 8 * ELEMENTWISE_BLOCK  # elements per program of the multi-tensor step
_WORK_TABLES = {}  # (sizes, device) -> (sizes tensor, work tensor index, work start): built once per model


def _work_table(sizes, device):
    key = (sizes, str(device))
    table = _WORK_TABLES.get(key)
    if table is None:
        if len(_WORK_TABLES) > 32:
            _WORK_TABLES.clear()
        counts = torch.tensor([triton.cdiv(n, _MULTI_CHUNK) for n in sizes], dtype=torch.int64)
        tensor = torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.int32), counts)
        first = torch.cumsum(counts, 0) - counts  # each tensor's first work item
        start = (torch.arange(int(counts.sum()), dtype=torch.int64) - first.repeat_interleave(counts)) * _MULTI_CHUNK
        table = tuple(t.to(device) for t in (torch.tensor(sizes, dtype=torch.int64), tensor, start))
        _WORK_TABLES[key] = table
    return table


_ADDRESS_TABLES = {}  # (addresses, device) -> the int64 table on the device


def _address_table(addresses, device):
    """The (4, T) int64 table of tensor addresses on ``device``. Cached by content: a training loop's
    parameters and states keep their addresses, and so, through the caching allocator, mostly do its
    gradients. A new table goes up through pinned memory without blocking (a pageable copy would wait for
    the GPU to finish its queue first)."""
    key = (addresses, str(device))
    table = _ADDRESS_TABLES.get(key)
    if table is None:
        if len(_ADDRESS_TABLES) >= 8:
            _ADDRESS_TABLES.pop(next(iter(_ADDRESS_TABLES)))
        host = torch.tensor(addresses, dtype=torch.int64)
        if host.device != torch.device(device) and torch.cuda.is_available():
            table = host.pin_memory().to(device, non_blocking=True)
        else:
            table = host.to(device)
        _ADDRESS_TABLES[key] = table
    return table


_TRITON_DT = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
              torch.bfloat16: tl.bfloat16}


def adam_multi_step(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay, decoupled,
                    validate=True):
    """One Adam/AdamW update of a whole list of parameters in a single launch (torch's ``fused=True``).

    Args:
        params, grads, exp_avgs, exp_avg_sqs: equal-length lists of contiguous tensors on one device, all of
            one float dtype; the i-th of each has the same number of elements. params and the two moment
            lists are updated in place; they must not overlap each other or the gradients.
        step, lr, beta1, beta2, eps, weight_decay, decoupled: as in `adam_step` (one step count for all).
        validate: check every tensor's dtype, device, size and contiguity first (~10 us per parameter in
            Python). ``False`` only for a caller that has checked them itself (`dlcore.torch.AdamW` does, per
            parameter, while sorting them into launches); a wrong tensor then gives wrong memory accesses.

    Returns:
        None. Every element gets exactly `adam_step`'s arithmetic (bit-identical to one call per tensor).
    """
    if step < 1:
        raise ValueError(f"adam_multi_step: step counts from 1, got {step}")
    lists = (params, grads, exp_avgs, exp_avg_sqs)
    if len({len(x) for x in lists}) != 1:
        raise ValueError("adam_multi_step: params, grads, exp_avgs and exp_avg_sqs differ in length")
    numels = [p.numel() for p in params]
    keep = [i for i, n in enumerate(numels) if n]
    if not keep:
        return
    dtype, device = params[keep[0]].dtype, params[keep[0]].device
    if validate:
        for x in lists:
            for i in keep:
                t = x[i]
                if t.dtype != dtype or t.device != device or t.numel() != numels[i] or not t.is_contiguous():
                    raise ValueError("adam_multi_step: every tensor must be contiguous, of one dtype and device, "
                                     "and sized like its parameter")
    sizes = tuple(numels[i] for i in keep)
    size_t, work_tensor, work_start = _work_table(sizes, device)
    addrs = _address_table(tuple(x[i].data_ptr() for x in lists for i in keep), device)
    _adam_multi_kernel[(work_tensor.numel(),)](
        addrs, size_t, work_tensor, work_start, len(keep), *_adam_scalars(step, lr, beta1, beta2, eps, weight_decay),
        HAS_WD=weight_decay != 0, DECOUPLED=bool(decoupled), DT=_TRITON_DT[dtype], ACC=acc_dtype(dtype),
        BLOCK=ELEMENTWISE_BLOCK, CHUNK=_MULTI_CHUNK, enable_fp_fusion=False,
    )

"""Triton mean-squared-error loss over 1-D tensors, forward and backward.

``'none'``: one program per block, ``(x - y)^2`` elementwise (floor: read 2n, write n elements).
``'mean'``/``'sum'``: a persistent grid-stride pass where each program keeps an fp32 vector of partial
sums and writes one number, then one program folds the partials: deterministic, no atomics, and the
only full pass reads x and y once (floor: 2*n*itemsize bytes).
"""
import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, acc_dtype, interpreting, num_programs, sum_all

_REDUCTIONS = ("none", "mean", "sum")


@triton.jit
def _mse_fwd_kernel(
    x_ptr,  # *T (n,)
    y_ptr,  # *T (n,)
    out_ptr,  # *T (n,) for 'none'; *ACC (programs,) partial sums when REDUCE
    n,
    REDUCE: tl.constexpr,  # sum into per-program partials instead of writing elementwise
    ACC: tl.constexpr,  # fp32 (fp64 for fp64)
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # int64 offsets: n may pass 2^31
    offs = tl.arange(0, BLOCK)
    if REDUCE:
        acc = tl.zeros([BLOCK], dtype=ACC)  # accumulate in fp32, one lane per element slot
        for start in range(pid * BLOCK, n, tl.num_programs(0).to(tl.int64) * BLOCK):
            idx = start + offs
            mask = idx < n
            d = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC) - tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC)
            acc += d * d
        tl.store(out_ptr + pid, tl.sum(acc, axis=0))
    else:
        idx = pid * BLOCK + offs
        mask = idx < n
        d = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC) - tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC)
        tl.store(out_ptr + idx, (d * d).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mse_bwd_kernel(
    g_ptr,  # *T (n,) upstream gradient, or a 0-d tensor when G_SCALAR
    x_ptr,  # *T (n,)
    y_ptr,  # *T (n,)
    dx_ptr,  # *T (n,)
    n,
    MEAN: tl.constexpr,  # divide by n (in the compute dtype: a Python float argument would be fp32)
    G_SCALAR: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dx = 2 * (x - y) * g (/ n for 'mean'). A 0-d upstream gradient is read on the device (no host sync)."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC)
    y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC)
    if G_SCALAR:
        g = tl.load(g_ptr).to(ACC)
    else:
        g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(ACC)
    dx = 2.0 * (x - y) * g
    if MEAN:
        dx = dx / n
    tl.store(dx_ptr + idx, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"mse: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def mse_forward(x, y, reduction):
    """Squared error ``(x - y)^2``, reduced.

    Args:
        x: ``(n,)`` float tensor (fp16/bf16/fp32/fp64).
        y: ``(n,)`` tensor of x's dtype.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(n,)`` for ``'none'``, else a 0-d tensor; x's dtype. The mean of nothing is NaN, as in torch.
    """
    _check_reduction(reduction)
    x, y = x.contiguous(), y.contiguous()
    n = x.numel()
    acc = acc_dtype(x.dtype)
    if reduction == "none":
        out = torch.empty_like(x)
        if n:
            _mse_fwd_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
                x, y, out, n, REDUCE=False, ACC=acc, BLOCK=ELEMENTWISE_BLOCK
            )
        return out
    if n == 0:
        return torch.full((), float("nan") if reduction == "mean" else 0.0, dtype=x.dtype, device=x.device)
    block = 256 if interpreting() else ELEMENTWISE_BLOCK
    nprog = num_programs(x.device, triton.cdiv(n, block), per_sm=4)
    parts = torch.empty(nprog, dtype=torch.float64 if acc == tl.float64 else torch.float32, device=x.device)
    _mse_fwd_kernel[(nprog,)](x, y, parts, n, REDUCE=True, ACC=acc, BLOCK=block)
    total = sum_all(parts)
    if reduction == "mean":
        total = total / n
    return total.to(x.dtype)


def mse_backward(grad, x, y, reduction):
    """Gradient of the MSE loss with respect to x (the gradient for y is its negation).

    Args:
        grad: ``(n,)`` for ``'none'``, else a 0-d tensor; x's dtype.
        x: ``(n,)`` forward input.
        y: ``(n,)`` forward target.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(n,)`` tensor of x's dtype.
    """
    _check_reduction(reduction)
    x, y, grad = x.contiguous(), y.contiguous(), grad.contiguous()
    n = x.numel()
    dx = torch.empty_like(x)
    if n:
        _mse_bwd_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
            grad, x, y, dx, n, MEAN=reduction == "mean",
            G_SCALAR=reduction != "none", ACC=acc_dtype(x.dtype), BLOCK=ELEMENTWISE_BLOCK,
        )
    return dx

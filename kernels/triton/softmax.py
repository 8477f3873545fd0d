"""Triton softmax / log_softmax over the rows of a 2-D tensor, forward and backward.

One program per row. A row of up to ``MAX_FUSED_BLOCK`` columns is held in registers: one read and one
write per element, the floor for a memory-bound op (forward: 2*R*C*itemsize bytes; backward:
3*R*C*itemsize). Longer rows use a looped version: an online max/sum pass over chunks, then a pass that
writes, so the row is read twice (3*R*C*itemsize bytes forward).

NaN/inf policy is torch's: a row that is all -inf, or holds NaN or +inf, comes out all NaN.
"""
import torch
import triton
import triton.language as tl

from ._common import MAX_FUSED_BLOCK, acc_dtype, num_warps_for, row_block

# Longest row kept in registers; tests lower it to exercise the looped kernels.
_MAX_FUSED = MAX_FUSED_BLOCK


@triton.jit
def _softmax_fwd_kernel(
    x_ptr,  # *T (R, C), unit column stride
    y_ptr,  # *T (R, C), unit column stride
    C,  # columns
    stride_x,  # row stride of x, in elements
    stride_y,  # row stride of y
    LOG: tl.constexpr,  # log_softmax instead of softmax
    ONE_PASS: tl.constexpr,  # the whole row fits in one BLOCK
    ACC: tl.constexpr,  # fp32 (fp64 for fp64 input): fp16/bf16 are upcast on load
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64 row offsets: R*C may pass 2^31
    x_row = x_ptr + row * stride_x
    y_row = y_ptr + row * stride_y
    cols = tl.arange(0, BLOCK)
    if ONE_PASS:
        mask = cols < C
        x = tl.load(x_row + cols, mask=mask, other=-float("inf")).to(ACC)
        # subtract the max for numerical stability (an all -inf row gives NaN, as torch does)
        z = x - tl.max(x, axis=0)
        e = tl.exp(z)  # padding lanes: exp(-inf) = 0
        s = tl.sum(e, axis=0)
        if LOG:
            y = z - tl.log(s)
        else:
            y = e * (1.0 / s)
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        # Pass 1: per-lane online max and rescaled sum (no cross-lane reduction inside the loop).
        m_vec = tl.full([BLOCK], -float("inf"), dtype=ACC)
        s_vec = tl.zeros([BLOCK], dtype=ACC)
        for start in range(0, C, BLOCK):
            mask = start + cols < C
            x = tl.load(x_row + start + cols, mask=mask, other=-float("inf")).to(ACC)
            m_new = tl.maximum(m_vec, x)
            # a lane that has seen only -inf keeps max -inf: shift by 0 there so exp(-inf - -inf) is
            # never evaluated (it would be NaN and poison the lane for the rest of the row)
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            s_vec = s_vec * tl.exp(m_vec - m_safe) + tl.exp(x - m_safe)
            m_vec = m_new
        m = tl.max(m_vec, axis=0)
        m_safe = tl.where(m == -float("inf"), 0.0, m)
        s = tl.sum(s_vec * tl.exp(m_vec - m_safe), axis=0)
        # Pass 2: recompute exp(x - m) from x instead of storing it.
        inv_s = 1.0 / s
        log_s = tl.log(s)
        for start in range(0, C, BLOCK):
            mask = start + cols < C
            x = tl.load(x_row + start + cols, mask=mask, other=-float("inf")).to(ACC)
            if LOG:
                y = (x - m) - log_s
            else:
                y = tl.exp(x - m) * inv_s
            tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_kernel(
    y_ptr,  # *T (R, C) forward output (softmax, or log_softmax when LOG)
    g_ptr,  # *T (R, C) upstream gradient
    dx_ptr,  # *T (R, C) result
    C,
    stride_y,
    stride_g,
    stride_dx,
    LOG: tl.constexpr,
    ONE_PASS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """softmax: dx = y * (g - sum(g*y)); log_softmax: dx = g - exp(y) * sum(g). Reductions in fp32."""
    row = tl.program_id(0).to(tl.int64)
    y_row = y_ptr + row * stride_y
    g_row = g_ptr + row * stride_g
    dx_row = dx_ptr + row * stride_dx
    cols = tl.arange(0, BLOCK)
    if ONE_PASS:
        mask = cols < C
        y = tl.load(y_row + cols, mask=mask, other=0.0).to(ACC)
        g = tl.load(g_row + cols, mask=mask, other=0.0).to(ACC)
        if LOG:
            dx = g - tl.exp(y) * tl.sum(g, axis=0)  # padding: y = 0 but g = 0, and it is not stored
        else:
            dx = y * (g - tl.sum(g * y, axis=0))
        tl.store(dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        acc = tl.zeros([BLOCK], dtype=ACC)
        for start in range(0, C, BLOCK):
            mask = start + cols < C
            g = tl.load(g_row + start + cols, mask=mask, other=0.0).to(ACC)
            if LOG:
                acc += g
            else:
                acc += g * tl.load(y_row + start + cols, mask=mask, other=0.0).to(ACC)
        dot = tl.sum(acc, axis=0)
        for start in range(0, C, BLOCK):
            mask = start + cols < C
            y = tl.load(y_row + start + cols, mask=mask, other=0.0).to(ACC)
            g = tl.load(g_row + start + cols, mask=mask, other=0.0).to(ACC)
            if LOG:
                dx = g - tl.exp(y) * dot
            else:
                dx = y * (g - dot)
            tl.store(dx_row + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _unit_cols(t):
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _forward(x, log):
    x = _unit_cols(x)
    R, C = x.shape
    y = torch.empty((R, C), dtype=x.dtype, device=x.device)
    if R == 0 or C == 0:
        return y
    block, one_pass = row_block(C, _MAX_FUSED)
    _softmax_fwd_kernel[(R,)](
        x, y, C, x.stride(0), y.stride(0),
        LOG=log, ONE_PASS=one_pass, ACC=acc_dtype(x.dtype), BLOCK=block, num_warps=num_warps_for(block),
    )
    return y


def _backward(y, grad, log):
    y, grad = _unit_cols(y), _unit_cols(grad)
    R, C = y.shape
    dx = torch.empty((R, C), dtype=y.dtype, device=y.device)
    if R == 0 or C == 0:
        return dx
    block, one_pass = row_block(C, _MAX_FUSED)
    _softmax_bwd_kernel[(R,)](
        y, grad, dx, C, y.stride(0), grad.stride(0), dx.stride(0),
        LOG=log, ONE_PASS=one_pass, ACC=acc_dtype(y.dtype), BLOCK=block, num_warps=num_warps_for(block),
    )
    return dx


def softmax_forward(x):
    """Softmax of each row.

    Args:
        x: ``(R, C)`` float16/bfloat16/float32/float64 tensor (CUDA, or CPU under the interpreter).

    Returns:
        ``(R, C)`` tensor of x's dtype; each row sums to 1.

    Example:
        >>> y = softmax_forward(torch.randn(4, 10, device="cuda"))
    """
    return _forward(x, log=False)


def softmax_backward(y, grad):
    """Gradient of softmax: ``y * (grad - sum(grad * y))`` per row.

    Args:
        y: ``(R, C)`` forward output.
        grad: ``(R, C)`` upstream gradient, y's dtype.

    Returns:
        ``(R, C)`` gradient with respect to the forward input.
    """
    return _backward(y, grad, log=False)


def log_softmax_forward(x):
    """Log-softmax of each row: ``x - max - log(sum(exp(x - max)))``.

    Args:
        x: ``(R, C)`` float tensor.

    Returns:
        ``(R, C)`` tensor of x's dtype, every value <= 0.
    """
    return _forward(x, log=True)


def log_softmax_backward(y, grad):
    """Gradient of log_softmax: ``grad - exp(y) * sum(grad)`` per row.

    Args:
        y: ``(R, C)`` forward output (log-probabilities).
        grad: ``(R, C)`` upstream gradient.

    Returns:
        ``(R, C)`` gradient with respect to the forward input.
    """
    return _backward(y, grad, log=True)

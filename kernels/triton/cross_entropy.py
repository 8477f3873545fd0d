"""Triton cross-entropy over logits ``(N, C)``: loss and gradient in one fused pass per row.

One program per row. Pass 1 walks the vocabulary in chunks with a per-lane online max / rescaled
sum-of-exp (and the row sum of logits when label smoothing is on), giving ``lse``. Pass 2 writes the
gradient ``scale * (softmax - (1 - eps) * onehot - eps / C)``, recomputing ``exp(x - lse)`` from the logits
instead of storing probabilities. The gradient goes straight into one logits-sized buffer of the logits'
dtype: no fp32 copy of the logits and no probabilities buffer ever exist. A row that fits one block
(C <= MAX_FUSED_BLOCK) keeps its logits in registers between the two passes.

Floor: read the logits once and write the gradient once, ``2*N*C*itemsize`` bytes (the looped path reads
the logits twice). Row offsets are int64 (``row * stride`` passes 2^31 for long-vocabulary batches).

Loss per row, torch's definition: ``lse - (1 - eps) * x[t] - eps/C * sum_j x[j]``; rows whose target is
``ignore_index`` give 0 loss and 0 gradient; ``'mean'`` divides by the number of other rows (0/0 = NaN
when every row is ignored, as torch).
"""
import torch
import triton
import triton.language as tl

from ._common import MAX_FUSED_BLOCK, acc_dtype, num_warps_for, row_block, sum_all

# Longest row kept in registers; tests lower it to exercise the looped kernel.
_MAX_FUSED = MAX_FUSED_BLOCK
_REDUCTIONS = ("none", "mean", "sum")

# How the kernel scales the gradient: as if the upstream gradient were ones, a 0-d tensor, or (N,).
_GOUT_ONE, _GOUT_SCALAR, _GOUT_ROW = 0, 1, 2


@triton.jit
def _cross_entropy_kernel(
    logits_ptr,  # *T (N, C), unit column stride
    target_ptr,  # *int64 (N,)
    loss_ptr,  # *T (N,) for 'none', *ACC (N,) for 'mean'/'sum' (summed by the launcher); unused without COMPUTE_LOSS
    grad_ptr,  # *T (N, C) contiguous; unused without COMPUTE_GRAD
    gout_ptr,  # upstream gradient: 0-d (GOUT == 1) or (N,) (GOUT == 2); unused when GOUT == 0
    nvalid_ptr,  # *int64 0-d: rows whose target is not ignore_index (read for MEAN only)
    C,
    stride_l,  # row stride of logits, in elements
    ignore_index,
    smoothing,  # label_smoothing eps
    COMPUTE_LOSS: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    MEAN: tl.constexpr,  # divide the gradient by the number of non-ignored rows
    GOUT: tl.constexpr,
    HAS_SMOOTH: tl.constexpr,
    ONE_PASS: tl.constexpr,  # the whole row fits in one BLOCK
    ACC: tl.constexpr,  # fp32 (fp64 for fp64)
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    l_row = logits_ptr + row * stride_l  # int64: row * stride passes 2^31 for N*C > 2^31
    g_row = grad_ptr + row * C
    cols = tl.arange(0, BLOCK)
    t = tl.load(target_ptr + row)

    if t == ignore_index:
        # ignored row: zero loss, zero gradient, nothing else read
        if COMPUTE_LOSS:
            tl.store(loss_ptr + row, tl.zeros([], dtype=loss_ptr.dtype.element_ty))
        if COMPUTE_GRAD:
            for start in range(0, C, BLOCK):
                tl.store(g_row + start + cols, tl.zeros([BLOCK], dtype=grad_ptr.dtype.element_ty),
                         mask=start + cols < C)
        return

    # ---- pass 1: log-sum-exp (and the sum of logits for label smoothing) -------------------------
    if ONE_PASS:
        mask = cols < C
        x_all = tl.load(l_row + cols, mask=mask, other=-float("inf")).to(ACC)
        m = tl.max(x_all, axis=0)  # subtract the max for numerical stability
        m_safe = tl.where(m == -float("inf"), 0.0, m)
        lse = m_safe + tl.log(tl.sum(tl.exp(x_all - m_safe), axis=0))
        if HAS_SMOOTH:
            sum_x = tl.sum(tl.where(mask, x_all, 0.0), axis=0)
    else:
        m_vec = tl.full([BLOCK], -float("inf"), dtype=ACC)
        s_vec = tl.zeros([BLOCK], dtype=ACC)  # per-lane online sum, rescaled when the lane's max grows
        sx_vec = tl.zeros([BLOCK], dtype=ACC)
        for start in range(0, C, BLOCK):
            mask = start + cols < C
            x = tl.load(l_row + start + cols, mask=mask, other=-float("inf")).to(ACC)
            m_new = tl.maximum(m_vec, x)
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # never exp(-inf - -inf) = NaN
            s_vec = s_vec * tl.exp(m_vec - m_safe) + tl.exp(x - m_safe)
            m_vec = m_new
            if HAS_SMOOTH:
                sx_vec += tl.where(mask, x, 0.0)
        m = tl.max(m_vec, axis=0)
        m_safe = tl.where(m == -float("inf"), 0.0, m)
        lse = m_safe + tl.log(tl.sum(s_vec * tl.exp(m_vec - m_safe), axis=0))
        if HAS_SMOOTH:
            sum_x = tl.sum(sx_vec, axis=0)

    x_t = tl.load(l_row + t).to(ACC)
    if COMPUTE_LOSS:
        if HAS_SMOOTH:
            loss = lse - (1.0 - smoothing) * x_t - (smoothing / C) * sum_x
        else:
            loss = lse - x_t
        tl.store(loss_ptr + row, loss.to(loss_ptr.dtype.element_ty))

    # ---- pass 2: gradient, scale * (softmax - (1 - eps) * onehot - eps / C) -----------------------
    if COMPUTE_GRAD:
        if GOUT == 0:
            scale = 1.0
        elif GOUT == 1:
            scale = tl.load(gout_ptr).to(ACC)
        else:
            scale = tl.load(gout_ptr + row).to(ACC)
        if MEAN:
            scale = scale / tl.load(nvalid_ptr).to(ACC)
        eps_c = smoothing / C  # smoothing is 0.0 without label smoothing: these two are then 0 and 1
        w_t = 1.0 - smoothing
        if ONE_PASS:
            mask = cols < C
            p = tl.exp(x_all - lse)  # recompute instead of store: x is still in registers
            d = p - eps_c - tl.where(cols == t, w_t, 0.0)
            tl.store(g_row + cols, (scale * d).to(grad_ptr.dtype.element_ty), mask=mask)
        else:
            for start in range(0, C, BLOCK):
                mask = start + cols < C
                x = tl.load(l_row + start + cols, mask=mask, other=-float("inf")).to(ACC)
                p = tl.exp(x - lse)
                d = p - eps_c - tl.where(start + cols == t, w_t, 0.0)
                tl.store(g_row + start + cols, (scale * d).to(grad_ptr.dtype.element_ty), mask=mask)


def _launch(logits, target, ignore_index, label_smoothing, reduction, compute_loss, compute_grad, gout, gmode):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.stride(-1) != 1 and logits.shape[-1] > 1:
        logits = logits.contiguous()
    target = target.contiguous()
    N, C = logits.shape
    dev = logits.device
    acc = acc_dtype(logits.dtype)
    acc_torch = torch.float64 if acc == tl.float64 else torch.float32
    loss = None
    if compute_loss:
        loss = torch.empty(N, dtype=logits.dtype if reduction == "none" else acc_torch, device=dev)
    grad = torch.empty((N, C), dtype=logits.dtype, device=dev) if compute_grad else None
    nvalid = (target != ignore_index).sum() if reduction == "mean" else None  # stays on the device
    if N and C:
        block, one_pass = row_block(C, _MAX_FUSED)
        dummy = logits
        _cross_entropy_kernel[(N,)](
            logits, target,
            loss if loss is not None else dummy,
            grad if grad is not None else dummy,
            gout if gout is not None else dummy,
            nvalid if nvalid is not None else target,
            C, logits.stride(0), int(ignore_index), float(label_smoothing),
            COMPUTE_LOSS=compute_loss, COMPUTE_GRAD=compute_grad, MEAN=reduction == "mean", GOUT=gmode,
            HAS_SMOOTH=label_smoothing != 0, ONE_PASS=one_pass, ACC=acc, BLOCK=block,
            num_warps=num_warps_for(block),
        )
    elif compute_loss and N:  # C == 0 cannot be a valid classification; follow the empty-row sum
        loss.zero_()
    if compute_loss and reduction != "none":
        total = sum_all(loss, acc)
        if reduction == "mean":
            total = total / nvalid.to(acc_torch)  # every row ignored (or N == 0): 0/0 = NaN, as torch
        loss = total.to(logits.dtype)
    return loss, grad


def cross_entropy_forward(logits, target, ignore_index, label_smoothing, reduction, compute_grad):
    """Cross-entropy loss of each row, and optionally its gradient, in one fused pass.

    Args:
        logits: ``(N, C)`` float tensor (fp16/bf16/fp32/fp64).
        target: ``(N,)`` int64 class indices in ``[0, C)`` or equal to ``ignore_index``.
        ignore_index: int; rows with this target contribute no loss and no gradient.
        label_smoothing: float eps in ``[0, 1]``.
        reduction: ``'none'``, ``'mean'`` (over non-ignored rows) or ``'sum'``.
        compute_grad: also return d(loss)/d(logits) for an upstream gradient of 1 (ones for ``'none'``).

    Returns:
        ``(loss, grad_or_None)``: loss ``(N,)`` for ``'none'`` else 0-d, grad ``(N, C)``; logits' dtype.

    Example:
        >>> loss, dlogits = cross_entropy_forward(logits, target, -100, 0.0, "mean", True)
    """
    return _launch(logits, target, ignore_index, label_smoothing, reduction, True, bool(compute_grad), None, _GOUT_ONE)


def cross_entropy_backward(grad, logits, target, ignore_index, label_smoothing, reduction):
    """Gradient of cross-entropy with respect to the logits for an upstream gradient ``grad``.

    Recomputes the log-sum-exp per row (one extra read of the logits) rather than keeping anything
    from the forward.

    Args:
        grad: ``(N,)`` for ``'none'``, else a 0-d tensor; logits' dtype.
        logits: ``(N, C)`` forward input.
        target: ``(N,)`` int64.
        ignore_index: int.
        label_smoothing: float.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(N, C)`` gradient, logits' dtype.
    """
    gmode = _GOUT_ROW if reduction == "none" else _GOUT_SCALAR
    _, g = _launch(logits, target, ignore_index, label_smoothing, reduction, False, True, grad.contiguous(), gmode)
    return g

"""Triton binary cross-entropy with logits on ``(R, C)``, optional per-class ``pos_weight``, fwd and bwd.

Stable form, as torch computes it: ``loss = (1 - y) * x - lw * logsigmoid(x)`` with
``lw = 1 + (pos_weight - 1) * y`` and ``logsigmoid(x) = min(x, 0) - log1p(exp(-|x|))``: no exp ever
overflows, so logits of +-1e4 give finite losses. Gradient: ``lw * sigmoid(x) - pos_weight * y`` (that
is ``sigmoid(x) - y`` without pos_weight).

Elementwise over the flat ``R*C`` values (the class of element i is ``i % C``). ``'mean'``/``'sum'`` use a
persistent grid-stride pass with per-program fp32 partial sums, folded deterministically afterwards.
Floor: read x and y once (and write the loss for ``'none'``): 2-3 * R*C*itemsize bytes.
"""
import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, acc_dtype, interpreting, num_programs, sum_all

_REDUCTIONS = ("none", "mean", "sum")


@triton.jit
def _log1p(z):
    # log(1 + z) without losing z when z is tiny (Goldberg): u = fl(1 + z) and log(u) * z / (u - 1)
    # corrects for the rounding of u. Triton has no log1p that the interpreter runs.
    u = 1.0 + z
    return tl.where(u == 1.0, z, tl.log(u) * (z / (u - 1.0)))


@triton.jit
def _bce_loss(x, y, pw, HAS_PW: tl.constexpr):
    log_sig = tl.minimum(x, 0.0) - _log1p(tl.exp(-tl.abs(x)))  # exp of a non-positive number only
    if HAS_PW:
        lw = 1.0 + (pw - 1.0) * y
        loss = (1.0 - y) * x - lw * log_sig
    else:
        loss = (1.0 - y) * x - log_sig
    return loss


@triton.jit
def _bce_fwd_kernel(
    x_ptr,  # *T (R*C,) logits
    y_ptr,  # *T (R*C,) targets in [0, 1]
    pw_ptr,  # *T (C,) pos_weight, or a dummy when not HAS_PW
    out_ptr,  # *T (R*C,) for 'none'; *ACC (programs,) partial sums when REDUCE
    n,  # R*C
    C,
    HAS_PW: tl.constexpr,
    REDUCE: tl.constexpr,
    ACC: tl.constexpr,  # fp32 (fp64 for fp64)
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # int64 offsets: R*C may pass 2^31
    offs = tl.arange(0, BLOCK)
    if REDUCE:
        acc = tl.zeros([BLOCK], dtype=ACC)  # accumulate in fp32
        for start in range(pid * BLOCK, n, tl.num_programs(0).to(tl.int64) * BLOCK):
            idx = start + offs
            mask = idx < n
            x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC)
            y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC)
            pw = 1.0
            if HAS_PW:
                pw = tl.load(pw_ptr + idx % C, mask=mask, other=1.0).to(ACC)
            acc += tl.where(mask, _bce_loss(x, y, pw, HAS_PW), 0.0)
        tl.store(out_ptr + pid, tl.sum(acc, axis=0))
    else:
        idx = pid * BLOCK + offs
        mask = idx < n
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC)
        y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC)
        pw = 1.0
        if HAS_PW:
            pw = tl.load(pw_ptr + idx % C, mask=mask, other=1.0).to(ACC)
        tl.store(out_ptr + idx, _bce_loss(x, y, pw, HAS_PW).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bce_bwd_kernel(
    g_ptr,  # *T (R*C,) upstream gradient, or 0-d when G_SCALAR
    x_ptr,
    y_ptr,
    pw_ptr,
    dx_ptr,  # *T (R*C,)
    n,
    C,
    HAS_PW: tl.constexpr,
    MEAN: tl.constexpr,  # divide by n in the compute dtype
    G_SCALAR: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dx = g * (lw * sigmoid(x) - pos_weight * y): sigmoid recomputed from x, one exp of -|x|."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(ACC)
    y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(ACC)
    e = tl.exp(-tl.abs(x))  # stable sigmoid: never exp of a positive number
    sig = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    if HAS_PW:
        pwy = tl.load(pw_ptr + idx % C, mask=mask, other=1.0).to(ACC) * y
        d = (pwy + 1.0 - y) * sig - pwy
    else:
        d = sig - y
    if G_SCALAR:
        d = d * tl.load(g_ptr).to(ACC)
    else:
        d = d * tl.load(g_ptr + idx, mask=mask, other=0.0).to(ACC)
    if MEAN:
        d = d / n
    tl.store(dx_ptr + idx, d.to(dx_ptr.dtype.element_ty), mask=mask)


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"bce_with_logits: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def bce_with_logits_forward(x, y, pos_weight, reduction):
    """Binary cross-entropy on logits (torch's ``binary_cross_entropy_with_logits``).

    Args:
        x: ``(R, C)`` logits, float tensor (fp16/bf16/fp32/fp64).
        y: ``(R, C)`` targets in ``[0, 1]``, x's dtype.
        pos_weight: ``(C,)`` weight of the positive term per class, or None.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(R, C)`` for ``'none'``, else a 0-d tensor; x's dtype. The mean of nothing is NaN.
    """
    _check_reduction(reduction)
    x, y = x.contiguous(), y.contiguous()
    C = x.shape[1]
    n = x.numel()
    acc = acc_dtype(x.dtype)
    has_pw = pos_weight is not None
    pw = pos_weight.contiguous() if has_pw else x
    if reduction == "none":
        out = torch.empty_like(x)
        if n:
            _bce_fwd_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
                x, y, pw, out, n, C, HAS_PW=has_pw, REDUCE=False, ACC=acc, BLOCK=ELEMENTWISE_BLOCK
            )
        return out
    if n == 0:
        return torch.full((), float("nan") if reduction == "mean" else 0.0, dtype=x.dtype, device=x.device)
    block = 256 if interpreting() else ELEMENTWISE_BLOCK
    nprog = num_programs(x.device, triton.cdiv(n, block), per_sm=4)
    parts = torch.empty(nprog, dtype=torch.float64 if acc == tl.float64 else torch.float32, device=x.device)
    _bce_fwd_kernel[(nprog,)](x, y, pw, parts, n, C, HAS_PW=has_pw, REDUCE=True, ACC=acc, BLOCK=block)
    total = sum_all(parts)
    if reduction == "mean":
        total = total / n
    return total.to(x.dtype)


def bce_with_logits_backward(grad, x, y, pos_weight, reduction):
    """Gradient of BCE-with-logits with respect to the logits.

    Args:
        grad: ``(R, C)`` for ``'none'``, else a 0-d tensor; x's dtype.
        x: ``(R, C)`` logits.
        y: ``(R, C)`` targets.
        pos_weight: ``(C,)`` or None.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``.

    Returns:
        ``(R, C)`` gradient, x's dtype.
    """
    _check_reduction(reduction)
    x, y, grad = x.contiguous(), y.contiguous(), grad.contiguous()
    C = x.shape[1]
    n = x.numel()
    dx = torch.empty_like(x)
    if n:
        has_pw = pos_weight is not None
        _bce_bwd_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
            grad, x, y, pos_weight.contiguous() if has_pw else x, dx, n, C,
            HAS_PW=has_pw, MEAN=reduction == "mean", G_SCALAR=reduction != "none",
            ACC=acc_dtype(x.dtype), BLOCK=ELEMENTWISE_BLOCK,
        )
    return dx

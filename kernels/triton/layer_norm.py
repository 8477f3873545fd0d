"""Triton LayerNorm over the rows of a 2-D tensor, forward and backward.

Forward: one program per row. A row of up to ``MAX_FUSED_BLOCK`` columns is read once into registers;
the mean (of the values shifted by the row's first one) and then the variance of the centred
values are taken there, so a row at 1e4 with small noise keeps its digits. Floor: read x (and w, b once per program, cached), write y: ~2*R*D*itemsize bytes.
Longer rows loop over chunks: sum, centred sum of squares, then the write (x read three times).

Backward: a persistent grid of programs, each walking a contiguous run of rows and accumulating its own
partial grad_weight / grad_bias in fp32 registers; the (programs, D) partials are folded by a column-sum
kernel afterwards, so no atomics and the result is deterministic. Floor: read x, grad, write grad_x:
~3*R*D*itemsize bytes.
"""
import torch
import triton
import triton.language as tl

from ._common import MAX_FUSED_BLOCK, acc_dtype, col_sum, num_programs, num_warps_for, row_block, sqrt_ieee

# Longest row kept in registers; tests lower it to exercise the looped kernels.
_MAX_FUSED = MAX_FUSED_BLOCK


@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,  # *T (R, D), row stride stride_x, unit column stride
    w_ptr,  # *T (D,) or a dummy when not HAS_W
    b_ptr,  # *T (D,) or a dummy when not HAS_B
    y_ptr,  # *T (R, D) contiguous
    mean_ptr,  # *T (R,)
    rstd_ptr,  # *T (R,)
    D,
    stride_x,
    eps,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    ONE_PASS: tl.constexpr,
    ACC: tl.constexpr,  # fp32 (fp64 for fp64): statistics and the affine map accumulate here
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64 row offsets: R*D may pass 2^31
    x_row = x_ptr + row * stride_x
    y_row = y_ptr + row * D
    cols = tl.arange(0, BLOCK)
    if ONE_PASS:
        mask = cols < D
        # shift by the row's first value before summing: a row at 1e4 with 1e-2 noise sums small exact
        # differences instead of losing the noise under a 4e5 running total; centre with the small delta
        # too, since mean = shift + delta itself rounds to a ulp of 1e4
        shift = tl.load(x_row).to(ACC)
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(ACC)
        d = tl.where(mask, x - shift, 0.0)
        delta = tl.sum(d, axis=0) / D
        mean = shift + delta
        xc = tl.where(mask, d - delta, 0.0)  # centred values: the variance never subtracts big squares
        var = tl.sum(xc * xc, axis=0) / D
        rstd = 1.0 / sqrt_ieee(var + eps)
        y = xc * rstd
        if HAS_W:
            y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(ACC)
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=mask, other=0.0).to(ACC)
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        shift = tl.load(x_row).to(ACC)  # see the one-pass branch
        acc = tl.zeros([BLOCK], dtype=ACC)
        for start in range(0, D, BLOCK):
            mask = start + cols < D
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(ACC)
            acc += tl.where(mask, x - shift, 0.0)
        delta = tl.sum(acc, axis=0) / D
        mean = shift + delta
        acc = tl.zeros([BLOCK], dtype=ACC)
        for start in range(0, D, BLOCK):
            mask = start + cols < D
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(ACC)
            xc = tl.where(mask, (x - shift) - delta, 0.0)
            acc += xc * xc
        var = tl.sum(acc, axis=0) / D
        rstd = 1.0 / sqrt_ieee(var + eps)
        for start in range(0, D, BLOCK):
            mask = start + cols < D
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(ACC)
            y = ((x - shift) - delta) * rstd
            if HAS_W:
                y = y * tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(ACC)
            if HAS_B:
                y = y + tl.load(b_ptr + start + cols, mask=mask, other=0.0).to(ACC)
            tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + row, mean.to(mean_ptr.dtype.element_ty))
    tl.store(rstd_ptr + row, rstd.to(rstd_ptr.dtype.element_ty))


@triton.jit
def _layer_norm_bwd_kernel(
    g_ptr,  # *T (R, D) upstream gradient, row stride stride_g
    x_ptr,  # *T (R, D) forward input, row stride stride_x
    w_ptr,  # *T (D,) or a dummy when not HAS_W
    mean_ptr,  # *T (R,)
    rstd_ptr,  # *T (R,)
    dx_ptr,  # *T (R, D) contiguous
    dw_part_ptr,  # *ACC (P, D): this program's partial sum of g * xhat (only when HAS_W)
    db_part_ptr,  # *ACC (P, D): this program's partial sum of g
    R,
    D,
    stride_g,
    stride_x,
    rows_per_prog,
    HAS_W: tl.constexpr,
    ONE_PASS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dx = rstd * (wg - mean(wg) - xhat * mean(wg * xhat)), wg = g * w, xhat = (x - mean) * rstd.

    xhat is recomputed from x, mean and rstd instead of being stored by the forward.
    """
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    row_start = pid * rows_per_prog
    row_end = tl.minimum(row_start + rows_per_prog, R)
    dw_part = dw_part_ptr + pid * D
    db_part = db_part_ptr + pid * D
    if ONE_PASS:
        mask = cols < D
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(ACC)
        dw_acc = tl.zeros([BLOCK], dtype=ACC)  # accumulate the weight/bias grads in fp32 registers
        db_acc = tl.zeros([BLOCK], dtype=ACC)
        for row in range(row_start, row_end):
            x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(ACC)
            g = tl.load(g_ptr + row * stride_g + cols, mask=mask, other=0.0).to(ACC)
            mean = tl.load(mean_ptr + row).to(ACC)
            rstd = tl.load(rstd_ptr + row).to(ACC)
            xhat = tl.where(mask, (x - mean) * rstd, 0.0)
            if HAS_W:
                wg = g * w
                dw_acc += g * xhat
            else:
                wg = g
            db_acc += g
            c1 = tl.sum(xhat * wg, axis=0) / D
            c2 = tl.sum(wg, axis=0) / D
            dx = (wg - (xhat * c1 + c2)) * rstd
            tl.store(dx_ptr + row * D + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_W:
            tl.store(dw_part + cols, dw_acc, mask=mask)
        tl.store(db_part + cols, db_acc, mask=mask)
    else:
        # Long rows: the partial grads live in this program's own (D,) slice of the partial buffers
        # (zeroed by the launcher), updated chunk by chunk; no other program touches them.
        for row in range(row_start, row_end):
            mean = tl.load(mean_ptr + row).to(ACC)
            rstd = tl.load(rstd_ptr + row).to(ACC)
            acc1 = tl.zeros([BLOCK], dtype=ACC)
            acc2 = tl.zeros([BLOCK], dtype=ACC)
            for start in range(0, D, BLOCK):
                mask = start + cols < D
                x = tl.load(x_ptr + row * stride_x + start + cols, mask=mask, other=0.0).to(ACC)
                g = tl.load(g_ptr + row * stride_g + start + cols, mask=mask, other=0.0).to(ACC)
                xhat = tl.where(mask, (x - mean) * rstd, 0.0)
                if HAS_W:
                    wg = g * tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(ACC)
                    dw = tl.load(dw_part + start + cols, mask=mask, other=0.0)
                    tl.store(dw_part + start + cols, dw + g * xhat, mask=mask)
                else:
                    wg = g
                db = tl.load(db_part + start + cols, mask=mask, other=0.0)
                tl.store(db_part + start + cols, db + g, mask=mask)
                acc1 += xhat * wg
                acc2 += wg
            c1 = tl.sum(acc1, axis=0) / D
            c2 = tl.sum(acc2, axis=0) / D
            for start in range(0, D, BLOCK):
                mask = start + cols < D
                x = tl.load(x_ptr + row * stride_x + start + cols, mask=mask, other=0.0).to(ACC)
                g = tl.load(g_ptr + row * stride_g + start + cols, mask=mask, other=0.0).to(ACC)
                xhat = (x - mean) * rstd
                if HAS_W:
                    wg = g * tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(ACC)
                else:
                    wg = g
                dx = (wg - (xhat * c1 + c2)) * rstd
                tl.store(dx_ptr + row * D + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _unit_cols(t):
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def layer_norm_forward(x, weight, bias, eps):
    """LayerNorm of each row: ``(x - mean) / sqrt(var + eps) * weight + bias`` (biased variance).

    Args:
        x: ``(R, D)`` float tensor (fp16/bf16/fp32/fp64).
        weight: ``(D,)`` tensor of x's dtype, or None.
        bias: ``(D,)`` tensor of x's dtype, or None.
        eps: float added to the variance.

    Returns:
        ``(y, mean, rstd)``: y ``(R, D)``; mean and rstd (``1/sqrt(var + eps)``) ``(R,)``; all x's dtype.
    """
    x = _unit_cols(x)
    R, D = x.shape
    y = torch.empty((R, D), dtype=x.dtype, device=x.device)
    mean = torch.empty(R, dtype=x.dtype, device=x.device)
    rstd = torch.empty(R, dtype=x.dtype, device=x.device)
    if R == 0:
        return y, mean, rstd
    if D == 0:  # mean of nothing: NaN, as torch gives
        return y, mean.fill_(float("nan")), rstd.fill_(float("nan"))
    block, one_pass = row_block(D, _MAX_FUSED)
    w = weight.contiguous() if weight is not None else x
    b = bias.contiguous() if bias is not None else x
    _layer_norm_fwd_kernel[(R,)](
        x, w, b, y, mean, rstd, D, x.stride(0), float(eps),
        HAS_W=weight is not None, HAS_B=bias is not None, ONE_PASS=one_pass,
        ACC=acc_dtype(x.dtype), BLOCK=block, num_warps=num_warps_for(block),
    )
    return y, mean, rstd


def layer_norm_backward(grad, x, weight, mean, rstd):
    """Gradients of LayerNorm from the saved statistics.

    Args:
        grad: ``(R, D)`` upstream gradient.
        x: ``(R, D)`` forward input.
        weight: ``(D,)`` or None.
        mean: ``(R,)`` from the forward.
        rstd: ``(R,)`` from the forward.

    Returns:
        ``(grad_x, grad_weight, grad_bias)``: grad_x ``(R, D)``; grad_weight ``(D,)`` or None when weight
        is None; grad_bias ``(D,)`` (the column sums of grad), all x's dtype.
    """
    x, grad = _unit_cols(x), _unit_cols(grad)
    R, D = x.shape
    dx = torch.empty((R, D), dtype=x.dtype, device=x.device)
    has_w = weight is not None
    if R == 0 or D == 0:
        z = torch.zeros(D, dtype=x.dtype, device=x.device)
        return dx, (z.clone() if has_w else None), z
    acc = acc_dtype(x.dtype)
    part_dtype = torch.float64 if acc == tl.float64 else torch.float32
    block, one_pass = row_block(D, _MAX_FUSED)
    nprog = num_programs(x.device, R, per_sm=2)
    rows_per_prog = triton.cdiv(R, nprog)
    nprog = triton.cdiv(R, rows_per_prog)
    alloc = torch.empty if one_pass else torch.zeros  # the looped kernel adds into its slice
    dw_part = alloc((nprog, D), dtype=part_dtype, device=x.device) if has_w else None
    db_part = alloc((nprog, D), dtype=part_dtype, device=x.device)
    w = weight.contiguous() if has_w else x
    _layer_norm_bwd_kernel[(nprog,)](
        grad, x, w, mean, rstd, dx, dw_part if has_w else db_part, db_part,
        R, D, grad.stride(0), x.stride(0), rows_per_prog,
        HAS_W=has_w, ONE_PASS=one_pass, ACC=acc, BLOCK=block, num_warps=num_warps_for(block),
        # no fused multiply-adds: contracting wg - c2 into fma(g, w, -c2) leaves the product's rounding
        # error where the exact answer is 0 (D == 1, or a constant row), times rstd = 1/sqrt(eps)
        enable_fp_fusion=False,
    )
    dw = col_sum(dw_part, acc).to(x.dtype) if has_w else None
    db = col_sum(db_part, acc).to(x.dtype)
    return dx, dw, db

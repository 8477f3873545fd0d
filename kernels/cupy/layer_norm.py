"""LayerNorm over the rows of a ``(R, D)`` CuPy array: RawKernels in ``cuda/layer_norm.cu``.

The forward is one block per row (two-pass, pivot-shifted mean/variance in the accumulation dtype, accurate
for rows like 1e4 + small noise where a plain fp32 mean is not). The backward writes
grad_x one block per row, and grad_weight / grad_bias as per-chunk column partials folded in a fixed order
by ``cuda/reduce.cu`` (deterministic; no atomics).
"""
from __future__ import annotations

from . import _source as src

_CU = "layer_norm.cu"
_ROWS_PER_CHUNK_MIN = 64   # each (32 x 8)-thread block of ln_bwd_wb sums at least this many rows
_MAX_CHUNKS = 1024         # and there are at most this many partial rows to fold afterwards


def layer_norm_forward(x, weight, bias, eps):
    """Normalise each row to zero mean and unit variance, then scale and shift.

    Args:
        x: ``(R, D)`` float CuPy array.
        weight: ``(D,)`` array or None (no scale).
        bias: ``(D,)`` array or None (no shift).
        eps: added to the variance before the square root.

    Returns:
        ``(y, mean, rstd)``: y ``(R, D)``; mean and rstd ``(R,)``, all in x's dtype; rstd is
        ``1 / sqrt(var + eps)`` with the biased variance.

    Example:
        >>> y, mean, rstd = layer_norm_forward(x, w, b, 1e-5)  # doctest: +SKIP
    """
    cp = src.cupy()
    dtype = src.check_float(x, weight, bias)
    x = cp.ascontiguousarray(x)
    R, D = x.shape
    y = cp.empty_like(x)
    mean = cp.empty((R,), dtype=x.dtype)
    rstd = cp.empty((R,), dtype=x.dtype)
    if R:
        w = cp.ascontiguousarray(weight) if weight is not None else x
        b = cp.ascontiguousarray(bias) if bias is not None else x
        k = src.function(_CU, "ln_fwd", dtype)
        k((src.grid(R),), (src.threads_for(D),),
          (x, w, b, y, mean, rstd, src.i64(R), src.i64(D), src.acc_scalar(dtype, eps),
           src.i32(weight is not None), src.i32(bias is not None)))
    return y, mean, rstd


def layer_norm_backward(grad, x, weight, mean, rstd):
    """Gradients of `layer_norm_forward` from its saved statistics.

    Args:
        grad: ``(R, D)`` upstream gradient.
        x: ``(R, D)`` forward input.
        weight: ``(D,)`` array or None.
        mean: ``(R,)`` forward mean.
        rstd: ``(R,)`` forward reciprocal standard deviation.

    Returns:
        ``(grad_x, grad_weight_or_None, grad_bias)``: grad_x ``(R, D)``; grad_weight ``(D,)`` (None when
        weight is None); grad_bias ``(D,)``, always computed (the launcher drops it when there is no bias).
    """
    cp = src.cupy()
    dtype = src.check_float(grad, x, weight, mean, rstd)
    grad, x = cp.ascontiguousarray(grad), cp.ascontiguousarray(x)
    mean, rstd = cp.ascontiguousarray(mean), cp.ascontiguousarray(rstd)
    R, D = x.shape
    gx = cp.empty_like(x)
    gw = cp.empty((D,), dtype=x.dtype)
    gb = cp.empty((D,), dtype=x.dtype)
    acc = src.acc_dtype(dtype)
    dm = cp.empty((R,), dtype=acc)  # per-row correction of the rounded saved mean (see layer_norm.cu)
    if R:
        w = cp.ascontiguousarray(weight) if weight is not None else x
        k = src.function(_CU, "ln_bwd_x", dtype)
        k((src.grid(R),), (src.threads_for(D),),
          (grad, x, w, mean, rstd, gx, dm, src.i64(R), src.i64(D), src.i32(weight is not None)))
    if D:
        if R == 0:
            gw[...] = 0
            gb[...] = 0
        else:
            rows_per_chunk = max(_ROWS_PER_CHUNK_MIN, -(-R // _MAX_CHUNKS))
            chunks = -(-R // rows_per_chunk)
            part_w = cp.empty((chunks, D), dtype=acc)
            part_b = cp.empty((chunks, D), dtype=acc)
            k = src.function(_CU, "ln_bwd_wb", dtype)
            k((-(-D // 32), chunks), (32, 8),
              (grad, x, mean, rstd, dm, part_w, part_b, src.i64(R), src.i64(D), src.i64(rows_per_chunk)))
            fold = src.function("reduce.cu", "dl_col_sum", dtype)
            for part, out in ((part_w, gw), (part_b, gb)):
                fold((-(-D // 256),), (256,), (part, src.i64(chunks), src.i64(D), out))
    return gx, (gw if weight is not None else None), gb

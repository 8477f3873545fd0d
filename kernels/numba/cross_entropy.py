"""Cross-entropy over class logits in Numba: loss and gradient in one fused, row-parallel pass.

Same semantics as the NumPy reference (``kernels/numpy/cross_entropy.py``, torch 2.13's
``F.cross_entropy`` with class-index targets): label smoothing, ``ignore_index`` (loss 0, gradient 0),
``'mean'`` over the non-ignored rows (NaN when there is none), ``'sum'``, ``'none'``.

One kernel serves forward and backward. Each row is handled by one thread, and every pass over a row is a
vectorised loop on a contiguous 1-D row view (AVX2 or AVX-512; the row primitives of `_rows`, as softmax.py):

1. row max (`_rows.row_max`, an integer max over order-preserving keys of the float bits) -- the only
   pass that reads the logits from DRAM;
2. ``exp(x - max)`` with `_vmath.exp_neg` (<= 1 ulp, in the logits' dtype) into the gradient row, or into
   a per-task scratch row when no gradient is wanted (so both paths give bit-identical losses), then
   summed while in cache (`_rows.exp_sum`: float64, with vector partial sums in the dtype within blocks
   of 512 entries in rows longer than that); the float64 row sum of the logits when label smoothing is
   on; ``lse = max + log(sum)``;
3. the in-cache rescale ``grad = exp * (scale / sum) - scale * eps / C`` in the dtype (two roundings,
   <= 1-2 ulp), then the target column loses ``scale * (1 - eps)`` (in float64, one rounding).

A row of 32000 (50257) float32 logits is 128 KB (200 KB): passes 2-3 hit L2, not DRAM.
Non-finite rows follow torch: a NaN or +inf anywhere, or a row of only -inf, gives a NaN loss and a NaN
gradient row (``x - max`` or the sum is NaN: a NaN reaches them through the max or through its own exp); a
-inf among finite logits gets probability exactly 0 (``exp_neg(-inf) == 0``). No fast-math flag touches
the elementwise arithmetic; only the sums' adds carry ``reassoc``/``contract`` (no ``nnan``/``ninf``).

Rows are split into contiguous blocks (``prange`` over blocks from 32768 logits on, one block serially
below that); a row is computed the same way whatever its block, and the per-row losses are summed serially
afterwards, so the results do not depend on the thread count.

Floor: reads N*C logits once and writes N*C gradients once (8 bytes per float32 logit with a gradient);
the gradient writes also cost a read-for-ownership (and a first-touch page fault when the buffer is fresh),
so a plain-store kernel moves ~12 bytes per logit through DRAM. Compute: one exp and ~6 flops per logit.

Measured on the project machine (2-core AMD EPYC VM shared with other jobs, 2026-11-26; fwd+bwd through
``dlcore.ops.cross_entropy`` on torch tensors, interleaved with torch's ``F.cross_entropy``, medians of 7
and 3 rounds). At load average 2.2, with the parallel copy bandwidth measured at 30.6 GB/s right after:
4096x32000 81 ms (best 74) vs torch 871 ms, 10.7x, 12.9 GB/s at 8 bytes per logit = 42% of the copy
bandwidth; 8192x50257 299 ms (best 246) vs torch 3327 ms, 11.1x, 11.0 GB/s = 36% (best round 44%). At
load 5.5-8 the same runs gave 244 / 1257 ms vs torch 2638 / 15084 ms (10.8x, 12.0x), and pytest-benchmark
(load 4-6, not interleaved) 224 / 543 ms vs 1538 / 5079 ms (6.9x, 9.4x). Per logit, one thread, row in
cache: max 0.08 ns, exp 0.42, float64 sum 0.10, rescale 0.09 (0.64 ns: ~42 ms of the 4096x32000 case on
two cores, not overlapped with the max pass's DRAM reads). Before: 565 ms in RESULTS.md (scalar libm exp,
fresh gradient). A fresh 524 MB gradient's first-touch page faults alone cost ~300 ms here (a parallel
copy into fresh memory took 370 ms vs 64 ms into reused memory, at load 5.7), hence the recycling below.
"""
import math

import numpy as np
from numba import njit, prange

from . import _blocks
from . import _rows as rows
from . import _vmath as vm

_REDUCTIONS = ("none", "mean", "sum")

# Below this many logits the kernel runs serially: waking the thread pool costs more than the work.
_SERIAL_BELOW = 32768

# Rows per parallel task: enough tasks to balance two to a few dozen threads, few enough that the
# per-task scratch row (loss-only calls) costs nothing.
_TASKS = 64

@njit(cache=True)
def _rescale(out, inv, shift):
    # out = out * inv - shift, elementwise in out's dtype (no contraction: fastmath is off)
    for j in range(out.shape[0]):
        out[j] = out[j] * inv - shift


@njit(cache=True, error_model="numpy")
def _zero(out):
    for j in range(out.shape[0]):
        out[j] = 0


@njit(cache=True, error_model="numpy")
def _cross_entropy_row(x, t, label_smoothing, e):
    """Loss of one row: x (C,) logits, t its target class, e (C,) receives ``exp(x - max)``.

    Returns (row loss, partition sum), both float64."""
    c = x.shape[0]
    m = rows.row_max(x)  # subtract the max for numerical stability
    s = rows.exp_sum(x, m, e)  # e = exp(x - m); the partition sum, float64 across blocks
    lse = np.float64(m) + math.log(s)
    row_loss = lse - np.float64(x[t])
    if label_smoothing != 0:  # skipped at 0 so that a -inf logit cannot turn 0 * inf into NaN
        row_loss = (1.0 - label_smoothing) * row_loss + label_smoothing * (lse - rows.sum_f64(x) / c)
    return row_loss, s


@njit(inline="always", error_model="numpy")
def _cross_entropy_rows(logits, target, ignore_index, label_smoothing, row_scale, scale_per_row, compute_grad,
                        lo, hi, loss, grad):
    """Rows [lo, hi): loss[i] and, if compute_grad, row_scale * d(loss_i)/d(logits[i]) into grad[i]."""
    c = logits.shape[1]
    scratch = np.empty(0 if compute_grad else c, logits.dtype)  # exp row for loss-only calls
    for i in range(lo, hi):
        t = target[i]
        if t == ignore_index:
            loss[i] = 0.0
            if compute_grad:
                _zero(grad[i])  # ignored rows: exactly 0, whatever their logits hold
            continue
        e = grad[i] if compute_grad else scratch
        row_loss, s = _cross_entropy_row(logits[i], t, label_smoothing, e)
        loss[i] = row_loss
        if compute_grad:
            # on the cached row: grad = scale * (softmax - eps / C); the target column loses scale * (1 - eps)
            scale = row_scale[i] if scale_per_row else row_scale[0]
            _rescale(e, vm.like(e[0], scale / s), vm.like(e[0], scale * label_smoothing / c))
            e[t] = np.float64(e[t]) - scale * (1.0 - label_smoothing)


@njit(parallel=True, cache=True, error_model="numpy")
def _cross_entropy_kernel(logits, target, ignore_index, label_smoothing, row_scale, scale_per_row,
                          compute_grad, n_tasks, loss, grad):
    # task k owns the contiguous rows [k * N // n_tasks, (k + 1) * N // n_tasks)
    n = logits.shape[0]
    for k in prange(n_tasks):
        _cross_entropy_rows(logits, target, ignore_index, label_smoothing, row_scale, scale_per_row,
                            compute_grad, k * n // n_tasks, (k + 1) * n // n_tasks, loss, grad)


@njit(cache=True, error_model="numpy")
def _cross_entropy_serial_kernel(logits, target, ignore_index, label_smoothing, row_scale, scale_per_row,
                                 compute_grad, n_tasks, loss, grad):
    _cross_entropy_rows(logits, target, ignore_index, label_smoothing, row_scale, scale_per_row, compute_grad,
                        0, logits.shape[0], loss, grad)


# -- gradient buffers ------------------------------------------------------------------------------------
# The (N, C) gradient comes from the recycled-block pool (`_blocks`): a fresh 524 MB gradient costs ~300 ms
# of first-touch page faults on the project machine, five times the kernel's own DRAM traffic. Every row is
# written by the kernel, so a recycled block's old contents never show.
_drop_recycled = _blocks.drop_idle  # kept for the benchmarks


def _run(logits, target, ignore_index, label_smoothing, row_scale, scale_per_row, compute_grad):
    """Launch the kernel; returns (per-row float64 losses, gradient or None)."""
    n, c = logits.shape
    loss = np.empty(n, np.float64)
    grad = _blocks.empty((n, c) if compute_grad else (0, 0), logits.dtype)  # every row is written: no zero fill
    parallel = logits.size >= _SERIAL_BELOW
    kernel = _cross_entropy_kernel if parallel else _cross_entropy_serial_kernel
    row_scale = np.ascontiguousarray(row_scale, dtype=np.float64).reshape(-1)
    kernel(logits, target, ignore_index, float(label_smoothing), row_scale, scale_per_row,
           compute_grad, min(n, _TASKS), loss, grad)
    return loss, (grad if compute_grad else None)


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def cross_entropy_forward(logits, target, ignore_index, label_smoothing, reduction, compute_grad):
    """Cross-entropy loss of class logits and, optionally, its gradient, in one fused pass per row.

    Args:
        logits: ``(N, C)`` C-contiguous float32/float64 array.
        target: ``(N,)`` int64 class indices in ``[0, C)`` or equal to ``ignore_index`` (checked by the
            launcher; not re-checked here).
        ignore_index: int; rows with this target contribute nothing (loss 0, gradient 0).
        label_smoothing: float in ``[0, 1]``.
        reduction: ``'none'``, ``'mean'`` (over non-ignored rows) or ``'sum'``.
        compute_grad: if True also return d(loss)/d(logits) for an upstream gradient of 1 (of ones for
            ``'none'``).

    Returns:
        ``(loss, grad_logits_or_None)``: loss is ``(N,)`` for ``'none'``, else a 0-d array (``'mean'`` is
        NaN when every target is ignored or N == 0); grad is ``(N, C)``; both in the logits' dtype.

    Example:
        >>> x = np.array([[0.0, 0.0]]); t = np.array([1])
        >>> loss, g = cross_entropy_forward(x, t, -100, 0.0, "mean", True)
        >>> float(loss), g.tolist()
        (0.6931471805599453, [[0.5, -0.5]])
    """
    _check_reduction(reduction)
    n_valid = int(np.count_nonzero(target != ignore_index)) if reduction == "mean" else 0
    scale = 1.0 / n_valid if reduction == "mean" and n_valid else 1.0
    loss, grad = _run(logits, target, ignore_index, label_smoothing, np.full(1, scale), False, compute_grad)
    if reduction == "none":
        out = loss
    elif reduction == "sum":
        out = np.asarray(loss.sum())
    else:
        out = np.asarray(loss.sum() / n_valid if n_valid else np.nan)
    return out.astype(logits.dtype), grad


def cross_entropy_backward(grad, logits, target, ignore_index, label_smoothing, reduction):
    """Gradient of the cross-entropy loss with respect to the logits (softmax recomputed, one pass).

    Args:
        grad: upstream gradient, ``(N,)`` for ``'none'``, else a 0-d array.
        logits, target, ignore_index, label_smoothing, reduction: as for :func:`cross_entropy_forward`.

    Returns:
        ``(N, C)`` gradient in the logits' dtype; 0 on ignored rows.

    Example:
        >>> x = np.array([[0.0, 0.0]]); t = np.array([1])
        >>> cross_entropy_backward(np.array(2.0), x, t, -100, 0.0, "sum").tolist()
        [[1.0, -1.0]]
    """
    _check_reduction(reduction)
    g = np.asarray(grad, dtype=np.float64)
    if reduction == "mean":
        n_valid = int(np.count_nonzero(target != ignore_index))
        g = g / n_valid if n_valid else np.zeros(())  # no valid row: every gradient row is 0 anyway
    return _run(logits, target, ignore_index, label_smoothing, g, reduction == "none", True)[1]

"""SGD and Adam/AdamW as one fused, parallel pass each, bit-for-bit torch.optim's single-tensor arithmetic.

torch.optim (``foreach=False, fused=False``) runs a chain of tensor ops per parameter; each kernel here
does the same ops per element in one pass over param, grad and the state, in place (``prange`` from 32768
elements on, a serial loop below that, where waking the thread pool would cost more than the update). To
stay bitwise equal to torch:

* every op runs in the parameter dtype; the launchers below cast each Python-float hyper-parameter to that
  dtype exactly where torch's CPU kernels cast a wrapped scalar, and compute in double what torch computes
  in Python (``1 - beta1``, ``lr / (1 - beta1**step)``, ``(1 - beta2**step) ** 0.5``);
* torch's ``add(alpha=)``, ``lerp`` and ``addcmul`` round ``a * b + c`` once (``vec::fmadd`` and compiler
  contraction; checked on torch 2.13's AVX2 build, and AVX-512 uses the same ``fmadd``; only torch's
  non-SIMD DEFAULT kernels would round twice), so the kernels call :func:`_fma` (``llvm.fma``) there and
  nowhere else; the kernels are compiled without ``fastmath`` so LLVM fuses nothing on its own;
* ``torch.sqrt`` on MKL builds is MKL's VML_HA sqrt, off by one ulp on some inputs; we use IEEE sqrt,
  which torch builds without MKL use too (see tests/kernels/test_optimizers.py).

The parallel kernels split the elements into 64 contiguous blocks that start on 64-byte boundaries of
param (the few elements before its first boundary are a block of their own), so with operands at the same
offset (NumPy's large arrays all start 16 bytes past a boundary) no AVX load or store straddles two cache
lines; the per-element arithmetic, and so every bit, is the same for any split.

Floor: memory-bound. Adam reads 4 and writes 3 words per element (28 bytes per float32 parameter: 470 MB
for 16.8M), SGD with momentum reads 3 and writes 2 (20 bytes), plain SGD 2 and 1. Every line written was
just read, so no read-for-ownership comes on top: these are the DRAM bytes. Measured on the project
machine (2-core AMD EPYC VM, shared with other jobs, 2026-11-26; bench/bench_optimizers.py's ``stream`` row
is a Numba pass with exactly Adam's or SGD's loads and stores and an add for the arithmetic):

* at load average 7-8 (pytest-benchmark, 10 rounds, medians, before the block split): adam 47.9 ms vs
  stream 47.1; adamw 46.5 vs 47.7; sgd 32.1 vs 32.6; torch fused=True 59.0 / 35.1 / 32.0, foreach 472 /
  352 / 222;
* at load 5.4 (one process, interleaved, 15 rounds): stream 24 ms on 64-byte-aligned and on 16-byte-offset
  arrays alike, the previous per-element ``prange`` AdamW 24 ms aligned but 28 ms at the 16-byte offset
  (hence the aligned blocks);
* at load 1.7-2.2 (one process, interleaved with torch, 11 rounds, medians; previous kernel / this one /
  torch fused / foreach): adamw 13.4 / 12.9 / 13.6 / 79.4 ms (12.9 ms = 36 GB/s); sgd 10.8 / 8.7 / 9.6 /
  59.1 ms (SGD gained from one loop per buffer use instead of a select inside the loop); pytest-benchmark
  at load 2.9: adam 13.5 ms vs stream 13.3 vs fused 15.5.

So this kernel and torch's fused one both run at the stream floor (the floor's GB/s swings 2.5x with the
other jobs' load: 470 MB in 13-48 ms); torch skips nothing (same 28 bytes), it only beats the "copy
bandwidth" of RESULTS.md (16.7 GB/s), which understates the floor because a copy also reads its destination
(3 transfers counted as 2). 1.2x torch fused would need a pass ~20% faster than the plain stream pass
over the same arrays, which no variant tried here (per-element or blocked prange, aligned blocks, 32-wide
unrolled tiles) came near; only moving fewer bytes (e.g. bfloat16 state) would, and that changes the
numbers.
"""
import numpy as np
from numba import njit, prange
from numba.extending import intrinsic


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` with one rounding (``llvm.fma``; a hardware FMA on x86-64 with FMA3)."""
    if not (a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


# Below this many elements the kernels run serially: waking the thread pool costs more than the update
# (torch's TensorIterator uses the same grain size).
_SERIAL_BELOW = 32768

# Parallel blocks per call: a few per thread, for balance under a shared machine's scheduling.
_TASKS = 64


def _alignment_head(a):
    """Elements before ``a``'s first 64-byte boundary (NumPy's large arrays start 16 bytes past one).

    The parallel kernels run those few elements as a task of their own and split the rest on 64-byte
    boundaries, so no AVX load or store straddles two cache lines when the other operands share param's
    offset (see the module docstring)."""
    address, size = a.ctypes.data, a.dtype.itemsize
    return 0 if address % size else min(a.shape[0], (-address) % 64 // size)


@njit(inline="always", error_model="numpy")
def _sgd_update(p, g, b, hyper, flags):
    """One element of torch's SGD chain; returns (new param, new momentum-buffer value)."""
    neg_lr, weight_decay, momentum, one_minus_dampening = hyper
    has_weight_decay, use_momentum, first_step, nesterov = flags
    if has_weight_decay:
        g = _fma(p, weight_decay, g)  # grad.add(param, alpha=weight_decay)
    if use_momentum:
        if first_step:
            b = g  # buf = grad.clone(): no dampening on the first step
        else:
            b = _fma(g, one_minus_dampening, b * momentum)  # buf.mul_(momentum).add_(grad, alpha=1-dampening)
        if nesterov:
            g = _fma(b, momentum, g)  # grad.add(buf, alpha=momentum)
        else:
            g = b
    return _fma(g, neg_lr, p), b  # param.add_(grad, alpha=-lr)


@njit(inline="always")
def _task_bounds(k, n_tasks, head, n):
    """Elements [lo, hi) of task k: task n_tasks is the unaligned head [0, head); tasks 0..n_tasks-1 split
    [head, n) into contiguous blocks that start on 16-element (64-byte for float32) boundaries."""
    if k == n_tasks:
        return 0, head
    body = n - head
    lo = k * body // n_tasks
    lo -= lo % 16
    if k + 1 == n_tasks:
        hi = body
    else:
        hi = (k + 1) * body // n_tasks
        hi -= hi % 16
    return head + lo, head + hi


@njit(parallel=True, cache=True, error_model="numpy")
def _sgd_kernel(param, grad, buf, hyper, flags, head, n_tasks):
    # one pass: weight decay, momentum buffer, Nesterov look-ahead and the update, per element; contiguous
    # blocks per task whose vector loads and stores do not straddle cache lines (see `_alignment_head`)
    use_buf, read_buf = flags[1], flags[1] and not flags[2]  # momentum; momentum after the first step
    for k in prange(n_tasks + 1):
        lo, hi = _task_bounds(k, n_tasks, head, param.shape[0])
        pk, gk = param[lo:hi], grad[lo:hi]  # 1-D views: vector loops, one per buffer use (no select inside)
        if read_buf:
            bk = buf[lo:hi]
            for i in range(hi - lo):
                pk[i], bk[i] = _sgd_update(pk[i], gk[i], bk[i], hyper, flags)
        elif use_buf:
            bk = buf[lo:hi]
            for i in range(hi - lo):
                pk[i], bk[i] = _sgd_update(pk[i], gk[i], pk[i], hyper, flags)
        else:
            for i in range(hi - lo):
                pk[i] = _sgd_update(pk[i], gk[i], pk[i], hyper, flags)[0]


@njit(cache=True, error_model="numpy")
def _sgd_serial_kernel(param, grad, buf, hyper, flags, head, n_tasks):
    use_buf, read_buf = flags[1], flags[1] and not flags[2]  # momentum; momentum after the first step
    for i in range(param.shape[0]):
        p, b = _sgd_update(param[i], grad[i], buf[i] if read_buf else param[i], hyper, flags)
        if use_buf:
            buf[i] = b
        param[i] = p


@njit(inline="always", error_model="numpy")
def _adam_update(p, g, m, v, hyper, flags):
    """One element of torch's _single_tensor_adam chain; returns (new param, exp_avg, exp_avg_sq)."""
    (decay, weight_decay, lerp_weight, lerp_weight_minus_one, beta2, one_minus_beta2, bias_correction2_sqrt,
     eps, neg_step_size) = hyper
    has_weight_decay, decoupled, lerp_small = flags
    if has_weight_decay:
        if decoupled:
            p = p * decay  # param.mul_(1 - lr * weight_decay)
        else:
            g = _fma(p, weight_decay, g)  # grad.add(param, alpha=weight_decay)
    # exp_avg.lerp_(grad, 1 - beta1), torch's two-sided lerp formula
    if lerp_small:
        m = _fma(lerp_weight, g - m, m)
    else:
        m = _fma(lerp_weight_minus_one, g - m, g)
    v = _fma(one_minus_beta2 * g, g, v * beta2)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2)
    denom = np.sqrt(v) / bias_correction2_sqrt + eps  # (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps)
    return p + (neg_step_size * m) / denom, m, v  # param.addcdiv_(exp_avg, denom, value=-step_size)


@njit(parallel=True, cache=True, error_model="numpy")
def _adam_kernel(param, grad, exp_avg, exp_avg_sq, hyper, flags, head, n_tasks):
    # one pass per element over the whole chain of ops in torch's _single_tensor_adam, in cache-line
    # aligned contiguous blocks per task
    for k in prange(n_tasks + 1):
        lo, hi = _task_bounds(k, n_tasks, head, param.shape[0])
        p, g, m, v = param[lo:hi], grad[lo:hi], exp_avg[lo:hi], exp_avg_sq[lo:hi]  # 1-D views: a vector loop
        for i in range(hi - lo):
            p[i], m[i], v[i] = _adam_update(p[i], g[i], m[i], v[i], hyper, flags)


@njit(cache=True, error_model="numpy")
def _adam_serial_kernel(param, grad, exp_avg, exp_avg_sq, hyper, flags, head, n_tasks):
    for i in range(param.shape[0]):
        param[i], exp_avg[i], exp_avg_sq[i] = _adam_update(param[i], grad[i], exp_avg[i], exp_avg_sq[i],
                                                           hyper, flags)


def sgd_step(param, grad, momentum_buffer, lr, momentum, dampening, nesterov, weight_decay):
    """One torch.optim.SGD step (single-tensor arithmetic) as one fused parallel pass, in place.

    Args:
        param: 1-D C-contiguous float32/float64 array, updated in place.
        grad: gradient, same shape and dtype; never modified (it may share memory with ``param``).
        momentum_buffer: the buffer returned by the previous step, or None before the first step (torch
            then starts it as a copy of the weight-decayed gradient, without dampening).
        lr, momentum, dampening, weight_decay: Python floats, as given to torch.optim.SGD.
        nesterov: bool, Nesterov momentum.

    Returns:
        The momentum buffer (updated in place, or freshly allocated on the first step); None when
        ``momentum == 0``.

    Example:
        >>> p, g = np.ones(3, np.float32), np.full(3, 0.5, np.float32)
        >>> buf = sgd_step(p, g, None, 0.1, 0.9, 0.0, False, 0.0)
        >>> float(p[0]), float(buf[0])
        (0.949999988079071, 0.5)
    """
    f = param.dtype.type
    use_momentum = momentum != 0
    first_step = use_momentum and momentum_buffer is None
    if not use_momentum:
        buf = np.empty(0, param.dtype)
    elif first_step:
        buf = np.empty_like(param)
    else:
        buf = momentum_buffer
    kernel = _sgd_kernel if param.shape[0] >= _SERIAL_BELOW else _sgd_serial_kernel
    kernel(param, grad, buf, (f(-lr), f(weight_decay), f(momentum), f(1 - dampening)),
           (weight_decay != 0, use_momentum, first_step, bool(nesterov)), _alignment_head(param), _TASKS)
    return buf if use_momentum else None


def adam_hyper(dtype, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """The per-step constants of torch's single-tensor Adam, rounded to ``dtype`` as the update uses them.

    Returns:
        ``(hyper, flags)`` for `_adam_update`: hyper a tuple of 9 ``dtype`` scalars, flags 3 bools
        (weight decay on, decoupled, lerp from the small side).
    """
    f = np.dtype(dtype).type
    step = float(step)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    lerp_weight = f(1 - beta1)
    hyper = (f(1 - lr * weight_decay), f(weight_decay), lerp_weight, lerp_weight - f(1), f(beta2),
             f(1 - beta2), f(bias_correction2_sqrt), f(eps), f(-step_size))
    flags = (weight_decay != 0, bool(decoupled), bool(abs(lerp_weight) < 0.5))
    return hyper, flags


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """One torch.optim.Adam (``decoupled=False``) or AdamW (``decoupled=True``) step, fused and in place.

    Replays ``_single_tensor_adam`` (amsgrad=False, maximize=False) per element in the parameter dtype.

    Args:
        param: 1-D C-contiguous float32/float64 array, updated in place.
        grad: gradient, same shape and dtype; never modified.
        exp_avg, exp_avg_sq: the first and second moment state (zeros before the first step), updated in
            place.
        step: this update's 1-based count (torch's ``state['step']`` after its increment).
        lr, beta1, beta2, eps, weight_decay: Python floats, as given to the torch optimizer.
        decoupled: False for Adam's L2 penalty (``grad + weight_decay * param``), True for AdamW's decay
            (``param *= 1 - lr * weight_decay`` before the update).

    Returns:
        None.

    Example:
        >>> p, g = np.ones(2), np.full(2, 0.5)
        >>> m, v = np.zeros(2), np.zeros(2)
        >>> adam_step(p, g, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
        >>> round(float(p[0]), 6)
        0.999
    """
    hyper, flags = adam_hyper(param.dtype, step, lr, beta1, beta2, eps, weight_decay, decoupled)
    kernel = _adam_kernel if param.shape[0] >= _SERIAL_BELOW else _adam_serial_kernel
    kernel(param, grad, exp_avg, exp_avg_sq, hyper, flags, _alignment_head(param), _TASKS)

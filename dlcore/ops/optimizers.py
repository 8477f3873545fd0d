"""In-place optimizer steps sgd_, adam_, adamw_: one fused pass over param, grad and state.

The arithmetic follows torch.optim's single-tensor code operation by operation, so a run can switch
between torch.optim and dlcore mid-training and keep the same numbers. Kernels see 1-D contiguous arrays;
a non-contiguous parameter or state is stepped through a contiguous copy that is written back.
"""
from __future__ import annotations

import numpy as np

from dlcore import _arrays
from dlcore.ops._common import Call


def _byte_extent(ptr, shape, strides, itemsize):
    """[lo, hi) of the bytes an array with these strides (in bytes) touches; None when it is empty."""
    if any(n == 0 for n in shape):
        return None
    lo = hi = ptr
    for n, st in zip(shape, strides):
        if st >= 0:
            hi += (n - 1) * st
        else:
            lo += (n - 1) * st
    return lo, hi + itemsize


def _shares_memory(a, b) -> bool:
    """Whether two arrays may share memory. NumPy (and torch CPU) arrays get NumPy's exact answer; torch
    CUDA tensors and CuPy arrays get an overlap test of their byte ranges (conservative, and O(1): CuPy's
    exact ``shares_memory`` costs as much as a pass over the arrays)."""
    if a is None or b is None:
        return False
    if _arrays.is_torch(a):
        a, b = a.detach(), b.detach()
        if a.device.type == "cpu":
            return bool(np.shares_memory(a.numpy(), b.numpy()))
        ea = _byte_extent(a.data_ptr(), a.shape, [s * a.element_size() for s in a.stride()], a.element_size())
        eb = _byte_extent(b.data_ptr(), b.shape, [s * b.element_size() for s in b.stride()], b.element_size())
    elif _arrays.is_cupy(a):
        ea = _byte_extent(a.data.ptr, a.shape, a.strides, a.itemsize)
        eb = _byte_extent(b.data.ptr, b.shape, b.strides, b.itemsize)
    else:
        return bool(np.shares_memory(a, b))
    return ea is not None and eb is not None and ea[0] < eb[1] and eb[0] < ea[1]


def _check(op, named, call):
    call.float_args(named)
    shape = tuple(named["param"].shape)
    for name, a in named.items():
        if a is not None and tuple(a.shape) != shape:
            raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, param has {shape}")
    keys = [k for k, v in named.items() if v is not None]
    for i, x in enumerate(keys):
        for y in keys[i + 1:]:
            if _shares_memory(named[x], named[y]):
                raise ValueError(f"{op}: {x} and {y} share memory; a fused in-place step needs separate buffers")


def _positive(op, **values):
    for name, v in values.items():
        if not v >= 0.0:  # also rejects NaN
            raise ValueError(f"{op}: invalid {name} {v}: must be >= 0")


class _Flat:
    """1-D contiguous native views of the arrays, and a write-back for any that had to be copied."""

    def __init__(self, call, arrays):
        self.call, self.pairs = call, []
        self.flat = []
        for a in arrays:
            if a is None:
                self.flat.append(None)
                continue
            n = call.to_native(a)
            if call.ns.is_contiguous(n):
                self.flat.append(n.reshape(-1))
            else:
                f = call.ns.contiguous(n).reshape(-1)
                self.pairs.append((n, f))
                self.flat.append(f)

    def write_back(self):
        for n, f in self.pairs:
            self.call.ns.copy_into(n, f.reshape(n.shape))


def sgd_(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
         backend=None):
    """One in-place SGD step with torch.optim.SGD's arithmetic.

    Args:
        param: float array, updated in place. grad: same shape and dtype.
        momentum_buffer: the state from the previous step, or None on the first step.
        lr, momentum, dampening, nesterov, weight_decay: as torch.optim.SGD.

    Returns:
        The momentum buffer to pass next time (a new array on the first step when momentum != 0, as torch
        creates it from the gradient), or None when momentum is 0.
    """
    named = {"param": param, "grad": grad, "momentum_buffer": momentum_buffer}
    call = Call("sgd_", named, backend)
    _check("sgd_", named, call)
    _positive("sgd_", lr=lr, momentum=momentum, weight_decay=weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("sgd_: nesterov momentum requires momentum > 0 and dampening = 0")
    flat = _Flat(call, (param, grad, momentum_buffer))
    p, g, buf = flat.flat
    new_buf = call.k.sgd_step(p, g, buf, float(lr), float(momentum), float(dampening), bool(nesterov),
                              float(weight_decay))
    flat.write_back()
    if new_buf is None:
        return None
    if momentum_buffer is not None:
        return momentum_buffer
    return call.from_native(new_buf.reshape(tuple(call.to_native(param).shape)))


def _adam(op, decoupled, param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, backend):
    named = {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    call = Call(op, named, backend)
    for name, a in named.items():
        if a is None:
            raise TypeError(f"{op}: {name} is required (pass zeros for a fresh state)")
    _check(op, named, call)
    _positive(op, lr=lr, eps=eps, weight_decay=weight_decay)
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"{op}: betas must be in [0, 1), got ({beta1}, {beta2})")
    if int(step) != step or step < 1:
        raise ValueError(f"{op}: step counts from 1 (the step being taken), got {step}")
    flat = _Flat(call, (param, grad, exp_avg, exp_avg_sq))
    call.k.adam_step(*flat.flat, int(step), float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                     decoupled)
    flat.write_back()
    return param


def adam_(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
          backend=None):
    """One in-place Adam step with torch.optim.Adam's arithmetic (L2 weight decay added to the gradient).

    Args:
        param, grad, exp_avg, exp_avg_sq: float arrays of one shape and dtype; param and both moments are
            updated in place.
        step: the number of this step, counting from 1 (drives the bias corrections).
        lr, beta1, beta2, eps, weight_decay: as torch.optim.Adam (betas=(beta1, beta2)).

    Returns:
        ``param``.
    """
    return _adam("adam_", False, param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, backend)


def adamw_(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
           backend=None):
    """One in-place AdamW step with torch.optim.AdamW's arithmetic (decoupled decay: ``param *= 1 - lr * wd``).

    Arguments as `adam_`; returns ``param``.
    """
    return _adam("adamw_", True, param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, backend)

"""softmax and log_softmax along any dim, with their backward kernels.

Kernels see a C-contiguous ``(rows, C)`` array: the launcher moves ``dim`` last (a copy only when ``dim``
is not already last and contiguous) and moves the result back.
"""
from __future__ import annotations

import math

from dlcore.ops._common import Call, normalize_dim


def _rows(ns, x, dim):
    """(contiguous (R, C) view of x with dim last, the moved shape)."""
    if x.ndim == 0:
        return ns.contiguous(x.reshape((1, 1))), ()
    xm = ns.moveaxis(x, dim, -1) if dim != x.ndim - 1 else x
    shape = tuple(xm.shape)
    return ns.contiguous(xm).reshape((math.prod(shape[:-1]), shape[-1])), shape


def _unrows(ns, y2, shape, dim, ndim):
    if ndim == 0:
        return y2.reshape(())
    y = y2.reshape(shape)
    return ns.moveaxis(y, -1, dim) if dim != ndim - 1 else y


def _fwd(call, x, *, dim, log):
    x2, shape = _rows(call.ns, x, dim)
    y2 = (call.k.log_softmax_forward if log else call.k.softmax_forward)(x2)
    return _unrows(call.ns, y2, shape, dim, x.ndim), (y2, shape, x.ndim)


def _bwd(call, saved, grad, needs, *, dim, log):
    y2, shape, ndim = saved
    g2, _ = _rows(call.ns, grad, dim)
    gx2 = (call.k.log_softmax_backward if log else call.k.softmax_backward)(y2, g2)
    return (_unrows(call.ns, gx2, shape, dim, ndim),)


def _run(op, input, dim, backend, log):
    call = Call(op, {"input": input}, backend)
    call.float_args({"input": input})
    dim = normalize_dim(op, dim, input.ndim)
    return call.apply(_fwd, _bwd, (input,), dim=dim, log=log)


def softmax(input, dim=-1, *, backend=None):
    """Softmax along ``dim``, as ``torch.nn.functional.softmax``.

    Args:
        input: float32/float64 array or tensor of any shape (NumPy, torch, CuPy).
        dim: the dimension that sums to one (default the last).
        backend: force a backend ('numpy', 'numba', 'triton', 'cupy'); default: dispatch rules.

    Returns:
        An array of ``input``'s kind, shape and dtype. Rows are computed as ``exp(x - max) / sum`` so
        large logits stay finite; a row of all ``-inf`` (or one holding NaN) gives NaN, as torch does.

    Example:
        >>> dlcore.ops.softmax(np.array([[1.0, 2.0, 3.0]]))
        array([[0.09003057, 0.24472847, 0.66524096]])
    """
    return _run("softmax", input, dim, backend, log=False)


def log_softmax(input, dim=-1, *, backend=None):
    """Log-softmax along ``dim``, as ``torch.nn.functional.log_softmax``: ``x - max - log(sum(exp(x - max)))``.

    Args and returns as `softmax`; every value is <= 0 for finite rows.
    """
    return _run("log_softmax", input, dim, backend, log=True)


def _backward(op, grad_output, output, dim, backend, log):
    call = Call(op, {"grad_output": grad_output, "output": output}, backend)
    call.float_args({"grad_output": grad_output, "output": output})
    if tuple(grad_output.shape) != tuple(output.shape):
        raise ValueError(f"{op}_backward: grad_output shape {tuple(grad_output.shape)} != output shape "
                         f"{tuple(output.shape)}")
    dim = normalize_dim(op, dim, output.ndim)
    y2, shape = _rows(call.ns, call.to_native(output), dim)
    (gx,) = _bwd(call, (y2, shape, output.ndim), call.to_native(grad_output), (True,), dim=dim, log=log)
    return call.from_native(gx)


def softmax_backward(grad_output, output, dim=-1, *, backend=None):
    """Gradient of `softmax` w.r.t. its input: ``y * (g - sum(g * y))`` along ``dim``.

    Args:
        grad_output: upstream gradient, same shape as ``output``.
        output: what `softmax` returned (the kernel needs only y, not x).
        dim: the softmax dimension.
    """
    return _backward("softmax", grad_output, output, dim, backend, log=False)


def log_softmax_backward(grad_output, output, dim=-1, *, backend=None):
    """Gradient of `log_softmax` w.r.t. its input: ``g - exp(y) * sum(g)`` along ``dim``.

    Args:
        grad_output: upstream gradient, same shape as ``output``.
        output: what `log_softmax` returned.
        dim: the log-softmax dimension.
    """
    return _backward("log_softmax", grad_output, output, dim, backend, log=True)

"""cross_entropy: loss and gradient in one fused pass over the logits.

Under autograd the forward kernel writes d(loss)/d(logits) while the row is in cache (Liger-Kernel's
trick); backward then only scales that buffer in place by the upstream gradient, so the logits are read
once. Kernels see ``(N, C)`` logits and ``(N,)`` int64 targets; class dims beyond the second (``(N, C,
d1, ...)``) are moved last by the launcher.
"""
from __future__ import annotations

import math

import numpy as np

from dlcore import _arrays
from dlcore.ops._common import Call, check_reduction


def _rows(ns, x, t):
    """(N*, C) contiguous logits and (N*,) int64 targets; C is dim 1 (or dim 0 for a 1-D input)."""
    if x.ndim == 1:
        return ns.contiguous(x.reshape((1, x.shape[0]))), ns.int64(t.reshape((1,)))
    c = x.shape[1]
    xm = ns.moveaxis(x, 1, -1) if x.ndim > 2 else x
    n = math.prod(xm.shape) // c if c else math.prod(tuple(xm.shape[:-1]))
    return ns.contiguous(xm).reshape((n, c)), ns.contiguous(ns.int64(t)).reshape(-1)


def _unrows(ns, g2, shape):
    if len(shape) <= 2:
        return g2.reshape(shape)
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return ns.moveaxis(g2.reshape(moved), -1, 1)


def _fwd(call, x, t, *, ignore_index, reduction, label_smoothing):
    x2, t2 = _rows(call.ns, x, t)
    loss, grad = call.k.cross_entropy_forward(x2, t2, ignore_index, label_smoothing, reduction, call.grad_needed)
    if reduction == "none":
        loss = loss.reshape(tuple(t.shape))
    # the fused gradient is consumed (scaled in place) by the first backward; a second backward over a
    # retained graph finds the holder empty and recomputes with the backward kernel
    return loss, (x2, t2, {"fused": grad}, tuple(x.shape))


def _bwd(call, saved, grad, needs, *, ignore_index, reduction, label_smoothing):
    x2, t2, holder, shape = saved
    ns = call.ns
    fused = holder.pop("fused", None)
    if fused is not None:
        # the forward pass already wrote d(loss)/d(logits) for an upstream gradient of 1: scale in place,
        # unless the upstream gradient is exactly 1 (loss.backward()), where the multiply would change no
        # bit and cost a full read + write of the gradient
        if not bool((grad == 1).all()):
            fused *= ns.contiguous(grad).reshape((-1, 1)) if reduction == "none" else grad
        gx = fused
    else:
        g = ns.contiguous(grad).reshape(-1) if reduction == "none" else ns.contiguous(grad).reshape(())
        gx = call.k.cross_entropy_backward(g, x2, t2, ignore_index, label_smoothing, reduction)
    return _unrows(ns, gx, shape), None


def _prepare(op, input, target, ignore_index, reduction, label_smoothing, backend, extra=None):
    named = {"input": input, **(extra or {})}
    call = Call("cross_entropy", {**named, "target": target}, backend)
    call.float_args(named)
    check_reduction(op, reduction)
    tdt = _arrays.dtype_name(target)
    if tdt.startswith("float") or tdt.startswith("bfloat"):
        raise TypeError(f"{op}: target must hold integer class indices, got {tdt} "
                        "(class-probability targets are not supported)")
    if not (tdt.startswith("int") or tdt.startswith("uint")):
        raise TypeError(f"{op}: target must be an integer array of class indices, got {tdt}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if input.ndim == 0:
        raise ValueError(f"{op}: input must be (C,), (N, C) or (N, C, d1, ...) logits, got a 0-d array")
    expected = () if input.ndim == 1 else (input.shape[0],) + tuple(input.shape[2:])
    if tuple(target.shape) != tuple(expected):
        raise ValueError(f"{op}: target shape {tuple(target.shape)} does not match input shape "
                         f"{tuple(input.shape)}: expected {tuple(expected)}")
    c = input.shape[0] if input.ndim == 1 else input.shape[1]
    tn = _arrays.from_native(call.to_native(target), "numpy") if call.native != "numpy" else call.to_native(target)
    tn = np.asarray(tn)
    bad = (tn != ignore_index) & ((tn < 0) | (tn >= c))
    if bad.any():
        raise IndexError(f"{op}: target {int(tn[bad].flat[0])} is out of bounds for {c} classes "
                         f"(and is not ignore_index={ignore_index})")
    return call


def cross_entropy(input, target, ignore_index=-100, reduction="mean", label_smoothing=0.0, *, backend=None):
    """Softmax cross-entropy from logits and class indices, as ``torch.nn.functional.cross_entropy``.

    Args:
        input: float logits ``(N, C)``, ``(C,)`` or ``(N, C, d1, ...)``.
        target: integer class indices ``(N,)`` (``()`` or ``(N, d1, ...)`` to match), each in ``[0, C)`` or
            equal to ``ignore_index`` (those rows add no loss and get zero gradient).
        reduction: 'mean' (over non-ignored targets; NaN if there are none, as torch), 'sum' or 'none'.
        label_smoothing: eps in [0, 1]: the target distribution is ``(1 - eps) onehot + eps / C``.

    Returns:
        0-d loss for 'mean'/'sum', else target's shape.

    Raises:
        IndexError: a target outside ``[0, C)`` that is not ``ignore_index`` (checked before any kernel runs).
    """
    call = _prepare("cross_entropy", input, target, ignore_index, reduction, label_smoothing, backend)
    return call.apply(_fwd, _bwd, (input, target), ignore_index=int(ignore_index), reduction=reduction,
                      label_smoothing=float(label_smoothing))


def cross_entropy_backward(grad_output, input, target, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                           *, backend=None):
    """Gradient of `cross_entropy` w.r.t. ``input``: ``(softmax(x) - (1-eps) onehot - eps/C) * grad_output``.

    ``grad_output`` is 0-d for 'mean'/'sum' (then scaled by 1/n_valid for 'mean'), else target's shape.
    """
    call = _prepare("cross_entropy_backward", input, target, ignore_index, reduction, label_smoothing, backend,
                    {"grad_output": grad_output})
    x, t = call.to_native(input), call.to_native(target)
    x2, t2 = _rows(call.ns, x, t)
    saved = (x2, t2, {}, tuple(x.shape))
    gx, _ = _bwd(call, saved, call.to_native(grad_output), (True, False), ignore_index=int(ignore_index),
                 reduction=reduction, label_smoothing=float(label_smoothing))
    return call.from_native(gx)

"""binary_cross_entropy_with_logits (multi-label tagging) with its backward kernel.

Kernels see ``(R, C)`` logits and targets and a ``(C,)`` pos_weight along the last dim; a pos_weight that
broadcasts any other way is expanded to the full shape and the problem is seen as one row.
"""
from __future__ import annotations

import math

from dlcore.ops._common import Call, check_reduction


def _layout(ns, x, y, pos_weight):
    shape = tuple(x.shape)
    c = shape[-1] if shape else 1
    pw = None
    if pos_weight is not None:
        if pos_weight.ndim <= 1 and (pos_weight.ndim == 0 or pos_weight.shape[0] in (1, c)):
            pw = ns.contiguous(ns.broadcast_to(pos_weight.reshape(-1) if pos_weight.ndim else pos_weight, (c,)))
        else:
            c = math.prod(shape)
            pw = ns.contiguous(ns.broadcast_to(pos_weight, shape)).reshape(c)
    r = math.prod(shape) // c if c else 0
    return ns.contiguous(x).reshape((r, c)), ns.contiguous(y).reshape((r, c)), pw


def _fwd(call, x, y, pos_weight, *, reduction):
    x2, y2, pw = _layout(call.ns, x, y, pos_weight)
    loss = call.k.bce_with_logits_forward(x2, y2, pw, reduction)
    if reduction == "none":
        loss = loss.reshape(tuple(x.shape))
    return loss, (x2, y2, pw, tuple(x.shape))


def _bwd(call, saved, grad, needs, *, reduction):
    x2, y2, pw, shape = saved
    ns = call.ns
    g = ns.contiguous(grad).reshape(x2.shape) if reduction == "none" else ns.contiguous(grad).reshape(())
    gx = call.k.bce_with_logits_backward(g, x2, y2, pw, reduction).reshape(shape) if needs[0] else None
    gy = None
    if needs[1]:
        # d loss / d y = -x + (pos_weight - 1) * softplus(-x): rarely needed, so plain array maths.
        xp = ns.xp
        softplus = xp.log1p(xp.exp(-xp.abs(x2))) + xp.clip(-x2, 0, None)
        dy = -x2 + ((pw - 1) * softplus if pw is not None else 0)
        scale = 1.0 / x2.size if reduction == "mean" and x2.size else 1.0
        gy = (dy * g * scale).reshape(shape)
    if len(needs) > 2 and needs[2]:
        raise NotImplementedError("binary_cross_entropy_with_logits: no gradient w.r.t. pos_weight")
    return gx, gy, None


def _prepare(op, input, target, pos_weight, reduction, backend, extra=None):
    named = {"input": input, "target": target, "pos_weight": pos_weight, **(extra or {})}
    call = Call("binary_cross_entropy_with_logits", named, backend)
    call.float_args(named)
    check_reduction(op, reduction)
    if tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"{op}: target size {tuple(target.shape)} must be the same as input size "
                         f"{tuple(input.shape)}")
    if pos_weight is not None:
        try:
            import numpy as np

            np.broadcast_shapes(tuple(pos_weight.shape), tuple(input.shape))
        except ValueError:
            raise ValueError(f"{op}: pos_weight shape {tuple(pos_weight.shape)} does not broadcast to input "
                             f"shape {tuple(input.shape)}") from None
    return call


def binary_cross_entropy_with_logits(input, target, pos_weight=None, reduction="mean", *, backend=None):
    """Sigmoid + binary cross-entropy in one stable step, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Args:
        input: float logits, any shape. target: same shape, values in [0, 1].
        pos_weight: optional weight of positive examples, broadcast against target (usually ``(C,)``).
        reduction: 'mean' | 'sum' | 'none'.

    Returns:
        ``(1 - y) x + (1 + (pw - 1) y) (log1p(exp(-|x|)) + max(-x, 0))``, reduced; finite at logits of +-1e4.
    """
    call = _prepare("binary_cross_entropy_with_logits", input, target, pos_weight, reduction, backend)
    return call.apply(_fwd, _bwd, (input, target, pos_weight), reduction=reduction)


def binary_cross_entropy_with_logits_backward(grad_output, input, target, pos_weight=None, reduction="mean", *,
                                              backend=None):
    """Gradient w.r.t. ``input``: ``(sigmoid(x) (1 + (pw-1) y) - pw y) * grad_output`` (``/ n`` for 'mean').

    ``grad_output`` is 0-d for 'mean'/'sum', else input's shape.
    """
    call = _prepare("binary_cross_entropy_with_logits_backward", input, target, pos_weight, reduction, backend,
                    {"grad_output": grad_output})
    nat = [call.to_native(a) for a in (input, target, pos_weight)]
    _, saved = _fwd(call, *nat, reduction=reduction)
    gx, _, _ = _bwd(call, saved, call.to_native(grad_output), (True, False, False), reduction=reduction)
    return call.from_native(gx)

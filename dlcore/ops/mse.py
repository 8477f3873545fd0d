"""mse_loss with its backward kernel. Input and target broadcast as in torch; kernels see 1-D arrays."""
from __future__ import annotations

import numpy as np

from dlcore.ops._common import Call, check_reduction


def _fwd(call, x, y, *, reduction, shape):
    ns = call.ns
    xf = ns.contiguous(ns.broadcast_to(x, shape)).reshape(-1)
    yf = ns.contiguous(ns.broadcast_to(y, shape)).reshape(-1)
    loss = call.k.mse_forward(xf, yf, reduction)
    if reduction == "none":
        loss = loss.reshape(shape)
    return loss, (xf, yf, tuple(x.shape), tuple(y.shape))


def _bwd(call, saved, grad, needs, *, reduction, shape):
    xf, yf, x_shape, y_shape = saved
    ns = call.ns
    g = ns.contiguous(grad).reshape(-1) if reduction == "none" else ns.contiguous(grad).reshape(())
    gx = call.k.mse_backward(g, xf, yf, reduction).reshape(shape)
    grad_x = ns.sum_to_shape(gx, x_shape) if needs[0] else None
    grad_y = ns.sum_to_shape(-gx, y_shape) if needs[1] else None
    return grad_x, grad_y


def _prepare(op, input, target, reduction, backend, extra=None):
    named = {"input": input, "target": target, **(extra or {})}
    call = Call("mse_loss", named, backend)
    call.float_args(named)
    check_reduction(op, reduction)
    try:
        shape = np.broadcast_shapes(tuple(input.shape), tuple(target.shape))
    except ValueError:
        raise ValueError(f"{op}: input shape {tuple(input.shape)} and target shape {tuple(target.shape)} "
                         "do not broadcast") from None
    return call, shape


def mse_loss(input, target, reduction="mean", *, backend=None):
    """Mean squared error, as ``torch.nn.functional.mse_loss``.

    Args:
        input, target: float arrays that broadcast together.
        reduction: ``'mean'`` (NaN for empty input, as torch), ``'sum'``, or ``'none'`` (elementwise).

    Returns:
        A 0-d array for 'mean'/'sum', else the broadcast shape.
    """
    call, shape = _prepare("mse_loss", input, target, reduction, backend)
    return call.apply(_fwd, _bwd, (input, target), reduction=reduction, shape=shape)


def mse_loss_backward(grad_output, input, target, reduction="mean", *, backend=None):
    """Gradient of `mse_loss` w.r.t. ``input``: ``2 (x - y) * grad_output`` (``/ n`` for 'mean').

    ``grad_output`` is 0-d for 'mean'/'sum', else the broadcast shape. The gradient w.r.t. ``target`` is the
    negative of this one (summed to target's shape).
    """
    call, shape = _prepare("mse_loss_backward", input, target, reduction, backend, {"grad_output": grad_output})
    nat = [call.to_native(a) for a in (input, target)]
    _, saved = _fwd(call, *nat, reduction=reduction, shape=shape)
    gx, _ = _bwd(call, saved, call.to_native(grad_output), (True, False), reduction=reduction, shape=shape)
    return call.from_native(gx)

"""layer_norm over the trailing ``normalized_shape`` dims, with its fused backward kernel.

Kernels see ``x`` as a C-contiguous ``(R, D)`` array (D = prod(normalized_shape)) and 1-D weight/bias.
"""
from __future__ import annotations

import math

from dlcore.ops._common import Call


def _normalized(op, x_shape, normalized_shape, weight, bias):
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    try:
        normalized_shape = tuple(int(s) for s in normalized_shape)
    except TypeError:
        raise TypeError(f"{op}: normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    n = len(normalized_shape)
    if n == 0 or tuple(x_shape[len(x_shape) - n:]) != normalized_shape or len(x_shape) < n:
        raise ValueError(f"{op}: input of shape {tuple(x_shape)} does not end with normalized_shape "
                         f"{normalized_shape}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != normalized_shape:
            raise ValueError(f"{op}: {name} has shape {tuple(p.shape)}, expected normalized_shape {normalized_shape}")
    return normalized_shape


def _fwd(call, x, weight, bias, *, normalized_shape, eps):
    ns = call.ns
    d = math.prod(normalized_shape)
    x2 = ns.contiguous(x).reshape((math.prod(x.shape) // d if d else 0, d))
    w = None if weight is None else ns.contiguous(weight).reshape(-1)
    b = None if bias is None else ns.contiguous(bias).reshape(-1)
    y2, mean, rstd = call.k.layer_norm_forward(x2, w, b, eps)
    return y2.reshape(tuple(x.shape)), (x2, w, mean, rstd, tuple(x.shape))


def _bwd(call, saved, grad, needs, *, normalized_shape, eps):
    x2, w, mean, rstd, shape = saved
    g2 = call.ns.contiguous(grad).reshape(x2.shape)
    gx, gw, gb = call.k.layer_norm_backward(g2, x2, w, mean, rstd)
    gw = None if gw is None else gw.reshape(normalized_shape)
    gb = None if gb is None else gb.reshape(normalized_shape)
    return gx.reshape(shape), gw, gb


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend=None):
    """Layer normalisation over the last ``len(normalized_shape)`` dims, as ``torch.nn.functional.layer_norm``.

    Args:
        input: float array ``(..., *normalized_shape)``.
        normalized_shape: int or tuple, the trailing shape to normalise over.
        weight, bias: optional arrays of shape ``normalized_shape`` (elementwise affine).
        eps: added to the biased variance before the square root.

    Returns:
        ``(x - mean) / sqrt(var + eps) * weight + bias``, same shape and dtype as ``input``.
    """
    call = Call("layer_norm", {"input": input, "weight": weight, "bias": bias}, backend)
    call.float_args({"input": input, "weight": weight, "bias": bias})
    normalized_shape = _normalized("layer_norm", input.shape, normalized_shape, weight, bias)
    return call.apply(_fwd, _bwd, (input, weight, bias), normalized_shape=normalized_shape, eps=float(eps))


def layer_norm_backward(grad_output, input, normalized_shape, weight=None, bias=None, eps=1e-5, *, backend=None):
    """Gradients of `layer_norm`: ``(grad_input, grad_weight or None, grad_bias or None)``.

    Recomputes mean and rstd from ``input`` (one extra read of x), then runs the fused backward kernel.
    """
    named = {"grad_output": grad_output, "input": input, "weight": weight, "bias": bias}
    call = Call("layer_norm", named, backend)
    call.float_args(named)
    normalized_shape = _normalized("layer_norm_backward", input.shape, normalized_shape, weight, bias)
    if tuple(grad_output.shape) != tuple(input.shape):
        raise ValueError(f"layer_norm_backward: grad_output shape {tuple(grad_output.shape)} != input shape "
                         f"{tuple(input.shape)}")
    nat = [call.to_native(a) for a in (input, weight, bias)]
    _, saved = _fwd(call, *nat, normalized_shape=normalized_shape, eps=float(eps))
    gx, gw, gb = _bwd(call, saved, call.to_native(grad_output), (True, True, True),
                      normalized_shape=normalized_shape, eps=eps)
    return call.from_native(gx), call.from_native(gw), (call.from_native(gb) if bias is not None else None)

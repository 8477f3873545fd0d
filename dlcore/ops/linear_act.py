"""linear_act: ``activation(input @ weight.T + bias)`` as one fused op, with its backward.

The launcher flattens the leading dims of ``input`` into rows (as `linear`), makes operands contiguous,
and asks the kernel to keep what the backward needs only when a gradient will be taken
(``call.grad_needed``: torch autograd or dlcore Tensors); otherwise the backward recomputes it.
"""
from __future__ import annotations

import math

from dlcore.ops._common import Call
from dlcore.ops.matmul import _check_linear

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", None)


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"linear_act: activation must be one of {ACTIVATIONS}, got {activation!r}")
    return "none" if activation is None else activation


def _operands(call, x, weight, bias):
    ns = call.ns
    x2 = ns.contiguous(x).reshape((math.prod(x.shape[:-1]), weight.shape[1]))
    return x2, ns.contiguous(weight), (None if bias is None else ns.contiguous(bias))


def _fwd(call, x, weight, bias, *, activation):
    x2, w, b = _operands(call, x, weight, bias)
    y, saved = call.k.linear_act_forward(x2, w, b, activation, call.grad_needed)
    return y.reshape(tuple(x.shape[:-1]) + (w.shape[0],)), (x2, w, b, saved, tuple(x.shape))


def _bwd(call, saved, grad, needs, *, activation):
    x2, w, b, kept, x_shape = saved
    g2 = call.ns.contiguous(grad).reshape((x2.shape[0], w.shape[0]))
    gx, gw, gb = call.k.linear_act_backward(g2, x2, w, b, kept, activation, need_input=bool(needs[0]))
    return (None if gx is None else gx.reshape(x_shape)), gw, gb


def linear_act(input, weight, bias=None, activation="gelu", *, backend=None):
    """``activation(input @ weight.T + bias)`` in one fused pass (``F.gelu(F.linear(input, weight, bias))``).

    Args:
        input: ``(..., in_features)`` float32/float64.
        weight: ``(out_features, in_features)``, same dtype.
        bias: ``(out_features,)`` or None.
        activation: ``'gelu'`` (exact erf, ``F.gelu``), ``'gelu_tanh'`` (``F.gelu(approximate='tanh')``),
            ``'relu'``, ``'silu'``, or None (plain `linear`).

    Returns:
        ``(..., out_features)``, the same kind and dtype as ``input``; torch tensors that require grad get
        gradients for input, weight and bias.

    Example:
        >>> linear_act(np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), activation="relu").shape
        (2, 4)
    """
    act = _check_activation(activation)
    named = {"input": input, "weight": weight, "bias": bias}
    call = Call("linear_act", named, backend)
    call.float_args(named)
    _check_linear("linear_act", input, weight, bias)
    return call.apply(_fwd, _bwd, (input, weight, bias), activation=act)


def linear_act_backward(grad_output, input, weight, bias=None, activation="gelu", *, backend=None):
    """Gradients of `linear_act`: ``(grad_input, grad_weight, grad_bias or None)``.

    The pre-activation is recomputed (one GEMM), then ``g = grad_output * act'(pre)``, ``grad_input = g @ W``,
    ``grad_weight = g^T @ x`` (summed over every leading dim), ``grad_bias = sum(g)``.
    """
    act = _check_activation(activation)
    named = {"grad_output": grad_output, "input": input, "weight": weight, "bias": bias}
    call = Call("linear_act", named, backend)
    call.float_args(named)
    _check_linear("linear_act_backward", input, weight, bias)
    expected = tuple(input.shape[:-1]) + (weight.shape[0],)
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"linear_act_backward: grad_output shape {tuple(grad_output.shape)} != output shape {expected}")
    x2, w, b = _operands(call, *(call.to_native(a) for a in (input, weight, bias)))
    saved = (x2, w, b, None, tuple(input.shape))
    gx, gw, gb = _bwd(call, saved, call.to_native(grad_output), (True, True, True), activation=act)
    return call.from_native(gx), call.from_native(gw), call.from_native(gb)

"""linear + bias + activation on torch tensors (CUDA, or CPU under TRITON_INTERPRET=1): composed, not yet fused.

This backend runs the op as its own `matmul.linear` (bias in the GEMM's epilogue) followed by its own
elementwise activation kernel from `activations.py`: correct and tested through those kernels, but the
output makes one extra round trip through memory. A fused epilogue (activation applied to the GEMM tile
before it is stored) is the obvious next step. Semantics and `saved` as the NumPy reference
(kernels/numpy/linear_act.py). Floor: 2*N*O*K flops plus one pass over the (N, O) output.
"""
from __future__ import annotations

from . import activations as _act
from . import matmul as _mm

_FORWARD = {"gelu": lambda v: _act.gelu_forward(v, "none"), "gelu_tanh": lambda v: _act.gelu_forward(v, "tanh"),
            "relu": _act.relu_forward, "silu": _act.silu_forward}
_BACKWARD = {"gelu": lambda v, g: _act.gelu_backward(v, g, "none"),
             "gelu_tanh": lambda v, g: _act.gelu_backward(v, g, "tanh"),
             "relu": _act.relu_backward, "silu": _act.silu_backward}


def _check(activation):
    if activation not in _FORWARD and activation != "none":
        raise ValueError(f"linear_act: activation must be one of {tuple(_FORWARD) + ('none',)}, got {activation!r}")


def linear_act_forward(x, weight, bias, activation, save):
    """``act(x @ weight^T + bias)`` and what the backward needs (see kernels/numpy/linear_act.py).

    Args:
        x: ``(N, K)``; weight: ``(O, K)``; bias: ``(O,)`` or None; activation: 'gelu', 'gelu_tanh', 'relu',
            'silu' or 'none'; save: whether to return the array the backward needs.

    Returns:
        ``(y, saved)``: y ``(N, O)``; saved the pre-activation (y for relu) or None.
    """
    _check(activation)
    pre = _mm.linear(x, weight, bias)
    if activation == "none":
        return pre, None
    y = _FORWARD[activation](pre.reshape(-1)).reshape(pre.shape)
    if not save:
        return y, None
    return y, (y if activation == "relu" else pre)


def linear_act_backward(grad, x, weight, bias, saved, activation):
    """Gradients of :func:`linear_act_forward`.

    Args:
        grad: ``(N, O)`` upstream gradient; x, weight, bias: the forward inputs; saved: the forward's ``saved``
            (None: the pre-activation is recomputed); activation: the forward's activation.

    Returns:
        ``(grad_x (N, K), grad_weight (O, K), grad_bias (O,) or None)``.
    """
    _check(activation)
    if activation == "none":
        g_pre = grad
    else:
        if saved is None:
            pre = _mm.linear(x, weight, bias)
            saved = _FORWARD["relu"](pre.reshape(-1)).reshape(pre.shape) if activation == "relu" else pre
        g_pre = _BACKWARD[activation](saved.reshape(-1), grad.reshape(-1)).reshape(grad.shape)
    return _mm.linear_backward(g_pre, x, weight, bias is not None)

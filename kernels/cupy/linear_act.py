"""linear + bias + activation on CuPy arrays: composed, not yet fused.

This backend runs the op as its own `matmul.linear` (bias in the GEMM's epilogue) followed by its own
elementwise activation kernel from `activations.py`: correct and tested through those kernels, but the
output makes one extra round trip through memory. A fused epilogue (activation applied to the GEMM tile
before it is stored) is the obvious next step. Semantics and `saved` as the NumPy reference
(kernels/numpy/linear_act.py). Floor: 2*N*O*K flops plus one pass over the (N, O) output.
"""
from __future__ import annotations

from .. import _composed_linear_act as _composed
from . import activations as _act
from . import matmul as _mm


def linear_act_forward(x, weight, bias, activation, save):
    """``act(x @ weight^T + bias)`` and what the backward needs (see kernels/numpy/linear_act.py).

    Args:
        x: ``(N, K)``; weight: ``(O, K)``; bias: ``(O,)`` or None; activation: 'gelu', 'gelu_tanh', 'relu',
            'silu' or 'none'; save: whether to return the array the backward needs.

    Returns:
        ``(y, saved)``: y ``(N, O)``; saved the pre-activation (y for relu) or None.
    """
    return _composed.forward(_mm, _act, x, weight, bias, activation, save)


def linear_act_backward(grad, x, weight, bias, saved, activation, need_input=True):
    """Gradients of :func:`linear_act_forward`.

    Args:
        grad: ``(N, O)`` upstream gradient; x, weight, bias: the forward inputs; saved: the forward's ``saved``
            (None: the pre-activation is recomputed); activation: the forward's activation; need_input: False
            to skip grad_x (returned as None, one GEMM fewer).

    Returns:
        ``(grad_x (N, K), grad_weight (O, K), grad_bias (O,) or None)``.
    """
    return _composed.backward(_mm, _act, grad, x, weight, bias, saved, activation, need_input)

"""Fused linear + bias + activation, ``act(x @ W^T + b)``, in NumPy: the reference for every backend.

Activations (``activation``): ``'gelu'`` (exact erf form), ``'gelu_tanh'`` (torch's tanh approximation),
``'relu'``, ``'silu'``, or ``'none'`` (plain linear). The forward returns, beside ``y``, what the backward
needs (``saved``): nothing for ``'none'``; ``y`` itself for ``'relu'`` (``y > 0`` exactly where the
pre-activation is, and NaN where it is NaN, so the ReLU mask is the same); the pre-activation
``x @ W^T + b`` for the others. When ``save`` is False (no gradient wanted) ``saved`` is None and the
backward recomputes the pre-activation from x, W and b (one extra GEMM).

Backward: ``g_pre = grad * act'(pre)``, then ``dx = g_pre @ W``, ``dW = g_pre^T @ x``, ``db = sum_rows(g_pre)``.
The activation math is the NumPy reference's own (`activations.py`), computed in float64 and rounded once.

Floor: 2*N*O*K flops for the GEMM; the epilogue adds one pass over the ``(N, O)`` output.
"""

from .. import _composed_linear_act as _composed
from . import activations as _act
from . import matmul as _mm

ACTIVATIONS = _composed.ACTIVATIONS


def linear_act_forward(x, weight, bias, activation, save):
    """``act(x @ weight^T + bias)`` and what the backward needs.

    Args:
        x: ``(N, K)`` float32/float64 array.
        weight: ``(O, K)`` array of the same dtype.
        bias: ``(O,)`` array or None.
        activation: one of ``'gelu'``, ``'gelu_tanh'``, ``'relu'``, ``'silu'``, ``'none'``.
        save: whether to return the array the backward needs (see the module docstring).

    Returns:
        ``(y, saved)``: y ``(N, O)``; saved ``(N, O)`` (the pre-activation, or y for relu) or None.

    Example:
        >>> y, _ = linear_act_forward(np.ones((1, 2)), np.ones((3, 2)), None, "relu", False)
        >>> y.tolist()
        [[2.0, 2.0, 2.0]]
    """
    return _composed.forward(_mm, _act, x, weight, bias, activation, save)


def linear_act_backward(grad, x, weight, bias, saved, activation, need_input=True):
    """Gradients of :func:`linear_act_forward`.

    Args:
        grad: ``(N, O)`` upstream gradient.
        x, weight, bias: the forward inputs (bias ``(O,)`` or None).
        saved: the forward's ``saved`` (None: the pre-activation is recomputed).
        activation: the forward's activation.
        need_input: False when no gradient w.r.t. x is wanted: grad_x is then None (one GEMM fewer).

    Returns:
        ``(grad_x, grad_weight, grad_bias_or_None)`` of shapes ``(N, K)``, ``(O, K)``, ``(O,)``.

    Example:
        >>> gx, gw, gb = linear_act_backward(np.ones((1, 3)), np.ones((1, 2)), np.ones((3, 2)), None, None, "relu")
        >>> gx.tolist(), gb
        ([[3.0, 3.0]], None)
    """
    return _composed.backward(_mm, _act, grad, x, weight, bias, saved, activation, need_input)


EXPLAIN = {"linear_act": "the reference: np.matmul, then the NumPy activation on the whole output"}

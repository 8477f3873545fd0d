"""linear + bias + activation composed from a backend's own kernels: ``matmul.linear`` then its elementwise
activation, and the reverse for the gradient.

The NumPy reference is exactly this composition; the Triton and CuPy backends use it too until they fuse the
activation into the GEMM's epilogue (the Numba backend already does, in its own module). Semantics of
``saved`` (what the backward needs): nothing for ``'none'``; ``y`` itself for ``'relu'`` (``y > 0`` exactly
where the pre-activation is, NaN where it is NaN); the pre-activation for the others. With ``saved=None`` the
backward recomputes the pre-activation (one more GEMM).
"""
from __future__ import annotations

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "none")


def check(activation):
    """Raise ValueError unless ``activation`` is one of `ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"linear_act: activation must be one of {ACTIVATIONS}, got {activation!r}")


def _forward_act(act, pre, activation):
    flat = pre.reshape(-1)
    if activation == "gelu":
        y = act.gelu_forward(flat, "none")
    elif activation == "gelu_tanh":
        y = act.gelu_forward(flat, "tanh")
    elif activation == "relu":
        y = act.relu_forward(flat)
    elif activation == "silu":
        y = act.silu_forward(flat)
    else:
        return pre
    return y.reshape(pre.shape)


def _backward_act(act, saved, grad, activation):
    flat, g = saved.reshape(-1), grad.reshape(-1)
    if activation == "gelu":
        gx = act.gelu_backward(flat, g, "none")
    elif activation == "gelu_tanh":
        gx = act.gelu_backward(flat, g, "tanh")
    elif activation == "relu":
        gx = act.relu_backward(flat, g)
    else:
        gx = act.silu_backward(flat, g)
    return gx.reshape(grad.shape)


def forward(mm, act, x, weight, bias, activation, save):
    """``(y, saved)`` of ``act(x @ weight^T + bias)`` on the backend whose `matmul` module is ``mm`` and
    `activations` module is ``act``; shapes and meaning as ``linear_act_forward`` in kernels/README.md."""
    check(activation)
    pre = mm.linear(x, weight, bias)
    y = _forward_act(act, pre, activation)
    if not save or activation == "none":
        return y, None
    return y, (y if activation == "relu" else pre)


def backward(mm, act, grad, x, weight, bias, saved, activation, need_input=True):
    """``(grad_x, grad_weight, grad_bias or None)`` of `forward`, on the same backend modules."""
    check(activation)
    if activation == "none":
        g_pre = grad
    else:
        if saved is None:
            pre = mm.linear(x, weight, bias)
            saved = _forward_act(act, pre, "relu") if activation == "relu" else pre
        g_pre = _backward_act(act, saved, grad, activation)
    return mm.linear_backward(g_pre, x, weight, bias is not None, need_input=need_input)

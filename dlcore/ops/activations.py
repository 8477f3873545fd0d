"""Elementwise activations gelu (erf and tanh forms), relu and silu, with their backward kernels.

Kernels see a C-contiguous 1-D array; the launcher ravels (copying only non-contiguous inputs).
"""
from __future__ import annotations

from dlcore.ops._common import Call


def _flat(ns, a):
    return ns.contiguous(a).reshape(-1)


def _fwd(call, x, *, name, approximate):
    xf = _flat(call.ns, x)
    fn = getattr(call.k, f"{name}_forward")
    y = fn(xf, approximate) if name == "gelu" else fn(xf)
    return y.reshape(tuple(x.shape)), (xf, tuple(x.shape))


def _bwd(call, saved, grad, needs, *, name, approximate):
    xf, shape = saved
    fn = getattr(call.k, f"{name}_backward")
    gf = _flat(call.ns, grad)
    gx = fn(xf, gf, approximate) if name == "gelu" else fn(xf, gf)
    return (gx.reshape(shape),)


def _check_approximate(approximate):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def _run(name, input, backend, approximate=None):
    call = Call(name, {"input": input}, backend)
    call.float_args({"input": input})
    return call.apply(_fwd, _bwd, (input,), name=name, approximate=approximate)


def gelu(input, approximate="none", *, backend=None):
    """GELU, as ``torch.nn.functional.gelu``.

    Args:
        input: float array or tensor, any shape.
        approximate: ``'none'``: ``x * Phi(x)`` with the exact erf; ``'tanh'``:
            ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``.

    Returns:
        Same kind, shape and dtype as ``input``; finite for finite input (no overflow at +-1e4).
    """
    _check_approximate(approximate)
    return _run("gelu", input, backend, approximate)


def relu(input, *, backend=None):
    """``max(x, 0)`` elementwise, as ``torch.nn.functional.relu`` (NaN stays NaN)."""
    return _run("relu", input, backend)


def silu(input, *, backend=None):
    """``x * sigmoid(x)`` elementwise, as ``torch.nn.functional.silu``."""
    return _run("silu", input, backend)


def _backward(name, grad_output, input, backend, approximate=None):
    call = Call(name, {"grad_output": grad_output, "input": input}, backend)
    call.float_args({"grad_output": grad_output, "input": input})
    if tuple(grad_output.shape) != tuple(input.shape):
        raise ValueError(f"{name}_backward: grad_output shape {tuple(grad_output.shape)} != input shape "
                         f"{tuple(input.shape)}")
    x = call.to_native(input)
    (gx,) = _bwd(call, (_flat(call.ns, x), tuple(x.shape)), call.to_native(grad_output), (True,),
                 name=name, approximate=approximate)
    return call.from_native(gx)


def gelu_backward(grad_output, input, approximate="none", *, backend=None):
    """Gradient of `gelu` w.r.t. its input: ``grad_output * gelu'(input)`` (same shapes)."""
    _check_approximate(approximate)
    return _backward("gelu", grad_output, input, backend, approximate)


def relu_backward(grad_output, input, *, backend=None):
    """Gradient of `relu`: ``grad_output`` where ``input > 0``, else 0 (NaN input passes the gradient, as torch)."""
    return _backward("relu", grad_output, input, backend)


def silu_backward(grad_output, input, *, backend=None):
    """Gradient of `silu`: ``grad_output * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``."""
    return _backward("silu", grad_output, input, backend)

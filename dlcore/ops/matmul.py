"""matmul (batched, broadcasting, torch's 1-D rules) and linear, with their backward kernels.

Kernels see 3-D ``(B, M, K) @ (B, K, N)``. When only ``a`` has batch dims (the common activation @ weight
case) the batch is folded into M, so ``b`` is never copied per batch.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from dlcore.ops._common import Call


class _Plan(NamedTuple):
    a_shape: tuple  # as given
    b_shape: tuple
    a2: tuple  # with torch's 1-D promotion: (..., M, K)
    b2: tuple  # (..., K, N)
    batch: tuple  # broadcast batch dims
    fold: bool  # a's batch folds into M (b is a plain matrix)
    out: tuple  # result shape, 1-D promotions removed


@functools.lru_cache(maxsize=256)  # a model multiplies the same few shapes every step (~1.5 us a plan)
def _plan(a_shape, b_shape) -> _Plan:
    a2 = (1,) + a_shape if len(a_shape) == 1 else a_shape
    b2 = b_shape + (1,) if len(b_shape) == 1 else b_shape
    if len(a_shape) == 0 or len(b_shape) == 0:
        raise ValueError(f"matmul: both arguments need at least 1 dim, got {a_shape} and {b_shape}")
    if a2[-1] != b2[-2]:
        raise ValueError(f"matmul: shapes {a_shape} and {b_shape} cannot be multiplied ({a2[-1]} != {b2[-2]})")
    if len(a2) == 2 and len(b2) == 2:
        batch = ()  # plain matrices (the common case: skip the broadcast machinery, ~2 us)
    else:
        try:
            batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
        except ValueError:
            raise ValueError(f"matmul: batch dims of {a_shape} and {b_shape} do not broadcast") from None
    out = batch + (a2[-2], b2[-1])
    if len(a_shape) == 1:
        out = out[:-2] + out[-1:]
    if len(b_shape) == 1:
        out = out[:-1]
    return _Plan(a_shape, b_shape, a2, b2, batch, len(b2) == 2 and len(a2) > 2, out)


def _operands(call, a, b, plan):
    """The kernel's 3-D operands (copies only where broadcasting or layout demands)."""
    ns = call.ns
    M, K, N = plan.a2[-2], plan.a2[-1], plan.b2[-1]
    if plan.fold or not plan.batch:  # no broadcasting to do: one (M', K) @ (K, N) product
        a3 = ns.contiguous(a).reshape((1, math.prod(plan.batch) * M, K))
        b3 = ns.contiguous(b).reshape((1, K, N))
    else:
        B = math.prod(plan.batch)
        a3 = ns.contiguous(ns.broadcast_to(a.reshape(plan.a2), plan.batch + (M, K))).reshape((B, M, K))
        b3 = ns.contiguous(ns.broadcast_to(b.reshape(plan.b2), plan.batch + (K, N))).reshape((B, K, N))
    return a3, b3


def _fwd(call, a, b, *, plan):
    a3, b3 = _operands(call, a, b, plan)
    return call.k.matmul(a3, b3).reshape(plan.out), (a3, b3)


def _bwd(call, saved, grad, needs, *, plan):
    a3, b3 = saved
    ns = call.ns
    g3 = ns.contiguous(grad).reshape((a3.shape[0], a3.shape[1], b3.shape[2]))
    ga3, gb3 = call.k.matmul_backward(g3, a3, b3, (bool(needs[0]), bool(needs[1])))

    def back(g3_, full2, shape):  # undo folding/broadcasting: sum over broadcast batch dims
        if plan.fold:
            return g3_.reshape(shape)
        return ns.sum_to_shape(g3_.reshape(plan.batch + full2[-2:]), full2).reshape(shape)

    return (back(ga3, plan.a2, plan.a_shape) if needs[0] else None,
            back(gb3, plan.b2, plan.b_shape) if needs[1] else None)


def matmul(input, other, *, backend=None):
    """Matrix product with torch's rules (``torch.matmul``): 1-D promotion, batched, broadcasting batch dims.

    Args:
        input: ``(..., M, K)`` or ``(K,)``; other: ``(..., K, N)`` or ``(K,)``; float32/float64, one dtype.

    Returns:
        ``(broadcast batch..., M, N)`` with promoted 1-D dims removed.
    """
    call = Call("matmul", {"input": input, "other": other}, backend)
    call.float_args({"input": input, "other": other})
    plan = _plan(tuple(input.shape), tuple(other.shape))
    return call.apply(_fwd, _bwd, (input, other), plan=plan)


def matmul_backward(grad_output, input, other, *, backend=None):
    """Gradients of `matmul`: ``(grad_input, grad_other)`` = ``(g @ other^T, input^T @ g)``, reduced over
    broadcast batch dims to each argument's shape. ``grad_output`` has the product's shape."""
    named = {"grad_output": grad_output, "input": input, "other": other}
    call = Call("matmul", named, backend)
    call.float_args(named)
    plan = _plan(tuple(input.shape), tuple(other.shape))
    if tuple(grad_output.shape) != plan.out:
        raise ValueError(f"matmul_backward: grad_output shape {tuple(grad_output.shape)} != product shape {plan.out}")
    saved = _operands(call, call.to_native(input), call.to_native(other), plan)
    ga, gb = _bwd(call, saved, call.to_native(grad_output), (True, True), plan=plan)
    return call.from_native(ga), call.from_native(gb)


# ---------------------------------------------------------------------------------------------------- linear
def _check_linear(op, x, weight, bias):
    if weight.ndim != 2:
        raise ValueError(f"{op}: weight must be 2-D (out_features, in_features), got {tuple(weight.shape)}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: input's last dim must be in_features={weight.shape[1]}, got shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def _linear_operands(call, x, weight, bias):
    ns = call.ns
    x2 = ns.contiguous(x).reshape((math.prod(x.shape[:-1]), weight.shape[1]))
    return x2, ns.contiguous(weight), (None if bias is None else ns.contiguous(bias))


def _linear_fwd(call, x, weight, bias):
    x2, w, b = _linear_operands(call, x, weight, bias)
    y = call.k.linear(x2, w, b)
    return y.reshape(tuple(x.shape[:-1]) + (w.shape[0],)), (x2, w, b is not None, tuple(x.shape))


def _linear_bwd(call, saved, grad, needs):
    x2, w, has_bias, x_shape = saved
    g2 = call.ns.contiguous(grad).reshape((x2.shape[0], w.shape[0]))
    gx, gw, gb = call.k.linear_backward(g2, x2, w, has_bias, need_input=bool(needs[0]))
    return (None if gx is None else gx.reshape(x_shape)), gw, gb


def linear(input, weight, bias=None, *, backend=None):
    """``input @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Args:
        input: ``(..., in_features)``; weight: ``(out_features, in_features)``; bias: ``(out_features,)`` or None.

    Returns:
        ``(..., out_features)``; the bias add is fused into the product's output pass.
    """
    named = {"input": input, "weight": weight, "bias": bias}
    call = Call("linear", named, backend)
    call.float_args(named)
    _check_linear("linear", input, weight, bias)
    return call.apply(_linear_fwd, _linear_bwd, (input, weight, bias))


def linear_backward(grad_output, input, weight, bias=None, *, backend=None):
    """Gradients of `linear`: ``(grad_input, grad_weight, grad_bias or None)``.

    ``grad_input = g @ W``, ``grad_weight = g^T @ x`` (summed over every leading dim), ``grad_bias = sum(g)``.
    """
    named = {"grad_output": grad_output, "input": input, "weight": weight, "bias": bias}
    call = Call("linear", named, backend)
    call.float_args(named)
    _check_linear("linear_backward", input, weight, bias)
    x2, w, b = _linear_operands(call, *(call.to_native(a) for a in (input, weight, bias)))
    saved = (x2, w, b is not None, tuple(input.shape))
    gx, gw, gb = _linear_bwd(call, saved, call.to_native(grad_output), (True, True, True))
    return call.from_native(gx), call.from_native(gw), call.from_native(gb)

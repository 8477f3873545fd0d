"""scaled_dot_product_attention: fused, tiled attention with an online softmax (no (L, S) matrix).

Kernels see q ``(B, L, E)``, k ``(B, S, E)``, v ``(B, S, Ev)`` with all leading dims folded into B, and
the mask as a ``(B, L, S)`` view that may have zero strides (a broadcast mask is never materialised
unless its batch dims cannot be folded without a copy). Backward recomputes the probabilities from the
saved per-row log-sum-exp instead of storing them.
"""
from __future__ import annotations

import math

import numpy as np

from dlcore import _arrays
from dlcore.ops._common import Call


def _fold(ns, a, batch, tail):
    """Broadcast ``a`` to batch + tail and fold batch into one dim (contiguous for q/k/v)."""
    full = ns.broadcast_to(a, tuple(batch) + tuple(tail))
    return ns.contiguous(full).reshape((math.prod(batch),) + tuple(tail))


def _fold_mask(ns, m, batch, L, S):
    full = ns.broadcast_to(m, tuple(batch) + (L, S))
    try:  # a view when the broadcast batch dims fold (the common (L, S) or (B, 1, L, S) cases)
        if ns.xp is np:
            v = full.view()
            v.shape = (math.prod(batch), L, S)
            return v
        return full.view((math.prod(batch), L, S))
    except (AttributeError, RuntimeError, ValueError):
        return ns.contiguous(full).reshape((math.prod(batch), L, S))


def _fwd(call, q, k, v, mask, *, is_causal, scale, batch):
    ns = call.ns
    L, E = q.shape[-2], q.shape[-1]
    S, Ev = k.shape[-2], v.shape[-1]
    q3, k3, v3 = _fold(ns, q, batch, (L, E)), _fold(ns, k, batch, (S, E)), _fold(ns, v, batch, (S, Ev))
    m3 = None if mask is None else _fold_mask(ns, mask, batch, L, S)
    out, lse = call.k.attention_forward(q3, k3, v3, m3, is_causal, scale)
    saved = (q3, k3, v3, m3, out, lse, tuple(q.shape), tuple(k.shape), tuple(v.shape))
    return out.reshape(tuple(batch) + (L, Ev)), saved


def _bwd(call, saved, grad, needs, *, is_causal, scale, batch):
    q3, k3, v3, m3, out, lse, qs, ks, vs = saved
    ns = call.ns
    g3 = ns.contiguous(grad).reshape(out.shape)
    gq, gk, gv = call.k.attention_backward(g3, q3, k3, v3, out, lse, m3, is_causal, scale)
    full = lambda g, s: ns.sum_to_shape(g.reshape(tuple(batch) + tuple(g.shape[1:])), s)  # noqa: E731
    return full(gq, qs), full(gk, ks), full(gv, vs), None


def _prepare(op, query, key, value, attn_mask, is_causal, scale, backend, extra=None):
    named = {"query": query, "key": key, "value": value, **(extra or {})}
    call = Call("scaled_dot_product_attention", {**named, "attn_mask": attn_mask}, backend)
    call.float_args(named)
    for name, a in (("query", query), ("key", key), ("value", value)):
        if a.ndim < 2:
            raise ValueError(f"{op}: {name} must have at least 2 dims (..., seq, features), got {tuple(a.shape)}")
    L, E = query.shape[-2:]
    S, Ek = key.shape[-2:]
    if Ek != E:
        raise ValueError(f"{op}: key's last dim {Ek} != query's {E}")
    if value.shape[-2] != S:
        raise ValueError(f"{op}: value has {value.shape[-2]} positions but key has {S}")
    try:
        batch = np.broadcast_shapes(tuple(query.shape[:-2]), tuple(key.shape[:-2]), tuple(value.shape[:-2]))
    except ValueError:
        raise ValueError(f"{op}: batch dims of query {tuple(query.shape)}, key {tuple(key.shape)} and value "
                         f"{tuple(value.shape)} do not broadcast") from None
    if attn_mask is not None:
        if is_causal:
            raise ValueError(f"{op}: pass either attn_mask or is_causal=True, not both")
        mdt = _arrays.dtype_name(attn_mask)
        if mdt != "bool" and mdt != call.dtype:
            raise TypeError(f"{op}: attn_mask must be bool or {call.dtype} (the query dtype), got {mdt}")
        try:
            np.broadcast_shapes(tuple(attn_mask.shape), tuple(batch) + (L, S))
        except ValueError:
            raise ValueError(f"{op}: attn_mask shape {tuple(attn_mask.shape)} does not broadcast to "
                             f"{tuple(batch) + (L, S)}") from None
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    return call, dict(is_causal=bool(is_causal), scale=scale, batch=tuple(batch))


def _grad_mode_on(a) -> bool:
    if _arrays.is_torch(a):
        import torch

        return torch.is_grad_enabled()
    from dlcore.autograd import is_grad_enabled

    return is_grad_enabled()


def scaled_dot_product_attention(query, key, value, attn_mask=None, is_causal=False, scale=None, *, backend=None):
    """Fused attention ``softmax(q k^T * scale + mask) v``, as ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        query: ``(..., L, E)``; key: ``(..., S, E)``; value: ``(..., S, Ev)``; batch dims broadcast.
        attn_mask: optional, broadcastable to ``(..., L, S)``: bool (True = attend) or float (added to scores).
        is_causal: mask keys after each query (top-left aligned ``tril`` of ``(L, S)``); not with attn_mask.
        scale: score scale, default ``1 / sqrt(E)``.

    Returns:
        ``(..., L, Ev)``. Memory beyond the output is O(L) (a log-sum-exp per query row), never O(L*S).
        A query row whose keys are all masked out gives zeros (torch's CPU kernels do the same), and its
        gradients are zero. Masked-out keys never touch the result, even when they hold NaN or inf.

    Raises:
        NotImplementedError: ``attn_mask`` requires grad (no gradient w.r.t. the mask; detach it).
    """
    call, params = _prepare("scaled_dot_product_attention", query, key, value, attn_mask, is_causal, scale, backend)
    if getattr(attn_mask, "requires_grad", False) and _grad_mode_on(attn_mask):
        raise NotImplementedError("scaled_dot_product_attention: the fused kernel gives no gradient w.r.t. a float "
                                  "attn_mask (it never forms the (L, S) score matrix); pass attn_mask.detach()")
    return call.apply(_fwd, _bwd, (query, key, value, attn_mask), **params)


def scaled_dot_product_attention_backward(grad_output, query, key, value, attn_mask=None, is_causal=False,
                                          scale=None, *, backend=None):
    """Gradients of `scaled_dot_product_attention`: ``(grad_query, grad_key, grad_value)``.

    Recomputes the forward pass (output and log-sum-exp) first, then runs the fused backward kernel.
    ``grad_output`` has the output's shape ``(..., L, Ev)``.
    """
    call, params = _prepare("scaled_dot_product_attention_backward", query, key, value, attn_mask, is_causal, scale,
                            backend, {"grad_output": grad_output})
    nat = [call.to_native(a) for a in (query, key, value, attn_mask)]
    out, saved = _fwd(call, *nat, **params)
    if tuple(grad_output.shape) != tuple(out.shape):
        raise ValueError(f"scaled_dot_product_attention_backward: grad_output shape {tuple(grad_output.shape)} "
                         f"!= output shape {tuple(out.shape)}")
    gq, gk, gv, _ = _bwd(call, saved, call.to_native(grad_output), (True, True, True, False), **params)
    return call.from_native(gq), call.from_native(gk), call.from_native(gv)

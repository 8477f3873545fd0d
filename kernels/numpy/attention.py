"""NumPy reference for scaled dot-product attention: one (L, S) score matrix per batch entry, in float64.

This is the reference the fused kernels are checked against, so it favours the obvious formula over speed:
per batch entry it forms the scaled, masked scores, a max-subtracted softmax and the weighted sum of values,
computing in float64 and casting the results to the input dtype.

Semantics are torch 2.13's ``scaled_dot_product_attention`` (checked on the CPU, float32 and float64, the
math and the flash kernels alike):

* ``is_causal`` keeps key ``j`` for query ``i`` iff ``j <= i`` (the top-left aligned ``ones(L, S).tril()``).
* A bool mask keeps a key where it is True; a float mask is added to the scores.
* A query row that sees no key (every entry masked: False, or -inf in a float mask, or ``S == 0``) gets
  output 0 and zero gradients, as torch's "safe softmax" gives; its ``lse`` is -inf.
* Masking is a select, never a multiply: a masked-out key gets probability exactly 0 and then contributes
  nothing at all, even if its K or V row holds NaN, inf or 1e10. (torch itself lets a NaN in a masked V row
  through, 0 * NaN = NaN; dlcore deliberately does not: RELIABILITY.md item 8.) Generally, a key whose
  probability is exactly 0 is skipped; every other NaN/inf propagates as in torch, e.g. a +inf or NaN in a
  float mask makes its row NaN.
"""
import numpy as np


def _allowed(mask, is_causal, b, L, S):
    """(L, S) bool: which keys each query row may see (None = all), and the (L, S) float bias or None."""
    if is_causal:
        return np.tri(L, S, 0, dtype=bool), None
    if mask is None:
        return None, None
    m = np.asarray(mask[b])
    if m.dtype == np.bool_:
        return m, None
    m = m.astype(np.float64)
    return m != -np.inf, m


def _matmul_skip_zeros(a, b):
    """``a @ b`` where a zero in ``a`` contributes nothing even against a NaN/inf row of ``b``."""
    good = np.isfinite(b).all(axis=1)
    out = a[:, good] @ b[good]
    for j in np.flatnonzero(~good):  # rare: rows of b holding NaN/inf, applied one at a time with a select
        col = a[:, j : j + 1]
        with np.errstate(invalid="ignore"):
            out = out + np.where(col != 0, col * b[j], 0.0)
    return out


def _probs(q, k, mask, is_causal, scale, b):
    """Scaled masked scores' softmax for batch entry b: (p (L, S), lse (L,)), float64, fully masked rows 0."""
    L, S = q.shape[1], k.shape[1]
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf keys: masked ones are dropped below
        s = (q[b].astype(np.float64) @ k[b].astype(np.float64).T) * scale
    allowed, bias = _allowed(mask, is_causal, b, L, S)
    if bias is not None:
        s = s + np.where(allowed, bias, 0.0)
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)  # a select: NaN scores of masked keys disappear here
    m = np.max(s, axis=1, initial=-np.inf) if S else np.full(L, -np.inf)
    m = np.where(m == -np.inf, 0.0, m)  # fully masked row: exp(-inf - 0) = 0 instead of NaN
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(s - m[:, None])  # subtract the max for numerical stability
    denom = p.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(denom == 0, -np.inf, m + np.log(denom))
        p = np.where(denom[:, None] == 0, 0.0, p / denom[:, None])
    return p, lse


def attention_forward(q, k, v, mask, is_causal, scale):
    """Attention output ``softmax(q k^T * scale + mask) v`` and the per-row log-sum-exp.

    Args:
        q: ``(B, L, E)`` queries, float32 or float64.
        k: ``(B, S, E)`` keys, same dtype.
        v: ``(B, S, Ev)`` values, same dtype.
        mask: None, or a ``(B, L, S)`` bool (True = attend) or float (added to the scores) array; may be a
            stride-0 broadcast view. Never set together with ``is_causal``.
        is_causal: keep key ``j`` for query ``i`` only when ``j <= i`` (top-left aligned).
        scale: the factor applied to ``q k^T`` (the launcher resolves the default ``1 / sqrt(E)``).

    Returns:
        ``(out, lse)``: out ``(B, L, Ev)``; lse ``(B, L)`` the log-sum-exp of the scaled, masked scores
        (-inf for a row that sees no key, whose output row is 0). Both in the input dtype.

    Example:
        >>> q = k = v = np.ones((1, 2, 4))
        >>> out, lse = attention_forward(q, k, v, None, True, 0.5)
        >>> out.shape, lse.shape
        ((1, 2, 4), (1, 2))
    """
    B, L, _ = q.shape
    Ev = v.shape[2]
    out = np.zeros((B, L, Ev), dtype=q.dtype)
    lse = np.full((B, L), -np.inf, dtype=q.dtype)
    for b in range(B):
        p, lse_b = _probs(q, k, mask, is_causal, scale, b)
        out[b] = _matmul_skip_zeros(p, v[b].astype(np.float64))
        lse[b] = lse_b
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, mask, is_causal, scale):
    """Gradients of `attention_forward` with respect to q, k and v.

    Uses the standard identities ``dP = dO V^T``, ``dS = P * (dP - rowsum(dO * O))``,
    ``dQ = scale * dS K``, ``dK = scale * dS^T Q``, ``dV = P^T dO``; ``dS`` is set to exactly 0 wherever
    ``P`` is 0 (masked keys, fully masked rows), so NaN/inf in masked K/V rows never leak in.

    Args:
        grad_out: ``(B, L, Ev)`` upstream gradient of ``out``.
        q, k, v, mask, is_causal, scale: as passed to `attention_forward`.
        out: ``(B, L, Ev)`` forward output.
        lse: ``(B, L)`` forward log-sum-exp (unused here: the reference recomputes the probabilities).

    Returns:
        ``(grad_q, grad_k, grad_v)`` shaped like q, k, v, in the input dtype.

    Example:
        >>> q = k = v = np.ones((1, 2, 4)); g = np.ones((1, 2, 4))
        >>> out, lse = attention_forward(q, k, v, None, False, 0.5)
        >>> [x.shape for x in attention_backward(g, q, k, v, out, lse, None, False, 0.5)]
        [(1, 2, 4), (1, 2, 4), (1, 2, 4)]
    """
    del lse  # recomputed below in float64
    B = q.shape[0]
    gq, gk, gv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    for b in range(B):
        p, _ = _probs(q, k, mask, is_causal, scale, b)
        do = grad_out[b].astype(np.float64)
        d = np.sum(do * out[b].astype(np.float64), axis=1)  # D_i = rowsum(dO * O) = sum_j P_ij dP_ij
        dp = do @ v[b].astype(np.float64).T
        with np.errstate(invalid="ignore"):
            ds = np.where(p == 0, 0.0, p * (dp - d[:, None]))
        gv[b] = p.T @ do
        gq[b] = scale * _matmul_skip_zeros(ds, k[b].astype(np.float64))
        gk[b] = scale * (ds.T @ q[b].astype(np.float64))
    return gq, gk, gv

"""MultiheadAttention and TransformerEncoderLayer on the fused attention kernel (torch.nn's arguments).

Mask conventions follow torch.nn (not SDPA): in ``attn_mask`` and ``key_padding_mask`` a boolean True
means "do not attend"; float masks are added to the scores. They are combined into the SDPA form
(True = attend) before the fused kernel runs.
"""
from __future__ import annotations

import math

import numpy as np

from dlcore import _arrays, ops
from dlcore.autograd import Tensor
from dlcore.nn import init
from dlcore.nn.layers import GELU, Dropout, LayerNorm, Linear, ReLU
from dlcore.nn.module import Module, Parameter


def _host(a):
    a = a.data if isinstance(a, Tensor) else a
    return _arrays.from_native(_arrays.to_native(a, "numpy"), "numpy")


def _sdpa_mask(attn_mask, key_padding_mask, is_causal, B, L, S, dtype):
    """Combine torch.nn-style masks into one SDPA mask (bool True = attend, or additive float); None if none."""
    if attn_mask is None and key_padding_mask is None:
        return None, is_causal
    allowed = np.ones((L, S), bool)
    additive = None
    if is_causal:
        allowed &= np.tril(np.ones((L, S), bool))
    if attn_mask is not None:
        m = _host(attn_mask)
        if m.dtype == bool:
            allowed = allowed & ~m
        else:
            additive = m.astype(dtype)
    allowed = np.broadcast_to(allowed, (B, 1, L, S)) if allowed.ndim == 2 else allowed
    if key_padding_mask is not None:
        kpm = _host(key_padding_mask)
        if kpm.shape != (B, S):
            raise ValueError(f"key_padding_mask must be (batch, source length) = {(B, S)}, got {kpm.shape}")
        if kpm.dtype == bool:
            allowed = allowed & ~kpm[:, None, None, :]
        else:
            additive = (0 if additive is None else additive) + kpm[:, None, None, :].astype(dtype)
    if additive is None:
        return allowed, False
    return np.where(allowed, np.broadcast_to(additive, np.broadcast_shapes(allowed.shape, np.shape(additive))),
                    -np.inf).astype(dtype), False


class MultiheadAttention(Module):
    """torch.nn.MultiheadAttention with the attention itself fused (no (L, S) matrix is formed).

    Args:
        embed_dim, num_heads: model width and heads (embed_dim divisible by num_heads).
        dropout: attention dropout; only 0.0 is supported by the fused kernel (ValueError otherwise).
        bias: add in/out projection biases. batch_first: inputs are (batch, seq, feature).

    ``forward(query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
    average_attn_weights=True, is_causal=False) -> (output, weights or None)``. Unlike torch, need_weights
    defaults to False: the fused kernel never forms the weights; ask for them and they are computed
    separately (an (L, S) matrix per head).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, batch_first=False, dtype=np.float32):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if dropout != 0.0:
            raise ValueError("MultiheadAttention: attention dropout is not supported by the fused kernel; use 0.0")
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = Parameter(init.xavier_uniform((3 * embed_dim, embed_dim), dtype))
        self.in_proj_bias = Parameter(np.zeros(3 * embed_dim, dtype)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        if bias:
            self.out_proj.bias.data[...] = 0

    def _project(self, x, which):
        E = self.embed_dim
        w = self.in_proj_weight[which * E:(which + 1) * E]
        b = None if self.in_proj_bias is None else self.in_proj_bias[which * E:(which + 1) * E]
        return ops.linear(x, w, b)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        B, L, E = query.shape
        S = key.shape[1]
        H, D = self.num_heads, self.head_dim
        if query is key and key is value:  # self-attention: one projection GEMM for q, k and v
            # split before the head permute: the three slice gradients then land in one contiguous
            # (B, L, 3, H, D) buffer, the layout the projection's backward reads (autograd._SliceGrads)
            qkv = ops.linear(query, self.in_proj_weight, self.in_proj_bias).reshape(B, L, 3, H, D)
            q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))
        else:
            q = self._project(query, 0).reshape(B, L, H, D).permute(0, 2, 1, 3)
            k = self._project(key, 1).reshape(B, S, H, D).permute(0, 2, 1, 3)
            v = self._project(value, 2).reshape(B, S, H, D).permute(0, 2, 1, 3)
        dtype = np.dtype(_arrays.dtype_name(q.data))
        mask, causal = _sdpa_mask(attn_mask, key_padding_mask, is_causal, B, L, S, dtype)
        if mask is not None:
            mask = _arrays.from_native(np.ascontiguousarray(mask) if mask.strides[0] else mask,
                                       _arrays.kind_of(q.data))
        out = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        out = self.out_proj(out.permute(0, 2, 1, 3).reshape(B, L, E))
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
            if mask is not None:
                m = _host(mask)
                add = np.where(m, 0.0, -np.inf) if m.dtype == bool else m
                scores = scores + _arrays.from_native(add.astype(dtype), _arrays.kind_of(q.data))
            elif causal:
                scores = scores + np.where(np.tril(np.ones((L, S), bool)), 0.0, -np.inf).astype(dtype)
            weights = ops.softmax(scores, dim=-1)
            if average_attn_weights:
                weights = weights.mean(dim=1)
        return out, weights

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


class TransformerEncoderLayer(Module):
    """torch.nn.TransformerEncoderLayer: self-attention then a feed-forward block, post-norm by default
    (``norm_first=True`` for pre-norm), on dlcore's fused attention, layer_norm and activation kernels."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, dtype=np.float32):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, 0.0, bias=bias, batch_first=batch_first, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        if isinstance(activation, str):
            if activation not in ("relu", "gelu"):
                raise ValueError(f"activation must be 'relu' or 'gelu' (or a callable), got {activation!r}")
            activation = ReLU() if activation == "relu" else GELU()
        self.activation = activation

    def _sa(self, x, mask, padding, is_causal):
        return self.dropout1(self.self_attn(x, x, x, key_padding_mask=padding, attn_mask=mask, is_causal=is_causal)[0])

    def _ff(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff(self.norm2(x))
        else:
            x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff(x))
        return x

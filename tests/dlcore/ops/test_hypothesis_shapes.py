"""Hypothesis-generated shapes for the core ops (softmax, matmul, cross_entropy, layer_norm, attention):
dlcore's Numba backend against torch on whatever shapes hypothesis finds, including 0- and 1-sized dims."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from dlcore import ops
from tests._compare import assert_close

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)
dims = st.integers(min_value=0, max_value=9)
dtypes = st.sampled_from([np.float32, np.float64])


def _arr(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype) * 2


@SETTINGS
@given(shape=st.lists(dims, min_size=1, max_size=3), data=st.data(), dtype=dtypes, log=st.booleans())
def test_softmax_any_shape_any_dim(shape, data, dtype, log):
    dim = data.draw(st.integers(min_value=-len(shape), max_value=len(shape) - 1))
    x = _arr(shape, dtype, len(shape))
    fn = (ops.log_softmax, F.log_softmax) if log else (ops.softmax, F.softmax)
    assert_close(fn[0](x, dim=dim, backend="numba"), fn[1](torch.from_numpy(x), dim=dim))


@SETTINGS
@given(batch_a=st.lists(st.integers(1, 3), max_size=2), batch_b=st.lists(st.integers(1, 3), max_size=2),
       m=dims, k=dims, n=dims, dtype=dtypes)
def test_matmul_broadcast_batches(batch_a, batch_b, m, k, n, dtype):
    a, b = _arr(tuple(batch_a) + (m, k), dtype, 1), _arr(tuple(batch_b) + (k, n), dtype, 2)
    try:
        expected = torch.matmul(torch.from_numpy(a), torch.from_numpy(b))
    except RuntimeError:  # batch dims that do not broadcast: dlcore must refuse too
        try:
            ops.matmul(a, b, backend="numba")
        except ValueError:
            return
        raise AssertionError("dlcore accepted shapes torch refused")
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else {}
    assert_close(ops.matmul(a, b, backend="numba"), expected, **tol)


@SETTINGS
@given(n=dims, c=st.integers(1, 40), dtype=dtypes, smoothing=st.sampled_from([0.0, 0.1]),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_shapes(n, c, dtype, smoothing, reduction):
    x = _arr((n, c), dtype, n * 100 + c)
    t = np.random.default_rng(c).integers(0, c, n)
    got = ops.cross_entropy(x, t, reduction=reduction, label_smoothing=smoothing, backend="numba")
    ref = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), reduction=reduction, label_smoothing=smoothing)
    assert_close(got, ref, rtol=2e-5, atol=2e-5)


@SETTINGS
@given(lead=st.lists(dims, max_size=2), d=st.integers(1, 70), dtype=dtypes)
def test_layer_norm_shapes(lead, d, dtype):
    x = _arr(tuple(lead) + (d,), dtype, d)
    w, b = _arr((d,), dtype, 7), _arr((d,), dtype, 8)
    ref = F.layer_norm(torch.from_numpy(x), (d,), torch.from_numpy(w), torch.from_numpy(b))
    assert_close(ops.layer_norm(x, (d,), w, b, backend="numba"), ref, rtol=1e-4, atol=1e-5)


@SETTINGS
@given(b=st.integers(1, 3), L=st.integers(1, 40), S=st.integers(1, 40), e=st.sampled_from([1, 4, 16, 33]),
       causal=st.booleans(), dtype=dtypes)
def test_attention_shapes(b, L, S, e, causal, dtype):
    q, k, v = _arr((b, L, e), dtype, 1), _arr((b, S, e), dtype, 2), _arr((b, S, e), dtype, 3)
    ref = F.scaled_dot_product_attention(*(torch.from_numpy(a) for a in (q, k, v)), is_causal=causal)
    got = ops.scaled_dot_product_attention(q, k, v, is_causal=causal, backend="numba")
    assert_close(got, ref, rtol=1e-4, atol=1e-5)

"""Every layer against its torch twin on the same weights and inputs: outputs and parameter gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dlcore
from dlcore import Tensor, nn, ops
from tests._compare import assert_close, rand

rng = np.random.default_rng(0)
F32 = dict(rtol=2e-5, atol=2e-5)


def twin(ours, theirs):
    """Copy our parameters into the torch module (same names), so both compute from the same weights."""
    theirs.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in ours.state_dict().items()})
    return theirs


def check(ours, theirs, *inputs, grads=True, tol=F32, **kw):
    xs = [Tensor(x.copy(), requires_grad=x.dtype.kind == "f") for x in inputs]
    ts = [torch.from_numpy(x.copy()).requires_grad_(x.dtype.kind == "f") for x in inputs]
    out, ref = ours(*xs, **kw), theirs(*ts, **kw)
    if isinstance(ref, tuple):
        out, ref = out[0], ref[0]
    assert_close(out.data, ref, **tol)
    if not grads:
        return
    g = rng.standard_normal(tuple(ref.shape)).astype(np.float32)
    out.backward(g)
    ref.backward(torch.from_numpy(g))
    for x, t in zip(xs, ts):
        if x.requires_grad:
            assert_close(x.grad, t.grad, **tol, msg="input grad")
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, theirs_params[name].grad, **tol, msg=f"grad of {name}")


def x32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_linear():
    m = nn.Linear(7, 5)
    check(m, twin(m, torch.nn.Linear(7, 5)), x32(3, 4, 7))
    m = nn.Linear(7, 5, bias=False)
    check(m, twin(m, torch.nn.Linear(7, 5, bias=False)), x32(6, 7))


def test_embedding_with_repeated_indices():
    m = nn.Embedding(11, 6)
    idx = np.array([[1, 3, 3], [10, 0, 1]])
    check(m, twin(m, torch.nn.Embedding(11, 6)), idx)
    with pytest.raises(IndexError, match="out of range"):
        m(np.array([11]))


def test_layer_norm():
    m = nn.LayerNorm(8)
    m.weight.data[:] = x32(8)
    m.bias.data[:] = x32(8)
    check(m, twin(m, torch.nn.LayerNorm(8)), x32(2, 3, 8))


@pytest.mark.parametrize("cls,tcls", [(nn.ReLU, torch.nn.ReLU), (nn.GELU, torch.nn.GELU), (nn.SiLU, torch.nn.SiLU),
                                      (nn.Tanh, torch.nn.Tanh), (nn.Sigmoid, torch.nn.Sigmoid)])
def test_activations(cls, tcls):
    check(cls(), tcls(), x32(4, 9))


def test_sequential_mlp():
    m = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Linear(16, 3))
    t = twin(m, torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.GELU(), torch.nn.Linear(16, 3)))
    check(m, t, x32(10, 6))


def test_dropout_is_seeded_scaled_and_off_in_eval():
    d = nn.Dropout(0.25, seed=3)
    x = Tensor(np.ones((200, 50), np.float32), requires_grad=True)
    y = d(x)
    kept = y.data != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y.data[kept], 1 / 0.75, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad != 0, kept)
    np.testing.assert_array_equal(nn.Dropout(0.25, seed=3)(x).data, y.data)  # same seed, same mask
    d.eval()
    assert d(x) is x


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention(batch_first):
    m = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    t = twin(m, torch.nn.MultiheadAttention(16, 4, batch_first=batch_first))
    x = x32(3, 7, 16) if batch_first else x32(7, 3, 16)
    xs, ts = Tensor(x.copy(), requires_grad=True), torch.from_numpy(x.copy()).requires_grad_(True)
    out, _ = m(xs, xs, xs)
    ref, _ = t(ts, ts, ts, need_weights=False)
    assert_close(out.data, ref, **F32)
    out.sum().backward()
    ref.sum().backward()
    assert_close(xs.grad, ts.grad, **F32)
    for name, p in m.named_parameters():
        assert_close(p.grad, dict(t.named_parameters())[name].grad, **F32, msg=name)


def test_multihead_attention_masks_and_cross_attention():
    m = nn.MultiheadAttention(8, 2, batch_first=True)
    t = twin(m, torch.nn.MultiheadAttention(8, 2, batch_first=True))
    q, kv = x32(2, 5, 8), x32(2, 6, 8)
    pad = np.zeros((2, 6), bool)
    pad[0, 4:] = True
    causal = np.triu(np.ones((5, 6), bool), 1)
    for kw in (dict(key_padding_mask=pad), dict(attn_mask=causal), dict(attn_mask=causal, key_padding_mask=pad)):
        out, w = m(Tensor(q), Tensor(kv), Tensor(kv), need_weights=True, **kw)
        ref, rw = t(*(torch.from_numpy(a) for a in (q, kv, kv)), need_weights=True,
                    **{k: torch.from_numpy(v) for k, v in kw.items()})
        assert_close(out.data, ref, **F32)
        assert_close(w.data, rw, **F32)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_layer(norm_first, activation):
    kw = dict(d_model=16, nhead=4, dim_feedforward=32, dropout=0.0, activation=activation, batch_first=True,
              norm_first=norm_first)
    m = nn.TransformerEncoderLayer(**kw)
    t = twin(m, torch.nn.TransformerEncoderLayer(**kw))
    x = x32(2, 9, 16)
    causal = np.triu(np.ones((9, 9), bool), 1)
    check(m, t, x, src_mask=None)
    xs, ts = Tensor(x.copy(), requires_grad=True), torch.from_numpy(x.copy()).requires_grad_(True)
    out = m(xs, src_mask=causal, is_causal=True)
    ref = t(ts, src_mask=torch.from_numpy(causal), is_causal=True)
    assert_close(out.data, ref, **F32)


def test_module_bookkeeping_state_dict_and_errors():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4))
    names = [n for n, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert m.num_parameters() == 3 * 4 + 4 + 4 + 4
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    m2 = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4))
    m2.load_state_dict(sd)
    for a, b in zip(m.parameters(), m2.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    with pytest.raises(ValueError, match="'0.weight' has shape"):
        m2.load_state_dict({**sd, "0.weight": np.zeros((5, 3), np.float32)})
    with pytest.raises(ValueError, match="'0.bias' is float64"):
        m2.load_state_dict({**sd, "0.bias": np.zeros(4)})
    with pytest.raises(KeyError, match="missing keys"):
        m2.load_state_dict({"0.weight": sd["0.weight"]})
    assert "Linear(in_features=3, out_features=4, bias=True)" in repr(m)
    m.eval()
    assert not any(mod.training for mod in m.modules())


def test_default_init_matches_torch_distribution():
    dlcore.nn.manual_seed(0)
    w = nn.Linear(400, 300).weight.data
    bound = 1 / np.sqrt(400)
    assert w.min() >= -bound and w.max() <= bound and abs(w.std() - bound / np.sqrt(3)) < 2e-3
    e = nn.Embedding(1000, 64).weight.data
    assert abs(e.std() - 1) < 0.02


@pytest.mark.parametrize("act", [nn.ReLU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU()],
                         ids=["relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 13), (3, 5, 13)])
def test_sequential_fuses_linear_and_activation_with_the_unfused_numbers(act, dtype, shape):
    """Sequential runs Linear + ReLU/GELU/SiLU as one linear_act call: outputs and every gradient match the
    modules applied one by one (also through a 3-D input and a bias-free layer)."""
    m = nn.Sequential(nn.Linear(13, 33, dtype=dtype), act, nn.Linear(33, 4, bias=False, dtype=dtype), act)
    x_np = rand(shape, dtype, seed=11)
    fused_x = dlcore.Tensor(x_np.copy(), requires_grad=True)
    y = m(fused_x)
    (y * y).sum().backward()
    fused = [fused_x.grad] + [p.grad.copy() for p in m.parameters()]
    m.zero_grad()
    plain_x = dlcore.Tensor(x_np.copy(), requires_grad=True)
    h = plain_x
    for layer in m:
        h = layer(h)
    (h * h).sum().backward()
    plain = [plain_x.grad] + [p.grad for p in m.parameters()]
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y.data, h.data, rtol=tol, atol=tol)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_sequential_does_not_fuse_a_subclass_with_its_own_forward():
    class Shifted(nn.ReLU):
        def forward(self, x):
            return ops.relu(x) + 1.0

    m = nn.Sequential(nn.Linear(4, 3), Shifted())
    x = rand((2, 4), np.float32, seed=12)
    expected = np.maximum(x @ m[0].weight.data.T + m[0].bias.data, 0) + 1
    np.testing.assert_allclose(m(dlcore.Tensor(x)).data, expected, rtol=1e-6, atol=1e-6)

"""The op table: every public op once, with sample inputs, the torch reference and tolerances as data.

Each `OpInfo` yields `Sample`s built from fresh random NumPy arrays: odd sizes (1, 7, 129), a zero-size
dimension, non-contiguous and transposed views, broadcasting and batching. The generic tests in
test_ops_vs_torch.py run every sample through every CPU backend, in float32 and float64, as NumPy arrays
and as torch tensors, forward and gradient, against torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Sample:
    args: tuple  # NumPy arrays (float arrays follow the test dtype) and plain values
    kwargs: dict = field(default_factory=dict)
    diff: tuple = ()  # indices of args that get gradients
    name: str = ""

    def __repr__(self):
        shapes = [tuple(a.shape) if isinstance(a, np.ndarray) else a for a in self.args]
        return f"{self.name or 'sample'}{shapes}"


@dataclass
class OpInfo:
    name: str
    torch_fn: object  # called with torch tensors and the sample's kwargs
    samples: object  # (dtype, rng) -> list of Sample
    # forward/gradient tolerances per dtype; widening one needs a comment saying why
    tol: dict = field(default_factory=lambda: {np.float32: dict(rtol=1e-5, atol=1e-6),
                                               np.float64: dict(rtol=1e-10, atol=1e-12)})
    grad_tol: dict = None
    label: str = ""  # test id when one op appears twice (gelu with approximate='tanh')

    def tolerance(self, dtype, grad=False):
        table = (self.grad_tol or self.tol) if grad else self.tol
        return table[np.dtype(dtype).type]


def _r(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _noncontig(rng, shape, dtype):
    """A view with the given shape whose last dim is strided (every other element of a wider array)."""
    wide = _r(rng, tuple(shape[:-1]) + (2 * shape[-1],), dtype)
    return wide[..., ::2]


def _transposed(rng, shape, dtype):
    """A transposed (Fortran-order-like) view of the given shape."""
    return _r(rng, tuple(reversed(shape)), dtype).T


def _rowwise_samples(dtype, rng):
    # dim is always given: torch's implicit dim (0 for 1-D/3-D inputs) is deprecated; dlcore's default is -1
    last = dict(dim=-1)
    return [
        Sample((_r(rng, (5, 7), dtype),), last, name="5x7"),
        Sample((_r(rng, (1, 1), dtype),), last, name="1x1"),
        Sample((_r(rng, (3, 129), dtype, 3.0),), last, name="3x129"),
        Sample((_r(rng, (2, 3, 7), dtype),), dict(dim=1), name="dim1"),
        Sample((_r(rng, (4, 6), dtype),), dict(dim=0), name="dim0"),
        Sample((_noncontig(rng, (5, 7), dtype),), last, name="strided"),
        Sample((_transposed(rng, (6, 9), dtype),), last, name="transposed"),
        Sample((_r(rng, (0, 7), dtype),), last, name="empty"),
        Sample((_r(rng, (7,), dtype),), last, name="1d"),
        Sample((np.asarray(_r(rng, (), dtype)),), dict(dim=0), name="0d"),
    ]


def _unary_samples(dtype, rng):
    return [
        Sample((_r(rng, (129,), dtype, 3.0),), name="129"),
        Sample((_r(rng, (3, 5, 7), dtype, 3.0),), name="3x5x7"),
        Sample((_r(rng, (1,), dtype),), name="1"),
        Sample((_noncontig(rng, (4, 9), dtype),), name="strided"),
        Sample((_transposed(rng, (5, 3), dtype),), name="transposed"),
        Sample((_r(rng, (0, 3), dtype),), name="empty"),
        Sample((np.asarray(_r(rng, (), dtype)),), name="0d"),
    ]


def _diff_all(samples):
    for s in samples:
        s.diff = tuple(i for i, a in enumerate(s.args) if isinstance(a, np.ndarray) and a.dtype.kind == "f")
    return samples


def _matmul_samples(dtype, rng):
    cases = [((7, 5), (5, 3)), ((1, 1), (1, 1)), ((129, 7), (7, 9)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 6)),
             ((4,), (4, 3)), ((3, 4), (4,)), ((4,), (4,)), ((0, 4), (4, 3)), ((3, 0), (0, 2))]
    out = [Sample((_r(rng, a, dtype), _r(rng, b, dtype)), name=f"{a}@{b}") for a, b in cases]
    out.append(Sample((_transposed(rng, (5, 7), dtype), _noncontig(rng, (7, 3), dtype)), name="views"))
    return _diff_all(out)


def _linear_samples(dtype, rng):
    return _diff_all([
        Sample((_r(rng, (5, 7), dtype), _r(rng, (3, 7), dtype), _r(rng, (3,), dtype)), name="bias"),
        Sample((_r(rng, (2, 4, 7), dtype), _r(rng, (9, 7), dtype), None), name="nobias"),
        Sample((_r(rng, (7,), dtype), _r(rng, (3, 7), dtype), _r(rng, (3,), dtype)), name="1d"),
        Sample((_noncontig(rng, (5, 7), dtype), _transposed(rng, (3, 7), dtype), _r(rng, (3,), dtype)), name="views"),
        Sample((_r(rng, (0, 7), dtype), _r(rng, (3, 7), dtype), _r(rng, (3,), dtype)), name="empty"),
    ])


_LINEAR_ACT_TORCH = {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "relu": F.relu,
                     "silu": F.silu, None: lambda t: t}


def _linear_act_torch(x, w, b=None, activation="gelu"):
    return _LINEAR_ACT_TORCH[activation](F.linear(x, w, b))


def _linear_act_samples(activation):
    def samples(dtype, rng):
        out = _linear_samples(dtype, rng)
        for s in out:
            s.kwargs = dict(activation=activation)
        return out
    return samples


def _attention_samples(dtype, rng):
    def qkv(b, L, S, E, Ev):
        return _r(rng, b + (L, E), dtype), _r(rng, b + (S, E), dtype), _r(rng, b + (S, Ev), dtype)

    bool_mask = rng.random((7, 9)) > 0.3
    bool_mask[:, 0] = True  # every row keeps one key (fully masked rows are tested on their own)
    samples = [
        Sample(qkv((2, 3), 7, 9, 16, 8), name="basic"),
        Sample(qkv((1,), 1, 1, 4, 4), name="1x1"),
        Sample(qkv((2,), 17, 17, 8, 8), dict(is_causal=True), name="causal"),
        Sample(qkv((2,), 5, 11, 8, 8), dict(is_causal=True), name="causal L<S"),
        Sample(qkv((2,), 11, 5, 8, 8), dict(is_causal=True), name="causal L>S"),
        Sample(qkv((2, 2), 7, 9, 8, 8) + (bool_mask,), name="bool mask"),
        Sample(qkv((2,), 7, 9, 8, 8) + (_r(rng, (2, 7, 9), dtype),), name="float mask"),  # no grad w.r.t. mask
        Sample(qkv((3,), 6, 130, 8, 8), dict(scale=0.3), name="S=130 scale"),
        Sample((_noncontig(rng, (2, 5, 8), dtype), _transposed(rng, (8, 6, 2), dtype).transpose(2, 1, 0),
                _r(rng, (2, 6, 8), dtype)), name="views"),
    ]
    samples = _diff_all(samples)
    for s in samples:
        s.diff = tuple(i for i in s.diff if i < 3)  # the fused kernel gives no gradient w.r.t. attn_mask
    return samples


def _xent_samples(dtype, rng):
    def t(n, c, ignore=0):
        tgt = rng.integers(0, c, size=n)
        tgt[:ignore] = -100
        return tgt

    return [
        Sample((_r(rng, (7, 5), dtype), t(7, 5)), diff=(0,), name="7x5"),
        Sample((_r(rng, (9, 129), dtype, 4.0), t(9, 129, ignore=3)), dict(reduction="sum"), diff=(0,), name="sum"),
        Sample((_r(rng, (9, 13), dtype), t(9, 13, ignore=2)), dict(reduction="none"), diff=(0,), name="none"),
        Sample((_r(rng, (6, 11), dtype), t(6, 11, ignore=1)), dict(label_smoothing=0.1), diff=(0,), name="smooth"),
        Sample((_r(rng, (5, 7), dtype), t(5, 7, ignore=1)), dict(label_smoothing=0.2, reduction="none"), diff=(0,),
               name="smooth none"),
        Sample((_r(rng, (1, 1), dtype), t(1, 1)), diff=(0,), name="1x1"),
        Sample((_r(rng, (3, 4, 5), dtype), rng.integers(0, 4, size=(3, 5))), diff=(0,), name="K-dim"),
        Sample((_noncontig(rng, (5, 7), dtype), t(5, 7)), dict(ignore_index=2), diff=(0,), name="strided ignore=2"),
        Sample((_r(rng, (7,), dtype), np.array(3)), diff=(0,), name="unbatched"),
    ]


def _bce_samples(dtype, rng):
    def y(shape):
        return rng.random(shape).astype(dtype)

    return [
        Sample((_r(rng, (5, 7), dtype, 3.0), y((5, 7))), diff=(0,), name="5x7"),
        Sample((_r(rng, (4, 3), dtype), y((4, 3)), _r(rng, (3,), dtype) ** 2 + 0.5), diff=(0,), name="pos_weight"),
        Sample((_r(rng, (4, 3), dtype), y((4, 3)), None), dict(reduction="sum"), diff=(0, 1), name="sum+dy"),
        Sample((_r(rng, (2, 3, 4), dtype), y((2, 3, 4))), dict(reduction="none"), diff=(0,), name="none"),
        Sample((_r(rng, (2, 3, 4), dtype), y((2, 3, 4)), rng.random((3, 1)).astype(dtype) + 0.5), diff=(0,),
               name="pos_weight bcast"),
        Sample((_noncontig(rng, (3, 5), dtype), y((3, 5))), diff=(0,), name="strided"),
        Sample((_r(rng, (0, 3), dtype), y((0, 3))), dict(reduction="sum"), diff=(0,), name="empty"),
    ]


def _mse_samples(dtype, rng):
    return _diff_all([
        Sample((_r(rng, (129,), dtype), _r(rng, (129,), dtype)), name="129"),
        Sample((_r(rng, (3, 7), dtype), _r(rng, (3, 7), dtype)), dict(reduction="sum"), name="sum"),
        Sample((_r(rng, (3, 7), dtype), _r(rng, (3, 7), dtype)), dict(reduction="none"), name="none"),
        Sample((_noncontig(rng, (4, 5), dtype), _transposed(rng, (4, 5), dtype)), name="views"),
        Sample((_r(rng, (3, 1, 5), dtype), _r(rng, (4, 5), dtype)), name="broadcast"),
        Sample((_r(rng, (1,), dtype), _r(rng, (1,), dtype)), name="1"),
        Sample((_r(rng, (0, 2), dtype), _r(rng, (0, 2), dtype)), dict(reduction="sum"), name="empty"),
    ])


def _layer_norm_samples(dtype, rng):
    return _diff_all([
        Sample((_r(rng, (5, 7), dtype), (7,), _r(rng, (7,), dtype), _r(rng, (7,), dtype)), name="affine"),
        Sample((_r(rng, (3, 129), dtype, 2.0) + 3.0, (129,)), name="plain"),
        Sample((_r(rng, (2, 3, 4), dtype), (3, 4), _r(rng, (3, 4), dtype), None), name="2d shape"),
        Sample((_r(rng, (4, 1), dtype), (1,), _r(rng, (1,), dtype), _r(rng, (1,), dtype)), name="D=1"),
        Sample((_noncontig(rng, (4, 6), dtype), (6,), _r(rng, (6,), dtype), _r(rng, (6,), dtype)), name="strided"),
        Sample((_r(rng, (0, 5), dtype), (5,), _r(rng, (5,), dtype), _r(rng, (5,), dtype)), name="empty"),
    ])


def _gelu_tanh(dtype, rng):
    out = _diff_all(_unary_samples(dtype, rng))
    for s in out:
        s.kwargs = dict(approximate="tanh")
    return out


# float32 sums over many terms differ from torch's by reassociation; widened with that reason.
_SUM_F32 = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}

OPS = [
    OpInfo("matmul", torch.matmul, _matmul_samples, _SUM_F32),
    OpInfo("linear", F.linear, _linear_samples, _SUM_F32),
    OpInfo("linear_act", _linear_act_torch, _linear_act_samples("gelu"), _SUM_F32, label="linear_act_gelu"),
    OpInfo("linear_act", _linear_act_torch, _linear_act_samples("gelu_tanh"), _SUM_F32, label="linear_act_gelu_tanh"),
    OpInfo("linear_act", _linear_act_torch, _linear_act_samples("relu"), _SUM_F32, label="linear_act_relu"),
    OpInfo("linear_act", _linear_act_torch, _linear_act_samples("silu"), _SUM_F32, label="linear_act_silu"),
    OpInfo("linear_act", _linear_act_torch, _linear_act_samples(None), _SUM_F32, label="linear_act_none"),
    OpInfo("softmax", F.softmax, lambda d, r: _diff_all(_rowwise_samples(d, r))),
    OpInfo("log_softmax", F.log_softmax, lambda d, r: _diff_all(_rowwise_samples(d, r))),
    # attention accumulates tile by tile with an online softmax (a different summation order than torch)
    OpInfo("scaled_dot_product_attention", F.scaled_dot_product_attention, _attention_samples,
           {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}),
    OpInfo("cross_entropy", F.cross_entropy, _xent_samples, _SUM_F32),
    # dlcore's third positional argument is pos_weight (API.md); torch's is weight, so pass it by name
    OpInfo("binary_cross_entropy_with_logits",
           lambda x, y, pw=None, **kw: F.binary_cross_entropy_with_logits(x, y, pos_weight=pw, **kw),
           _bce_samples, _SUM_F32),
    OpInfo("mse_loss", F.mse_loss, _mse_samples, _SUM_F32),
    OpInfo("layer_norm", F.layer_norm, _layer_norm_samples,
           {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}),
    OpInfo("gelu", F.gelu, lambda d, r: _diff_all(_unary_samples(d, r))),
    OpInfo("gelu", F.gelu, _gelu_tanh, label="gelu_tanh"),
    OpInfo("relu", F.relu, lambda d, r: _diff_all(_unary_samples(d, r))),
    OpInfo("silu", F.silu, lambda d, r: _diff_all(_unary_samples(d, r))),
]
OP_IDS = [op.label or op.name for op in OPS]

"""Every op in the table, every CPU backend, float32 and float64, NumPy and torch inputs: forward and
gradient against torch (PyTorch OpInfo style: the op table is data, these tests are generic)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dlcore
from tests._compare import assert_close
from tests.dlcore.ops.op_table import OP_IDS, OPS

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]


def _torch_args(sample, requires_grad=False):
    out = []
    for i, a in enumerate(sample.args):
        if isinstance(a, np.ndarray):
            t = torch.from_numpy(a.copy())
            if requires_grad and i in sample.diff:
                t.requires_grad_(True)
            out.append(t)
        else:
            out.append(a)
    return out


def _samples(op, dtype):
    return op.samples(dtype, np.random.default_rng(1234))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_forward_numpy_inputs(op, dtype, backend):
    fn = getattr(dlcore.ops, op.name)
    for s in _samples(op, dtype):
        expected = op.torch_fn(*_torch_args(s), **s.kwargs)
        got = fn(*s.args, backend=backend, **s.kwargs)
        assert isinstance(got, np.ndarray), f"{s}: NumPy in must give NumPy out, got {type(got)}"
        assert got.dtype == dtype, f"{s}: dtype {got.dtype} != {dtype}"
        assert_close(got, expected, **op.tolerance(dtype), msg=f"{op.name} {s}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_gradients_through_torch_autograd(op, dtype, backend):
    """torch tensors that require grad get gradients from dlcore's backward kernels."""
    fn = getattr(dlcore.ops, op.name)
    rng = np.random.default_rng(99)
    for s in _samples(op, dtype):
        ref_args, our_args = _torch_args(s, True), _torch_args(s, True)
        expected = op.torch_fn(*ref_args, **s.kwargs)
        got = fn(*our_args, backend=backend, **s.kwargs)
        assert isinstance(got, torch.Tensor) and got.dtype == expected.dtype
        assert_close(got, expected, **op.tolerance(dtype), msg=f"{op.name} {s} forward")
        if not s.diff:
            continue
        # a fresh random upstream gradient, given as a non-contiguous view when it has >= 2 dims
        g = rng.standard_normal(tuple(expected.shape)).astype(dtype)
        g_t = torch.from_numpy(np.ascontiguousarray(g.T)).T if g.ndim >= 2 else torch.from_numpy(g)
        assert got.grad_fn is not None, f"{s}: no autograd graph"
        expected.backward(g_t)
        got.backward(g_t)
        for i in s.diff:
            assert_close(our_args[i].grad, ref_args[i].grad, **op.tolerance(dtype, grad=True),
                         msg=f"{op.name} {s} grad of arg {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_explicit_backward_matches_autograd(op, backend):
    """dlcore.ops.<name>_backward gives torch autograd's gradient w.r.t. the first input (float64)."""
    bwd = getattr(dlcore.ops, op.name + "_backward")
    rng = np.random.default_rng(7)
    for s in _samples(op, np.float64):
        if 0 not in s.diff:
            continue
        ref_args = _torch_args(s, True)
        out = op.torch_fn(*ref_args, **s.kwargs)
        g = rng.standard_normal(tuple(out.shape))
        out.backward(torch.from_numpy(g))
        if op.name in ("softmax", "log_softmax"):
            got = bwd(g, out.detach().numpy(), backend=backend, **s.kwargs)
        else:
            got = bwd(g, *s.args, backend=backend, **s.kwargs)
        got = got[0] if isinstance(got, tuple) else got
        assert_close(got, ref_args[0].grad, **op.tolerance(np.float64, grad=True), msg=f"{op.name}_backward {s}")


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_backends_agree_bitwise_on_repeat(op):
    """The same input twice gives bitwise-equal output (RELIABILITY 18)."""
    fn = getattr(dlcore.ops, op.name)
    for s in _samples(op, np.float32)[:3]:
        a = fn(*s.args, backend="numba", **s.kwargs)
        b = fn(*s.args, backend="numba", **s.kwargs)
        np.testing.assert_array_equal(a, b)

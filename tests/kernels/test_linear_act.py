"""linear_act (fused linear + bias + activation) kernels against torch's ``act(F.linear(x, W, b))``.

Forward and gradients for x, W and b; every activation (gelu both forms, relu, silu, none); float32 and
float64; odd and empty sizes; with and without the saved pre-activation (recompute path); the launcher with
non-contiguous inputs and torch autograd; NaN/inf (RELIABILITY 20); thread-count independence (18).
"""
import importlib

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlcore
from tests._compare import assert_close, rand

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
ACTS = ["gelu", "gelu_tanh", "relu", "silu", "none"]
# sums over K terms: float32 differs from torch's BLAS by reassociation (as tests/kernels/test_matmul.py)
TOL = {np.float32: {"rtol": 1e-4, "atol": 1e-4}, np.float64: {"rtol": 1e-10, "atol": 1e-10}}
SHAPES = [(1, 1, 1), (7, 129, 5), (129, 7, 33), (300, 65, 1100), (0, 5, 3), (4, 0, 3), (4, 5, 0)]  # (N, K, O)

TORCH_ACT = {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "relu": F.relu,
             "silu": F.silu, "none": lambda t: t}


def _mod(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.linear_act")


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(True)


def _torch_ref(x, w, b, act, grad):
    tx, tw = _t(x), _t(w)
    tb = _t(b) if b is not None else None
    y = TORCH_ACT[act](F.linear(tx, tw, tb))
    y.backward(torch.from_numpy(grad))
    return y, tx.grad, tw.grad, (tb.grad if tb is not None else None)


@pytest.mark.parametrize("save", [True, False])
@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_act_matches_torch(backend, dtype, act, shape, has_bias, save):
    n, k, o = shape
    x, w = rand((n, k), dtype, seed=1), rand((o, k), dtype, seed=2)
    b = rand(o, dtype, seed=3) if has_bias else None
    grad = rand((n, o), dtype, seed=4)
    y_ref, gx_ref, gw_ref, gb_ref = _torch_ref(x, w, b, act, grad)
    mod = _mod(backend)
    y, saved = mod.linear_act_forward(x, w, b, act, save)
    assert y.dtype == dtype and y.shape == (n, o) and y.flags.c_contiguous
    assert_close(y, y_ref, msg=f"{backend} {act} forward", **TOL[dtype])
    if not save or act == "none":
        assert saved is None
    gx, gw, gb = mod.linear_act_backward(grad, x, w, b, saved, act)
    assert_close(gx, gx_ref, msg=f"{backend} {act} grad_x", **TOL[dtype])
    assert_close(gw, gw_ref, msg=f"{backend} {act} grad_w", **TOL[dtype])
    if has_bias:
        assert_close(gb, gb_ref, msg=f"{backend} {act} grad_b", **TOL[dtype])
    else:
        assert gb is None


@pytest.mark.parametrize("act", ACTS)
def test_numba_many_rows_in_parallel(act):
    """Enough rows for every Numba thread to run part of the epilogue and of the gradient pass."""
    mod = _mod("numba")
    n, k, o = 600, 33, 2048
    x, w, b = rand((n, k), np.float32, seed=5), rand((o, k), np.float32, seed=6), rand(o, np.float32, seed=7)
    grad = rand((n, o), np.float32, seed=8)
    y_ref, gx_ref, gw_ref, gb_ref = _torch_ref(x, w, b, act, grad)
    y, saved = mod.linear_act_forward(x, w, b, act, True)
    assert_close(y, y_ref, **TOL[np.float32])
    gx, gw, gb = mod.linear_act_backward(grad, x, w, b, saved, act)
    for got, ref in ((gx, gx_ref), (gw, gw_ref), (gb, gb_ref)):
        assert_close(got, ref, **TOL[np.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_propagate(backend):
    """RELIABILITY 20: NaN/inf in x reach the outputs they feed, as torch (gelu(-inf) = NaN, relu(NaN) = NaN)."""
    x, w, b = rand((4, 3)), rand((5, 3)), rand(5)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    for act in ACTS:
        y, _ = _mod(backend).linear_act_forward(x, w, b, act, False)
        ref = TORCH_ACT[act](F.linear(*(torch.from_numpy(a) for a in (x, w, b))))
        assert_close(y, ref, msg=act)


def test_unknown_activation_raises():
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="activation"):
            _mod(backend).linear_act_forward(rand((2, 3)), rand((4, 3)), None, "tanh", False)


def test_numba_bitwise_across_thread_counts():
    """RELIABILITY 18: the epilogue and its gradient do not depend on Numba's thread count."""
    mod = _mod("numba")
    x, w, b = rand((64, 40), np.float32, seed=1), rand((300, 40), np.float32, seed=2), rand(300, np.float32)
    grad = rand((64, 300), np.float32, seed=3)
    saved = numba.get_num_threads()
    outs = []
    try:
        for threads in (1, saved):
            numba.set_num_threads(threads)
            y, pre = mod.linear_act_forward(x, w, b, "gelu", True)
            outs.append((y.tobytes(), mod.linear_act_backward(grad, x, w, b, pre, "gelu")[0].tobytes()))
    finally:
        numba.set_num_threads(saved)
    assert outs[0] == outs[1]


# --- through dlcore.ops: launcher, non-contiguous inputs, torch autograd -----------------------------

@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "relu", "silu", None])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_op_noncontiguous_and_autograd(backend, dtype, act):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 5, 14)).astype(dtype)[:, :, ::2]  # strided last dim, leading batch dims
    w = rng.standard_normal((7, 9)).astype(dtype).T  # (9, 7) transposed view
    b = rng.standard_normal(9).astype(dtype)
    g = rng.standard_normal((5, 2, 9)).astype(dtype).transpose(1, 0, 2)  # non-contiguous upstream gradient
    name = act or "none"
    ref_args = [torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, b)]
    y_ref = TORCH_ACT[name](F.linear(*ref_args))
    y_ref.backward(torch.from_numpy(g.copy()))
    assert_close(dlcore.ops.linear_act(x, w, b, act, backend=backend), y_ref, **TOL[dtype])
    ours = [torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, b)]
    y = dlcore.ops.linear_act(*ours, activation=act, backend=backend)
    assert_close(y, y_ref, **TOL[dtype])
    y.backward(torch.from_numpy(g.copy()))
    for got, ref in zip(ours, ref_args):
        assert_close(got.grad, ref.grad, **TOL[dtype])
    gx, gw, gb = dlcore.ops.linear_act_backward(g, x, w, b, act, backend=backend)
    for got, ref in zip((gx, gw, gb), ref_args):
        assert_close(got, ref.grad, **TOL[dtype])


def test_op_checks_arguments():
    x, w = rand((3, 4), np.float32), rand((5, 4), np.float32)
    with pytest.raises(ValueError, match="activation"):
        dlcore.ops.linear_act(x, w, activation="gelu_exact")
    with pytest.raises(ValueError, match="in_features"):
        dlcore.ops.linear_act(x, rand((5, 3), np.float32))
    with pytest.raises(TypeError):
        dlcore.ops.linear_act(x, rand((5, 4), np.float64))
    with pytest.raises(ValueError, match="grad_output"):
        dlcore.ops.linear_act_backward(rand((3, 4), np.float32), x, w)


def test_explain_names_the_fused_kernel():
    text = str(dlcore.explain("linear_act", rand((3, 4), np.float32), rand((5, 4), np.float32)))
    assert "linear_act_forward" in text and "activation" in text


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_serial_and_parallel_epilogues_give_the_same_bits(act, dtype):
    """Small outputs run the epilogue and the backward's act' pass on the calling thread (`SERIAL_BELOW`):
    the serial and parallel kernels compute every element alike."""
    mod = _mod("numba")
    code = mod._CODES[act]
    y = rand((37, 129), dtype, seed=21) * 3
    bias, g = rand((129,), dtype, seed=22), rand((37, 129), dtype, seed=23)
    outs = []
    for kernel in (mod._epilogue_serial, mod._epilogue_kernel):
        yy, saved = y.copy(), np.empty_like(y)
        kernel(yy, bias, saved, code, True, True)
        outs.append((yy, saved))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    if act != "none":
        a, b = np.empty_like(g), np.empty_like(g)
        mod._grad_pre_serial(y, g, a, code)
        mod._grad_pre_kernel(y, g, b, code)
        assert np.array_equal(a, b)


def test_numba_large_product_is_marked_as_followed_by_a_numba_kernel(monkeypatch):
    """Where the own gemm is the in-step GEMM (AVX-512 targets), the forward's GEMM runs inside
    `between_numba_kernels` (no spinning OpenBLAS workers before the parallel epilogue); elsewhere OpenBLAS."""
    from dlcore.kernels.numba import matmul as mm

    seen = []
    real = mm.blas_matmul

    def spy(a, b, out=None):
        seen.append(mm._in_step())
        return real(a, b, out)

    monkeypatch.setattr(mm, "blas_matmul", spy)
    x, w = rand((300, 65), np.float32, seed=24), rand((1100, 65), np.float32, seed=25)
    y, _ = _mod("numba").linear_act_forward(x, w, None, "relu", False)
    assert seen == [mm.OWN_GEMM_IN_STEP] and not mm._in_step()
    assert_close(y, np.maximum(x @ w.T, 0), rtol=1e-4, atol=1e-4)

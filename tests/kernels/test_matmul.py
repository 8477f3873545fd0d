"""matmul / linear (and their backwards) against torch; the numba backend's own ``gemm`` on odd shapes.

RELIABILITY.md items 1 (empty dimensions), 4 (an ``out`` overlapping an input is a clear error), 15
(finite differences), 18 (bitwise equal across thread counts) and 20 (NaN/inf propagate).
"""
import importlib

import numba
import numpy as np
import pytest
import torch

import dlcore
from tests._compare import assert_close, rand

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
# Products sum K terms: float32 results carry ~sqrt(K) ulps of the largest partial sums, so the float32
# tolerance is wider than _compare.TOL's elementwise default (K <= 1100 here, values ~N(0, 1)).
TOL = {np.float32: {"rtol": 1e-4, "atol": 1e-4}, np.float64: {"rtol": 1e-10, "atol": 1e-10}}

MATMUL_SHAPES = [  # (B, M, K, N)
    (1, 1, 1, 1), (1, 7, 129, 5), (3, 7, 1, 9), (2, 33, 17, 129), (4, 16, 64, 16),
    (0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5), (2, 3, 4, 0),
]
LINEAR_SHAPES = [(1, 1, 1), (7, 129, 5), (129, 7, 33), (0, 5, 3), (4, 0, 3), (4, 5, 0)]  # (N, K, O)


def _mod(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.matmul")


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)


@pytest.mark.parametrize("shape", MATMUL_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_matches_torch(backend, dtype, shape):
    bsz, m, k, n = shape
    a, b = rand((bsz, m, k), dtype, seed=1), rand((bsz, k, n), dtype, seed=2)
    grad = rand((bsz, m, n), dtype, seed=3)
    ta, tb = _t(a), _t(b)
    out = torch.matmul(ta, tb)
    out.backward(torch.from_numpy(grad))
    mod = _mod(backend)
    c = mod.matmul(a, b)
    assert c.dtype == dtype and c.flags.c_contiguous
    assert_close(c, out, msg=f"{backend} matmul", **TOL[dtype])
    ga, gb = mod.matmul_backward(grad, a, b)
    assert ga.dtype == dtype and gb.dtype == dtype
    assert_close(ga, ta.grad, msg=f"{backend} grad_a", **TOL[dtype])
    assert_close(gb, tb.grad, msg=f"{backend} grad_b", **TOL[dtype])


@pytest.mark.parametrize("has_bias", [True, False])
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_matches_torch(backend, dtype, shape, has_bias):
    n, k, o = shape
    x, w = rand((n, k), dtype, seed=1), rand((o, k), dtype, seed=2)
    bias = rand(o, dtype, seed=3) if has_bias else None
    grad = rand((n, o), dtype, seed=4)
    tx, tw = _t(x), _t(w)
    tbias = _t(bias) if has_bias else None
    y = torch.nn.functional.linear(tx, tw, tbias)
    y.backward(torch.from_numpy(grad))
    mod = _mod(backend)
    out = mod.linear(x, w, bias)
    assert out.dtype == dtype and out.shape == (n, o)
    assert_close(out, y, msg=f"{backend} linear", **TOL[dtype])
    gx, gw, gb = mod.linear_backward(grad, x, w, has_bias)
    assert_close(gx, tx.grad, msg=f"{backend} grad_x", **TOL[dtype])
    assert_close(gw, tw.grad, msg=f"{backend} grad_w", **TOL[dtype])
    if has_bias:
        assert_close(gb, tbias.grad, msg=f"{backend} grad_b", **TOL[dtype])
    else:
        assert gb is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_skips_gradients_not_needed(backend):
    """``needs`` / ``need_input=False`` (a first layer, a constant operand): that gradient is None, not computed,
    and the others are bitwise the ones of the full call."""
    mod = _mod(backend)
    a, b, g = rand((2, 5, 7), seed=1), rand((2, 7, 3), seed=2), rand((2, 5, 3), seed=3)
    ga, gb = mod.matmul_backward(g, a, b)
    only_b = mod.matmul_backward(g, a, b, (False, True))
    only_a = mod.matmul_backward(g, a, b, (True, False))
    assert only_b[0] is None and only_a[1] is None
    np.testing.assert_array_equal(only_b[1], gb)
    np.testing.assert_array_equal(only_a[0], ga)
    x, w, up = rand((6, 4), seed=4), rand((5, 4), seed=5), rand((6, 5), seed=6)
    _, gw, gbias = mod.linear_backward(up, x, w, True)
    nx, nw, nbias = mod.linear_backward(up, x, w, True, need_input=False)
    assert nx is None
    np.testing.assert_array_equal(nw, gw)
    np.testing.assert_array_equal(nbias, gbias)
    act = importlib.import_module(f"dlcore.kernels.{backend}.linear_act")
    _, saved = act.linear_act_forward(x, w, rand(5, seed=7), "gelu", True)
    full = act.linear_act_backward(up, x, w, rand(5, seed=7), saved, "gelu")
    part = act.linear_act_backward(up, x, w, rand(5, seed=7), saved, "gelu", need_input=False)
    assert part[0] is None
    np.testing.assert_array_equal(part[1], full[1])
    np.testing.assert_array_equal(part[2], full[2])


def test_autograd_skips_the_first_layers_input_gradient(monkeypatch):
    """dlcore autograd asks the kernel for grad_x only when the input requires grad."""
    mod = _mod("numba")
    seen = []
    real = mod.linear_backward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("need_input", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "linear_backward", spy)
    w = dlcore.tensor(rand((3, 4), np.float32, seed=1), requires_grad=True)
    x = rand((5, 4), np.float32, seed=2)
    dlcore.ops.linear(x, w).sum().backward()
    xt = dlcore.tensor(x, requires_grad=True)
    dlcore.ops.linear(xt, w).sum().backward()
    assert seen == [False, True]
    assert xt.grad.shape == (5, 4) and w.grad.shape == (3, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_backward_finite_differences(backend):
    """RELIABILITY 15: central differences in float64 (eps 1e-6, atol 1e-5, rtol 1e-3)."""
    x, w, b = rand((3, 4), seed=1), rand((5, 4), seed=2), rand(5, seed=3)
    up = rand((3, 5), seed=4)
    mod = _mod(backend)
    h = 1e-6

    def numeric(arr):
        out = np.zeros_like(arr)
        for idx in np.ndindex(*arr.shape):
            orig = arr[idx]
            arr[idx] = orig + h
            fp = np.sum(mod.linear(x, w, b) * up)
            arr[idx] = orig - h
            fm = np.sum(mod.linear(x, w, b) * up)
            arr[idx] = orig
            out[idx] = (fp - fm) / (2 * h)
        return out

    gx, gw, gb = mod.linear_backward(up, x, w, True)
    for got, arr in ((gx, x), (gw, w), (gb, b)):
        assert_close(got, numeric(arr), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_propagate(backend):
    """RELIABILITY 20: NaN and inf in an operand reach exactly the outputs they feed."""
    a, b = rand((1, 4, 3)), rand((1, 3, 5))
    a[0, 1, 2] = np.nan
    b[0, 0, 3] = np.inf
    assert_close(_mod(backend).matmul(a, b), torch.matmul(torch.from_numpy(a), torch.from_numpy(b)))


# --- the numba backend's own GEMM -------------------------------------------------------------------------

GEMM_SHAPES = [  # (M, K, N)
    (1, 1, 1), (7, 129, 5), (130, 65, 33), (2, 3, 4), (49, 7, 131),
    (3, 1100, 70),  # K spans three float32 k-panels (and five float64 ones): accumulation into C
    (5, 20, 600),  # N spans two packed B panels
    (0, 5, 3), (4, 0, 3), (4, 5, 0),
]


def _gemm():
    return _mod("numba").gemm


@pytest.mark.parametrize("shape", GEMM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_matches_torch(dtype, shape):
    m, k, n = shape
    a, b = rand((m, k), dtype, seed=5), rand((k, n), dtype, seed=6)
    c = _gemm()(a, b)
    assert c.dtype == dtype and c.shape == (m, n) and c.flags.c_contiguous
    assert_close(c, torch.from_numpy(a) @ torch.from_numpy(b), msg="gemm", **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_out_noncontiguous_inputs_and_errors(dtype):
    a, b = rand((9, 13), dtype, seed=7), rand((13, 6), dtype, seed=8)
    expected = torch.from_numpy(a) @ torch.from_numpy(b)
    out = np.full((9, 6), np.nan, dtype)
    assert _gemm()(a, b, out=out) is out
    assert_close(out, expected, **TOL[dtype])
    # RELIABILITY 3: transposed / strided views give the contiguous result
    assert_close(_gemm()(np.asfortranarray(a), np.asfortranarray(b)), expected, **TOL[dtype])
    tall = rand((18, 13), dtype, seed=9)
    expected_tall = torch.from_numpy(tall[::2].copy()) @ torch.from_numpy(b)
    assert_close(_gemm()(tall[::2], b), expected_tall, **TOL[dtype])
    # K == 0 overwrites out with zeros
    out = np.full((3, 2), np.nan, dtype)
    assert not _gemm()(np.zeros((3, 0), dtype), np.zeros((0, 2), dtype), out=out).any()
    # RELIABILITY 2 and 4: clear errors, never a garbage number
    with pytest.raises(ValueError):
        _gemm()(a, a)
    with pytest.raises(TypeError):
        _gemm()(a, b.astype(np.float32 if dtype == np.float64 else np.float64))
    with pytest.raises(ValueError):
        _gemm()(a, b, out=np.empty((6, 9), dtype))
    square = rand((8, 8), dtype)
    with pytest.raises(ValueError, match="overlap"):
        _gemm()(square, square.copy(), out=square)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_transposed_views_read_in_place_give_the_same_bits(dtype):
    """A^T stored row-major (grad^T in a weight gradient) goes through the transposed-A micro-kernel and W^T
    through the packing's strides: the same k order per element, so the same bits as contiguous copies.
    Odd sizes: edge tiles in both directions and several k panels."""
    m, k, n = 97, 301, 75
    a, b = rand((m, k), dtype, seed=11), rand((k, n), dtype, seed=12)
    at, bt = np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T  # transposed views of row-major data
    assert not at.flags.c_contiguous and not bt.flags.c_contiguous
    contiguous = _gemm()(a, b)
    assert_close(contiguous, torch.from_numpy(a) @ torch.from_numpy(b), **TOL[dtype])
    for x, y in ((at, b), (a, bt), (at, bt)):
        assert _gemm()(x, y).tobytes() == contiguous.tobytes()


def test_gemm_nan_inf_propagate():
    """RELIABILITY 20: the fastmath flags used (reassoc, contract) keep NaN/inf semantics."""
    a, b = rand((6, 9)), rand((9, 7))
    a[2, 4] = np.nan
    b[1, 5] = np.inf
    assert_close(_gemm()(a, b), torch.from_numpy(a) @ torch.from_numpy(b))


def test_gemm_bitwise_across_thread_counts():
    """RELIABILITY 18: the same input twice, and with 1 or all threads, gives bitwise-equal output."""
    a, b = rand((100, 700), np.float32, seed=1), rand((700, 150), np.float32, seed=2)
    full = _gemm()(a, b)
    assert full.tobytes() == _gemm()(a, b).tobytes()
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = _gemm()(a, b)
    finally:
        numba.set_num_threads(saved)
    assert full.tobytes() == single.tobytes()


# --- BLAS choice, explain, and the linear path's allocations --------------------------------------------

def test_linear_allocates_only_its_output():
    """x @ W.T + b: W.T is read as a view (no copy) and the bias is added in place (no second (N, O) array)."""
    import tracemalloc

    x, w, b = rand((64, 300), np.float32, seed=1), rand((500, 300), np.float32, seed=2), rand(500, np.float32)
    mod = _mod("numba")
    mod.linear(x, w, b)  # warm up whatever the first call allocates
    tracemalloc.start()
    try:
        y = mod.linear(x, w, b)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # NumPy reports its buffers to tracemalloc, so the output itself must show up in the peak
    assert y.nbytes <= peak < y.nbytes + w.nbytes // 4, f"peak {peak} bytes for a {y.nbytes}-byte output"


def test_blas_choice_and_explain(monkeypatch):
    mod = _mod("numba")
    big = "gemm" if mod.OWN_GEMM_IN_STEP else "openblas"  # lone large products: own gemm on AVX-512 targets
    assert mod.blas_for((4096, 1024), (1024, 4096))[0] == big
    assert mod.blas_for((1, 4096, 1024), (1, 1024, 4096))[0] == big
    assert mod.blas_for((2, 4096, 1024), (2, 1024, 4096))[0] == "openblas"  # batched: BLAS
    assert mod.blas_for((512, 1024), (1024, 4096))[0] == "openblas"  # too few rows (LONE_GEMM_MIN)
    assert f"BLAS: {big}" in str(dlcore.explain("matmul", np.ones((4096, 1024), np.float32),
                                                np.ones((1024, 4096), np.float32)))
    text = str(dlcore.explain("matmul", np.ones((8, 4), np.float32), np.ones((4, 5), np.float32)))
    assert "BLAS: openblas" in text
    text = str(dlcore.explain("linear", np.ones((8, 4), np.float32), np.ones((5, 4), np.float32)))
    assert "BLAS: openblas" in text and "in place" in text
    # the MKL path (torch.matmul on zero-copy views) computes the same products, out= included
    monkeypatch.setattr(mod, "_mkl_wins", lambda m, k, n: True)
    assert mod.blas_for((8, 4), (4, 5))[0] == "mkl"
    assert "BLAS: mkl" in str(dlcore.explain("matmul", np.ones((8, 4), np.float32), np.ones((4, 5), np.float32)))
    a, b = rand((2, 9, 13), np.float32, seed=1), rand((2, 13, 6), np.float32, seed=2)
    assert_close(mod.matmul(a, b), np.matmul(a, b), **TOL[np.float32])
    x, w = rand((9, 13), np.float64, seed=3), rand((6, 13), np.float64, seed=4)
    out = np.empty((9, 6))
    assert mod.blas_matmul(x, w.T, out=out) is out
    assert_close(out, x @ w.T, **TOL[np.float64])


@pytest.mark.parametrize("dtype", DTYPES)
def test_lone_large_products_on_the_own_gemm_match_blas(dtype, monkeypatch):
    """Products of LONE_GEMM_MIN or more go to the own gemm on AVX-512 targets (forced here on any target):
    2-D and single-batch 3-D, with out= and a transposed W, against BLAS."""
    mod = _mod("numba")
    monkeypatch.setattr(mod, "OWN_GEMM_IN_STEP", True)
    monkeypatch.setattr(mod, "LONE_GEMM_MIN", (16, 8, 16))
    a, b = rand((1, 37, 29), dtype, seed=5), rand((1, 29, 41), dtype, seed=6)
    assert mod.blas_for(a.shape, b.shape)[0] == "gemm"
    assert_close(mod.matmul(a, b), np.matmul(a, b), **TOL[dtype])
    out = np.empty((1, 37, 41), dtype)
    assert mod.blas_matmul(a, b, out=out) is out
    assert np.array_equal(out, mod.gemm(a[0], b[0])[None])
    x, w = rand((37, 29), dtype, seed=7), rand((41, 29), dtype, seed=8)
    assert_close(mod.linear(x, w, None), x @ w.T, **TOL[dtype])

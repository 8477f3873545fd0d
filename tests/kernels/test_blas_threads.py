"""Large products split over dlcore's threads with BLAS at one thread (kernels/numba/_blas_threads.py)."""
import numpy as np
import pytest
import torch
from dlcore.kernels.numba import _blas_threads as bt
from dlcore.kernels.numba import matmul as nmm

from tests._compare import TOL, assert_close, rand


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [2, 3, 7])
@pytest.mark.parametrize("shape_a,shape_b", [((37, 19), (19, 23)), ((5, 9, 12), (5, 12, 4)), ((2, 33, 8), (8, 6)),
                                             ((1, 7), (7, 3))])
def test_split_matmul_matches_one_call(dtype, threads, shape_a, shape_b):
    """Row or batch blocks (sizes not divisible by the thread count, more threads than rows) give the
    product of one np.matmul, up to BLAS's summation order (it differs between its kernels for full and
    partial row blocks): within a few ulps of the products' magnitude."""
    a, b = rand(shape_a, dtype, seed=1), rand(shape_b, dtype, seed=2)
    ref = np.matmul(a, b)
    out = np.full(ref.shape, np.nan, dtype)
    assert bt.split_matmul(a, b, out, threads) is out
    scale = float(np.abs(a).max() * np.abs(b).max() * a.shape[-1])  # bound on |sum of products|
    eps = np.finfo(dtype).eps
    assert np.all(np.isfinite(out))
    assert np.abs(out - ref).max() <= 4 * eps * scale


def test_split_reads_transposed_views_and_restores_blas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    a, b = rand((64, 48), np.float32, seed=3), rand((64, 40), np.float32, seed=4)
    before = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    out = np.empty((48, 40), np.float32)
    bt.split_matmul(a.T, b, out, 2)  # a^T: a strided view, as in a weight gradient
    assert_close(out, a.T @ b, rtol=1e-6, atol=0)
    after = [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    assert after == before


def test_worker_errors_reach_the_caller():
    def boom():
        raise RuntimeError("in a worker")

    with pytest.raises(RuntimeError, match="in a worker"):
        bt._pool.run([lambda: None, boom])


def test_blas_choice_inside_and_outside_an_autograd_step(monkeypatch):
    """A lone product uses plain OpenBLAS; inside an autograd step (between Numba kernels) a big one goes to
    torch's MKL when torch is loaded, else to the split path; small ones stay plain either way. (On AVX-512
    targets big 2-D products in a step go to the own gemm instead: the next test.)"""
    import sys

    import numba

    monkeypatch.setattr(nmm, "OWN_GEMM_IN_STEP", False)
    calls = []
    real = bt.split_matmul
    monkeypatch.setattr(bt, "split_matmul", lambda *a: calls.append(a[3]) or real(*a))
    monkeypatch.setattr(bt, "SPLIT_MIN_FLOPS", 2 * 40 * 30 * 20)
    a, b = rand((40, 30), np.float32, seed=5), rand((30, 20), np.float32, seed=6)
    ref = torch.from_numpy(a) @ torch.from_numpy(b)
    assert nmm.blas_for(a.shape, b.shape)[0] == "openblas"
    assert_close(nmm.blas_matmul(a, b), ref, rtol=1e-5, atol=1e-6)
    with nmm.between_numba_kernels():
        assert nmm.blas_for(a.shape, b.shape)[0] == "mkl"
        assert_close(nmm.blas_matmul(a, b), ref, rtol=1e-5, atol=1e-6)
        assert nmm.blas_for(a[:10].shape, b.shape)[0] == "openblas"  # under the threshold
        monkeypatch.delitem(sys.modules, "torch")  # as if torch were not loaded
        name, reason = nmm.blas_for(a.shape, b.shape)
        assert name == "openblas-split" and "one thread" in reason
        saved = numba.get_num_threads()
        try:
            numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
            y = nmm.blas_matmul(a, b)
        finally:
            numba.set_num_threads(saved)
    assert_close(y, ref, rtol=1e-5, atol=1e-6)
    assert len(calls) == (1 if min(2, numba.config.NUMBA_NUM_THREADS) > 1 else 0)
    assert nmm.blas_for(a.shape, b.shape)[0] == "openblas"  # the mark is gone after the block


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_own_gemm_inside_a_step_where_enabled(monkeypatch, dtype):
    """With OWN_GEMM_IN_STEP (set on AVX-512 targets) a big 2-D product inside a step runs on the own gemm,
    transposed views (x @ W^T, grad^T @ x) included; batched and small products keep their BLAS."""
    monkeypatch.setattr(nmm, "OWN_GEMM_IN_STEP", True)
    monkeypatch.setattr(nmm, "OWN_GEMM_MIN_ROWS", 20)
    monkeypatch.setattr(bt, "SPLIT_MIN_FLOPS", 2 * 40 * 30 * 20)
    used = []
    real = nmm.gemm
    monkeypatch.setattr(nmm, "gemm", lambda *a: used.append(a[0].shape) or real(*a))
    x, w, g = rand((41, 30), dtype, seed=7), rand((23, 30), dtype, seed=8), rand((41, 23), dtype, seed=9)
    tol = TOL[np.dtype(dtype)]
    with nmm.between_numba_kernels():
        assert nmm.blas_for((41, 30), (30, 23))[0] == "gemm"
        assert nmm.blas_for((2, 41, 30), (2, 30, 23))[0] != "gemm"  # batched: BLAS
        assert nmm.blas_for((4, 30), (30, 23))[0] == "openblas"  # under the threshold
        assert nmm.blas_for((19, 300), (300, 23))[0] == "mkl"  # too few rows for the own gemm's tasks
        out = np.empty((41, 23), dtype)
        assert nmm.blas_matmul(x, w.T, out=out) is out  # forward: W^T read through the packing's strides
        assert_close(out, x.astype(np.float64) @ w.T.astype(np.float64), **tol)
        assert_close(nmm.blas_matmul(g.T, x), g.T.astype(np.float64) @ x, **tol)  # grad^T read in place
        assert_close(nmm.blas_matmul(g, w), g.astype(np.float64) @ w, **tol)
    assert used == [(41, 30), (23, 41), (41, 23)]
    assert nmm.blas_for((41, 30), (30, 23))[0] == "openblas"  # a lone product: plain OpenBLAS again

"""dlcore's autograd engine against torch autograd: glue rules, hot ops through fused backward kernels,
broadcasting, accumulation, no_grad and detach."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dlcore
from dlcore import Tensor, ops
from tests._compare import assert_close

rng = np.random.default_rng(0)


def pair(*shape, positive=False):
    a = rng.standard_normal(shape)
    if positive:
        a = np.abs(a) + 0.5
    return Tensor(a.copy(), requires_grad=True), torch.tensor(a, requires_grad=True)


CASES = {
    "add_broadcast": (lambda a, b: (a + b) * a, [(3, 4), (4,)]),
    "sub_rsub": (lambda a, b: (2.0 - a) - b, [(3, 1), (1, 5)]),
    "mul_div": (lambda a, b: a * b / (b * b + 1.0), [(2, 3), (2, 3)]),
    "neg_pow": (lambda a: (-a) ** 3 + a ** 2, [(5,)]),
    "exp_log": (lambda a: (a.exp() + 1.0).log(), [(4, 3)]),
    "tanh_sigmoid": (lambda a: a.tanh() * a.sigmoid(), [(6,)]),
    "sum_mean": (lambda a: a.sum(dim=0) * a.mean(dim=1, keepdim=True), [(3, 4)]),
    "max": (lambda a: a.max(dim=1), [(3, 5)]),
    "reshape_permute": (lambda a: a.reshape(2, 3, 4).permute(2, 0, 1).reshape(4, 6), [(6, 4)]),
    "transpose_T": (lambda a: a.transpose(0, 1) @ a.T.T, [(3, 4)]),
    "getitem_slice": (lambda a: a[1:, ::2] * 2.0, [(4, 6)]),
    "matmul_batched": (lambda a, b: a @ b, [(2, 3, 4), (4, 5)]),
    "softmax": (lambda a: a.softmax(-1) * a, [(3, 7)]),
    "log_softmax": (lambda a: a.log_softmax(0), [(4, 3)]),
    "relu": (lambda a: a.relu() + a, [(9,)]),
    # views of one array whose gradients meet (autograd._SliceGrads): parts covering an axis once (no zero
    # fill), overlapping slices, an index used twice, and slices mixed with a dense use of the same array
    "split_axis_covering": (lambda a: a[:, 0] * 3.0 + a[:, 1] * a[:, 2] - a[:, -1] ** 2, [(2, 4, 3)]),
    "split_axis0_ints": (lambda a: a[0] * a[1] + a[2], [(3, 5)]),
    "slices_overlap_repeat": (lambda a: a[0:3] * 2.0 + a[2:5] * a[1:4] + a[1] + a[1], [(6, 2)]),
    "slices_and_dense": (lambda a: (a[:, 1:] * 2.0).sum(dim=1) + a.sum(dim=1) + a[:, 0], [(3, 4)]),
    "slice_partial_cover": (lambda a: a[:, 0] + a[:, 2], [(2, 3)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rules_match_torch_autograd(name):
    fn, shapes = CASES[name]
    ours, theirs = zip(*(pair(*s) for s in shapes))
    # the Tensor methods share torch's names; only max returns (values, indices) in torch
    torch_fn = (lambda a: a.max(dim=1).values) if name == "max" else fn
    out, ref = fn(*ours), torch_fn(*theirs)
    assert_close(out.data, ref)
    g = rng.standard_normal(tuple(ref.shape))
    out.backward(g)
    ref.backward(torch.from_numpy(g))
    for a, b in zip(ours, theirs):
        assert_close(a.grad, b.grad, msg=name)


def test_integer_indexing_gather_cat_where():
    a, ta = pair(5, 3)
    idx = np.array([0, 2, 2, 4])
    out = a[idx] * 2.0
    ref = ta[torch.from_numpy(idx)] * 2.0
    gidx = rng.integers(0, 3, size=(5, 2))
    out2 = a.gather(1, gidx)
    ref2 = ta.gather(1, torch.from_numpy(gidx))
    out3 = dlcore.cat([a, a * 3.0], dim=1)
    ref3 = torch.cat([ta, ta * 3.0], 1)
    cond = rng.random((5, 3)) > 0.5
    out4 = dlcore.where(cond, a, a * a)
    ref4 = torch.where(torch.from_numpy(cond), ta, ta * ta)
    total = out.sum() + out2.sum() + (out3 * out3).sum() + out4.sum()
    ref_total = ref.sum() + ref2.sum() + (ref3 * ref3).sum() + ref4.sum()
    assert_close(total.data, ref_total)
    total.backward()
    ref_total.backward()
    assert_close(a.grad, ta.grad)


def test_hot_ops_use_fused_backward_on_tensors():
    x, tx = pair(6, 5)
    t = rng.integers(0, 5, 6)
    loss = ops.cross_entropy(x, t, label_smoothing=0.1)
    ref = torch.nn.functional.cross_entropy(tx, torch.from_numpy(t), label_smoothing=0.1)
    assert loss._node.name == "cross_entropy"
    loss.backward()
    ref.backward()
    assert_close(x.grad, tx.grad)


def test_gradients_accumulate_across_backward_calls_and_paths():
    a, ta = pair(3)
    for _ in range(2):
        ((a * a).sum() + a.sum()).backward()
        ((ta * ta).sum() + ta.sum()).backward()
    assert_close(a.grad, ta.grad)


def test_no_grad_detach_and_errors():
    a, _ = pair(3)
    with dlcore.no_grad():
        b = a * 2.0
    assert not b.requires_grad and b._node is None
    c = a.detach() * 2.0
    assert not c.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        c.sum().backward()
    with pytest.raises(RuntimeError, match="scalar outputs"):
        (a * 2.0).backward()


def test_tensor_over_torch_data():
    t = torch.randn(4, 3, dtype=torch.float64)
    a = Tensor(t, requires_grad=True)
    out = ops.softmax(a * 2.0, dim=-1).sum(dim=0)
    out.backward(torch.ones(3, dtype=torch.float64))
    ref = t.clone().requires_grad_(True)
    torch.softmax(ref * 2.0, -1).sum(0).backward(torch.ones(3, dtype=torch.float64))
    assert isinstance(a.grad, torch.Tensor)
    assert_close(a.grad, ref.grad)


def test_python_floats_default_to_float32():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor([1, 2]).dtype == np.int64


def test_small_ops_run_on_one_thread_and_restore_thread_counts(monkeypatch):
    """Ops below autograd.SERIAL_BELOW elements run their kernels on one thread (Numba and BLAS); the
    numbers match the threaded run within rounding and the callers' thread counts come back unchanged."""
    import numba
    from threadpoolctl import threadpool_info

    from dlcore import autograd, ops

    r = np.random.default_rng(0)
    x0 = r.standard_normal((64, 32)).astype(np.float32)
    w0 = r.standard_normal((48, 32)).astype(np.float32)
    y = r.integers(0, 48, 64)

    def grads():
        x, w = Tensor(x0, requires_grad=True), Tensor(w0, requires_grad=True)
        ops.cross_entropy(ops.gelu(ops.linear(x, w)), y).backward()
        return x.grad, w.grad

    def blas():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    blas_before = blas()
    numba_before = numba.get_num_threads()
    small = grads()
    assert numba.get_num_threads() == numba_before
    assert {k: v for k, v in blas().items() if k in blas_before} == blas_before
    monkeypatch.setattr(autograd, "SERIAL_BELOW", 0)  # the threaded path
    threaded = grads()
    for a, b in zip(small, threaded):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n,shape", [(7, (5,)), (3, (4, 6)), (256, (16, 256))], ids=["1d", "negative", "embedding"])
def test_integer_array_indexing_gradient_sums_repeated_rows(n, shape):
    """Rows gathered by an integer array (repeats, negative indices) get their gradients summed, as torch."""
    r = np.random.default_rng(2)
    w = r.standard_normal((n, 8)).astype(np.float32)
    idx = r.integers(-n, n, shape)
    t = Tensor(w, requires_grad=True)
    out = t[idx]
    g = r.standard_normal(out.shape).astype(np.float32)
    out.backward(g)
    tw = torch.tensor(w, requires_grad=True)
    tw[torch.from_numpy(idx)].backward(torch.from_numpy(g))
    assert_close(t.grad, tw.grad, rtol=1e-5, atol=1e-5)  # float32 sums in another order


def test_small_ops_switch_only_the_thread_pools_they_use(monkeypatch):
    """A small linear leaves both counts alone (BLAS keeps its own threading: the Numba kernels around it run
    on the calling thread, see autograd._threads); a small relu runs Numba on one thread, BLAS untouched."""
    import numba
    from dlcore.kernels.numba import _blas_threads
    from dlcore.kernels.numba import activations as nact
    from dlcore.kernels.numba import matmul as nmm

    from dlcore import ops

    seen = {}
    real_mm, real_relu = nmm.blas_matmul, nact.relu_forward

    def spy_mm(*a, **k):
        seen["linear"] = (_blas_threads.blas_threads._depth, numba.get_num_threads())
        return real_mm(*a, **k)

    def spy_relu(*a, **k):
        seen["relu"] = (_blas_threads.blas_threads._depth, numba.get_num_threads())
        return real_relu(*a, **k)

    monkeypatch.setattr(nmm, "blas_matmul", spy_mm)
    monkeypatch.setattr(nact, "relu_forward", spy_relu)
    before = numba.get_num_threads()
    r = np.random.default_rng(0)
    x = Tensor(r.standard_normal((8, 16)).astype(np.float32), requires_grad=True)
    w = Tensor(r.standard_normal((4, 16)).astype(np.float32), requires_grad=True)
    ops.relu(ops.linear(x, w)).sum().backward()
    assert seen["linear"] == (0, before)  # BLAS not lowered, Numba untouched
    assert seen["relu"] == (0, 1)  # Numba on one thread, BLAS untouched
    assert _blas_threads.blas_threads._depth == 0 and numba.get_num_threads() == before


@pytest.mark.parametrize("cover", [True, False])
def test_split_views_gradient_over_torch_data(cover):
    """The views' gradients are placed into one buffer on torch arrays too (empty_like when they cover the
    axis, zeros_like otherwise), with torch autograd's numbers."""
    t = torch.randn(2, 3, 4, dtype=torch.float64)
    a = Tensor(t, requires_grad=True)
    ref = t.clone().requires_grad_(True)
    parts = range(3) if cover else (0, 2)

    def fn(x):
        return sum((x[:, i] * (i + 1.0)) ** 2 for i in parts)

    g = torch.randn(2, 4, dtype=torch.float64)
    fn(a).backward(g)
    fn(ref).backward(g)
    assert isinstance(a.grad, torch.Tensor)
    assert_close(a.grad, ref.grad)

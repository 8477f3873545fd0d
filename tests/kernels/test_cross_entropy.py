"""cross_entropy_forward / cross_entropy_backward against torch.nn.functional.cross_entropy.

torch semantics checked here (torch 2.13): label smoothing is ``(1-eps)*nll + eps*mean_c(-log p_c)``;
'mean' divides by the number of non-ignored rows; every target ignored gives a NaN 'mean', a 0 'sum' and
zero gradients; N == 0 gives a NaN 'mean' and a 0 'sum' (RELIABILITY.md items 1, 5, 9, 15).
"""
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlcore  # noqa: F401  (registers dlcore.kernels)
from tests._compare import assert_close, rand

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
REDUCTIONS = ["none", "mean", "sum"]
IGNORE = -100


def _mod(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.cross_entropy")


def _targets(n, c, seed=0, ignore_frac=0.25, ignore_index=IGNORE):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, c, n).astype(np.int64)
    t[rng.random(n) < ignore_frac] = ignore_index
    return t


def _torch(logits, target, ignore_index, label_smoothing, reduction, upstream=None):
    x = torch.from_numpy(logits.copy()).requires_grad_(True)
    loss = F.cross_entropy(x, torch.from_numpy(target), ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction=reduction)
    g = torch.ones_like(loss) if upstream is None else torch.from_numpy(np.asarray(upstream))
    loss.backward(g)
    return loss.detach().numpy(), x.grad.numpy()


def _check(backend, logits, target, ignore_index=IGNORE, label_smoothing=0.0, reduction="mean", **tol):
    mod = _mod(backend)
    exp_loss, exp_grad = _torch(logits, target, ignore_index, label_smoothing, reduction)
    loss, grad = mod.cross_entropy_forward(logits, target, ignore_index, label_smoothing, reduction, True)
    assert loss.dtype == logits.dtype and grad.dtype == logits.dtype
    assert_close(loss, exp_loss, msg=f"{backend} loss", **tol)
    assert_close(grad, exp_grad, msg=f"{backend} grad", **tol)
    loss_only, no_grad = mod.cross_entropy_forward(logits, target, ignore_index, label_smoothing, reduction,
                                                   False)
    assert no_grad is None
    assert_close(loss_only, loss, msg=f"{backend} loss without grad", rtol=0, atol=0)
    return loss, grad


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(1, 5), (16, 129), (33, 1000)])  # 33000 logits: numba's prange kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch(backend, dtype, shape, label_smoothing, reduction):
    n, c = shape
    _check(backend, rand(shape, dtype, scale=3.0), _targets(n, c, ignore_frac=0.25 if n > 1 else 0),
           label_smoothing=label_smoothing, reduction=reduction)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits(backend, dtype, label_smoothing):
    """RELIABILITY 5: +-1e4 logits stay finite (the row max is subtracted before exp)."""
    x = rand((8, 129), dtype, scale=1e4)
    x[0, :] = 1e4
    x[1, 3] = -1e4
    for reduction in REDUCTIONS:
        loss, grad = _check(backend, x, _targets(8, 129, ignore_frac=0.0), label_smoothing=label_smoothing,
                            reduction=reduction)
        assert np.isfinite(loss).all() and np.isfinite(grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_single_class_and_single_row(backend, dtype):
    for reduction in REDUCTIONS:
        for eps in (0.0, 0.3):
            _check(backend, rand((6, 1), dtype), np.zeros(6, np.int64), label_smoothing=eps,
                   reduction=reduction)
            _check(backend, rand((1, 129), dtype), np.array([128]), label_smoothing=eps, reduction=reduction)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, dtype):
    """RELIABILITY 1: N == 0 gives a (0, C) gradient; 'mean' is NaN and 'sum' 0, as in torch."""
    for reduction in REDUCTIONS:
        for eps in (0.0, 0.1):
            loss, grad = _check(backend, np.zeros((0, 7), dtype), np.zeros(0, np.int64), label_smoothing=eps,
                                reduction=reduction)
            assert grad.shape == (0, 7)
            assert loss.shape == ((0,) if reduction == "none" else ())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_target_ignored(backend, dtype):
    """RELIABILITY 9: no exception, torch's value for each reduction (NaN mean), zero finite gradients."""
    for ignore_index in (IGNORE, 3):
        target = np.full(5, ignore_index, np.int64)
        for reduction in REDUCTIONS:
            for eps in (0.0, 0.1):
                loss, grad = _check(backend, rand((5, 7), dtype), target, ignore_index=ignore_index,
                                    label_smoothing=eps, reduction=reduction)
                assert np.array_equal(grad, np.zeros_like(grad))
                assert np.isnan(loss) if reduction == "mean" else not np.any(loss)
                up = np.ones(5, dtype) if reduction == "none" else np.array(1.0, dtype)
                g = _mod(backend).cross_entropy_backward(up, rand((5, 7), dtype), target, ignore_index, eps,
                                                         reduction)
                assert np.array_equal(g, np.zeros_like(g))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_index_inside_class_range(backend):
    """ignore_index may be a valid class id: those rows are still ignored."""
    x, t = rand((20, 6)), _targets(20, 6, seed=4, ignore_frac=0.0)
    for reduction in REDUCTIONS:
        _check(backend, x, t, ignore_index=2, label_smoothing=0.1, reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inf_and_nan_logits(backend):
    """RELIABILITY 7: -inf logits give probability 0; smoothing over a -inf logit gives an infinite loss
    with a finite gradient; a NaN or +inf in a row gives NaN loss and a NaN gradient row, as in torch."""
    x = rand((5, 5))
    x[0, 1] = -np.inf  # target elsewhere: finite
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    x[4, 3] = np.copysign(np.nan, -1.0)  # a NaN with its sign bit set: never the row max, still NaN
    t = np.array([0, 0, 0, 1, 2])
    for eps in (0.0, 0.2):
        for reduction in REDUCTIONS:
            _check(backend, x, t, label_smoothing=eps, reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_ignored_row_gives_zero_gradient(backend):
    """Documented difference from torch: an ignored row's gradient is exactly 0 even when the row holds
    NaN/inf. torch 2.13 returns NaN there (its log_softmax backward multiplies the zero upstream gradient
    by exp(NaN)); the loss is the same."""
    x = rand((3, 4))
    x[0, 1] = np.nan
    t = np.array([IGNORE, 1, 2])
    exp_loss, exp_grad = _torch(x, t, IGNORE, 0.1, "mean")
    assert np.isnan(exp_grad[0]).all()  # if torch changes this, the difference can go
    loss, grad = _mod(backend).cross_entropy_forward(x, t, IGNORE, 0.1, "mean", True)
    assert_close(loss, exp_loss)
    assert_close(grad[1:], exp_grad[1:])
    assert np.array_equal(grad[0], np.zeros(4))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
@pytest.mark.parametrize("shape", [(17, 129), (40, 1000)])  # 40000 logits: numba's prange kernel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_with_upstream_grad(backend, dtype, shape, label_smoothing, reduction):
    n, c = shape
    x, t = rand((n, c), dtype, scale=2.0), _targets(n, c, seed=2)
    up = rand(n, dtype, seed=7) if reduction == "none" else np.array(-1.7, dtype)
    _, exp_grad = _torch(x, t, IGNORE, label_smoothing, reduction, upstream=up)
    grad = _mod(backend).cross_entropy_backward(up, x, t, IGNORE, label_smoothing, reduction)
    assert grad.dtype == dtype
    assert_close(grad, exp_grad, msg=f"{backend} backward")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_differences(backend, reduction):
    """RELIABILITY 15: central differences in float64 (eps 1e-6, atol 1e-5, rtol 1e-3)."""
    n, c, eps_ls = 5, 7, 0.1
    x, t = rand((n, c), np.float64, seed=9), _targets(n, c, seed=9, ignore_frac=0.3)
    up = rand(n, seed=11) if reduction == "none" else np.array(0.7)
    mod = _mod(backend)

    def objective(z):
        loss, _ = mod.cross_entropy_forward(z, t, IGNORE, eps_ls, reduction, False)
        return float(np.sum(loss * up))

    numeric = np.zeros_like(x)
    h = 1e-6
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        numeric[idx] = (objective(xp) - objective(xm)) / (2 * h)
    analytic = mod.cross_entropy_backward(up, x, t, IGNORE, eps_ls, reduction)
    assert_close(analytic, numeric, rtol=1e-3, atol=1e-5)
    if reduction != "none":
        _, fwd_grad = mod.cross_entropy_forward(x, t, IGNORE, eps_ls, reduction, True)
        assert_close(fwd_grad * up, analytic, rtol=1e-12, atol=1e-15)


def test_numba_deterministic_and_parallel_equals_serial(monkeypatch):
    """RELIABILITY 18: the same input twice gives bitwise-equal output, the prange kernel equals the serial
    one bit for bit (each row is reduced by one thread), and numba agrees with the reference."""
    mod = _mod("numba")
    x, t = rand((128, 300), np.float32, scale=5.0), _targets(128, 300, seed=3)
    a = mod.cross_entropy_forward(x, t, IGNORE, 0.1, "mean", True)
    b = mod.cross_entropy_forward(x, t, IGNORE, 0.1, "mean", True)
    monkeypatch.setattr(mod, "_SERIAL_BELOW", x.size + 1)
    serial = mod.cross_entropy_forward(x, t, IGNORE, 0.1, "mean", True)
    for other in (b, serial):
        assert a[0].tobytes() == other[0].tobytes() and a[1].tobytes() == other[1].tobytes()
    r = _mod("numpy").cross_entropy_forward(x, t, IGNORE, 0.1, "mean", True)
    assert_close(a[0], r[0])
    assert_close(a[1], r[1])


def test_numba_recycled_gradient_buffers(monkeypatch):
    """Large numba gradients come from the recycled-block pool (no first-touch page faults in a training
    loop): a block is reused only after every view of it (NumPy or torch) is gone, and stale contents never
    show (ignored rows are zeroed, every other row rewritten)."""
    from dlcore.kernels.numba import _blocks

    mod = _mod("numba")
    n, c = 1024, 8300  # 34 MB of float32 gradient: above the recycling threshold
    assert n * c * 4 >= _blocks.MIN_BYTES
    x1, x2 = rand((n, c), np.float32, seed=1), rand((n, c), np.float32, seed=2, scale=3.0)
    t1, t2 = _targets(n, c, seed=1), _targets(n, c, seed=2, ignore_frac=0.5)
    _blocks.drop_idle()
    _, g1 = mod.cross_entropy_forward(x1, t1, IGNORE, 0.1, "mean", True)
    g1.fill(np.nan)  # whatever the block holds must never reach a later result
    view = torch.from_numpy(g1[::3])  # a strided view, not a copy
    del g1
    _, g2 = mod.cross_entropy_forward(x2, t2, IGNORE, 0.1, "sum", True)
    assert not np.shares_memory(g2, view.numpy()), "a block still referenced by a torch view was reused"
    addresses = {view.numpy().ctypes.data, g2.ctypes.data}
    del view, g2  # now both blocks are idle
    loss, g3 = mod.cross_entropy_forward(x2, t2, IGNORE, 0.0, "none", True)
    assert g3.flags.c_contiguous and g3.flags.writeable and g3.ctypes.data % 64 == 0
    assert g3.ctypes.data in addresses, "no idle block was reused"
    monkeypatch.setattr(_blocks, "MIN_BYTES", 1 << 62)  # fresh np.empty memory
    loss_fresh, g_fresh = mod.cross_entropy_forward(x2, t2, IGNORE, 0.0, "none", True)
    assert loss.tobytes() == loss_fresh.tobytes() and g3.tobytes() == g_fresh.tobytes()
    _blocks.drop_idle()

"""RELIABILITY.md items 1-12 and 15-21 through the public API, on every CPU backend."""
from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlcore
from dlcore import ops
from tests._compare import assert_close

BACKENDS = ["numpy", "numba"]
rng = np.random.default_rng(42)


def r(*shape, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def T(a, grad=False):
    t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_(True) if grad else t


# ---------------------------------------------------------------------------- 2. wrong kinds, shapes, dtypes
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_and_bool_inputs_raise_type_error_naming_the_argument(backend):
    with pytest.raises(TypeError, match="'input' must be a floating-point array.*int64"):
        ops.softmax(np.arange(6).reshape(2, 3), backend=backend)
    with pytest.raises(TypeError, match="'input'.*bool"):
        ops.relu(np.ones(3, bool), backend=backend)
    with pytest.raises(TypeError, match="'other' is float64 but 'input' is float32"):
        ops.matmul(r(2, 3), r(3, 2, dtype=np.float64), backend=backend)


def test_numpy_mixed_with_torch_raises():
    with pytest.raises(TypeError, match="'target' is a torch CPU tensor but 'input' is a NumPy array"):
        ops.mse_loss(r(3), torch.zeros(3))
    with pytest.raises(TypeError, match="expected a NumPy array, torch tensor or CuPy array, got builtins.list"):
        ops.softmax([1.0, 2.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_mismatches_raise_value_error(backend):
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 2\) cannot be multiplied"):
        ops.matmul(r(2, 3), r(4, 2), backend=backend)
    with pytest.raises(ValueError, match="does not end with normalized_shape"):
        ops.layer_norm(r(2, 3), (4,), backend=backend)
    with pytest.raises(ValueError, match="weight has shape"):
        ops.layer_norm(r(2, 3), (3,), weight=r(4), backend=backend)
    with pytest.raises(ValueError, match="do not broadcast"):
        ops.mse_loss(r(2, 3), r(4), backend=backend)
    with pytest.raises(ValueError, match="target size"):
        ops.binary_cross_entropy_with_logits(r(2, 3), r(3, 2), backend=backend)
    with pytest.raises(ValueError, match="key's last dim"):
        ops.scaled_dot_product_attention(r(1, 2, 4), r(1, 3, 5), r(1, 3, 5), backend=backend)
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        ops.scaled_dot_product_attention(r(1, 2, 4), r(1, 2, 4), r(1, 2, 4), attn_mask=np.ones((2, 2), bool),
                                         is_causal=True, backend=backend)
    with pytest.raises(TypeError, match="attn_mask must be bool or float32"):
        ops.scaled_dot_product_attention(r(1, 2, 4), r(1, 2, 4), r(1, 2, 4), attn_mask=np.ones((2, 2), np.int32),
                                         backend=backend)
    with pytest.raises(IndexError, match="dim 2 is out of range"):
        ops.softmax(r(2, 3), dim=2, backend=backend)
    with pytest.raises(ValueError, match="reduction must be"):
        ops.mse_loss(r(3), r(3), reduction="avg", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_rejects_bad_targets_before_any_kernel_runs(backend):
    x = r(4, 5)
    with pytest.raises(IndexError, match="target 5 is out of bounds for 5 classes"):
        ops.cross_entropy(x, np.array([0, 1, 5, 2]), backend=backend)
    with pytest.raises(IndexError, match="target -1 is out of bounds"):
        ops.cross_entropy(x, np.array([0, -1, 2, 2]), backend=backend)
    with pytest.raises(TypeError, match="class-probability targets are not supported"):
        ops.cross_entropy(x, r(4), backend=backend)
    with pytest.raises(ValueError, match="target shape"):
        ops.cross_entropy(x, np.array([0, 1]), backend=backend)
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.cross_entropy(x, np.array([0, 1, 2, 3]), label_smoothing=1.5, backend=backend)


# ---------------------------------------------------------------------------- 1. empty inputs
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_losses_match_torch(backend, reduction):
    x, t = r(0, 5), np.zeros(0, np.int64)
    assert_close(ops.cross_entropy(x, t, reduction=reduction, backend=backend),
                 F.cross_entropy(T(x), T(t), reduction=reduction))
    assert_close(ops.mse_loss(r(0), r(0), reduction=reduction, backend=backend),
                 F.mse_loss(T(r(0)), T(r(0)), reduction=reduction))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_attention(backend):
    q, k, v = r(2, 0, 4), r(2, 3, 4), r(2, 3, 5)
    assert ops.scaled_dot_product_attention(q, k, v, backend=backend).shape == (2, 0, 5)


# ---------------------------------------------------------------------------- 3. negative strides, Fortran order
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax", "gelu", "relu", "silu"])
def test_negative_stride_and_fortran_inputs(backend, name):
    x = r(6, 9)
    for view in (x[::-1, ::-2], np.asfortranarray(x)):
        fn = getattr(ops, name)
        assert_close(fn(view, backend=backend), fn(np.ascontiguousarray(view), backend=backend), rtol=0, atol=0)


# ---------------------------------------------------------------------------- 4. aliasing in fused updates
@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_rejects_param_aliasing_grad(backend):
    p = r(10)
    with pytest.raises(ValueError, match="param and grad share memory"):
        ops.sgd_(p, p, lr=0.1, backend=backend)
    m, v = np.zeros(10, np.float32), np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        ops.adam_(p, r(10), m, m, step=1, lr=0.1, backend=backend)
    assert v.sum() == 0


# ---------------------------------------------------------------------------- 5-7. softmax extremes
@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_large_logits_stay_finite(backend):
    x = np.array([[1e4, -1e4, 0.0, 5e3], [-1e4, -1e4, -1e4, -1e4]], np.float32)
    y = ops.softmax(x, backend=backend)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    ly = ops.log_softmax(x, backend=backend)
    assert np.isfinite(ly).all() and (ly <= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_rows_with_inf_and_nan_follow_torch(backend, name):
    ninf, nan, inf = -np.inf, np.nan, np.inf
    x = np.array([[0.5, ninf, 1.0, ninf], [ninf] * 4, [0.0, nan, 1.0, 2.0], [0.0, inf, 1.0, 2.0], [inf, inf, 0, 0]],
                 np.float32)
    xt = T(x, grad=True)
    ref = getattr(F, name)(xt, dim=-1)
    got_t = T(x, grad=True)
    got = getattr(ops, name)(got_t, backend=backend)
    assert_close(got, ref, msg=name)
    if name == "softmax":
        assert got[0, 1] == 0 and got[0, 3] == 0  # exactly zero where -inf
    g = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    ref.backward(g)
    got.backward(g)
    assert np.isfinite(got_t.grad[0].numpy()).all()  # a row with some -inf has finite gradients
    assert_close(got_t.grad, xt.grad, msg=f"{name} grad")


# ---------------------------------------------------------------------------- 8. attention masking
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fully_masked_attention_row_matches_torch(backend, dtype):
    q, k, v = r(2, 3, 4, dtype=dtype), r(2, 5, 4, dtype=dtype), r(2, 5, 6, dtype=dtype)
    mask = np.ones((3, 5), bool)
    mask[1] = False
    ts = [T(a, grad=True) for a in (q, k, v)]
    ours = [T(a, grad=True) for a in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ts, attn_mask=T(mask))
    got = ops.scaled_dot_product_attention(*ours, attn_mask=T(mask), backend=backend)
    assert_close(got, ref, rtol=1e-5, atol=1e-6)
    g = torch.ones_like(ref)
    ref.backward(g)
    got.backward(g)
    for a, b in zip(ours, ts):
        assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_masked_out_keys_does_not_leak(backend):
    q, k, v = r(1, 4, 8), r(1, 6, 8), r(1, 6, 8)
    mask = np.ones((4, 6), bool)
    mask[:, 4:] = False
    clean = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)
    k2, v2 = k.copy(), v.copy()
    k2[:, 4], v2[:, 4], k2[:, 5], v2[:, 5] = np.nan, np.nan, 1e10, 1e10
    dirty = ops.scaled_dot_product_attention(q, k2, v2, attn_mask=mask, backend=backend)
    np.testing.assert_array_equal(clean, dirty)
    causal = ops.scaled_dot_product_attention(q, k2[:, :4], v2[:, :4], is_causal=True, backend=backend)
    k3, v3 = k2[:, :4].copy(), v2[:, :4].copy()
    k3[:, 3], v3[:, 3] = np.nan, np.nan  # the last key is masked for every query but the last
    dirty_causal = ops.scaled_dot_product_attention(q, k3, v3, is_causal=True, backend=backend)
    np.testing.assert_array_equal(causal[:, :3], dirty_causal[:, :3])


# ---------------------------------------------------------------------------- 9. every target ignored
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_all_ignored(backend, reduction):
    x, t = r(4, 6), np.full(4, -100)
    xt, ot = T(x, grad=True), T(x, grad=True)
    ref = F.cross_entropy(xt, T(t), reduction=reduction)
    got = ops.cross_entropy(ot, T(t), reduction=reduction, backend=backend)
    assert_close(got, ref)
    ref.sum().backward()
    got.sum().backward()
    assert np.isfinite(ot.grad.numpy()).all() and (ot.grad.numpy() == 0).all()
    assert_close(ot.grad, xt.grad)


# ---------------------------------------------------------------------------- 10-12. extreme values
@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_with_logits_extremes(backend):
    x = np.array([100, -100, 1e4, -1e4, 0.0], np.float32)
    y = np.array([0, 1, 0, 1, 0.5], np.float32)
    xt, ot = T(x, grad=True), T(x, grad=True)
    ref = F.binary_cross_entropy_with_logits(xt, T(y), reduction="sum")
    got = ops.binary_cross_entropy_with_logits(ot, T(y), reduction="sum", backend=backend)
    assert np.isfinite(got.item())
    assert_close(got, ref, rtol=1e-6, atol=1e-6)
    got.backward()
    sig = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert_close(ot.grad, (sig - y).astype(np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_norm_degenerate_rows(backend):
    for x in (np.full((2, 8), 3.0, np.float32), r(3, 1), (1e4 + r(4, 64, scale=1e-2)).astype(np.float32)):
        d = x.shape[-1]
        # the truth is float64 maths on the same float32 inputs: at mean 1e4 the noise is ~10 float32 ulps,
        # and torch's float32 kernel itself is off by a few percent there
        xt = T(x.astype(np.float64), grad=True)
        ot = T(x, grad=True)
        ref = F.layer_norm(xt, (d,))
        got = ops.layer_norm(ot, (d,), backend=backend)
        assert np.isfinite(got.detach().numpy()).all()
        assert_close(got, ref.float(), rtol=1e-3, atol=2e-3 if x.mean() > 100 else 1e-5)
        g = r(*x.shape)
        ref.backward(torch.from_numpy(g.astype(np.float64)))
        got.backward(torch.from_numpy(g))
        assert np.isfinite(ot.grad.numpy()).all()
        assert_close(ot.grad, xt.grad.float(), rtol=1e-3, atol=2e-3 if x.mean() > 100 else 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_at_large_magnitudes(backend, approximate):
    x = np.array([1e4, -1e4, 50.0, -50.0, np.nan, np.inf, -np.inf], np.float32)
    xt, ot = T(x, grad=True), T(x, grad=True)
    ref = F.gelu(xt, approximate=approximate)
    got = ops.gelu(ot, approximate=approximate, backend=backend)
    assert not np.isnan(got.detach().numpy()[:4]).any()
    # Values against torch's float64 GELU: torch 2.13's vectorised float32 erf-GELU returns NaN for +inf on
    # AVX-512 CPUs (its scalar and float64 paths, and its AVX2 kernel, return inf = +inf * Phi(+inf)).
    assert_close(got, F.gelu(xt.detach().double(), approximate=approximate).float())
    assert got.detach().numpy()[5] == np.inf
    ref.backward(torch.ones_like(ref))
    got.backward(torch.ones_like(got))
    assert_close(ot.grad[:4], xt.grad[:4])


# ---------------------------------------------------------------------------- 15. finite differences
GRADCHECK = {
    "softmax": (lambda x: ops.softmax(x, dim=-1), [(3, 5)]),
    "log_softmax": (lambda x: ops.log_softmax(x, dim=0), [(4, 3)]),
    "gelu": (lambda x: ops.gelu(x), [(7,)]),
    "gelu_tanh": (lambda x: ops.gelu(x, approximate="tanh"), [(7,)]),
    "silu": (ops.silu, [(7,)]),
    "matmul": (ops.matmul, [(2, 3, 4), (4, 5)]),
    "linear": (ops.linear, [(3, 4), (5, 4), (5,)]),
    "layer_norm": (lambda x, w, b: ops.layer_norm(x, (6,), w, b), [(3, 6), (6,), (6,)]),
    "mse_loss": (ops.mse_loss, [(5, 3), (5, 3)]),
    "bce": (lambda x, y: ops.binary_cross_entropy_with_logits(x, y), [(4, 3), (4, 3)]),
    "cross_entropy": (lambda x: ops.cross_entropy(x, torch.tensor([1, 0, 3, -100]), label_smoothing=0.1),
                      [(4, 5)]),
    "attention": (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, is_causal=True), [(2, 5, 4)] * 3),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(GRADCHECK))
def test_backward_against_finite_differences(backend, name):
    fn, shapes = GRADCHECK[name]
    args = [torch.from_numpy(r(*s, dtype=np.float64)).requires_grad_(True) for s in shapes]
    with dlcore.backend(backend):
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-3)


# ---------------------------------------------------------------------------- 16-17. optimizers
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt", ["sgd", "sgd_nesterov", "adam", "adamw"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizers_track_torch_for_100_steps(backend, opt, dtype):
    n = 1031
    p0 = r(n, dtype=dtype)
    tp = torch.from_numpy(p0.copy()).requires_grad_(True)
    hp = dict(lr=0.01, weight_decay=0.05)
    if opt.startswith("sgd"):
        hp.update(momentum=0.9, nesterov=opt.endswith("nesterov"), dampening=0.0 if opt.endswith("nesterov") else 0.1)
        topt = torch.optim.SGD([tp], **hp)
    else:
        topt = (torch.optim.Adam if opt == "adam" else torch.optim.AdamW)([tp], betas=(0.9, 0.99), eps=1e-7, **hp)
    ours, buf = p0.copy(), None
    m, v = np.zeros_like(p0), np.zeros_like(p0)
    for step in range(1, 101):
        g = r(n, dtype=dtype)
        tp.grad = torch.from_numpy(g.copy())
        topt.step()
        if opt.startswith("sgd"):
            buf = ops.sgd_(ours, g, buf, backend=backend, **hp)
        else:
            fn = ops.adam_ if opt == "adam" else ops.adamw_
            fn(ours, g, m, v, step=step, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-7, weight_decay=0.05, backend=backend)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
    assert_close(ours, tp.detach(), **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_zero_grads_and_zero_lr(backend):
    p = r(100)
    p0 = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    ops.adamw_(p, np.zeros_like(p), m, v, step=1, lr=0.1, weight_decay=0.5, backend=backend)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, p0 * (1 - 0.1 * 0.5), rtol=1e-6)  # only the decoupled decay
    p1 = p.copy()
    ops.adam_(p, r(100), m, v, step=2, lr=0.0, backend=backend)
    np.testing.assert_array_equal(p, p1)  # lr = 0 leaves params bit-unchanged
    with pytest.raises(ValueError, match="step counts from 1"):
        ops.adam_(p, r(100), m, v, step=0, lr=0.1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_steps_non_contiguous_params_in_place(backend):
    base = r(8, 6)
    p = base[:, ::2]
    g = r(8, 3)
    ref = torch.from_numpy(np.ascontiguousarray(p)).requires_grad_(True)
    ref.grad = torch.from_numpy(g.copy())
    torch.optim.SGD([ref], lr=0.5).step()
    ops.sgd_(p, g, lr=0.5, backend=backend)
    assert_close(base[:, ::2], ref.detach())


# ---------------------------------------------------------------------------- 18-20. determinism, threads, flags
def test_thread_count_does_not_change_results_beyond_rounding():
    x = r(257, 1000)
    n = dlcore.get_num_threads()
    try:
        dlcore.set_num_threads(1)
        one = [ops.softmax(x), ops.layer_norm(x, (1000,)), ops.mse_loss(x, x[::-1])]
        dlcore.set_num_threads(n)
        many = [ops.softmax(x), ops.layer_norm(x, (1000,)), ops.mse_loss(x, x[::-1])]
    finally:
        dlcore.set_num_threads(n)
    for a, b in zip(one, many):
        assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_parallel_kernels_from_several_python_threads():
    x = r(64, 513)
    expected = ops.softmax(x)
    errors = []

    def work():
        try:
            for _ in range(20):
                np.testing.assert_array_equal(ops.softmax(x), expected)
                ops.cross_entropy(x, np.arange(64) % 513)
        except Exception as e:  # noqa: BLE001 - collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_no_numba_kernel_assumes_no_nan_or_inf():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "kernels", "numba")
    for name in os.listdir(root):
        if name.endswith(".py"):
            src = open(os.path.join(root, name)).read()
            assert not re.search(r"fastmath\s*=\s*True", src), f"{name}: fastmath=True implies nnan/ninf"
            # the flags appear quoted in a fastmath={...} set; prose that names them is fine
            assert not re.search(r"""["'](nnan|ninf|fast)["']""", src), \
                f"{name}: nnan/ninf flags break -inf masking and NaN"

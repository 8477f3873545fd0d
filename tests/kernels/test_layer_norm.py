"""layer_norm kernels (every CPU backend) against torch, forward (y, mean, rstd) and backward.

Torch semantics matched: biased variance, ``rstd = 1 / sqrt(var + eps)``; a constant row (variance 0) gives
``y = bias`` and a zero grad_x; D == 1 is the same case; for D == 0 torch.native_layer_norm returns mean 0
and rstd NaN (torch 2.13). The float32 cases at mean 1e4 + noise 1e-2 are compared with float64 torch at the
default float32 tolerance: the kernels accumulate row statistics in float64 and refine the float32-stored mean
in the backward. (torch's own float32 path does neither and is visibly further off there.)
"""
import importlib
import zlib

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests._compare import assert_close, rand

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (1, 7), (5, 7), (5, 129), (33, 1), (33, 129), (0, 7)]
AFFINE = ["weight+bias", "weight", "bias", "none"]


def kernels(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.layer_norm")


def make(shape, dtype, affine, seed, scale=1.0, shift=0.0):
    D = shape[1]
    x = (rand(shape, np.float64, seed=seed, scale=scale) + shift).astype(dtype)
    w = (1 + 0.5 * rand(D, dtype, seed=seed + 1)).astype(dtype) if "weight" in affine else None
    b = rand(D, dtype, seed=seed + 2) if "bias" in affine else None
    grad = rand(shape, dtype, seed=seed + 3)
    return x, w, b, grad


def run(backend, x, w, b, grad, eps=1e-5):
    k = kernels(backend)
    y, mean, rstd = k.layer_norm_forward(x, w, b, eps)
    return (y, mean, rstd), k.layer_norm_backward(grad, x, w, mean, rstd)


def torch_ref(x, w, b, grad, eps=1e-5):
    """float64 torch: (y, mean, rstd), (grad_x, grad_weight or None, grad_bias = sum of grad over rows)."""
    t = lambda a: None if a is None else torch.from_numpy(a.astype(np.float64)).requires_grad_()
    xt, wt, bt = t(x), t(w), t(b)
    D = x.shape[1]
    _, mean, rstd = torch.native_layer_norm(xt.detach(), [D], None if wt is None else wt.detach(),
                                            None if bt is None else bt.detach(), eps)
    y = F.layer_norm(xt, [D], wt, bt, eps)
    inputs = [a for a in (xt, wt, bt) if a is not None]
    grads = torch.autograd.grad(y, inputs, torch.from_numpy(grad.astype(np.float64)), allow_unused=True)
    gx = grads[0].numpy()
    gw = grads[1].numpy() if wt is not None else None
    gb = grads[-1].numpy() if bt is not None else grad.astype(np.float64).sum(axis=0)
    return (y.detach().numpy(), mean.reshape(-1).numpy(), rstd.reshape(-1).numpy()), (gx, gw, gb)


def check(got, expected, dtype, what="", cond=None, skip=()):
    """Compare kernel outputs with torch's. ``cond``: a condition number that scales the float64 tolerance
    to ``64 * cond * 2**-52`` (relative, and absolute against each output's largest magnitude)."""
    (y, mean, rstd), (gx, gw, gb) = got
    (ey, emean, erstd), (egx, egw, egb) = expected
    for name, a in (("y", y), ("mean", mean), ("rstd", rstd), ("grad_x", gx), ("grad_bias", gb)):
        assert a.dtype == dtype, f"{what} {name} dtype {a.dtype}"
    if egw is None:
        assert gw is None
    else:
        assert gw.dtype == dtype
    pairs = (("y", y, ey), ("mean", mean, emean), ("rstd", rstd, erstd), ("grad_x", gx, egx),
             ("grad_bias", gb, egb), ("grad_weight", gw, egw))
    for name, a, e in pairs:
        if e is None or name in skip:
            continue
        tol = {}
        if cond is not None and dtype == np.float64:
            u = 64 * cond * 2.0**-52
            tol = {"rtol": u, "atol": u * float(np.max(np.abs(e), initial=0.0))}
        assert_close(a, e, msg=f"{what} {name}", **tol)


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch(backend, dtype, shape, affine):
    seed = zlib.crc32(repr((backend, np.dtype(dtype).name, shape, affine)).encode())
    x, w, b, grad = make(shape, dtype, affine, seed, scale=2.0, shift=0.5)
    check(run(backend, x, w, b, grad), torch_ref(x, w, b, grad), dtype)


@pytest.mark.parametrize("eps", [1e-12, 0.1])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_eps(backend, dtype, eps):
    x, w, b, grad = make((5, 33), dtype, "weight+bias", seed=7, scale=0.1)
    check(run(backend, x, w, b, grad, eps), torch_ref(x, w, b, grad, eps), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_rows_and_d1(backend, dtype):
    # RELIABILITY 11: variance 0 -> xhat == 0, so y == bias, grad_weight == 0, rstd == 1/sqrt(eps) and
    # grad_x == rstd * (a - mean(a)), a = grad * weight (0 for normalized size 1). These are exact.
    # torch's float64 grad_weight is not compared here: for a constant row at 1e4 it carries ~5e-11 of
    # rounding noise (torch 2.13's backward does not recover xhat == 0 exactly) where the exact value is 0.
    for shape in [(6, 9), (6, 1)]:
        x, w, b, grad = make(shape, dtype, "weight+bias", seed=8)
        x[:] = np.array([3.0, -2.5, 0.0, 1e4, 7.0, -1.0], dtype)[:, None]
        got = run(backend, x, w, b, grad)
        check(got, torch_ref(x, w, b, grad), dtype, what=str(shape), skip=("grad_weight",))
        (y, mean, rstd), (gx, gw, gb) = got
        assert np.array_equal(y, np.broadcast_to(b, shape))
        assert np.array_equal(mean, x[:, 0])
        assert_close(rstd, np.full(shape[0], 1 / np.sqrt(1e-5)), msg="constant row rstd")
        assert np.all(gw == 0)
        a = grad.astype(np.float64) * w
        assert_close(gx, (a - a.mean(axis=1, keepdims=True)) / np.sqrt(1e-5), msg="constant row grad_x")
        if shape[1] == 1:
            assert np.all(gx == 0)
        assert_close(gb, grad.sum(axis=0, dtype=np.float64), msg="constant row grad_bias")


@pytest.mark.parametrize("noise", [1e-2, 1.0])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_mean_small_noise(backend, dtype, noise):
    # RELIABILITY 11: mean 1e4 with small noise. float32 keeps the default tolerance (float64 statistics and
    # the refined mean, see the module docstring). In float64 the problem's condition number is
    # |mean| / std (1e6 at noise 1e-2): rounding the mean alone moves y by 2**-53 * |mean| * rstd, and both
    # torch's float64 result and the kernels carry errors of that size (checked against np.longdouble: the
    # kernels are the closer of the two), so the float64 tolerance scales with it.
    x, w, b, grad = make((5, 129), dtype, "weight+bias", seed=9, scale=noise, shift=1e4)
    got = run(backend, x, w, b, grad)
    assert all(np.all(np.isfinite(a)) for a in (*got[0], got[1][0], got[1][1], got[1][2]))
    check(got, torch_ref(x, w, b, grad), dtype, cond=1e4 / noise)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_width(backend, dtype):
    # D == 0: torch.native_layer_norm gives an empty y, mean 0 and rstd NaN per row.
    x = np.empty((3, 0), dtype)
    y, mean, rstd = kernels(backend).layer_norm_forward(x, None, None, 1e-5)
    _, emean, erstd = torch.native_layer_norm(torch.from_numpy(x), [0], None, None, 1e-5)
    assert y.shape == (3, 0)
    assert_close(mean, emean.reshape(-1))
    assert_close(rstd, erstd.reshape(-1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_differences(backend):
    # RELIABILITY 15: float64 backward (x, weight, bias) against central differences, eps 1e-6.
    x, w, b, g = make((3, 5), np.float64, "weight+bias", seed=10)
    k = kernels(backend)
    _, (gx, gw, gb) = run(backend, x, w, b, g)
    loss = lambda x_, w_, b_: np.sum(k.layer_norm_forward(x_, w_, b_, 1e-5)[0] * g)
    eps = 1e-6
    for name, arr, analytic in (("x", x, gx), ("weight", w, gw), ("bias", b, gb)):
        fd = np.empty_like(arr)
        for idx in np.ndindex(arr.shape):
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args_p = {"x": (plus, w, b), "weight": (x, plus, b), "bias": (x, w, plus)}[name]
            args_m = {"x": (minus, w, b), "weight": (x, minus, b), "bias": (x, w, minus)}[name]
            fd[idx] = (loss(*args_p) - loss(*args_m)) / (2 * eps)
        assert_close(analytic, fd, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numba_deterministic(dtype):
    # RELIABILITY 18: bitwise-equal output twice, and with 1 thread vs all threads (fixed row chunks).
    x, w, b, grad = make((67, 129), dtype, "weight+bias", seed=11)
    first = run("numba", x, w, b, grad)
    again = run("numba", x, w, b, grad)
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = run("numba", x, w, b, grad)
    finally:
        numba.set_num_threads(n)
    flat = lambda r: [a.tobytes() for a in (*r[0], *r[1])]
    assert flat(first) == flat(again) == flat(single)

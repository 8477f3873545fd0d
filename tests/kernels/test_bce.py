"""binary_cross_entropy_with_logits kernels (every CPU backend) against torch, forward and backward.

Torch 2.13: the loss is the stable ``(1 - y) * x + log_weight * (log1p(exp(-|x|)) + max(-x, 0))`` with
``log_weight = 1 + (pos_weight - 1) * y``, finite at +-1e4; the gradient is ``sigmoid(x) - y`` (times the
pos_weight terms when given); 'mean' of an empty input is NaN, 'sum' is 0; a NaN logit gives a NaN loss.
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
# (3000, 7) spans two of the numba kernels' ~16K-element row blocks
SHAPES = [(1, 1), (1, 7), (5, 7), (5, 129), (33, 1), (33, 129), (3000, 7), (0, 7), (3, 0)]
REDUCTIONS = ["none", "mean", "sum"]


def kernels(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.bce")


def make(shape, dtype, with_pw, seed, scale=3.0):
    rng = np.random.default_rng(seed)
    x = rand(shape, dtype, seed=seed, scale=scale)
    y = rng.uniform(0, 1, shape).astype(dtype)
    y[rng.uniform(size=shape) < 0.3] = 1  # hard labels mixed with soft ones
    y[rng.uniform(size=shape) < 0.2] = 0
    pw = np.exp(rng.standard_normal(shape[1])).astype(dtype) if with_pw else None
    return x, y, pw


def upstream(shape, reduction, dtype, seed):
    return rand(shape, dtype, seed=seed) if reduction == "none" else np.array(rand(1, dtype, seed=seed)[0])


def run(backend, x, y, pw, grad, reduction):
    k = kernels(backend)
    return (k.bce_with_logits_forward(x, y, pw, reduction),
            k.bce_with_logits_backward(grad, x, y, pw, reduction))


def torch_ref(x, y, pw, grad, reduction):
    """float64 torch loss and grad_x for the (already dtype-rounded) inputs."""
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float64))
    xt = t(x).requires_grad_()
    loss = F.binary_cross_entropy_with_logits(xt, t(y), pos_weight=t(pw), reduction=reduction)
    (gx,) = torch.autograd.grad(loss, xt, t(grad))
    return loss.detach().numpy(), gx.numpy()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_pw", [False, True], ids=["no_pw", "pw"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch(backend, dtype, shape, with_pw, reduction):
    seed = zlib.crc32(repr((backend, np.dtype(dtype).name, shape, with_pw, reduction)).encode())
    x, y, pw = make(shape, dtype, with_pw, seed)
    grad = upstream(shape, reduction, dtype, seed + 1)
    loss, gx = run(backend, x, y, pw, grad, reduction)
    assert loss.dtype == dtype and gx.dtype == dtype and gx.shape == shape
    assert loss.shape == (shape if reduction == "none" else ())
    eloss, egx = torch_ref(x, y, pw, grad, reduction)
    assert_close(loss, eloss, msg="loss")
    assert_close(gx, egx, msg="grad_x")


@pytest.mark.parametrize("with_pw", [False, True], ids=["no_pw", "pw"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits(backend, dtype, with_pw):
    # RELIABILITY 10: +-100 and +-1e4 give a finite loss (stable form) and gradient sigmoid(x) - y.
    x = np.array([[100.0, -100.0, 1e4, -1e4, 0.0, 30.0]] * 3, dtype)
    y = np.array([[0.0] * 6, [1.0] * 6, [0.3] * 6], dtype)
    pw = np.array([0.5, 2.0, 3.0, 0.25, 1.0, 10.0], dtype) if with_pw else None
    for reduction in REDUCTIONS:
        grad = np.ones_like(x) if reduction == "none" else np.array(1.0, dtype)
        loss, gx = run(backend, x, y, pw, grad, reduction)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(gx))
        eloss, egx = torch_ref(x, y, pw, grad, reduction)
        assert_close(loss, eloss, msg=f"{reduction} loss")
        assert_close(gx, egx, msg=f"{reduction} grad_x")
        if not with_pw and reduction == "sum":
            with np.errstate(over="ignore"):
                sigmoid = 1 / (1 + np.exp(-x.astype(np.float64)))
            assert_close(gx, sigmoid - y, msg="sigmoid(x) - y")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_empty(backend, dtype, reduction):
    # RELIABILITY 1/20: a NaN logit poisons its loss entry (and any reduction), as in torch; empty inputs
    # give NaN for 'mean', 0 for 'sum', and empty arrays otherwise.
    x, y, pw = make((4, 5), dtype, True, seed=5)
    x[1, 2] = np.nan
    x[2, 3] = np.inf
    x[3, 0] = -np.inf
    grad = upstream(x.shape, reduction, dtype, 6)
    loss, gx = run(backend, x, y, pw, grad, reduction)
    eloss, egx = torch_ref(x, y, pw, grad, reduction)
    assert_close(loss, eloss, msg="loss")
    assert_close(gx, egx, msg="grad_x")
    for shape in [(0, 5), (4, 0)]:
        e = np.empty(shape, dtype)
        g = upstream(shape, reduction, dtype, 7)
        loss, gx = run(backend, e, e, None, g, reduction)
        assert gx.shape == shape
        assert_close(loss, torch_ref(e, e, None, g, reduction)[0], msg=f"empty {shape}")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_pw", [False, True], ids=["no_pw", "pw"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_differences(backend, with_pw, reduction):
    # RELIABILITY 15: float64 backward against central differences, eps 1e-6.
    x, y, pw = make((2, 4), np.float64, with_pw, seed=31, scale=2.0)
    w = upstream(x.shape, reduction, np.float64, 32)
    k = kernels(backend)
    gx = k.bce_with_logits_backward(w, x, y, pw, reduction)
    eps = 1e-6
    f = lambda x_: np.sum(k.bce_with_logits_forward(x_, y, pw, reduction) * w)
    fd = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = eps
        fd[idx] = (f(x + e) - f(x - e)) / (2 * eps)
    assert_close(gx, fd, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numba_deterministic(dtype, reduction):
    # RELIABILITY 18: bitwise-equal output twice and with 1 thread vs all threads (fixed-block partial sums).
    x, y, pw = make((6000, 17), dtype, True, seed=41)
    grad = upstream(x.shape, reduction, dtype, 42)
    first = run("numba", x, y, pw, grad, reduction)
    again = run("numba", x, y, pw, grad, reduction)
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        single = run("numba", x, y, pw, grad, reduction)
    finally:
        numba.set_num_threads(n)
    flat = lambda r: [a.tobytes() for a in r]
    assert flat(first) == flat(again) == flat(single)

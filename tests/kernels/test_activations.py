"""gelu (erf and tanh), relu and silu kernels (every CPU backend) against torch, forward and backward.

Torch 2.13 at the edges (CPU, float32 and float64): relu(NaN) = NaN and relu's gradient passes through at NaN
(torch masks only x <= 0); gelu/silu(NaN) = NaN; gelu(+inf) = +inf but gelu(-inf) = NaN and silu(-inf) = NaN
(their formulas compute -inf * 0), and gelu/silu gradients at +-inf are NaN. The kernels follow all of it.
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
SIZES = [0, 1, 7, 129, 4257, 40001]  # 40001 spans three of the numba kernels' 16K-element blocks

# op name -> (kernel forward, kernel backward, torch function)
OPS = {
    "gelu": (lambda k, x: k.gelu_forward(x, "none"), lambda k, x, g: k.gelu_backward(x, g, "none"), F.gelu),
    "gelu_tanh": (
        lambda k, x: k.gelu_forward(x, "tanh"),
        lambda k, x, g: k.gelu_backward(x, g, "tanh"),
        lambda t: F.gelu(t, approximate="tanh"),
    ),
    "relu": (lambda k, x: k.relu_forward(x), lambda k, x, g: k.relu_backward(x, g), F.relu),
    "silu": (lambda k, x: k.silu_forward(x), lambda k, x, g: k.silu_backward(x, g), F.silu),
}


def kernels(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.activations")


def run(backend, op, x, grad):
    fwd, bwd, _ = OPS[op]
    k = kernels(backend)
    return fwd(k, x), bwd(k, x, grad)


def torch_ref(op, x, grad):
    """float64 torch forward and autograd gradient for the (already dtype-rounded) inputs."""
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    y = OPS[op][2](xt)
    (gx,) = torch.autograd.grad(y, xt, torch.from_numpy(grad.astype(np.float64)))
    return y.detach().numpy(), gx.numpy()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch(backend, dtype, op, n):
    seed = zlib.crc32(repr((backend, np.dtype(dtype).name, op, n)).encode())
    x = rand(n, dtype, seed=seed, scale=3.0)
    grad = rand(n, dtype, seed=seed + 1)
    y, gx = run(backend, op, x, grad)
    assert y.shape == (n,) and gx.shape == (n,) and y.dtype == dtype and gx.dtype == dtype
    ey, egx = torch_ref(op, x, grad)
    assert_close(y, ey, msg=f"{op} forward")
    assert_close(gx, egx, msg=f"{op} backward")


SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-3, -1e-3, 5.0, -5.0, 10.0, -10.0, 100.0, -100.0, 1e4, -1e4,
           np.inf, -np.inf, np.nan]


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("backend", BACKENDS)
def test_special_values(backend, dtype, op):
    # RELIABILITY 12 and 20: +-1e4 without NaN; NaN and inf placed exactly as torch places them.
    x = np.array(SPECIAL, dtype)
    grad = np.full_like(x, 2.0)
    y, gx = run(backend, op, x, grad)
    ey, egx = torch_ref(op, x, grad)
    assert_close(y, ey, msg=f"{op} forward")
    assert_close(gx, egx, msg=f"{op} backward")
    finite = np.isfinite(x)
    assert np.all(np.isfinite(y[finite])) and np.all(np.isfinite(gx[finite]))
    assert np.isnan(y[-1])  # NaN propagates (relu(NaN) = NaN too)
    big = np.array([1e4, -1e4], dtype)
    yb, gb = run(backend, op, big, np.ones_like(big))
    assert_close(yb, [1e4, 0.0], msg=f"{op}(+-1e4)")
    assert_close(gb, [1.0, 0.0], msg=f"{op}'(+-1e4)")


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_finite_differences(backend, op):
    # RELIABILITY 15: float64 backward against central differences, eps 1e-6 (inputs away from relu's kink).
    x = rand(9, np.float64, seed=31, scale=2.0)
    x[np.abs(x) < 1e-3] = 0.5
    w = rand(9, np.float64, seed=32)
    fwd = OPS[op][0]
    k = kernels(backend)
    _, gx = run(backend, op, x, w)
    eps = 1e-6
    fd = np.array([(np.sum(fwd(k, x + eps * e) * w) - np.sum(fwd(k, x - eps * e) * w)) / (2 * eps)
                   for e in np.eye(9)])
    assert_close(gx, fd, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_numba_deterministic(dtype, op):
    # RELIABILITY 18: bitwise-equal output twice, and with 1 thread vs all threads.
    x = rand(40001, dtype, seed=41, scale=3.0)
    grad = rand(x.shape, dtype, seed=42)
    y1, g1 = run("numba", op, x, grad)
    y2, g2 = run("numba", op, x, grad)
    assert y1.tobytes() == y2.tobytes() and g1.tobytes() == g2.tobytes()
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        y3, g3 = run("numba", op, x, grad)
    finally:
        numba.set_num_threads(n)
    assert y1.tobytes() == y3.tobytes() and g1.tobytes() == g3.tobytes()

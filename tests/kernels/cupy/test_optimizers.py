"""CuPy SGD / Adam / AdamW updates against torch.optim (single-tensor, CPU) over many steps. Needs a GPU (or
the emulator)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.cupy._helpers import DTYPES, assert_close, host, rand, tol

pytestmark = pytest.mark.gpu

N = 1031
STEPS = 100


@pytest.fixture(scope="module")
def K(kernels):
    return kernels("optimizers")


def _grads(dtype, steps=STEPS):
    return [rand((N,), dtype, seed=100 + s) for s in range(steps)]


SGD_CASES = [
    {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    {"lr": 0.05, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "nesterov": False, "weight_decay": 1e-3},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 1e-3},
]


@pytest.mark.parametrize("case", range(len(SGD_CASES)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_matches_torch(cp, K, case, dtype):
    import torch

    hp = SGD_CASES[case]
    p0 = rand((N,), dtype, seed=1)
    pt = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.SGD([pt], foreach=False, **hp)
    p = cp.array(p0)
    buf = None
    for g in _grads(dtype):
        pt.grad = torch.tensor(g)
        opt.step()
        buf = K.sgd_step(p, cp.array(g), buf, hp["lr"], hp["momentum"], hp["dampening"], hp["nesterov"],
                         hp["weight_decay"])
    assert (buf is None) == (hp["momentum"] == 0)
    assert_close(host(p), pt.detach(), **tol(dtype, 50))  # 100 steps of accumulated rounding
    if buf is not None:
        assert_close(host(buf), opt.state[pt]["momentum_buffer"], **tol(dtype, 50))


ADAM_CASES = [
    {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    {"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05},
]


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("case", range(len(ADAM_CASES)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_matches_torch(cp, K, case, decoupled, dtype):
    import torch

    hp = ADAM_CASES[case]
    p0 = rand((N,), dtype, seed=2)
    pt = torch.tensor(p0, requires_grad=True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([pt], foreach=False, fused=False, **hp)
    p, m, v = cp.array(p0), cp.zeros((N,), dtype=dtype), cp.zeros((N,), dtype=dtype)
    for step, g in enumerate(_grads(dtype), start=1):
        pt.grad = torch.tensor(g)
        opt.step()
        K.adam_step(p, cp.array(g), m, v, step, hp["lr"], hp["betas"][0], hp["betas"][1], hp["eps"],
                    hp["weight_decay"], decoupled)
    st = opt.state[pt]
    assert_close(host(p), pt.detach(), **tol(dtype, 100))  # Adam divides by small sqrt(v): rounding grows
    assert_close(host(m), st["exp_avg"], **tol(dtype, 50))
    assert_close(host(v), st["exp_avg_sq"], **tol(dtype, 50))


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_zero_grads_and_zero_lr(cp, K, decoupled):
    """All-zero gradients: no NaN, AdamW applies only its decay; lr = 0 leaves params bit-unchanged."""
    p0 = rand((N,), np.float32, seed=3)
    p, m, v = cp.array(p0), cp.zeros((N,), np.float32), cp.zeros((N,), np.float32)
    zero = cp.zeros((N,), np.float32)
    K.adam_step(p, zero, m, v, 1, 1e-2, 0.9, 0.999, 1e-8, 0.1, decoupled)
    out = host(p)
    assert np.isfinite(out).all()
    expected = p0 * np.float32(1 - 1e-2 * 0.1) if decoupled else p0  # Adam: grad' = wd * p is not zero
    if decoupled:
        assert_close(out, expected, rtol=1e-6, atol=0)
    p = cp.array(p0)
    K.adam_step(p, cp.array(rand((N,), np.float32, seed=4)), m, v, 2, 0.0, 0.9, 0.999, 1e-8, 0.1, decoupled)
    assert host(p).tobytes() == p0.tobytes()


def test_sgd_grad_aliasing_param(cp, K):
    """grad and param sharing memory: each element reads both before writing, so the result is defined."""
    p0 = rand((N,), np.float64, seed=5)
    p = cp.array(p0)
    K.sgd_step(p, p, None, 0.1, 0.0, 0.0, False, 0.0)
    assert_close(host(p), p0 - 0.1 * p0, rtol=1e-15, atol=0)


def test_empty_params(cp, K):
    p = cp.zeros((0,), np.float32)
    assert K.sgd_step(p, p, None, 0.1, 0.9, 0.0, False, 0.0).shape == (0,)
    K.adam_step(p, p, p, p, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, True)


def test_adam_step_counts_from_one(cp, K):
    p = cp.zeros((3,), np.float32)
    with pytest.raises(ValueError):
        K.adam_step(p, p, p.copy(), p.copy(), 0, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)

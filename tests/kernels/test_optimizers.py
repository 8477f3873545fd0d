"""sgd_step / adam_step against torch.optim (single-tensor path), bit for bit, on every CPU backend.

Both backends replay torch's op chain in the parameter dtype with torch's fused multiply-adds (see the
module docstrings), so after 100 steps with fresh random gradients parameters and state must be *bitwise*
equal to torch's, not merely close (RELIABILITY.md items 16, 17, 4).
"""
import importlib

import numpy as np
import pytest
import torch

import dlcore  # noqa: F401  (registers dlcore.kernels)
from tests._compare import rand

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
SIZES = [1, 7, 1000, 4099]
STEPS = 100


def _mod(backend):
    return importlib.import_module(f"dlcore.kernels.{backend}.optimizers")


def assert_bitwise(actual, expected, msg=""):
    """Equal bits (so -0.0 != 0.0 and NaN payloads count), with the worst difference in the message."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype and a.shape == e.shape, f"{msg}: {a.dtype}{a.shape} vs {e.dtype}{e.shape}"
    same = a.view(f"u{a.itemsize}") == e.view(f"u{e.itemsize}")
    if not same.all():
        i = int(np.argmax(~same))
        raise AssertionError(f"{msg}: {int((~same).sum())}/{a.size} differ, max |diff| "
                             f"{np.max(np.abs(a.astype(np.float64) - e)):.3e}, first at {i}: {a[i]!r} vs {e[i]!r}")


def _grads(size, dtype, steps=STEPS, seed=1):
    return [rand(size, dtype, seed=seed + s) for s in range(steps)]


def _torch_run(opt_cls, init, grads, **kw):
    p = torch.nn.Parameter(torch.from_numpy(init.copy()))
    opt = opt_cls([p], foreach=False, **kw)
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        opt.step()
    return p.detach().numpy(), opt.state[p]


SGD_CONFIGS = {
    "plain": dict(lr=0.05, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
    "wd": dict(lr=0.05, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.01),
    "momentum_dampening_wd": dict(lr=0.01, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=0.01),
    "nesterov_wd": dict(lr=0.01, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.001),
}


@pytest.mark.parametrize("config", list(SGD_CONFIGS))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_matches_torch_bitwise(backend, dtype, size, config):
    cfg = SGD_CONFIGS[config]
    init, grads = rand(size, dtype, seed=0), _grads(size, dtype)
    expected, state = _torch_run(torch.optim.SGD, init, grads, **cfg)

    param, buf = init.copy(), None
    for g in grads:
        buf = _mod(backend).sgd_step(param, g, buf, cfg["lr"], cfg["momentum"], cfg["dampening"],
                                     cfg["nesterov"], cfg["weight_decay"])
    assert_bitwise(param, expected, f"{backend} sgd {config} param")
    if cfg["momentum"] == 0:
        assert buf is None
    else:
        assert_bitwise(buf, state["momentum_buffer"].numpy(), f"{backend} sgd {config} buffer")


ADAM_CONFIGS = {
    "adam": (torch.optim.Adam, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    "adam_l2": (torch.optim.Adam, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)),
    "adamw": (torch.optim.AdamW, dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)),
    # 1 - beta1 >= 0.5 takes the other branch of torch's lerp formula
    "adamw_big_lerp_weight": (torch.optim.AdamW, dict(lr=3e-2, betas=(0.3, 0.5), eps=1e-6, weight_decay=0.1)),
}


def _adam_run(backend, init, grads, opt_cls, cfg, start_step=1):
    param, m, v = init.copy(), np.zeros_like(init), np.zeros_like(init)
    for step, g in enumerate(grads, start=start_step):
        _mod(backend).adam_step(param, g, m, v, step, cfg["lr"], cfg["betas"][0], cfg["betas"][1], cfg["eps"],
                                cfg["weight_decay"], opt_cls is torch.optim.AdamW)
    return param, m, v


@pytest.mark.parametrize("config", list(ADAM_CONFIGS))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_matches_torch_bitwise(backend, dtype, size, config):
    opt_cls, cfg = ADAM_CONFIGS[config]
    init, grads = rand(size, dtype, seed=0), _grads(size, dtype)
    expected, state = _torch_run(opt_cls, init, grads, **cfg)

    param, m, v = _adam_run(backend, init, grads, opt_cls, cfg)
    assert_bitwise(param, expected, f"{backend} {config} param")
    assert_bitwise(m, state["exp_avg"].numpy(), f"{backend} {config} exp_avg")
    assert_bitwise(v, state["exp_avg_sq"].numpy(), f"{backend} {config} exp_avg_sq")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_zero_grads(backend, dtype):
    """RELIABILITY 16: all-zero gradients give no NaN; Adam leaves params alone, AdamW only decays them."""
    init = rand(1000, dtype)
    grads = [np.zeros(1000, dtype)] * 20
    for config in ("adam", "adamw"):
        opt_cls, cfg = ADAM_CONFIGS[config]
        param, m, v = _adam_run(backend, init, grads, opt_cls, cfg)
        assert np.isfinite(param).all() and not m.any() and not v.any()
        expected = init.copy()
        if config == "adamw":
            for _ in grads:
                expected *= dtype(1 - cfg["lr"] * cfg["weight_decay"])
        assert_bitwise(param, expected, f"{backend} {config} zero grads")
        assert_bitwise(param, _torch_run(opt_cls, init, grads, **cfg)[0], f"{backend} {config} vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lr_zero_leaves_params_bit_unchanged(backend, dtype):
    init, grads = rand(257, dtype), _grads(257, dtype, steps=5)
    for config in ("adam_l2", "adamw"):
        opt_cls, cfg = ADAM_CONFIGS[config]
        param, _, _ = _adam_run(backend, init, grads, opt_cls, dict(cfg, lr=0.0))
        assert_bitwise(param, init, f"{backend} {config} lr=0")
    for config in ("momentum_dampening_wd", "nesterov_wd"):
        cfg = dict(SGD_CONFIGS[config], lr=0.0)
        param, buf = init.copy(), None
        for g in grads:
            buf = _mod(backend).sgd_step(param, g, buf, cfg["lr"], cfg["momentum"], cfg["dampening"],
                                         cfg["nesterov"], cfg["weight_decay"])
        assert_bitwise(param, init, f"{backend} sgd {config} lr=0")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_first_step_is_step_one(backend, dtype):
    """With bias correction at step 1 the first Adam update is lr * sign(grad) (|grad| >> eps)."""
    init, g = rand(64, dtype), rand(64, dtype, seed=3)
    param, _, _ = _adam_run(backend, init, [g], torch.optim.Adam, ADAM_CONFIGS["adam"][1])
    np.testing.assert_allclose(init - param, 1e-3 * np.sign(g), rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sgd_buffer_is_a_fresh_copy_and_grad_untouched(backend):
    param, grad = rand(33), rand(33, seed=5)
    param_before, grad_before = param.copy(), grad.copy()
    buf = _mod(backend).sgd_step(param, grad, None, 0.1, 0.9, 0.5, False, 0.1)
    assert buf is not None and not np.shares_memory(buf, grad)
    decayed = torch.from_numpy(grad_before).add(torch.from_numpy(param_before), alpha=0.1).numpy()
    assert_bitwise(buf, decayed, "first buffer = weight-decayed grad, no dampening")
    assert_bitwise(grad, grad_before, "grad must not be modified")
    assert _mod(backend).sgd_step(param, grad, None, 0.1, 0.0, 0.0, False, 0.0) is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_and_grad_sharing_memory(backend):
    """RELIABILITY 4: an update whose grad aliases param equals the one with a copy of it."""
    init = rand(1000)
    aliased, separate = init.copy(), init.copy()
    _mod(backend).sgd_step(aliased, aliased, None, 0.1, 0.9, 0.0, True, 0.01)
    _mod(backend).sgd_step(separate, init.copy(), None, 0.1, 0.9, 0.0, True, 0.01)
    assert_bitwise(aliased, separate, "sgd aliased")
    aliased, separate = init.copy(), init.copy()
    m1, v1, m2, v2 = (np.zeros(1000) for _ in range(4))
    _mod(backend).adam_step(aliased, aliased, m1, v1, 1, 1e-3, 0.9, 0.999, 1e-8, 0.1, False)
    _mod(backend).adam_step(separate, init.copy(), m2, v2, 1, 1e-3, 0.9, 0.999, 1e-8, 0.1, False)
    assert_bitwise(aliased, separate, "adam aliased")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_param(backend):
    p = np.zeros(0, np.float32)
    assert _mod(backend).sgd_step(p, p.copy(), None, 0.1, 0.9, 0.0, False, 0.0).shape == (0,)
    _mod(backend).adam_step(p, p.copy(), p.copy(), p.copy(), 1, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)

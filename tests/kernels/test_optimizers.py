"""sgd_step / adam_step against torch.optim (single-tensor path), bit for bit, on every CPU backend.

Both backends replay torch's op chain in the parameter dtype with torch's fused multiply-adds (see the
module docstrings), so after 100 steps with fresh random gradients parameters and state are *bitwise*
equal to torch's: SGD to torch.optim.SGD itself, Adam/AdamW to torch's op chain with an IEEE sqrt
(torch.sqrt on this MKL build is not correctly rounded, see ``_torch_adam_chain``) and to torch.optim
within a few ulps (RELIABILITY.md items 16, 17, 4).
"""
import importlib

import numpy as np
import pytest
import torch

import dlcore  # noqa: F401  (registers dlcore.kernels)
from tests._compare import assert_close, rand

BACKENDS = ["numpy", "numba"]
DTYPES = [np.float32, np.float64]
SIZES = [1, 7, 4099]  # 4099: vector body plus a scalar tail in torch's kernels
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
        worst = np.max(np.abs(a.astype(np.float64) - e))
        raise AssertionError(f"{msg}: {int((~same).sum())}/{a.size} differ, max |diff| {worst:.3e}, "
                             f"first at {i}: {a[i]!r} vs {e[i]!r}")


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
    "plain": {"lr": 0.05, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    "wd": {"lr": 0.05, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.01},
    "momentum_dampening_wd": {"lr": 0.01, "momentum": 0.9, "dampening": 0.1, "nesterov": False,
                              "weight_decay": 0.01},
    "nesterov_wd": {"lr": 0.01, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.001},
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
    "adam": (torch.optim.Adam, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}),
    "adam_l2": (torch.optim.Adam, {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}),
    # 1 - beta1 >= 0.5 takes the other branch of torch's lerp formula
    "adamw_big_lerp_weight": (torch.optim.AdamW,
                              {"lr": 3e-2, "betas": (0.3, 0.5), "eps": 1e-6, "weight_decay": 0.1}),
}


def _adam_run(backend, init, grads, opt_cls, cfg):
    param, m, v = init.copy(), np.zeros_like(init), np.zeros_like(init)
    for step, g in enumerate(grads, start=1):  # torch's state['step'] after its increment: 1 first
        _mod(backend).adam_step(param, g, m, v, step, cfg["lr"], cfg["betas"][0], cfg["betas"][1], cfg["eps"],
                                cfg["weight_decay"], opt_cls is torch.optim.AdamW)
    return param, m, v


def _torch_adam_chain(init, grads, lr, betas, eps, weight_decay, decoupled):
    """torch's ``_single_tensor_adam`` replayed with torch ops, but with a correctly rounded sqrt.

    This build's ``torch.sqrt`` on CPU calls MKL's ``vsSqrt``/``vdSqrt`` in VML_HA mode, which is *not*
    correctly rounded: on this AVX2 machine it is off by one ulp for ~16% of float32 and ~1% of float64
    inputs (a function of the value only). Our kernels use IEEE sqrt (as torch does without MKL), so this
    replay swaps in NumPy's IEEE sqrt and must then agree with our kernels bit for bit; every other op
    (lerp_, mul_, addcmul_, add(alpha=), addcdiv_ with torch's FMAs and scalar casts) is torch's own.
    """
    beta1, beta2 = betas
    param = torch.from_numpy(init.copy())
    exp_avg, exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
    for step, g in enumerate(grads, start=1):
        grad = torch.from_numpy(g.copy())
        if weight_decay != 0:
            if decoupled:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(step)  # torch keeps state['step'] as a float tensor and reads it with .item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        ieee_sqrt = torch.from_numpy(np.sqrt(exp_avg_sq.numpy()))
        denom = (ieee_sqrt / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
    return param.numpy(), exp_avg.numpy(), exp_avg_sq.numpy()


@pytest.mark.parametrize("config", list(ADAM_CONFIGS))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_matches_torch_op_chain_bitwise(backend, dtype, size, config):
    opt_cls, cfg = ADAM_CONFIGS[config]
    init, grads = rand(size, dtype, seed=0), _grads(size, dtype)
    decoupled = opt_cls is torch.optim.AdamW
    expected = _torch_adam_chain(init, grads, decoupled=decoupled, **cfg)
    actual = _adam_run(backend, init, grads, opt_cls, cfg)
    for name, a, e in zip(("param", "exp_avg", "exp_avg_sq"), actual, expected):
        assert_bitwise(a, e, f"{backend} {config} {name}")


# vs torch.optim itself the only difference is MKL's sqrt (see _torch_adam_chain): one ulp in some denoms,
# a relative 1e-7 (float32) / 2e-16 (float64) change of some updates, which stays at a few ulps of the
# parameter over 100 steps (measured: <= 4.8e-7 abs in float32, <= 4.5e-16 in float64).
ADAM_VS_TORCH_TOL = {np.float32: {"rtol": 1e-6, "atol": 1e-6}, np.float64: {"rtol": 1e-14, "atol": 1e-15}}


@pytest.mark.parametrize("config", list(ADAM_CONFIGS))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_matches_torch_optim(backend, dtype, size, config):
    opt_cls, cfg = ADAM_CONFIGS[config]
    init, grads = rand(size, dtype, seed=0), _grads(size, dtype)
    expected, state = _torch_run(opt_cls, init, grads, **cfg)
    param, m, v = _adam_run(backend, init, grads, opt_cls, cfg)
    tol = ADAM_VS_TORCH_TOL[dtype]
    assert_close(param, expected, msg=f"{backend} {config} param", **tol)
    assert_close(m, state["exp_avg"], msg=f"{backend} {config} exp_avg", **tol)
    assert_close(v, state["exp_avg_sq"], msg=f"{backend} {config} exp_avg_sq", **tol)
    if config != "adam_l2":  # the gradient does not depend on param, so the moments stay bitwise
        assert_bitwise(m, state["exp_avg"].numpy(), f"{backend} {config} exp_avg")
        assert_bitwise(v, state["exp_avg_sq"].numpy(), f"{backend} {config} exp_avg_sq")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_sizes_match_torch_bitwise(backend, dtype):
    """Sizes from 32768 elements on take the numba backend's prange kernels (smaller ones run serially)."""
    size, steps = 40_000, 10
    init, grads = rand(size, dtype, seed=0), _grads(size, dtype, steps=steps)
    cfg = SGD_CONFIGS["nesterov_wd"]
    expected, state = _torch_run(torch.optim.SGD, init, grads, **cfg)
    param, buf = init.copy(), None
    for g in grads:
        buf = _mod(backend).sgd_step(param, g, buf, cfg["lr"], cfg["momentum"], cfg["dampening"],
                                     cfg["nesterov"], cfg["weight_decay"])
    assert_bitwise(param, expected, f"{backend} sgd param")
    assert_bitwise(buf, state["momentum_buffer"].numpy(), f"{backend} sgd buffer")
    for config in ("adam_l2", "adamw_big_lerp_weight"):
        opt_cls, cfg = ADAM_CONFIGS[config]
        expected = _torch_adam_chain(init, grads, decoupled=opt_cls is torch.optim.AdamW, **cfg)
        actual = _adam_run(backend, init, grads, opt_cls, cfg)
        for name, a, e in zip(("param", "exp_avg", "exp_avg_sq"), actual, expected):
            assert_bitwise(a, e, f"{backend} {config} {name}")


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_fma_emulation_is_correctly_rounded(dtype):
    """The NumPy reference's emulated FMA equals a hardware one (torch.addcmul(c, a, b, value=1) fuses
    ``a * b + c`` on this build), including near-total cancellation, wide exponent ranges and zeros."""
    from dlcore.kernels.numpy.optimizers import _fma

    rng = np.random.default_rng(0)
    n = 100_000
    a = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))).astype(dtype)
    b = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))).astype(dtype)
    c = (rng.standard_normal(n) * np.exp2(rng.integers(-60, 60, n))).astype(dtype)
    half = n // 2
    c[:half] = -(a[:half] * b[:half]) * (1 + rng.standard_normal(half) * 1e-6).astype(dtype)  # cancellation
    c[half:half + 100] = 0
    a[half + 100:half + 200] = 0
    c[half + 150:half + 200] = -0.0
    hardware = torch.addcmul(torch.from_numpy(c), torch.from_numpy(a), torch.from_numpy(b), value=1).numpy()
    assert_bitwise(_fma(a, b, c), hardware, "emulated fma")


def _at_offset(values, offset):
    """A copy of ``values`` that starts ``offset`` elements into a larger buffer (another cache-line offset)."""
    buf = np.zeros(values.shape[0] + 16, values.dtype)
    out = buf[offset:offset + values.shape[0]]
    out[...] = values
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_any_alignment_matches_numpy_bitwise(dtype):
    """The numba prange kernels run param's elements before its first 64-byte boundary as a task of their
    own and split the rest on 64-byte boundaries; every start offset, also different ones per operand, gives
    the reference's bits (the NumPy backend is bitwise equal to torch's chain, tested above)."""
    size, steps = 40_003, 3
    init, grads = rand(size, dtype, seed=5), _grads(size, dtype, steps=steps, seed=6)
    opt_cls, cfg = ADAM_CONFIGS["adamw"]
    ref_p, ref_m, ref_v = _adam_run("numpy", init, grads, opt_cls, cfg)
    sgd = SGD_CONFIGS["nesterov_wd"]
    ref_sgd, ref_buf = init.copy(), None
    for g in grads:
        ref_buf = _mod("numpy").sgd_step(ref_sgd, g, ref_buf, sgd["lr"], sgd["momentum"], sgd["dampening"],
                                         sgd["nesterov"], sgd["weight_decay"])
    for offsets in [(0, 0, 0, 0), (1, 1, 1, 1), (3, 0, 5, 2), (15, 7, 9, 1)]:
        p, m, v = _at_offset(init, offsets[0]), _at_offset(0 * init, offsets[2]), _at_offset(0 * init, offsets[3])
        for step, g in enumerate(grads, start=1):
            _mod("numba").adam_step(p, _at_offset(g, offsets[1]), m, v, step, cfg["lr"], *cfg["betas"], cfg["eps"],
                                    cfg["weight_decay"], True)
        for name, a, e in zip(("param", "exp_avg", "exp_avg_sq"), (p, m, v), (ref_p, ref_m, ref_v)):
            assert_bitwise(a, e, f"adamw {name} at offsets {offsets}")
        p, buf = _at_offset(init, offsets[0]), _at_offset(0 * init, offsets[2])
        for step, g in enumerate(grads):
            out = _mod("numba").sgd_step(p, _at_offset(g, offsets[1]), buf if step else None, sgd["lr"],
                                         sgd["momentum"], sgd["dampening"], sgd["nesterov"], sgd["weight_decay"])
            buf = buf if step else _at_offset(out, offsets[2])
        assert_bitwise(p, ref_sgd, f"sgd param at offsets {offsets}")
        assert_bitwise(buf, ref_buf, f"sgd buffer at offsets {offsets}")

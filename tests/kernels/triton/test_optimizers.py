"""Triton fused SGD / Adam / AdamW steps against torch.optim (single-tensor path) over 20 steps."""
from tests.kernels.triton._helpers import require_triton

require_triton()

import pytest  # noqa: E402
import torch  # noqa: E402
from dlcore.kernels.triton import optimizers as tk  # noqa: E402

from tests._compare import assert_close  # noqa: E402
from tests.kernels.triton._helpers import device, trand  # noqa: E402

STEPS = 20
SIZES = [1, 33, 1500]


def _grads(n, seed):
    return [trand((n,), torch.float32, seed=seed + i) for i in range(STEPS)]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(
    "cfg",
    [
        dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
        dict(momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0),
        dict(momentum=0.9, dampening=0.1, nesterov=False, weight_decay=1e-2),
        dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-2),
    ],
    ids=["plain", "momentum", "dampening_wd", "nesterov_wd"],
)
def test_sgd(cfg, n):
    p0 = trand((n,), torch.float32, seed=1)
    ref = p0.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=0.05, foreach=False, **cfg)
    p, buf = p0.clone(), None
    for g in _grads(n, 10):
        ref.grad = g.clone()
        opt.step()
        buf = tk.sgd_step(p, g, buf, 0.05, **cfg)
        if cfg["momentum"] == 0:
            assert buf is None
    assert_close(p, ref.detach(), rtol=1e-5, atol=1e-6)
    if cfg["momentum"]:
        assert_close(buf, opt.state[ref]["momentum_buffer"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adam(decoupled, weight_decay, n):
    p0 = trand((n,), torch.float32, seed=2)
    ref = p0.clone().requires_grad_(True)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    opt = cls([ref], foreach=False, **kw)
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for step, g in enumerate(_grads(n, 20), start=1):
        ref.grad = g.clone()
        opt.step()
        tk.adam_step(p, g, m, v, step, 1e-2, 0.9, 0.99, 1e-8, weight_decay, decoupled)
    st = opt.state[ref]
    assert_close(m, st["exp_avg"], rtol=1e-5, atol=1e-7)
    assert_close(v, st["exp_avg_sq"], rtol=1e-5, atol=1e-8)
    assert_close(p, ref.detach(), rtol=1e-5, atol=1e-6)


def test_adam_zero_grads_and_zero_lr():
    """All-zero gradients: no NaN, AdamW applies only its decay; lr = 0 leaves the parameter bit-equal."""
    p0 = trand((40,), torch.float32, seed=3)
    z = torch.zeros_like(p0)
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    tk.adam_step(p, z, m, v, 1, 1e-2, 0.9, 0.999, 1e-8, 0.1, True)
    assert torch.isfinite(p).all()
    assert_close(p, p0 * (1 - 1e-2 * 0.1), rtol=1e-6, atol=0)
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for step in (1, 2):
        tk.adam_step(p, trand((40,), torch.float32, seed=4), m, v, step, 0.0, 0.9, 0.999, 1e-8, 0.1, True)
    assert torch.equal(p, p0)
    buf = tk.sgd_step(p, trand((40,), torch.float32, seed=5), None, 0.0, 0.9, 0.0, False, 0.0)
    assert torch.equal(p, p0) and buf is not None


def test_param_aliases_grad_and_errors():
    p0 = trand((33,), torch.float32, seed=6)
    p = p0.clone()
    tk.sgd_step(p, p, None, 0.1, 0.0, 0.0, False, 0.0)  # grad is the parameter itself
    assert_close(p, p0 * 0.9)
    with pytest.raises(ValueError):
        tk.adam_step(p, p, torch.zeros_like(p), torch.zeros_like(p), 0, 1e-3, 0.9, 0.999, 1e-8, 0.0, False)
    with pytest.raises(ValueError):
        tk.sgd_step(trand((8, 2), torch.float32).t()[0], p[:8], None, 0.1, 0.0, 0.0, False, 0.0)
    e = torch.empty(0, device=device())
    assert tk.sgd_step(e, e, None, 0.1, 0.9, 0.0, False, 0.0).shape == (0,)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_float16_states(decoupled):
    """fp16 parameter and states: updated in fp32, rounded once; against torch on an fp32 copy."""
    p0 = trand((257,), torch.float16, seed=7)
    p, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    ref = p0.float().requires_grad_(True)
    opt = (torch.optim.AdamW if decoupled else torch.optim.Adam)([ref], lr=1e-3, weight_decay=0.01, foreach=False)
    for step in range(1, 4):
        g = trand((257,), torch.float16, seed=30 + step)
        ref.grad = g.float()
        opt.step()
        tk.adam_step(p, g, m, v, step, 1e-3, 0.9, 0.999, 1e-8, 0.01, decoupled)
    assert_close(p, ref.detach(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("decoupled,weight_decay", [(True, 1e-2), (False, 1e-2), (False, 0.0)])
def test_adam_multi_step_matches_per_tensor_steps(dtype, decoupled, weight_decay):
    """One launch over a list (sizes around the chunk edges, an empty tensor) gives bit for bit what one
    adam_step per tensor gives, over several steps."""
    chunk = tk._MULTI_CHUNK
    sizes = [1, chunk - 1, chunk, 0, chunk + 1, 2 * chunk + 77, 5]
    ps = [trand((n,), dtype, seed=1 + i) for i, n in enumerate(sizes)]
    ps[-1] = ps[-1].view(5, 1)  # any contiguous shape: the launch reads only addresses and sizes
    lists_multi = [[p.clone() for p in ps], [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]]
    lists_one = [[p.clone() for p in ps], [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]]
    hyper = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": weight_decay,
             "decoupled": decoupled}
    for step in range(1, 4):
        grads = [trand(p.shape, dtype, seed=100 * step + i, scale=0.3) for i, p in enumerate(ps)]
        # validate=False (the dlcore.torch.AdamW path, whose tensors are checked there) on odd steps
        tk.adam_multi_step(lists_multi[0], grads, lists_multi[1], lists_multi[2], step=step, **hyper,
                           validate=step % 2 == 0)
        for p, g, m, v in zip(*lists_one[:1], grads, lists_one[1], lists_one[2]):
            tk.adam_step(p, g, m, v, step=step, **hyper)
    for a_list, b_list in zip(lists_multi, lists_one):
        for a, b in zip(a_list, b_list):
            assert torch.equal(a, b)


def test_adam_multi_step_rejects_mixed_inputs():
    p = trand((10,), torch.float32, seed=1)
    with pytest.raises(ValueError, match="differ in length"):
        tk.adam_multi_step([p], [], [p.clone()], [p.clone()], step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                           weight_decay=0.0, decoupled=True)
    with pytest.raises(ValueError, match="one dtype"):
        tk.adam_multi_step([p], [p.double()], [torch.zeros_like(p)], [torch.zeros_like(p)], step=1, lr=1e-3,
                           beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=True)
    with pytest.raises(ValueError, match="step counts from 1"):
        tk.adam_multi_step([p], [p], [p], [p], step=0, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                           weight_decay=0.0, decoupled=True)

"""dlcore.torch.AdamW / Adam / SGD against torch.optim on a small MLP (RELIABILITY.md items 16-17).

Each test trains two copies of one model on the same batches, one with torch.optim (single-tensor path)
and one with dlcore's drop-in, and compares parameters and optimizer state. The kernels replay torch's
op chain, so float64 agrees to rounding and float32 within rtol 1e-6 after 100 steps.
"""
import copy

import pytest
import torch

import dlcore
from dlcore.torch import SGD, Adam, AdamW
from tests._compare import assert_close

STEPS = 100
TOL = {torch.float32: {"rtol": 1e-6, "atol": 1e-7}, torch.float64: {"rtol": 1e-12, "atol": 1e-14}}

CONFIGS = {
    "adamw": (AdamW, torch.optim.AdamW, {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}),
    "adam": (Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.01}),
    "adam_decoupled": (Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.05, "decoupled_weight_decay": True}),
    "sgd": (SGD, torch.optim.SGD, {"lr": 0.05}),
    "sgd_momentum": (SGD, torch.optim.SGD, {"lr": 0.02, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    "sgd_nesterov": (SGD, torch.optim.SGD, {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small tensors: thread pools (numba's, torch's) only add synchronisation on a shared test machine
    n, nt = dlcore.get_num_threads(), torch.get_num_threads()
    dlcore.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    dlcore.set_num_threads(n)
    torch.set_num_threads(nt)


def _mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def _batches(dtype, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g, dtype=dtype), torch.randn(16, 3, generator=g, dtype=dtype))
            for _ in range(n)]


def _train(model, opt, batches):
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _assert_same(m1, o1, m2, o2, tol):
    for (name, a), b in zip(m1.named_parameters(), m2.parameters()):
        assert_close(a, b, msg=f"param {name}", **tol)
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert s1["state"].keys() == s2["state"].keys()
    for k in s1["state"]:
        assert s1["state"][k].keys() == s2["state"][k].keys()
        for key, v in s1["state"][k].items():
            if key == "step":
                assert v.dtype == s2["state"][k][key].dtype and v.item() == s2["state"][k][key].item()
            else:
                assert_close(v, s2["state"][k][key], msg=f"state {k}.{key}", **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_torch_optim_over_100_steps(config, dtype):
    ours, theirs, kw = CONFIGS[config]
    m1, batches = _mlp(dtype), _batches(dtype, STEPS)
    m2 = copy.deepcopy(m1)
    o1, o2 = theirs(m1.parameters(), foreach=False, **kw), ours(m2.parameters(), **kw)
    assert isinstance(o2, theirs) and isinstance(o2, torch.optim.Optimizer)
    _train(m1, o1, batches)
    _train(m2, o2, batches)
    _assert_same(m1, o1, m2, o2, TOL[dtype])
    assert o2.dlcore_stats == {"dlcore": 4 * STEPS, "torch": 0, "reasons": {}}


def test_param_groups_with_different_lr_and_weight_decay():
    m1, batches = _mlp(torch.float32), _batches(torch.float32, 30)
    m2 = copy.deepcopy(m1)

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 3e-2, "weight_decay": 0.2},
                {"params": m[2].parameters(), "lr": 1e-3, "weight_decay": 0.0, "betas": (0.8, 0.9)}]

    o1, o2 = torch.optim.AdamW(groups(m1), foreach=False), AdamW(groups(m2))
    _train(m1, o1, batches)
    _train(m2, o2, batches)
    _assert_same(m1, o1, m2, o2, TOL[torch.float32])


@pytest.mark.parametrize("config", ["adamw", "adam", "sgd_momentum"])
@pytest.mark.parametrize("direction", ["torch_then_dlcore", "dlcore_then_torch"])
def test_state_dict_round_trip_mid_training(config, direction):
    ours, theirs, kw = CONFIGS[config]
    dtype = torch.float64  # exact agreement makes "same run" a sharp check
    batches = _batches(dtype, 100)
    ref = _mlp(dtype)
    ref_opt = theirs(ref.parameters(), foreach=False, **kw)
    ref_losses = _train(ref, ref_opt, batches)

    first, second = (theirs, ours) if direction == "torch_then_dlcore" else (ours, theirs)
    extra = lambda cls: {"foreach": False} if cls is theirs else {}
    m = _mlp(dtype)
    o = first(m.parameters(), **kw, **extra(first))
    losses = _train(m, o, batches[:50])
    saved = copy.deepcopy(o.state_dict())
    o2 = second(m.parameters(), **kw, **extra(second))
    o2.load_state_dict(saved)
    losses += _train(m, o2, batches[50:])

    assert_close(torch.tensor(losses), torch.tensor(ref_losses), **TOL[dtype])
    _assert_same(ref, ref_opt, m, o2, TOL[dtype])


@pytest.mark.parametrize("cls", [AdamW, Adam])
def test_adam_with_zero_grads_applies_only_weight_decay(cls):
    m1 = _mlp(torch.float32)
    m2 = copy.deepcopy(m1)
    theirs = torch.optim.AdamW if cls is AdamW else torch.optim.Adam
    o1, o2 = theirs(m1.parameters(), lr=0.1, weight_decay=0.1, foreach=False), cls(m2.parameters(), lr=0.1,
                                                                                    weight_decay=0.1)
    before = [p.detach().clone() for p in m2.parameters()]
    for _ in range(3):
        for m, o in ((m1, o1), (m2, o2)):
            for p in m.parameters():
                p.grad = torch.zeros_like(p)
            o.step()
    _assert_same(m1, o1, m2, o2, TOL[torch.float32])
    for p, p0 in zip(m2.parameters(), before):
        assert torch.isfinite(p).all()
        if cls is AdamW:  # decay only: p0 * (1 - lr * wd) ** 3
            assert_close(p, p0 * (1 - 0.1 * 0.1) ** 3, rtol=1e-6, atol=0)
    assert all(s["step"].item() == 3 for s in o2.state.values())


def test_first_step_counts_from_one():
    m = _mlp(torch.float32)
    o = AdamW(m.parameters())
    _train(m, o, _batches(torch.float32, 1))
    steps = [s["step"] for s in o.state.values()]
    assert all(s.item() == 1.0 and s.dtype == torch.float32 and s.device.type == "cpu" and s.dim() == 0
               for s in steps)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_lr_zero_leaves_parameters_bit_unchanged(config):
    ours, _, kw = CONFIGS[config]
    m = _mlp(torch.float32)
    before = [p.detach().clone() for p in m.parameters()]
    _train(m, ours(m.parameters(), **{**kw, "lr": 0.0}), _batches(torch.float32, 3))
    for p, p0 in zip(m.parameters(), before):
        assert torch.equal(p, p0)


@pytest.mark.parametrize("config", ["adamw", "sgd_momentum"])
def test_params_without_grad_are_skipped(config):
    ours, theirs, kw = CONFIGS[config]
    m1, batches = _mlp(torch.float32), _batches(torch.float32, 5)
    m2 = copy.deepcopy(m1)
    for m in (m1, m2):
        m[0].bias.requires_grad_(False)  # never gets a grad
    o1, o2 = theirs(m1.parameters(), foreach=False, **kw), ours(m2.parameters(), **kw)
    frozen = m2[0].bias.detach().clone()
    _train(m1, o1, batches)
    _train(m2, o2, batches)
    assert torch.equal(m2[0].bias, frozen)
    assert m2[0].bias not in o2.state
    _assert_same(m1, o1, m2, o2, TOL[torch.float32])
    assert o2.dlcore_stats["dlcore"] == 3 * 5


def test_add_param_group_mid_training():
    m1, batches = _mlp(torch.float32), _batches(torch.float32, 20)
    m2 = copy.deepcopy(m1)
    o1 = torch.optim.AdamW(m1[0].parameters(), lr=1e-2, foreach=False)
    o2 = AdamW(m2[0].parameters(), lr=1e-2)
    _train(m1, o1, batches[:10])
    _train(m2, o2, batches[:10])
    o1.add_param_group({"params": m1[2].parameters(), "lr": 5e-3, "weight_decay": 0.0})
    o2.add_param_group({"params": m2[2].parameters(), "lr": 5e-3, "weight_decay": 0.0})
    assert o2.param_groups[1].keys() == o1.param_groups[1].keys()
    _train(m1, o1, batches[10:])
    _train(m2, o2, batches[10:])
    _assert_same(m1, o1, m2, o2, TOL[torch.float32])


@pytest.mark.parametrize("flag", ["amsgrad", "maximize"])
def test_torch_only_options_fall_back_to_torch(flag):
    m1, batches = _mlp(torch.float32), _batches(torch.float32, 10)
    m2 = copy.deepcopy(m1)
    o1 = torch.optim.AdamW(m1.parameters(), lr=1e-2, foreach=False, **{flag: True})
    o2 = AdamW(m2.parameters(), lr=1e-2, **{flag: True})
    _train(m1, o1, batches)
    _train(m2, o2, batches)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)  # torch's own code ran
    assert o2.dlcore_stats == {"dlcore": 0, "torch": 40, "reasons": {f"{flag}=True": 40}}


def test_unsupported_dtype_falls_back_per_parameter():
    m = _mlp(torch.float32)
    half = torch.nn.Parameter(torch.randn(4, dtype=torch.bfloat16))
    half_ref = torch.nn.Parameter(half.detach().clone())
    o = AdamW([*m.parameters(), half], lr=1e-2)
    ref = torch.optim.AdamW([half_ref], lr=1e-2, foreach=False)
    x, y = _batches(torch.float32, 1)[0]
    ((m(x) - y) ** 2).mean().backward()
    half.grad = torch.ones_like(half)
    half_ref.grad = torch.ones_like(half_ref)
    o.step()
    ref.step()
    assert torch.equal(half, half_ref)  # torch's own step ran for the bfloat16 parameter
    assert o.dlcore_stats == {"dlcore": 4, "torch": 1, "reasons": {"dtype bfloat16 on cpu": 1}}


def test_sparse_gradients():
    emb = torch.nn.Embedding(5, 3, sparse=True)
    ref = copy.deepcopy(emb)
    for e in (emb, ref):
        e(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        AdamW(emb.parameters()).step()  # torch's own error
    o = SGD(emb.parameters(), lr=0.1)  # torch's SGD takes sparse gradients: ours hands them to it
    o.step()
    torch.optim.SGD(ref.parameters(), lr=0.1).step()
    assert torch.equal(emb.weight, ref.weight)
    assert o.dlcore_stats["reasons"] == {"sparse gradient": 1}


def test_closure_hooks_and_scheduler():
    m = _mlp(torch.float32)
    x, y = _batches(torch.float32, 1)[0]
    o = AdamW(m.parameters(), lr=0.1)
    calls = []
    o.register_step_pre_hook(lambda *a: calls.append("pre"))
    o.register_step_post_hook(lambda *a: calls.append("post"))

    def closure():
        o.zero_grad()
        loss = ((m(x) - y) ** 2).mean()
        loss.backward()
        return loss

    loss = o.step(closure)
    assert isinstance(loss, torch.Tensor) and calls == ["pre", "post"]
    sched = torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
    o.step(closure)
    sched.step()
    assert o.param_groups[0]["lr"] == pytest.approx(0.05)


def test_step_bumps_the_version_counter():
    # an in-place update must invalidate graphs that saved the old parameter, as torch's does
    lin = torch.nn.Linear(3, 1)
    out = (lin.weight * lin.weight).sum()
    lin.weight.grad = torch.ones_like(lin.weight)
    lin.bias.grad = torch.ones_like(lin.bias)
    SGD(lin.parameters(), lr=0.1).step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_rejects_what_torch_rejects():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError):
        AdamW(p, lr=-1.0)
    with pytest.raises(ValueError):
        SGD(p, lr=0.1, nesterov=True)  # nesterov needs momentum


@pytest.mark.parametrize("cls,decoupled", [(AdamW, True), (Adam, False)])
@pytest.mark.parametrize("sizes", [[(3, 4), (7,)], [(300, 257), (129, 1031), (5,)]], ids=["serial", "parallel"])
def test_fused_multi_tensor_step_is_bitwise_the_per_parameter_step(cls, decoupled, sizes):
    """All CPU parameters of a group are stepped in one fused launch; the numbers must be exactly those
    of one dlcore.ops.adam_/adamw_ call per parameter, and torch's state layout is kept."""
    g = torch.Generator().manual_seed(3)
    ps = [torch.randn(s, generator=g).requires_grad_(True) for s in sizes]
    ps.append(torch.randn(4, 3, dtype=torch.float64, generator=g).requires_grad_(True))  # its own bucket
    opt = cls(ps, lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)
    ref = [p.detach().clone() for p in ps]
    moments = [(torch.zeros_like(a), torch.zeros_like(a)) for a in ref]
    step_fn = dlcore.ops.adamw_ if decoupled else dlcore.ops.adam_
    for step in range(1, 4):
        for p in ps:
            p.grad = torch.randn(p.shape, dtype=p.dtype, generator=g)
        grads = [p.grad.clone() for p in ps]
        opt.step()
        for a, gr, (m, v) in zip(ref, grads, moments):
            step_fn(a, gr, m, v, step=step, lr=3e-3, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.05)
    for i, (p, a, (m, v)) in enumerate(zip(ps, ref, moments)):
        assert torch.equal(p.detach(), a), f"param {i}"
        assert torch.equal(opt.state[p]["exp_avg"], m) and torch.equal(opt.state[p]["exp_avg_sq"], v)
        assert float(opt.state[p]["step"]) == 3.0 and opt.state[p]["step"].dtype == torch.float32
    assert opt.dlcore_stats["dlcore"] == 3 * len(ps)


@pytest.mark.gpu
@pytest.mark.parametrize("cls,torch_cls", [(AdamW, torch.optim.AdamW), (Adam, torch.optim.Adam)])
def test_cuda_parameters_take_one_multi_tensor_launch(cls, torch_cls):
    """CUDA parameters go to the Triton multi-tensor step: torch's single-tensor numbers over 5 steps, with
    parameters of several sizes (one empty) and a group whose step counts differ."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("triton")
    g = torch.Generator(device="cuda").manual_seed(0)
    sizes = [(7,), (300, 41), (0,), (8193,), (3, 5, 2)]
    mine = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=g)) for s in sizes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    kw = {"lr": 1e-2, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.05}
    opt, opt_ref = cls(mine, **kw), torch_cls(ref, foreach=False, **kw)
    for step in range(5):
        for i, (a, b) in enumerate(zip(mine, ref)):
            if step == 0 and i == 1:
                a.grad = b.grad = None  # one parameter starts a step late: two step counts in one group
                continue
            a.grad = torch.randn(a.shape, device="cuda", generator=g) * 0.3
            b.grad = a.grad.clone()
        opt.step()
        opt_ref.step()
    for a, b in zip(mine, ref):
        assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
        assert_close(opt.state[a]["exp_avg_sq"], opt_ref.state[b]["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    assert opt.dlcore_stats["torch"] == 0


@pytest.mark.parametrize("alias", ["param", "exp_avg", "exp_avg_sq"])
def test_gradient_sharing_memory_is_refused_not_fused(alias):
    """A gradient aliasing its parameter or a moment must not reach the multi-tensor launch (which would
    read values it is overwriting): the per-parameter op refuses it with an error that names the pair."""
    ps = [torch.nn.Parameter(torch.randn(n)) for n in (10, 33)]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = AdamW(ps, lr=1e-3)
    opt.step()
    p = ps[1]
    p.grad = p.detach() if alias == "param" else opt.state[p][alias]
    with pytest.raises(ValueError, match="share memory"):
        opt.step()

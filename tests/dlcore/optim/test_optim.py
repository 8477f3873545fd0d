"""Optimizers, schedules and clipping against torch on twin models, over 100 steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dlcore
from dlcore import Tensor, nn, optim
from tests._compare import assert_close

rng = np.random.default_rng(0)


def mlp_pair():
    ours = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    theirs.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()})
    return ours, theirs


@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-3)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
])
def test_100_steps_match_torch(name, kw):
    ours, theirs = mlp_pair()
    o, t = getattr(optim, name)(ours.parameters(), **kw), getattr(torch.optim, name)(theirs.parameters(), **kw)
    X, y = rng.standard_normal((32, 5)).astype(np.float32), rng.integers(0, 3, 32)
    for _ in range(100):
        o.zero_grad()
        t.zero_grad()
        dlcore.ops.cross_entropy(ours(Tensor(X)), y).backward()
        torch.nn.functional.cross_entropy(theirs(torch.from_numpy(X)), torch.from_numpy(y)).backward()
        o.step()
        t.step()
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(p.data, q.detach(), rtol=2e-4, atol=2e-5, msg=n)  # 100 steps of f32 rounding drift


def test_params_without_grad_are_skipped_and_groups_have_their_own_lr():
    a, b = nn.Parameter(np.ones(3, np.float32)), nn.Parameter(np.ones(3, np.float32))
    opt = optim.SGD([{"params": [a], "lr": 0.5}, {"params": [b]}], lr=0.1)
    a.grad = np.ones(3, np.float32)
    opt.step()
    np.testing.assert_allclose(a.data, 0.5)
    np.testing.assert_array_equal(b.data, 1.0)


def test_state_dict_round_trip_through_save(tmp_path):
    ours, _ = mlp_pair()
    opt = optim.AdamW(ours.parameters(), lr=1e-2)
    X, y = rng.standard_normal((8, 5)).astype(np.float32), rng.integers(0, 3, 8)

    def step():
        opt.zero_grad()
        dlcore.ops.cross_entropy(ours(Tensor(X)), y).backward()
        opt.step()

    for _ in range(3):
        step()
    dlcore.save({"model": ours.state_dict(), "optim": opt.state_dict()}, tmp_path / "ck.safetensors")
    ck = dlcore.load(tmp_path / "ck.safetensors")
    clone, _ = mlp_pair()
    clone.load_state_dict(ck["model"])
    opt2 = optim.AdamW(clone.parameters(), lr=1e-2)
    opt2.load_state_dict(ck["optim"])
    step()
    ours_after = [p.data.copy() for p in ours.parameters()]
    ours, opt = clone, opt2
    step()
    for a, b in zip(ours_after, clone.parameters()):
        np.testing.assert_array_equal(a, b.data)  # resumed run is bit-identical


@pytest.mark.parametrize("ours_cls,theirs_fn", [
    (lambda o: optim.StepLR(o, 3, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
    (lambda o: optim.CosineAnnealingLR(o, 10, 1e-4), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, 1e-4)),
    (lambda o: optim.LinearWarmup(o, 4, start_factor=0.25),
     lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.25, 1.0, total_iters=4)),
])
def test_schedules_match_torch(ours_cls, theirs_fn):
    p = nn.Parameter(np.ones(1, np.float32))
    tp = torch.nn.Parameter(torch.ones(1))
    o, t = optim.SGD([p], lr=0.1), torch.optim.SGD([tp], lr=0.1)
    so, st = ours_cls(o), theirs_fn(t)
    for _ in range(12):
        assert so.get_last_lr()[0] == pytest.approx(st.get_last_lr()[0], rel=1e-9)
        t.step()
        so.step()
        st.step()


def test_clip_grad_norm_matches_torch():
    ours, theirs = mlp_pair()
    X = rng.standard_normal((4, 5)).astype(np.float32)
    (ours(Tensor(X)) * 50.0).sum().backward()
    (theirs(torch.from_numpy(X)) * 50.0).sum().backward()
    n1 = optim.clip_grad_norm_(ours.parameters(), 1.0)
    n2 = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    assert n1 == pytest.approx(float(n2), rel=1e-5)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)


def test_invalid_hyperparameters():
    p = nn.Parameter(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("sizes", [[(3, 4), (7,), (1,)], [(300, 257), (5,), (129, 1031)]], ids=["serial", "parallel"])
def test_fused_multi_tensor_step_is_bitwise_the_per_parameter_step(decoupled, sizes):
    """Adam/AdamW step all NumPy parameters in one fused launch; the numbers must be exactly those of one
    dlcore.ops.adam_/adamw_ call per parameter (mixed dtypes, a second group, a param without grad)."""
    r = np.random.default_rng(1)
    cls = optim.AdamW if decoupled else optim.Adam
    kw = {"lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.05}
    ps = [nn.Parameter(r.standard_normal(s).astype(np.float32)) for s in sizes]
    ps.append(nn.Parameter(r.standard_normal((6, 2))))  # float64: its own bucket
    extra = nn.Parameter(r.standard_normal(9).astype(np.float32))
    idle = nn.Parameter(r.standard_normal(4).astype(np.float32))  # no grad: skipped
    opt = cls([{"params": ps + [idle]}, {"params": [extra], "lr": 1e-2}], **kw)
    ref = [p.data.copy() for p in ps + [extra]]
    moments = [(np.zeros_like(a), np.zeros_like(a)) for a in ref]
    idle0 = idle.data.copy()
    step_fn = dlcore.ops.adamw_ if decoupled else dlcore.ops.adam_
    for step in range(1, 4):
        for p in ps + [extra]:
            p.grad = r.standard_normal(p.shape).astype(p.data.dtype)
        grads = [p.grad.copy() for p in ps + [extra]]
        opt.step()
        for i, (a, g, (m, v)) in enumerate(zip(ref, grads, moments)):
            lr = 1e-2 if i == len(ref) - 1 else kw["lr"]
            step_fn(a, g, m, v, step=step, lr=lr, beta1=0.8, beta2=0.95, eps=1e-6, weight_decay=0.05)
    for i, (p, a) in enumerate(zip(ps + [extra], ref)):
        np.testing.assert_array_equal(p.data, a, err_msg=f"param {i}")
        assert opt.state[id(p)]["step"] == 3
    np.testing.assert_array_equal(idle.data, idle0)
    assert id(idle) not in opt.state or not opt.state[id(idle)]


def test_fused_step_falls_back_for_overlapping_grad():
    p = nn.Parameter(np.ones(8, np.float32))
    p.grad = p.data  # the per-parameter op's own check raises
    with pytest.raises(ValueError, match="share memory"):
        optim.AdamW([p]).step()

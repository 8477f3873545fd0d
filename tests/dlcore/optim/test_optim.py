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

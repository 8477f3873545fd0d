"""Optimizer steps over 16.8M fp32 parameters: dlcore's fused in-place pass vs torch (fused=True and foreach).

Floors: AdamW/Adam read param, grad, exp_avg, exp_avg_sq and write param, exp_avg, exp_avg_sq
(28 bytes per parameter); SGD with momentum reads param, grad, buf and writes param, buf (20). Every
written line was read first, so there is no read-for-ownership on top: the bytes above are the DRAM
traffic. The ``stream`` row measures that floor directly: a parallel Numba pass with the same reads and
writes and an add in place of the update (copy bandwidth understates it: a copy also reads its destination).
"""
import numpy as np
import pytest
import torch
from numba import njit, prange

import dlcore

N = 1 << 24  # 16.8M
rng = np.random.default_rng(0)
P0 = rng.standard_normal(N).astype(np.float32)
G = rng.standard_normal(N).astype(np.float32) * 1e-2
IMPLS = ["numpy", "numba", "torch-fused", "torch-foreach", "stream"]


@njit(parallel=True, cache=True)
def _stream_adam(p, g, m, v):
    # Adam's memory traffic (read p, g, m, v; write p, m, v) with an add for the arithmetic
    for i in prange(p.shape[0]):
        gi = g[i]
        m[i] += gi
        v[i] += gi
        p[i] += gi


@njit(parallel=True, cache=True)
def _stream_sgd(p, g, b):
    # SGD-with-momentum's memory traffic (read p, g, b; write p, b)
    for i in prange(p.shape[0]):
        gi = g[i]
        b[i] += gi
        p[i] += gi


def _torch_opt(kind, impl, p):
    flags = {"fused": True} if impl == "torch-fused" else {"foreach": True}
    if kind == "sgd":
        return torch.optim.SGD([p], lr=1e-2, momentum=0.9, weight_decay=1e-4, **flags)
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls([p], lr=1e-3, weight_decay=1e-2, **flags)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["adamw", "adam", "sgd"])
def bench_optimizer_step(run_case, kind, impl):
    floor = 20 * N if kind == "sgd" else 28 * N
    if impl == "stream":
        p, m, v = P0.copy(), np.zeros(N, np.float32), np.zeros(N, np.float32)
        fn = (lambda: _stream_sgd(p, G, m)) if kind == "sgd" else (lambda: _stream_adam(p, G, m, v))
        expected = None
    elif impl.startswith("torch"):
        fn = _torch_step_fn(kind, impl)
        expected = None
    else:
        p, m, v = P0.copy(), np.zeros(N, np.float32), np.zeros(N, np.float32)
        state = {"step": 1, "buf": None}
        if kind == "sgd":
            state["buf"] = dlcore.ops.sgd_(p, G, None, lr=1e-2, momentum=0.9, weight_decay=1e-4, backend=impl)

            def fn():
                dlcore.ops.sgd_(p, G, state["buf"], lr=1e-2, momentum=0.9, weight_decay=1e-4, backend=impl)
        else:
            step = dlcore.ops.adamw_ if kind == "adamw" else dlcore.ops.adam_

            def fn():
                step(p, G, m, v, step=state["step"], lr=1e-3, weight_decay=1e-2, backend=impl)
                state["step"] += 1
        expected = None  # numbers are checked step-by-step against torch.optim in the test suite
    paired = {ref: _torch_step_fn(kind, ref) for ref in ("torch-fused", "torch-foreach")} if impl == "numba" else None
    run_case(fn, expected=expected, op=f"{kind} step", shape=(N,), dtype=np.float32, backend=impl,
             bytes_moved=floor, rounds=3 if impl == "numpy" else 10, paired=paired)


def _torch_step_fn(kind, impl):
    """torch's step over its own copy of the parameters (state created by a first step)."""
    p = torch.from_numpy(P0.copy()).requires_grad_(True)
    p.grad = torch.from_numpy(G.copy())
    opt = _torch_opt(kind, impl, p)
    opt.step()
    return opt.step

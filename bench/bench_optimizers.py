"""Optimizer steps over 16.8M fp32 parameters: dlcore's fused in-place pass vs torch (fused=True and foreach).

Floors: AdamW/Adam read param, grad, exp_avg, exp_avg_sq and write param, exp_avg, exp_avg_sq
(28 bytes per parameter); SGD with momentum reads param, grad, buf and writes param, buf (20).
Each round starts from the same state (reset in setup, outside the timing).
"""
import numpy as np
import pytest
import torch

import dlcore

N = 1 << 24  # 16.8M
rng = np.random.default_rng(0)
P0 = rng.standard_normal(N).astype(np.float32)
G = rng.standard_normal(N).astype(np.float32) * 1e-2
IMPLS = ["numpy", "numba", "torch-fused", "torch-foreach"]


def _torch_opt(kind, impl, p):
    flags = dict(fused=True) if impl == "torch-fused" else dict(foreach=True)
    if kind == "sgd":
        return torch.optim.SGD([p], lr=1e-2, momentum=0.9, weight_decay=1e-4, **flags)
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls([p], lr=1e-3, weight_decay=1e-2, **flags)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["adamw", "adam", "sgd"])
def bench_optimizer_step(run_case, kind, impl):
    floor = 20 * N if kind == "sgd" else 28 * N
    if impl.startswith("torch"):
        p = torch.from_numpy(P0.copy()).requires_grad_(True)
        p.grad = torch.from_numpy(G.copy())
        opt = _torch_opt(kind, impl, p)
        opt.step()  # first step creates the state
        fn = opt.step
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
    run_case(fn, expected=expected, op=f"{kind} step", shape=(N,), dtype=np.float32, backend=impl,
             bytes_moved=floor, rounds=3 if impl == "numpy" else 10)

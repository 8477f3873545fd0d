"""softmax / log_softmax forward and backward at 4096x4096 fp32.

Floor: forward reads x and writes y (8 bytes per fp32 element); backward reads y and g, writes dx (12).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlcore

R, C = 4096, 4096
BACKENDS = ["numpy", "numba", "torch"]
x = np.random.default_rng(0).standard_normal((R, C)).astype(np.float32) * 3
g = np.random.default_rng(1).standard_normal((R, C)).astype(np.float32)
xt, gt = torch.from_numpy(x), torch.from_numpy(g)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def bench_forward(run_case, name, backend):
    ref = getattr(F, name)(xt, dim=-1)
    torch_fn = lambda: getattr(F, name)(xt, dim=-1)
    fn = torch_fn if backend == "torch" else (lambda: getattr(dlcore.ops, name)(x, backend=backend))
    run_case(fn, expected=ref, op=f"{name} fwd", shape=(R, C), dtype=np.float32, backend=backend,
             bytes_moved=8 * R * C, rounds=3 if backend == "numpy" else 10,
             paired={"torch": torch_fn} if backend == "numba" else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def bench_backward(run_case, name, backend):
    y = getattr(F, name)(xt, dim=-1)
    ref = torch.ops.aten._softmax_backward_data(gt, y, -1, torch.float32) if name == "softmax" else \
        torch.ops.aten._log_softmax_backward_data(gt, y, -1, torch.float32)
    yn = y.numpy()
    aten = torch.ops.aten._softmax_backward_data if name == "softmax" else torch.ops.aten._log_softmax_backward_data
    torch_fn = lambda: aten(gt, y, -1, torch.float32)
    if backend == "torch":
        fn = torch_fn
    else:
        bwd = getattr(dlcore.ops, name + "_backward")
        fn = lambda: bwd(g, yn, backend=backend)
    run_case(fn, expected=ref, op=f"{name} bwd", shape=(R, C), dtype=np.float32, backend=backend,
             bytes_moved=12 * R * C, rounds=3 if backend == "numpy" else 10,
             paired={"torch": torch_fn} if backend == "numba" else None)

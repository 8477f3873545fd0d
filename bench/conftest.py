"""Benchmark fixtures: machine limits once per session, the same thread count for torch and Numba, and
`run_case`, which checks a kernel's output against torch before timing it and tags the row."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bench._limits import machine_limits

_LIMITS = None


def pytest_configure(config):
    import torch

    import dlcore

    torch.set_num_threads(dlcore.get_num_threads())  # same thread count on both sides


@pytest.fixture(scope="session")
def limits():
    global _LIMITS
    if _LIMITS is None:
        _LIMITS = machine_limits()
        path = os.environ.get("DLCORE_BENCH_LIMITS")
        if path:
            with open(path, "w") as f:
                json.dump(_LIMITS, f, indent=1)
    return _LIMITS


def _to_np(a):
    if hasattr(a, "detach"):
        return a.detach().float().numpy() if a.dtype.is_floating_point else a.detach().numpy()
    return np.asarray(a)


@pytest.fixture
def run_case(benchmark, limits):
    """run_case(fn, expected=..., op=, shape=, dtype=, backend=, bytes_moved=|flops=, rounds=5, tol=1e-3)."""

    def run(fn, *, op, shape, dtype, backend, expected=None, bytes_moved=None, flops=None, rounds=5, tol=1e-3,
            setup=None):
        if setup is not None:
            setup()
        out = fn()  # warm-up + correctness: compile, then check against the reference
        if expected is not None:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            exps = expected if isinstance(expected, (tuple, list)) else (expected,)
            for o, e in zip(outs, exps):
                np.testing.assert_allclose(_to_np(o), _to_np(e), rtol=tol, atol=tol, err_msg=f"{op} {backend}")
        benchmark.extra_info.update(
            op=op, shape=str(shape), dtype=np.dtype(dtype).name, backend=backend,
            bytes=bytes_moved, flops=flops,
            limit_kind="bandwidth" if bytes_moved else "matmul",
            limit=limits["bandwidth_gbs"] if bytes_moved else limits["matmul_gflops"],
        )
        if setup is not None:
            return benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=0)
        return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)

    return run

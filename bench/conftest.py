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
            setup=None, paired=None):
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
            result = benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=0)
        else:
            result = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
        if paired:
            benchmark.extra_info["paired"] = interleaved_ratios(fn, paired, rounds, setup)
        return result

    return run


# Calls shorter than this get an untimed call of their own just before the timed one: otherwise each side
# would pay for waking its thread pool (and refilling caches) after the other side ran, a cost the row
# medians (the same call back to back) do not include (tens of microseconds: 256^3 matmul on 2 cores
# takes ~0.25 ms).
_WARM_BELOW_S = 0.05


def interleaved_ratios(fn, refs: dict, rounds: int, setup=None) -> dict:
    """``{name: median(ref time) / median(fn time)}`` over ``rounds`` interleaved rounds (``max(rounds, 5)``).

    The row medians of a pytest-benchmark run time each backend in its own block of seconds to minutes;
    on a shared VM whose speed drifts by tens of percent over minutes, a ratio of two such medians carries
    that drift. Here every round times ``fn`` and each reference back to back, alternating which goes
    first, so drift hits both sides alike; a call under ``_WARM_BELOW_S`` is preceded by an untimed one, so
    neither side is timed just after the other emptied its caches or let its threads sleep. RESULTS.md
    gives both figures; the targets use this one.
    """
    import time

    sides = [("ours", fn), *refs.items()]
    times = {name: [] for name, _ in sides}
    short = {}
    for name, f in sides:  # warm-up (compile, first-touch)
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        f()
        short[name] = time.perf_counter() - t0 < _WARM_BELOW_S
    for r in range(max(rounds, 5)):
        for name, f in (sides if r % 2 == 0 else sides[::-1]):
            if short[name]:  # an untimed call first: the library's thread pool and caches are its own again
                if setup is not None:
                    setup()
                f()
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    ours = float(np.median(times["ours"]))
    return {name: float(np.median(times[name])) / ours for name in refs}

"""Benchmark fixtures: machine limits once per session, the same thread count for torch and Numba, and
`run_case`, which checks a kernel's output against torch before timing it and tags the row."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bench._limits import PAIRED_COPY, copy_probe, machine_limits

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
            if bytes_moved:  # a copy of the same bytes, timed in the same rounds: the share beside the kernel
                paired = {**paired, PAIRED_COPY: copy_probe(bytes_moved)}
            benchmark.extra_info["paired"] = interleaved_ratios(fn, paired, rounds, setup)
        return result

    return run


# Calls shorter than this get an untimed call of their own just before the timed one: otherwise each side
# would pay for waking its thread pool (and refilling caches) after the other side ran, a cost the row
# medians (the same call back to back) do not include (tens of microseconds: 256^3 matmul on 2 cores
# takes ~0.25 ms). They are also timed as a block of calls of at least `_BLOCK_S` (one 0.3 ms call is
# at the mercy of a single scheduler tick), the per-call mean of the block being the round's figure.
_WARM_BELOW_S = 0.05
_BLOCK_S = 0.02

# Idle time before each side's turn. NumPy's OpenBLAS leaves its worker threads spinning ~0.1 s after every
# multi-threaded call (kernels/numba/_blas_threads.py); a side timed inside that window shares the two cores
# with them. Measured (2026-11-26, 1024^3 fp32, rounds of own gemm / numpy / torch): with no gap the own
# gemm took 26-32 ms and torch 26-30 ms, both right after numpy's 13 ms; with a 0.15 s gap 16-21 ms and
# 13-18 ms. Without the gap an interleaved ratio measures that contention, not the kernels.
_IDLE_GAP_S = 0.15

# Rounds of an interleaved comparison: at least 5, at most this (each round costs a gap per side).
_MAX_ROUNDS = 15


def interleaved_ratios(fn, refs: dict, rounds: int, setup=None) -> dict:
    """``{name: median(ref time) / median(fn time)}`` over interleaved rounds (``rounds`` clamped to [5, 15]).

    The row medians of a pytest-benchmark run time each backend in its own block of seconds to minutes;
    on a shared VM whose speed drifts by tens of percent over minutes, a ratio of two such medians carries
    that drift. Here every round times ``fn`` and each reference back to back, alternating which goes
    first, so drift hits both sides alike. Each side's turn starts after `_IDLE_GAP_S` of idle time (the
    other libraries' thread pools asleep again); a call under `_WARM_BELOW_S` is preceded by an untimed one
    (its own pool awake, its caches filled) and timed as a block of calls of at least `_BLOCK_S`.
    RESULTS.md gives both figures; the targets use this one.
    """
    import math
    import time

    sides = [("ours", fn), *refs.items()]
    times = {name: [] for name, _ in sides}
    repeats = {}
    for name, f in sides:  # warm-up (compile, first-touch), and how many calls make one timed block
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        f()
        t = time.perf_counter() - t0
        repeats[name] = 0 if t >= _WARM_BELOW_S else min(1000, max(1, math.ceil(_BLOCK_S / max(t, 1e-7))))
    for r in range(min(max(rounds, 5), _MAX_ROUNDS)):
        for name, f in (sides if r % 2 == 0 else sides[::-1]):
            time.sleep(_IDLE_GAP_S)
            if repeats[name]:  # an untimed call first: the library's thread pool and caches are its own again
                if setup is not None:
                    setup()
                f()
            total, n = 0.0, max(1, repeats[name])
            for _ in range(n):
                if setup is not None:
                    setup()
                t0 = time.perf_counter()
                f()
                total += time.perf_counter() - t0
            times[name].append(total / n)
    ours = float(np.median(times["ours"]))
    return {name: float(np.median(times[name])) / ours for name in refs}

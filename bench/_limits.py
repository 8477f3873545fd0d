"""This machine's limits, measured in the benchmark process: memory bandwidth and fp32 matmul peak.

Every benchmark row reports its share of one of these: memory-bound kernels against copy bandwidth
(bytes read + written per second by a large ``np.copyto``), compute-bound ones against the faster of
NumPy's and torch's fp32 GEMM at 2048^3. Medians of several runs, measured once per session.
"""
from __future__ import annotations

import time

import numpy as np


def _median_time(fn, rounds=7, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def copy_bandwidth_gbs(n_bytes=512 << 20) -> float:
    """Read + write bandwidth of a large single-threaded-by-numpy copy (counts both directions)."""
    src = np.random.default_rng(0).standard_normal(n_bytes // 8)
    dst = np.empty_like(src)
    t = _median_time(lambda: np.copyto(dst, src))
    return 2 * src.nbytes / t / 1e9


def _parallel_copy():
    import numba

    @numba.njit(parallel=True, cache=True)
    def pcopy(dst, src):
        for i in numba.prange(src.shape[0]):
            dst[i] = src[i]

    return pcopy


def parallel_copy_bandwidth_gbs(n_bytes=512 << 20) -> float:
    """The same copy split over all Numba threads (what a parallel kernel can reach)."""
    pcopy = _parallel_copy()
    src = np.random.default_rng(0).standard_normal(n_bytes // 8)
    dst = np.empty_like(src)
    t = _median_time(lambda: pcopy(dst, src))
    return 2 * src.nbytes / t / 1e9


# The key under which a memory-bound row's share beside its kernel is stored in its ``paired`` ratios
# (bench/conftest.py writes it, bench/targets.py and bench/run.py read it).
PAIRED_COPY = "copy"


def copy_probe(bytes_moved: int):
    """A callable that moves ``bytes_moved`` bytes (read + write counted) as a parallel copy.

    A memory-bound benchmark row times it beside its kernel, round by round (bench/conftest.
    interleaved_ratios): ``median(copy time) / median(kernel time)`` is then the kernel's share of the copy
    bandwidth measured in the same minutes, at the same size, with the same thread count. The run-wide
    probe above (512 MiB, measured once) swung from 40.5 to 49.8 GB/s between two runs on the project VM, a
    20% swing in every share computed from it; the kernels' targets use this paired share.
    """
    pcopy = _parallel_copy()
    n = max(1, bytes_moved // 16)  # float64 elements: n * 8 bytes read and n * 8 written
    src = np.random.default_rng(0).standard_normal(n)
    dst = np.empty_like(src)
    pcopy(dst, src)  # compile (or load from the cache) and fault the pages in
    return lambda: pcopy(dst, src)


def matmul_peak_gflops(n=2048) -> dict:
    """fp32 GEMM throughput of NumPy (BLAS) and torch at n^3."""
    import torch

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    flops = 2 * n**3
    out = {"numpy": flops / _median_time(lambda: a @ b, rounds=5) / 1e9}
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out["torch"] = flops / _median_time(lambda: ta @ tb, rounds=5) / 1e9
    return out


def machine_limits() -> dict:
    bw1 = copy_bandwidth_gbs()
    bwp = parallel_copy_bandwidth_gbs()
    mm = matmul_peak_gflops()
    return {
        "bandwidth_gbs": max(bw1, bwp),
        "bandwidth_numpy_copy_gbs": bw1,
        "bandwidth_parallel_copy_gbs": bwp,
        "matmul_gflops": max(mm.values()),
        "matmul_numpy_gflops": mm["numpy"],
        "matmul_torch_gflops": mm["torch"],
    }

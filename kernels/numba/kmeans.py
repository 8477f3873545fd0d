"""Numba CPU k-means kernels: fused squared distance + argmin, and the fused Lloyd step.

Same contract as ``../numpy/kmeans.py``:

- `assign(X, centers) -> (labels, min_sq_dist)`: X ``(n, d)``, centers ``(k, d)``, one float dtype, C-contiguous;
  labels ``(n,)`` int64, min_sq_dist ``(n,)`` in X's dtype. The ``(n, k)`` distance matrix is never
  materialised: each row keeps its running best while it meets the centers.
- `sq_distances(X, C) -> D`: the ``(n, m)`` squared distances (k-means++ scores its few candidates with it).
- `lloyd_step(X, centers) -> (labels, min_sq_dist, sums, counts)`: `assign` fused with the accumulation of
  the per-cluster sums ``(k, d)`` float64 and counts ``(k,)`` int64, in one pass over X.

Floor: one read of X (n*d*itemsize bytes) per call, and 2*n*k*d flops (a subtract and a fused multiply-add
per element pair). Work is split over fixed 256-row blocks run in parallel (``prange``); the centers are
visited in tiles of about 16 KiB so that a tile stays in L1 while a block of rows streams past it.

Squared distances use direct differences, sum((x - c)**2), not ||x||^2 - 2 x.c + ||c||^2: no cancellation,
never negative, exactly 0 for a point on its center. They accumulate in X's dtype (the inner loop then
vectorises; 64 float32 terms carry a relative error near 1e-6). Ties go to the lowest center index, as
``argmin``. The Lloyd step's partial sums are kept per fixed chunk of rows and added in chunk order, so its
result depends on the shapes only, never on the thread count. ``reassoc``/``contract`` fastmath lets the
inner loop vectorise; no ``nnan``/``ninf``: a NaN distance is never "smaller", so NaN rows get label 0.
"""
import math

import numba
import numpy as np

_ROWS = 256  # rows per parallel work item
_TILE_BYTES = 16384  # centers per tile: about this many bytes of centers
_FM = {"reassoc", "contract", "nsz", "arcp"}
_MAX_CHUNKS = 64  # Lloyd partial sums: at most this many row chunks ...
_MAX_PARTIAL_BYTES = 64 << 20  # ... and at most this much memory for them


@numba.njit(cache=True, fastmath=_FM)
def _assign_rows(X, C, tile, zero, labels, mind, r0, r1):
    # rows [r0, r1): for every center tile, every row of the block meets every center of the tile
    k, d = C.shape
    m = r1 - r0
    best = np.empty(m, dtype=X.dtype)
    arg = np.zeros(m, dtype=np.int64)
    for i in range(m):
        best[i] = np.inf
    for t0 in range(0, k, tile):
        t1 = min(k, t0 + tile)
        for i in range(m):
            bi = best[i]
            li = arg[i]
            for j in range(t0, t1):
                s = zero  # accumulate in X's dtype
                for f in range(d):
                    diff = X[r0 + i, f] - C[j, f]
                    s += diff * diff
                if s < bi:  # strict: ties keep the lower index
                    bi = s
                    li = j
            best[i] = bi
            arg[i] = li
    for i in range(m):
        labels[r0 + i] = arg[i]
        mind[r0 + i] = best[i]


@numba.njit(parallel=True, cache=True)
def _assign_kernel(X, C, tile, zero, labels, mind):
    n = X.shape[0]
    for b in numba.prange((n + _ROWS - 1) // _ROWS):
        _assign_rows(X, C, tile, zero, labels, mind, b * _ROWS, min(n, (b + 1) * _ROWS))


@numba.njit(parallel=True, cache=True, fastmath=_FM)
def _sq_distances_kernel(X, C, zero, out):
    n, d = X.shape
    m = C.shape[0]
    for b in numba.prange((n + _ROWS - 1) // _ROWS):
        for i in range(b * _ROWS, min(n, (b + 1) * _ROWS)):
            for j in range(m):
                s = zero
                for f in range(d):
                    diff = X[i, f] - C[j, f]
                    s += diff * diff
                out[i, j] = s


@numba.njit(parallel=True, cache=True)
def _lloyd_kernel(X, C, tile, zero, chunk_rows, labels, mind, psums, pcounts):
    # chunk c: assign its rows block by block, then add them into its own partial sums and counts
    n, d = X.shape
    for c in numba.prange(psums.shape[0]):
        r0 = c * chunk_rows
        r1 = min(n, r0 + chunk_rows)
        for s in range(r0, r1, _ROWS):
            _assign_rows(X, C, tile, zero, labels, mind, s, min(r1, s + _ROWS))
        for i in range(r0, r1):
            lab = labels[i]
            pcounts[c, lab] += 1
            for f in range(d):
                psums[c, lab, f] += X[i, f]


def _tile(k, d, itemsize):
    return max(1, min(k, _TILE_BYTES // max(1, d * itemsize)))


def _check(X, C):
    if X.ndim != 2 or C.ndim != 2 or X.shape[1] != C.shape[1]:
        raise ValueError(f"kmeans: X {X.shape} and centers {C.shape} must be (n, d) and (k, d)")
    if X.dtype != C.dtype:
        raise TypeError(f"kmeans: X is {X.dtype} but centers are {C.dtype}")
    return np.ascontiguousarray(X), np.ascontiguousarray(C)


def assign(X, centers):
    X, C = _check(X, centers)
    n, k = X.shape[0], C.shape[0]
    labels = np.zeros(n, dtype=np.int64)
    mind = np.full(n, np.inf, dtype=X.dtype)
    if n and k:
        _assign_kernel(X, C, _tile(k, X.shape[1], X.itemsize), X.dtype.type(0), labels, mind)
    return labels, mind


def sq_distances(X, C):
    X, C = _check(X, C)
    out = np.empty((X.shape[0], C.shape[0]), dtype=X.dtype)
    if out.size:
        _sq_distances_kernel(X, C, X.dtype.type(0), out)
    return out


def lloyd_step(X, centers):
    X, C = _check(X, centers)
    (n, d), k = X.shape, C.shape[0]
    labels = np.zeros(n, dtype=np.int64)
    mind = np.full(n, np.inf, dtype=X.dtype)
    if not (n and k):
        return labels, mind, np.zeros((k, d)), np.zeros(k, dtype=np.int64)
    # a fixed chunking (from the shapes only) keeps the summation order independent of the thread count
    chunks = max(1, min(_MAX_CHUNKS, math.ceil(n / _ROWS), _MAX_PARTIAL_BYTES // max(1, k * d * 8)))
    chunk_rows = math.ceil(n / chunks)
    chunks = math.ceil(n / chunk_rows)
    psums = np.zeros((chunks, k, d), dtype=np.float64)
    pcounts = np.zeros((chunks, k), dtype=np.int64)
    _lloyd_kernel(X, C, _tile(k, d, X.itemsize), X.dtype.type(0), chunk_rows, labels, mind, psums, pcounts)
    sums = psums[0].copy()
    for c in range(1, chunks):  # chunk order: deterministic
        sums += psums[c]
    return labels, mind, sums, pcounts.sum(axis=0)

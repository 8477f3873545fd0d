"""NumPy reference for the k-means kernels: nearest-center assignment and the fused Lloyd step.

Plain, obviously-correct NumPy: squared distances by direct differences, accumulated in float64, in row
chunks so memory stays at ``chunk x k x d``. Ties go to the lowest center index (``argmin``'s rule).

- `assign(X, centers) -> (labels, min_sq_dist)`: X ``(n, d)``, centers ``(k, d)`` (same float dtype);
  labels ``(n,)`` int64, min_sq_dist ``(n,)`` in X's dtype.
- `sq_distances(X, C) -> D`: ``(n, m)`` squared distances in X's dtype (k-means++ candidates).
- `lloyd_step(X, centers) -> (labels, min_sq_dist, sums, counts)`: `assign` plus the per-cluster sums
  ``(k, d)`` float64 and counts ``(k,)`` int64 of the points assigned to each center.
"""
import numpy as np

_CHUNK = 2048  # rows per chunk


def sq_distances(X, C):
    n, m = X.shape[0], C.shape[0]
    out = np.empty((n, m), dtype=X.dtype)
    C64 = C.astype(np.float64)
    for s in range(0, n, _CHUNK):
        diff = X[s:s + _CHUNK, None, :].astype(np.float64) - C64[None, :, :]
        out[s:s + _CHUNK] = np.einsum("ijk,ijk->ij", diff, diff)
    return out


def assign(X, centers):
    n, k = X.shape[0], centers.shape[0]
    labels = np.empty(n, dtype=np.int64)
    mind = np.empty(n, dtype=X.dtype)
    C64 = centers.astype(np.float64)
    for s in range(0, n, _CHUNK):
        diff = X[s:s + _CHUNK, None, :].astype(np.float64) - C64[None, :, :]
        d2 = np.einsum("ijk,ijk->ij", diff, diff)
        lab = np.argmin(d2, axis=1) if k else np.zeros(len(d2), np.int64)
        labels[s:s + _CHUNK] = lab
        mind[s:s + _CHUNK] = d2[np.arange(len(d2)), lab] if k else np.inf
    return labels, mind


def lloyd_step(X, centers):
    labels, mind = assign(X, centers)
    k, d = centers.shape
    sums = np.zeros((k, d), dtype=np.float64)
    np.add.at(sums, labels, X.astype(np.float64))
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    return labels, mind, sums, counts

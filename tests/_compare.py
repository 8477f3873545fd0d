"""Comparison and input helpers shared by every test file.

`assert_close` has torch.testing.assert_close semantics (RELIABILITY.md item 23): NaN matches only NaN,
+-inf must match exactly, everything else within ``atol + rtol * |expected|``.
"""
import numpy as np

# Default tolerances by dtype; an op that needs wider ones says so beside its own table entry.
TOL = {np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6), np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12)}


def to_numpy(a):
    """Any array (NumPy, torch, CuPy) as a float64-or-native NumPy array, copied to host."""
    if hasattr(a, "detach"):  # torch
        a = a.detach()
        if a.dtype.is_floating_point and a.dtype.itemsize < 4:
            a = a.float()
        return a.cpu().numpy()
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def assert_close(actual, expected, rtol=None, atol=None, msg=""):
    """Assert two arrays match in shape and value with NaN/inf handled exactly."""
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"{msg} shape {a.shape} != expected {e.shape}"
    if rtol is None or atol is None:
        tol = TOL.get(np.result_type(a.dtype, np.float32) if a.dtype.kind != "f" else a.dtype, TOL[np.dtype(np.float64)])
        rtol = tol["rtol"] if rtol is None else rtol
        atol = tol["atol"] if atol is None else atol
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    nan_a, nan_e = np.isnan(a64), np.isnan(e64)
    assert np.array_equal(nan_a, nan_e), f"{msg} NaN positions differ: {np.argwhere(nan_a != nan_e)[:5].tolist()}"
    inf_e = np.isinf(e64)
    assert np.array_equal(a64[inf_e], e64[inf_e]) and np.array_equal(np.isinf(a64), inf_e), f"{msg} inf mismatch"
    ok = ~(nan_e | inf_e)
    diff = np.abs(a64[ok] - e64[ok])
    bound = atol + rtol * np.abs(e64[ok])
    if diff.size and not np.all(diff <= bound):
        i = int(np.argmax(diff - bound))
        raise AssertionError(
            f"{msg} mismatch: max abs diff {diff.max():.3e}, worst at flat {i}: "
            f"{a64[ok][i]!r} vs {e64[ok][i]!r} (rtol={rtol}, atol={atol}); "
            f"{int(np.sum(diff > bound))}/{diff.size} elements out of tolerance"
        )


def rand(shape, dtype=np.float64, seed=0, scale=1.0):
    """Fresh standard-normal values (never zeros) of the given shape and dtype."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale).astype(dtype)

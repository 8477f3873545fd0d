"""Row primitives of the Numba softmax-family kernels (kernels/numba/_rows.py): bit-level checks."""
import math

import numba
import numpy as np
import pytest
from dlcore.kernels.numba import _rows as rows
from dlcore.kernels.numba import _vmath as vm

from tests._compare import rand

DTYPES = [np.float32, np.float64]
LENGTHS = [1, 7, 129, 512, 513, 4097]


@numba.njit
def _row_maxes(x):
    out = np.empty(x.shape[0], x.dtype)
    for r in range(x.shape[0]):
        out[r] = rows.row_max(x[r])
    return out


@numba.njit
def _exp_sums(x, m, out):
    s = np.empty(x.shape[0])
    for r in range(x.shape[0]):
        s[r] = rows.exp_sum(x[r], m[r], out[r])
    return s


@numba.njit
def _exp_elementwise(x, m, out):
    for r in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[r, c] = vm.exp_neg(x[r, c] - m[r])


def _special_rows(n, dtype):
    """Rows that stress the ordering: signed zeros, infinities, subnormals, all-negative rows."""
    tiny = np.finfo(dtype).smallest_subnormal
    base = rand(n, dtype, seed=n, scale=50.0)
    out = [base, -np.abs(base), np.abs(base)]
    r = -np.abs(base); r[n // 2] = -0.0; out.append(r)
    r = np.full(n, -0.0, dtype); r[-1] = 0.0; out.append(r)
    out.append(np.full(n, -0.0, dtype))
    r = -np.abs(base); r[0] = -np.inf; out.append(r)
    out.append(np.full(n, -np.inf, dtype))
    r = base.copy(); r[-1] = np.inf; out.append(r)
    r = np.full(n, -tiny, dtype); r[n // 3] = tiny; out.append(r)
    r = np.full(n, -tiny, dtype); r[0] = -2 * tiny; out.append(r)
    return np.stack(out).astype(dtype)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_row_max_is_numpys_max_bit_for_bit(dtype, n):
    x = _special_rows(n, dtype)
    got = _row_maxes(x)
    want = x.max(axis=1)
    assert got.dtype == dtype
    # bit patterns: the max of -0 and +0 must be +0, of all -0 must be -0
    for r in range(x.shape[0]):
        if np.all(x[r] == 0):
            assert np.signbit(got[r]) == np.all(np.signbit(x[r])), r
    assert np.array_equal(got, want), (got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_row_max_with_nan(dtype):
    # a NaN with a clear sign bit orders above +inf and is returned; one with the sign bit set orders below
    # -inf, so the finite max comes back (the kernels then get NaN through that entry's exp)
    x = rand((4, 33), dtype, seed=5)
    x[0, 7] = np.nan
    x[1, 7] = np.copysign(np.nan, -1.0)
    x[2, :] = np.copysign(np.nan, -1.0)
    x[3, 3] = np.inf
    x[3, 9] = np.nan
    got = _row_maxes(x)
    assert np.isnan(got[0])
    assert got[1] == np.delete(x[1], 7).max()
    assert np.isnan(got[2])
    assert np.isnan(got[3])


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_exp_sum_stores_the_elementwise_exps_and_sums_them(dtype, n):
    x = rand((6, n), dtype, seed=100 + n, scale=6.0)
    x[1, ::3] = -np.inf  # exp(-inf) is exactly 0
    m = x.max(axis=1)
    out = np.empty_like(x)
    ref = np.empty_like(x)
    s = _exp_sums(x, m, out)
    _exp_elementwise(x, m, ref)
    assert out.tobytes() == ref.tobytes()  # no fast-math flag reached the exp
    exact = np.array([math.fsum(r.astype(np.float64)) for r in ref])
    # float32 blocks: vector partial sums of a few terms each, float64 across blocks
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(s, exact, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_exp_sum_with_nan_is_nan(dtype):
    x = rand((2, 700), dtype, seed=9)
    x[0, 600] = np.copysign(np.nan, -1.0)  # below every key: not the max, but its own exp is NaN
    x[1, 3] = np.nan
    m = _row_maxes(x)
    s = _exp_sums(x, m, np.empty_like(x))
    assert np.all(np.isnan(s))


@pytest.mark.parametrize("n", [1, 9, 33, 513])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_exp_sum_does_not_depend_on_where_the_rows_lie(dtype, n):
    # LLVM guards a loop that reads one array and writes another with a runtime alias check and runs a
    # scalar copy when the two are close; a sum taken in such a loop changed with the arrays' placement
    x = rand((1, n), dtype, seed=n, scale=4.0)
    m = x.max(axis=1)
    far = np.empty_like(x)
    want = _exp_sums(x, m, far)
    for gap in (0, 1, 3, 16):
        buf = np.empty(2 * n + gap, dtype)  # the row and the output side by side in one buffer
        row, out = buf[:n][None], buf[n + gap:][None]
        row[...] = x
        assert _exp_sums(row, m, out).tobytes() == want.tobytes()
        assert out.tobytes() == far.tobytes()

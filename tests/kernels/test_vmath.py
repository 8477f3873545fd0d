"""kernels/numba/_vmath.py: accuracy bounds, special values and vectorisation of the branch-free math.

Every function is run through a plain jitted loop (the way the kernels use it) over float32 and float64
arguments spread across the whole useful range, and compared with a reference that is exact to well below
the rounding of the tested dtype: NumPy long double (x86 80-bit) for exp/log/log1p/tanh/sigmoid/softplus/
npdf, mpmath for erf/erfc/ndtr. The error is measured in ulps of the tested dtype at the reference value
(``np.spacing``, so subnormal results count in subnormal ulps). `BOUNDS` is the documented accuracy: the
measured maximum on these inputs, rounded up (the module docstring quotes the same table).
"""
import math
import re
import zlib

import numba
import numpy as np
import pytest
from dlcore.kernels.numba import _vmath as vm

F32, F64 = np.float32, np.float64
LD = np.longdouble
HAVE_LONG_DOUBLE = np.finfo(LD).nmant >= 63  # x86 80-bit; elsewhere the long-double references are skipped

# max error in ulps, (function, dtype) -> bound
BOUNDS = {
    ("exp", F32): 1.0, ("exp", F64): 1.1,
    ("exp_neg", F32): 1.0, ("exp_neg", F64): 1.1,
    ("log", F32): 1.0, ("log", F64): 1.0,
    ("log1p", F32): 1.5, ("log1p", F64): 1.5,
    ("tanh", F32): 1.5, ("tanh", F64): 2.0,
    ("sigmoid", F32): 2.5, ("sigmoid", F64): 2.5,
    ("softplus", F32): 2.0, ("softplus", F64): 2.0,
    ("npdf", F32): 2.0, ("npdf", F64): 2.0,
    ("erf", F32): 2.5, ("erf", F64): 1.5,
    ("erfc", F32): 5.5, ("erfc", F64): 4.0,
    ("ndtr", F32): 5.0, ("ndtr", F64): 4.5,
}
LONG_DOUBLE_REFS = ("exp", "exp_neg", "log", "log1p", "tanh", "sigmoid", "softplus", "npdf")
MPMATH_REFS = ("erf", "erfc", "ndtr")


def _loop(fn):
    @numba.njit
    def run(x, y):
        for i in range(x.shape[0]):
            y[i] = fn(x[i])

    return run


FUNCS = {name: getattr(vm, name) for name in dict.fromkeys(k[0] for k in BOUNDS)}
LOOPS = {name: _loop(fn) for name, fn in FUNCS.items()}


def apply(name, x):
    y = np.empty_like(x)
    LOOPS[name](x, y)
    return y


def _mixed(rng, lo, hi, n):
    # uniform over [lo, hi], plus a quarter of small magnitudes (1e-13 .. 1) of both signs, clipped to range
    u = rng.uniform(lo, hi, n - n // 4)
    small = np.sign(rng.uniform(-1, 1, n // 4)) * np.exp(rng.uniform(-30, 0, n // 4))
    v = np.concatenate([u, small])
    return v[(v >= lo) & (v <= hi)]


def arguments(name, dtype, n):
    """Seeded arguments spanning the function's useful range in dtype (outside it the result saturates)."""
    rng = np.random.default_rng(zlib.crc32(f"{name} {np.dtype(dtype).name}".encode()))
    big = dtype == F64
    if name in ("exp",):
        x = _mixed(rng, -746.0 if big else -104.0, 709.7 if big else 88.7, n)
    elif name == "exp_neg":
        x = -np.abs(_mixed(rng, -746.0 if big else -104.0, 0.0, n))
    elif name == "log":
        fi = np.finfo(dtype)
        x = np.exp(rng.uniform(np.log(float(fi.smallest_subnormal)), np.log(float(fi.max)), n))
    elif name == "log1p":
        x = np.concatenate([rng.uniform(-1, 1, n // 2), np.exp(rng.uniform(-40, 14, n // 4)),
                            -np.exp(rng.uniform(-40, 0, n // 4))])
    elif name == "tanh":
        x = _mixed(rng, -20.0, 20.0, n)
    elif name == "sigmoid":
        x = _mixed(rng, -745.0 if big else -104.0, 40.0 if big else 20.0, n)
    elif name == "softplus":
        x = _mixed(rng, -740.0 if big else -100.0, 800.0 if big else 100.0, n)
    elif name == "npdf":
        x = _mixed(rng, -38.0 if big else -14.0, 38.0 if big else 14.0, n)
    elif name == "erf":
        x = _mixed(rng, -7.0 if big else -5.0, 7.0 if big else 5.0, n)
    elif name == "erfc":
        x = _mixed(rng, -6.0 if big else -4.0, 27.2 if big else 10.0, n)
    else:  # ndtr
        x = _mixed(rng, -38.4 if big else -14.0, 9.0 if big else 6.0, n)
    return x.astype(dtype)


def reference(name, x):
    """Reference values as long double (or, for the erf family, float64 pairs hi + lo from mpmath)."""
    if name in MPMATH_REFS:
        mp = pytest.importorskip("mpmath")
        mp.mp.dps = 40
        f = {"erf": mp.erf, "erfc": mp.erfc, "ndtr": mp.ncdf}[name]
        vals = [f(mp.mpf(float(v))) for v in x]
        hi = np.array([float(v) for v in vals])
        lo = np.array([float(v - mp.mpf(h)) for v, h in zip(vals, hi)])
        return hi, lo
    if not HAVE_LONG_DOUBLE:
        pytest.skip("needs an x86 80-bit long double for the reference")
    xl = x.astype(LD)
    with np.errstate(over="ignore", under="ignore"):
        r = {
            "exp": lambda: np.exp(xl), "exp_neg": lambda: np.exp(xl), "log": lambda: np.log(xl),
            "log1p": lambda: np.log1p(xl), "tanh": lambda: np.tanh(xl),
            "sigmoid": lambda: 1 / (1 + np.exp(-xl)), "softplus": lambda: np.logaddexp(LD(0), xl),
            "npdf": lambda: np.exp(-xl * xl / 2) / np.sqrt(LD(2) * LD(math.pi)),
        }[name]()
    return r.astype(np.float64), (r - r.astype(np.float64).astype(LD)).astype(np.float64)


def ulp_errors(y, ref, dtype):
    """|y - ref| in ulps of dtype at ref; entries whose reference overflows dtype are dropped."""
    hi, lo = ref
    with np.errstate(over="ignore"):
        rounded = hi.astype(dtype)
    keep = np.isfinite(rounded)
    err = np.abs((y.astype(np.float64)[keep] - hi[keep]) - lo[keep])
    return err / np.spacing(np.abs(rounded[keep])).astype(np.float64), keep


@pytest.mark.parametrize("dtype", [F32, F64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(FUNCS))
def test_accuracy(name, dtype):
    n = 4000 if name in MPMATH_REFS else 200_000
    x = arguments(name, dtype, n)
    y = apply(name, x)
    assert y.dtype == dtype
    ref = reference(name, x)
    ulps, keep = ulp_errors(y, ref, dtype)
    worst = int(np.argmax(ulps))
    bound = BOUNDS[(name, dtype)]
    assert ulps[worst] <= bound, (
        f"{name} {np.dtype(dtype).name}: {ulps[worst]:.2f} ulp > {bound} at x = {x[keep][worst]!r}")
    # where the reference overflows, the result is +inf
    assert np.all(np.isposinf(y[~keep]))


SPECIAL = {
    # name: [(x, expected)], checked bit for bit (signed zeros too) for both dtypes
    "exp": [(np.nan, np.nan), (np.inf, np.inf), (-np.inf, 0.0), (0.0, 1.0), (-0.0, 1.0), (1e4, np.inf),
            (-1e4, 0.0)],
    "exp_neg": [(np.nan, np.nan), (-np.inf, 0.0), (0.0, 1.0), (-0.0, 1.0), (-1e4, 0.0)],
    "log": [(np.nan, np.nan), (np.inf, np.inf), (-np.inf, np.nan), (0.0, -np.inf), (-0.0, -np.inf),
            (-1.0, np.nan), (1.0, 0.0)],
    "log1p": [(np.nan, np.nan), (np.inf, np.inf), (-1.0, -np.inf), (-2.0, np.nan), (0.0, 0.0), (-0.0, -0.0),
              (-np.inf, np.nan)],
    "tanh": [(np.nan, np.nan), (np.inf, 1.0), (-np.inf, -1.0), (0.0, 0.0), (-0.0, -0.0), (1e4, 1.0),
             (-1e4, -1.0)],
    "sigmoid": [(np.nan, np.nan), (np.inf, 1.0), (-np.inf, 0.0), (0.0, 0.5), (-0.0, 0.5), (1e4, 1.0),
                (-1e4, 0.0)],
    "softplus": [(np.nan, np.nan), (np.inf, np.inf), (-np.inf, 0.0), (1e4, 1e4), (-1e4, 0.0)],
    "npdf": [(np.nan, np.nan), (np.inf, 0.0), (-np.inf, 0.0), (1e4, 0.0)],
    "erf": [(np.nan, np.nan), (np.inf, 1.0), (-np.inf, -1.0), (0.0, 0.0), (-0.0, -0.0), (1e4, 1.0),
            (-1e4, -1.0)],
    "erfc": [(np.nan, np.nan), (np.inf, 0.0), (-np.inf, 2.0), (0.0, 1.0), (1e4, 0.0), (-1e4, 2.0)],
    "ndtr": [(np.nan, np.nan), (np.inf, 1.0), (-np.inf, 0.0), (0.0, 0.5), (1e4, 1.0), (-1e4, 0.0)],
}


@pytest.mark.parametrize("dtype", [F32, F64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(SPECIAL))
def test_special_values(name, dtype):
    # RELIABILITY 20: NaN, +-inf, +-0 and saturation handled by explicit selects, no fast-math
    x = np.array([a for a, _ in SPECIAL[name]], dtype)
    expected = np.array([b for _, b in SPECIAL[name]], dtype)
    y = apply(name, x)
    assert np.array_equal(np.isnan(y), np.isnan(expected)), f"{name}: NaN placement {y} vs {expected}"
    ok = ~np.isnan(expected)
    assert np.array_equal(y[ok], expected[ok]), f"{name}: {y} vs {expected}"
    assert np.array_equal(np.signbit(y[ok]), np.signbit(expected[ok])), f"{name}: signed zeros {y}"


@pytest.mark.parametrize("dtype", [F32, F64], ids=lambda d: np.dtype(d).name)
def test_exp_edges(dtype):
    # overflow threshold, gradual underflow (one correct rounding), and the last nonzero value
    fi = np.finfo(dtype)
    big = np.nextafter(dtype(np.log(fi.max)), dtype(0))
    x = np.array([big, np.nextafter(dtype(np.log(fi.max)), dtype(np.inf)) + 1, np.log(fi.tiny) - 1,
                  np.log(float(fi.smallest_subnormal)), np.log(float(fi.smallest_subnormal)) - 1], dtype)
    y = apply("exp", x)
    assert np.isfinite(y[0]) and y[1] == np.inf
    assert 0 < y[2] < fi.tiny  # subnormal, not flushed
    assert y[3] == fi.smallest_subnormal and y[4] == 0
    assert np.array_equal(apply("exp_neg", x[2:]), y[2:])


@pytest.mark.parametrize("dtype", [F32, F64], ids=lambda d: np.dtype(d).name)
def test_log_subnormal_and_powers_of_two(dtype):
    fi = np.finfo(dtype)
    x = np.array([fi.smallest_subnormal, fi.tiny / 2, fi.tiny, 2.0, 0.5, 1024.0, fi.max], dtype)
    y = apply("log", x).astype(np.float64)
    expected = np.log(x.astype(LD)).astype(np.float64) if HAVE_LONG_DOUBLE else np.log(x.astype(np.float64))
    np.testing.assert_allclose(y, expected, rtol=2 * fi.eps, atol=0)


def test_ndtr_npdf_pair_matches_singles():
    @numba.njit
    def pair(x, c, p):
        for i in range(x.shape[0]):
            c[i], p[i] = vm.ndtr_npdf(x[i])

    for dtype in (F32, F64):
        x = np.concatenate([np.linspace(-40, 10, 5001), [np.nan, np.inf, -np.inf, 0.0, -0.0]]).astype(dtype)
        c, p = np.empty_like(x), np.empty_like(x)
        pair(x, c, p)
        assert np.array_equal(c, apply("ndtr", x), equal_nan=True)
        assert np.array_equal(p, apply("npdf", x), equal_nan=True)


def test_maxnum_ignores_nan():
    @numba.njit
    def rowmax(a):
        m = a[0]
        for i in range(1, a.shape[0]):
            m = vm.maxnum(m, a[i])
        return m

    for dtype in (F32, F64):
        a = np.array([np.nan, 1.0, -np.inf, 3.0, np.nan, 2.0] * 5, dtype)
        assert rowmax(a) == 3.0
        assert np.isnan(rowmax(np.full(9, np.nan, dtype)))
        assert rowmax(np.full(9, -np.inf, dtype)) == -np.inf


@pytest.mark.parametrize("dtype", [F32, F64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(FUNCS))
def test_loop_vectorises(name, dtype):
    # the point of the module: a loop calling it compiles to SIMD code without a scalar libm call
    LOOPS[name](np.ones(64, dtype), np.empty(64, dtype))
    sig = next(s for s in LOOPS[name].signatures if s[0].dtype == numba.from_dtype(np.dtype(dtype)))
    llvm = LOOPS[name].inspect_llvm(sig)
    elem = "float" if dtype == F32 else "double"
    assert re.search(rf"<\d+ x {elem}>", llvm), f"{name} {elem}: no vector code"
    libm = re.findall(r"call [^@\n]*@(exp|expf|log|logf|log1p|log1pf|tanh|tanhf|erf|erff|erfc|erfcf)\(", llvm)
    assert not libm, f"{name}: scalar libm calls {libm}"

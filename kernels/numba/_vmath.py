"""Vectorisable float32 / float64 elementary functions for the Numba CPU kernels.

Why: ``math.exp``, ``math.erf``, ``math.tanh`` ... compile to scalar libm calls, and without SVML LLVM cannot
vectorise a loop that holds one. The functions here are straight-line float code (range reduction, a fitted
polynomial or rational, exponent arithmetic on the bit pattern, selects for the special cases), inlined into
the caller at the Numba IR level, so a loop over a row compiles to AVX2/FMA vector code (8 float32 lanes).

Use from ``@numba.njit`` code only (`numba.extending.overload` targets: each name dispatches on the
argument's type, float32 or float64, and computes in that type)::

    from dlcore.kernels.numba import _vmath as vm

    @numba.njit(cache=True)
    def kernel(x, y):
        for i in range(x.shape[0]):
            y[i] = vm.exp(x[i])       # float32 in, float32 math, float32 out

Accuracy: max error in ulps of the tested dtype (spacing at the exact value, subnormal results in subnormal
ulps) over 2e5 seeded arguments across each function's range (4e3 for the erf family), against NumPy long
double (exp .. npdf) or mpmath (erf, erfc, ndtr), on FMA hardware. tests/kernels/test_vmath.py asserts
exactly these bounds (`BOUNDS`) plus the special values below; the measured maxima are a little lower.

=============  =========  =========  ===========================================================
function       float32    float64    specials (bit for bit, as libm / torch)
=============  =========  =========  ===========================================================
exp            1.0        1.1        +inf past overflow; gradual underflow (one correct rounding)
                                     into the subnormals, then +0; exp(-inf) = 0
exp_neg        1.0        1.1        exp for x <= 0 only (fewer instructions; hot loops); x > 0 is
                                     not supported (garbage, never an exception)
log            1.0        1.0        log(+-0) = -inf, x < 0 -> NaN, +inf -> +inf; subnormal x fine
log1p          1.5        1.5        log1p(-1) = -inf, x < -1 -> NaN, log1p(-0) = -0
tanh           1.5        2.0        +-1 at +-inf, odd, tanh(-0) = -0
sigmoid        2.5        2.5        0 at -inf, 1 at +inf, no overflow; accurate in both tails
softplus       2.0        2.0        log(1 + exp(x)): 0 at -inf, x for large x, no overflow
erf            2.5        1.5        +-1 at +-inf, odd
erfc           5.5        4.0        0 at +inf, 2 at -inf; relative accuracy down to the underflow
ndtr (Phi)     5.0        4.5        normal CDF; x^2/2 formed exactly from x (no loss for large |x|
                                     from rounding x / sqrt 2, unlike 0.5 erfc(-x / sqrt 2))
npdf (phi)     2.0        2.0        normal pdf exp(-x^2/2) / sqrt(2 pi); 0 at +-inf
=============  =========  =========  ===========================================================

Also: ``ndtr_npdf(x)`` returns ``(ndtr(x), npdf(x))`` from one shared exp (GELU's backward), ``maxnum(a, b)``
is IEEE maxNum (a NaN operand is ignored; a max-reduction written with it vectorises without fast-math),
``like(x, c)`` is the float64 constant c in x's dtype. NaN in, NaN out everywhere.

Methods (coefficients are near-minimax fits of this module's own: Lawson-weighted least squares, and
Sanathanan-Koerner iterations for the rationals, in mpmath on Chebyshev grids; each fit error, noted beside
the constants, is well below the rounding error):

* exp: ``n = rint(x / ln 2)``, ``r = x - n ln2`` (Cody-Waite two-constant ln 2 with FMA), ``e^r = 1 + r +
  r^2 Q(r)``, scaled by ``2^n`` built from the exponent bits in two halves (``2^floor(n/2) * 2^(n -
  floor(n/2))``), so results in the subnormal range round once, correctly, instead of flushing to 0. The
  input is clamped to a range where the scaling saturates to +inf / 0 by itself. exp_neg: the rounding by
  a shifter constant in one FMA, ``2^(n + K) * 2^-K`` (still one rounding), no upper clamp, Estrin's scheme
  for Q (see `_exp_neg_core`).
* log: split ``x = 2^e m`` from the bits (subnormals pre-scaled), ``m`` in ``[sqrt(1/2), sqrt(2))``,
  ``f = m - 1`` (exact), ``s = f / (2 + f)``, ``log(1+f) = f - f^2/2 + s (f^2/2 + z P(z))``, ``z = s^2``.
* log1p: ``u = 1 + x``, ``log(u) + (x - (u - 1)) / u`` (the correction restores the bits lost in ``1 + x``).
  softplus: ``max(x, 0) + log1p(e)``, ``e = exp(-|x|)`` in [0, 1], with a log1p for that range that needs
  no correction (``f = e`` or ``(e - 1) / 2``, both exact).
* tanh: odd polynomial ``x + x^3 P(x^2)`` below 0.55 (float32) / 0.3 (float64), else ``(1 - e) / (1 + e)``
  with ``e = exp(-2|x|)``, sign restored.
* sigmoid: ``e = exp(-|x|)``, ``1 / (1 + e)`` or ``e / (1 + e)`` by sign.
* erfc / ndtr / npdf: ``exp(-a^2)`` with the exponent split exactly (``h + l``, l by an FMA) and both parts
  fed to the exp's argument reduction, times a smooth factor: float32 ``t H(t)``, ``t = 1 / (1 + a/2)``, one
  degree-10 polynomial (Estrin) for all ``a``; float64 a rational ``P8(a)/Q8(a)`` on [0.5, 4] and ``(1 + z
  P5(z)/Q5(z)) / (a sqrt(pi))``, ``z = 1/a^2``, beyond; below 0.5 (float64) ``1 - erf``. erf: odd polynomial
  ``x P(x^2)`` below 1 (float32) / 0.5 (float64), else ``1 - erfc``.

Every function is branch-free: all candidate results are computed and the right one picked with selects, so
NaN / inf handling never relies on fast-math flags (no ``nnan`` / ``ninf``; only ``contract`` is implied by
``llvm.fmuladd`` in the polynomials, which fuses to an FMA where the CPU has one; the exact product splits
use ``llvm.fma``, fused everywhere). Divisions are bare IEEE ``fdiv`` (`_div`), so the caller's error model
adds no zero-divisor branch. Because the code is inlined into the caller, the caller's fastmath flags apply
to it: never call these from a function compiled with ``fastmath`` (``reassoc`` would let LLVM fold the
exp's shifter rounding away). Keep elementwise math and ``reassoc`` sums in separate functions (see
softmax.py: an elementwise pass, then a separate float64 sum).

Caching note: Numba's on-disk cache of a kernel does not notice edits to this file. After changing it, delete
``kernels/numba/__pycache__`` (or touch the kernel files) so the kernels recompile. Inlining makes the first
(uncached) compile of a kernel that uses the erf family take a few seconds.
"""
import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

# Inlined at the Numba IR level (LLVM's inliner gives up on the bigger ones such as erf, and a call left in a
# loop stops it vectorising). Divisions go through `_div` (a bare LLVM fdiv), so the caller's error model
# never adds a zero-divisor branch; the caller must not use fastmath 'reassoc' (see the module docstring).
_JIT = {"inline": "always"}


# --------------------------------------------------------------------------------------------------------
# LLVM intrinsics (type-generic over float32 / float64)
# --------------------------------------------------------------------------------------------------------
def _llvm_call(builder, name, args):
    ty = args[0].type
    fn = builder.module.declare_intrinsic(name, [ty], ir.FunctionType(ty, [ty] * len(args)))
    return builder.call(fn, args)


def _float_intrinsic(name, nargs):
    def typer(typingctx, *args):
        if len(args) != nargs or not isinstance(args[0], types.Float) or any(a != args[0] for a in args):
            return None

        def codegen(context, builder, sig, llargs):
            return _llvm_call(builder, name, list(llargs))

        return args[0](*args), codegen

    return typer


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c, fused where the CPU has FMA (llvm.fmuladd): for polynomial evaluation."""
    return _float_intrinsic("llvm.fmuladd", 3)(typingctx, a, b, c)


@intrinsic
def _fma_exact(typingctx, a, b, c):
    """a * b + c with a single rounding, always (llvm.fma): for exact product splits."""
    return _float_intrinsic("llvm.fma", 3)(typingctx, a, b, c)


@intrinsic
def _div(typingctx, a, b):
    """a / b as a plain IEEE division (inf / NaN on a zero divisor, never an exception)."""
    if not isinstance(a, types.Float) or a != b:
        return None

    def codegen(context, builder, sig, args):
        return builder.fdiv(args[0], args[1])

    return a(a, b), codegen


@intrinsic
def _rint(typingctx, x):
    """Round to nearest integer, ties to even (the default rounding mode)."""
    return _float_intrinsic("llvm.rint", 1)(typingctx, x)


@intrinsic
def _floor(typingctx, x):
    return _float_intrinsic("llvm.floor", 1)(typingctx, x)


@intrinsic
def _maxnum(typingctx, a, b):
    """IEEE maxNum: the larger of a and b; a NaN operand is ignored (NaN only if both are NaN).
    Associative and commutative, so LLVM vectorises a max-reduction written with it without fast-math."""
    return _float_intrinsic("llvm.maxnum", 2)(typingctx, a, b)


def _layout(ty):
    # (bits, mantissa bits, exponent bias) of a float type
    return (32, 23, 127) if ty == types.float32 else (64, 52, 1023)


@intrinsic
def _like(typingctx, x, value):
    """The float64 constant ``value`` converted to x's type (folded at compile time)."""
    if not isinstance(x, types.Float) or not isinstance(value, types.Float):
        return None

    def codegen(context, builder, sig, args):
        return context.cast(builder, args[1], sig.args[1], sig.args[0])

    return x(x, value), codegen


@intrinsic
def _pow2(typingctx, n):
    """2**n for an integer-valued float n within the normal exponent range, built from the exponent bits."""
    if not isinstance(n, types.Float):
        return None
    bits, mant, bias = _layout(n)

    def codegen(context, builder, sig, args):
        it = ir.IntType(bits)
        i = builder.fptosi(args[0], it)
        i = builder.shl(builder.add(i, ir.Constant(it, bias)), ir.Constant(it, mant))
        return builder.bitcast(i, args[0].type)

    return n(n), codegen


@intrinsic
def _shifted_pow2(typingctx, t):
    """The bits of t shifted left into the exponent field: 2^(m - bias) when t = 1.5 * 2^mant + m for an
    integer 0 < m < 2 * bias + 1 (the shifter's own bits shift out)."""
    if not isinstance(t, types.Float):
        return None
    bits, mant, _ = _layout(t)

    def codegen(context, builder, sig, args):
        it = ir.IntType(bits)
        i = builder.shl(builder.bitcast(args[0], it), ir.Constant(it, mant))
        return builder.bitcast(i, args[0].type)

    return t(t), codegen


@intrinsic
def _exponent(typingctx, x):
    """The unbiased binary exponent of a positive normal x, as a float (floor(log2(x)))."""
    if not isinstance(x, types.Float):
        return None
    bits, mant, bias = _layout(x)

    def codegen(context, builder, sig, args):
        it = ir.IntType(bits)
        i = builder.lshr(builder.bitcast(args[0], it), ir.Constant(it, mant))
        i = builder.sub(builder.and_(i, ir.Constant(it, (1 << (bits - 1 - mant)) - 1)), ir.Constant(it, bias))
        return builder.sitofp(i, args[0].type)

    return x(x), codegen


@intrinsic
def _mantissa(typingctx, x):
    """x with its exponent replaced by 0: the significand in [1, 2) of a positive normal x."""
    if not isinstance(x, types.Float):
        return None
    bits, mant, bias = _layout(x)

    def codegen(context, builder, sig, args):
        it = ir.IntType(bits)
        i = builder.and_(builder.bitcast(args[0], it), ir.Constant(it, (1 << mant) - 1))
        i = builder.or_(i, ir.Constant(it, bias << mant))
        return builder.bitcast(i, args[0].type)

    return x(x), codegen


@numba.njit(**_JIT)
def _poly(x, c):
    # Horner's rule; c holds the coefficients highest degree first (unrolled by LLVM: c is a constant tuple)
    p = c[0]
    for k in range(1, len(c)):
        p = _fma(p, x, c[k])
    return p


def _poly_short(x, x2, c):
    """Estrin's scheme for the hot polynomials: shorter dependency chains than Horner, so more iterations of
    a vector loop overlap. c: coefficients highest degree first, 5, 10 or 11 of them; x2 = x * x."""
    raise NotImplementedError


def _estrin5(x, x2, c):  # (c4 + c3 x) + x2 ((c2 + c1 x) + x2 c0), c[0] the x^4 coefficient
    return _fma(x2, _fma(x2, c[0], _fma(c[1], x, c[2])), _fma(c[3], x, c[4]))


def _estrin10(x, x2, c):  # degree 9
    x4 = x2 * x2
    lo = _fma(x2, _fma(c[6], x, c[7]), _fma(c[8], x, c[9]))  # x^0..x^3
    mid = _fma(x2, _fma(c[2], x, c[3]), _fma(c[4], x, c[5]))  # x^4..x^7
    return _fma(x4 * x4, _fma(c[0], x, c[1]), _fma(x4, mid, lo))


def _estrin11(x, x2, c):  # degree 10
    x4 = x2 * x2
    lo = _fma(x2, _fma(c[7], x, c[8]), _fma(c[9], x, c[10]))  # x^0..x^3
    mid = _fma(x2, _fma(c[3], x, c[4]), _fma(c[5], x, c[6]))  # x^4..x^7
    hi = _fma(x2, c[0], _fma(c[1], x, c[2]))  # x^8..x^10
    return _fma(x4 * x4, hi, _fma(x4, mid, lo))


@overload(_poly_short, inline="always")
def _ol_poly_short(x, x2, c):
    return {5: _estrin5, 10: _estrin10, 11: _estrin11}.get(len(c))


# --------------------------------------------------------------------------------------------------------
# Constants (fits: see module docstring). Tuples hold polynomial coefficients, highest degree first.
# --------------------------------------------------------------------------------------------------------
def _f32(*v):
    return tuple(np.float32(a) for a in v)


def _f64(*v):
    return tuple(np.float64(a) for a in v)


# (e^r - 1 - r) / r^2 on |r| <= ln2 / 2; fit error 3.3e-9
_EXP_Q32 = _f32(0.001381313567, 0.008369419676, 0.04166845698, 0.1666651478, 0.4999999305)
_EXP_Q64 = _f64(2.499901388250845824e-8, 2.763168939955010103e-7, 2.755759713139664965e-6,
                0.00002480148934601927786, 0.0001984126948620415946, 0.001388888894692653447,
                0.008333333333507654936, 0.04166666666651912592, 0.1666666666666638628,
                0.5000000000000011705)  # 4.1e-18
# (clamp low, clamp high, 1/ln2, ln2 hi (8 / 11 trailing zero bits: n * hi is exact), ln2 lo)
_EXP_K32 = _f32(-104.0, 89.0, 1.4426950408889634, 0.693145751953125, 1.4286068203094173e-06)
_EXP_K64 = _f64(-746.0, 710.0, 1.4426950408889634, 0.6931471805598903, 5.497923018708371e-14)
# exp of a non-positive argument: the same constants plus (shifter 1.5 * 2^mant + bias + K, 2^-K), K = 100
# (float32) / 1000 (float64): see _exp_neg_core
_EXPN_K32 = _EXP_K32 + _f32(1.5 * 2.0**23 + 127 + 100, 2.0**-100)
_EXPN_K64 = _EXP_K64 + _f64(1.5 * 2.0**52 + 1023 + 1000, 2.0**-1000)

_LOG_P32 = _f32(0.2987310610, 0.3997749413, 0.6666677673)  # R(z)/z, R = 2 (atanh(s)/s - 1), z = s^2; 1.6e-9
_LOG_P64 = _f64(0.1479752011609291984, 0.1531390190175138207, 0.1818356979758647215, 0.2222219847474198011,
                0.2857142874327660471, 0.3999999999941101753, 0.6666666666666734910)  # 2.5e-18
# (smallest normal, 2^k used to pre-scale subnormals, k, sqrt(2), ln2 hi, ln2 lo)
_LOG_K32 = _f32(1.1754943508222875e-38, 33554432.0, 25.0, 1.4142135623730951, 0.693145751953125,
                1.4286068203094173e-06)
_LOG_K64 = _f64(2.2250738585072014e-308, 18014398509481984.0, 54.0, 1.4142135623730951, 0.6931471805598903,
                5.497923018708371e-14)

_TANH_P32 = _f32(-0.006274180926, 0.02107163423, -0.05385229792, 0.1333258601, -0.3333331756)  # 1.0e-9
_TANH_P64 = _f64(0.0005024526498834180431, -0.001441654274853742821, 0.003590873752567573188,
                 -0.008863170757580268070, 0.02186948658061536610, -0.05396825393552912405,
                 0.1333333333330681550, -0.3333333333333325981)  # (tanh(x) - x) / x^3 in x^2; 6.4e-19
_TANH_T32 = np.float32(0.55)
_TANH_T64 = np.float64(0.3)

_ERF_P32 = _f32(7.853829869e-5, -0.0008010184088, 0.005188326600, -0.02685381136, 0.1128358513, -0.3761262582,
                1.128379166)  # erf(x) / x in x^2, |x| < 1; 1.2e-9
_ERF_P64 = _f64(1.472321107889598254e-6, -0.00001484558330665371787, 0.0001205332429589962104,
                -0.0008548297524014420221, 0.005223977370321832013, -0.02686617063271549692,
                0.1128379167092481185, -0.3761263890318346706, 1.128379167095512569)  # |x| < 0.5; 3.9e-18
_ERF_T32 = np.float32(1.0)
_ERF_T64 = np.float64(0.5)

# float32 erfc(a) = t H(t) exp(-a^2), t = 1 / (1 + a/2), all a >= 0; H fit error 3.4e-9 (relative)
_ERFC_H32 = _f32(0.03557522052, -0.1898937551, 0.3784526770, -0.2851428839, -0.02620563321, 0.03809267002,
                 0.05373879849, 0.1859136053, 0.2451230128, 0.2822580123, 0.2820882793)
_ERFC_HALF_H32 = tuple(np.float32(c * 0.5) for c in _ERFC_H32)  # (exact halving) for ndtr
_ERFC_AMAX32 = np.float32(10.5)  # erfc(10.5) < 2^-150: 0 in float32 (and beyond)
# float64 erfcx(a) = erfc(a) exp(a^2) = P(a) / Q(a) on [0.5, 4]; relative fit error 2.0e-19
_ERFC_MID_P64 = _f64(1.646995678745992790e-11, 0.0004667953012477020735, 0.007321350070340726148,
                     0.05432973830508210432, 0.2447659960634473004, 0.7212701284159069028,
                     1.397320900160499517, 1.670851650182880075, 0.9999999999934242989)
_ERFC_MID_Q64 = _f64(0.0008273746110519433561, 0.01297671879610506334, 0.09671121448585162522,
                     0.4403182509724282904, 1.326210474621230449, 2.686712083491779387, 3.555914639034512028,
                     2.799230817166854449, 1.0)
# float64 erfcx(a) a sqrt(pi) = 1 + z P(z) / Q(z), z = 1/a^2, a >= 4; relative fit error 5.3e-19
_ERFC_TAIL_P64 = _f64(-12.31120104953903249, -230.7878961123682628, -272.6944660726304494,
                      -95.28691526213307161, -12.19637801223842224, -0.4999999999999971469)
_ERFC_TAIL_Q64 = _f64(426.3107354177970324, 1095.985470756839747, 799.9105434206778632, 225.6629645633525386,
                      25.89275602447074141, 1.0)
_ERFC_AMAX64 = np.float64(27.5)  # erfc(27.5) < 2^-1075: 0 in float64
_NDTR_XMAX32 = np.float32(14.85)  # > AMAX * sqrt 2, for ndtr and npdf (x^2 / 2 = 110: exp underflows to 0)
_NDTR_XMAX64 = np.float64(38.9)

_SQRT1_2 = 0.70710678118654752440
_INV_SQRT_PI = 0.56418958354775628695
_INV_SQRT_2PI = 0.39894228040143267794


# --------------------------------------------------------------------------------------------------------
# Implementations: generic in the float type; constants arrive as tuples of that type.
# --------------------------------------------------------------------------------------------------------
@numba.njit(**_JIT)
def _exp_core(hi, lo, k, q):
    # exp(hi + lo) for |lo| <= ulp(hi) (lo = 0 for a plain exp). NaN is handled by the callers.
    # clamp (a NaN goes to k[0] here on purpose; the caller restores it): below, 2^n * p underflows to +0;
    # above, it overflows to +inf
    hc = hi if hi > k[0] else k[0]  # noqa: FURB136
    hc = hc if hc < k[1] else k[1]  # noqa: FURB136
    n = _rint(hc * k[2])
    r = _fma(n, -k[3], hc)  # exact: n * ln2_hi has trailing zero bits to spare
    r = r + _fma(n, -k[4], lo)
    p = _fma(_poly(r, q), r * r, r) + _like(r, 1.0)
    n1 = _floor(n * _like(n, 0.5))  # 2^n in two normal halves: one rounding even for subnormal results
    return p * _pow2(n1) * _pow2(n - n1)


@numba.njit(**_JIT)
def _exp_neg_core(hi, lo, k, q):
    # exp(hi + lo) for hi <= 0 or NaN (|lo| <= ulp(hi)): the hot-loop exp (softmax, sigmoid, GELU, BCE).
    # Same reduction and polynomial as _exp_core, fewer instructions: (1) n = rint(hi / ln 2) by adding a
    # shifter 1.5 * 2^mant + bias + K in one FMA (t then holds n + bias + K in its low bits, and t - shifter
    # is n exactly); (2) 2^(n + K) is those low bits shifted into the exponent field, and the final
    # multiply by 2^-K rounds once, so subnormal results are still correct (n + K stays in the normal range
    # for n in [-1076, 0]); (3) NaN needs no select: the clamp below keeps it (x86 max semantics) and it
    # reaches the result through p (NaN * anything = NaN); only bit operations touch the garbage scale.
    hc = _max_keep_nan(hi, k[0])  # -inf and very negative -> the clamp (exp underflows to +0 there)
    t = _fma(hc, k[2], k[5])
    n = t - k[5]
    r = _fma(n, -k[3], hc)
    r = r + _fma(n, -k[4], lo)
    r2 = r * r
    p = _fma(_poly_short(r, r2, q), r2, r) + _like(r, 1.0)
    return p * _shifted_pow2(t) * k[6]


@numba.njit(**_JIT)
def _exp(x, k, q):
    y = _exp_core(x, _like(x, 0.0), k, q)
    return x if math.isnan(x) else y


@numba.njit(**_JIT)
def _log(x, k, p):
    sub = x < k[0]  # subnormal (or <= 0, sorted out below): scale into the normal range first
    xs = x * k[1] if sub else x
    e = _exponent(xs) - (k[2] if sub else _like(x, 0.0))
    m = _mantissa(xs)  # [1, 2)
    big = m > k[3]  # -> [sqrt(1/2), sqrt(2))
    m = m * _like(x, 0.5) if big else m
    e = e + _like(x, 1.0) if big else e
    f = m - _like(x, 1.0)  # exact
    s = _div(f, f + _like(x, 2.0))
    z = s * s
    r = z * _poly(z, p)
    hfsq = _like(x, 0.5) * f * f
    y = _fma(e, k[4], -((hfsq - _fma(s, hfsq + r, e * k[5])) - f))
    y = _like(x, -math.inf) if x == 0 else y
    y = _like(x, math.nan) if x < 0 else y
    return y if x < _like(x, math.inf) else x  # +inf -> +inf, NaN -> NaN


@numba.njit(**_JIT)
def _log1p(x, k, p):
    u = x + _like(x, 1.0)
    c = _div(x - (u - _like(x, 1.0)), u)  # the part of x that 1 + x rounded away, relative to u
    c = c if (u > 0) & (u < _like(x, math.inf)) else _like(x, 0.0)
    y = _log(u, k, p) + c
    return y if u != _like(x, 1.0) else x  # |x| below half an ulp of 1: log1p(x) rounds to x (keeps -0)


@numba.njit(**_JIT)
def _log1p_unit(e, k, p):
    # log1p(e) for e in [0, 1] (NaN propagates): no 1 + e rounding to correct. Below sqrt(2) - 1, f = e;
    # above, log1p(e) = ln 2 + log1p(f) with f = (e - 1) / 2 in (-0.29, 0], exact (Sterbenz, then a halving).
    big = e > k[3] - _like(e, 1.0)
    f = (e - _like(e, 1.0)) * _like(e, 0.5) if big else e
    n = _like(e, 1.0) if big else _like(e, 0.0)
    s = _div(f, f + _like(e, 2.0))
    z = s * s
    r = z * _poly(z, p)
    hfsq = _like(e, 0.5) * f * f
    return _fma(n, k[4], -((hfsq - _fma(s, hfsq + r, n * k[5])) - f))


@numba.njit(**_JIT)
def _softplus(x, k, p, ke, q):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow, accurate in both tails
    # (a NaN x: max(x, 0) gives 0 but the log1p term is NaN)
    return _log1p_unit(_exp_neg_core(-abs(x), _like(x, 0.0), ke, q), k, p) + (x if x > 0 else _like(x, 0.0))


@numba.njit(**_JIT)
def _tanh(x, t, p, k, q):
    a = abs(x)
    z = x * x
    small = _fma(x * z, _poly(z, p), x)  # odd in x
    e = _exp_neg_core(a * _like(x, -2.0), _like(x, 0.0), k, q)
    big = _div(_like(x, 1.0) - e, _like(x, 1.0) + e)
    big = -big if x < 0 else big
    y = small if a < t else big
    return y if a > 0 else x  # NaN -> NaN, +-0 -> +-0


@numba.njit(**_JIT)
def _sigmoid(x, k, q):
    e = _exp_neg_core(-abs(x), _like(x, 0.0), k, q)  # in (0, 1]: no overflow (NaN stays NaN)
    r = _div(_like(x, 1.0), _like(x, 1.0) + e)
    return r if x >= 0 else e * r


@numba.njit(**_JIT)
def _min_keep_nan(v, hi):
    # min(v, hi) with a NaN v kept (Python's min, and Numba's, may return hi for a NaN v)
    return hi if v > hi else v  # noqa: FURB136 (see above)


@numba.njit(**_JIT)
def _max_keep_nan(v, lo):
    return lo if v < lo else v  # noqa: FURB136 (max(v, lo) with a NaN v kept)


# In the erf family every clamp keeps a NaN argument, so NaN reaches the result through the arithmetic and
# no final select is needed.
@numba.njit(**_JIT)
def _exp_neg_sq(a, scale, k, q):
    # exp(-scale * a^2), scale a power of 2 (1 or 0.5): the exponent -scale * a * a is split exactly into
    # h + l (l by an FMA), so that no digits are lost for large a
    m = -(scale * a)  # exact
    h = m * a
    l = _fma_exact(m, a, -h)
    return _exp_neg_core(h, l, k, q)


@numba.njit(**_JIT)
def _erfc_pos32(a, e, s, h):
    # float32 s * erfc(a / s) for a / s in [0, AMAX], e = exp(-(a / s)^2); s = 1, or sqrt 2 for ndtr (the
    # caller passes |x| itself then, and h = H / 2: Phi's factor 1/2 and x / sqrt 2 folded into constants)
    t = _div(np.float32(1.0), _fma(a, np.float32(0.5) / s, np.float32(1.0)))
    return t * _poly_short(t, t * t, h) * e


@numba.njit(**_JIT)
def _erfcx64(a):
    # float64 erfc(a) exp(a^2) for a in [0.5, AMAX]
    mid = _div(_poly(a, _ERFC_MID_P64), _poly(a, _ERFC_MID_Q64))
    z = _div(1.0, a * a)
    r = _div(z * _poly(z, _ERFC_TAIL_P64), _poly(z, _ERFC_TAIL_Q64))
    tail = _div(_fma(r, _INV_SQRT_PI, _INV_SQRT_PI), a)
    return tail if a > 4.0 else mid


@numba.njit(**_JIT)
def _erf_small(x, p):
    return x * _poly(x * x, p)


@numba.njit(**_JIT)
def _erfc32(x):
    a = abs(x)
    a = _min_keep_nan(a, _ERFC_AMAX32)
    c = _erfc_pos32(a, _exp_neg_sq(a, np.float32(1.0), _EXPN_K32, _EXP_Q32), np.float32(1.0), _ERFC_H32)
    return np.float32(2.0) - c if x < 0 else c


@numba.njit(**_JIT)
def _erfc64(x):
    a = abs(x)
    ac = _min_keep_nan(a, _ERFC_AMAX64)
    ac = _max_keep_nan(ac, _ERF_T64)  # below 0.5: 1 - erf (selected below); keeps the tail code finite
    c = _erfcx64(ac) * _exp_neg_sq(ac, 1.0, _EXPN_K64, _EXP_Q64)
    y = 2.0 - c if x < 0 else c
    return 1.0 - _erf_small(x, _ERF_P64) if a < _ERF_T64 else y


@numba.njit(**_JIT)
def _erf32(x):
    a = abs(x)
    ac = _min_keep_nan(a, _ERFC_AMAX32)
    e = _exp_neg_sq(ac, np.float32(1.0), _EXPN_K32, _EXP_Q32)
    big = np.float32(1.0) - _erfc_pos32(ac, e, np.float32(1.0), _ERFC_H32)
    big = -big if x < 0 else big
    return _erf_small(x, _ERF_P32) if a < _ERF_T32 else big


@numba.njit(**_JIT)
def _erf64(x):
    a = abs(x)
    ac = _min_keep_nan(a, _ERFC_AMAX64)
    ac = _max_keep_nan(ac, _ERF_T64)
    big = 1.0 - _erfcx64(ac) * _exp_neg_sq(ac, 1.0, _EXPN_K64, _EXP_Q64)
    big = -big if x < 0 else big
    return _erf_small(x, _ERF_P64) if a < _ERF_T64 else big


@numba.njit(**_JIT)
def _ndtr_npdf32(x):
    # (Phi(x), phi(x)) sharing one exp(-x^2 / 2), formed from x itself (not from the rounded x / sqrt 2):
    # Phi(x) = erfc(-x / sqrt 2) / 2, phi(x) = exp(-x^2 / 2) / sqrt(2 pi). GELU's backward needs both.
    xa = abs(x)
    xa = _min_keep_nan(xa, _NDTR_XMAX32)  # xmax / sqrt 2 > AMAX: erfc underflowed already
    e = _exp_neg_sq(xa, np.float32(0.5), _EXPN_K32, _EXP_Q32)
    h = _erfc_pos32(xa, e, np.float32(1.0 / _SQRT1_2), _ERFC_HALF_H32)  # erfc(|x| / sqrt 2) / 2
    cdf = h if x < 0 else np.float32(1.0) - h
    return cdf, e * np.float32(_INV_SQRT_2PI)


@numba.njit(**_JIT)
def _ndtr_npdf64(x):
    xa = abs(x)
    xa = _min_keep_nan(xa, _NDTR_XMAX64)
    e = _exp_neg_sq(xa, 0.5, _EXPN_K64, _EXP_Q64)
    xt = _max_keep_nan(xa, 0.5 / _SQRT1_2)  # keeps the tail formula finite where it is unused
    h = 0.5 * _erfcx64(xt * _SQRT1_2) * e
    cdf = h if x < 0 else 1.0 - h
    # |x| / sqrt 2 < 0.5: 0.5 + 0.5 erf(x / sqrt 2)
    cdf = _fma(_erf_small(x * _SQRT1_2, _ERF_P64), 0.5, 0.5) if xa * _SQRT1_2 < 0.5 else cdf
    return cdf, e * _INV_SQRT_2PI


@numba.njit(**_JIT)
def _ndtr32(x):
    return _ndtr_npdf32(x)[0]


@numba.njit(**_JIT)
def _ndtr64(x):
    return _ndtr_npdf64(x)[0]


@numba.njit(**_JIT)
def _npdf(x, xmax, k, q):
    # exp(-x^2 / 2) / sqrt(2 pi)
    xa = abs(x)
    xa = _min_keep_nan(xa, xmax)  # keeps x^2 finite; exp(-xmax^2 / 2) is 0 already
    return _exp_neg_sq(xa, _like(x, 0.5), k, q) * _like(x, _INV_SQRT_2PI)


@numba.njit(**_JIT)
def _exp_neg(x, k, q):
    return _exp_neg_core(x, _like(x, 0.0), k, q)  # NaN propagates by itself


# --------------------------------------------------------------------------------------------------------
# Public, type-dispatching names (callable from jitted code only)
# --------------------------------------------------------------------------------------------------------
def _stub(name):
    def fn(x):
        raise NotImplementedError(f"_vmath.{name} runs inside @numba.njit code only")

    fn.__name__ = name
    return fn


exp = _stub("exp")
exp_neg = _stub("exp_neg")
ndtr_npdf = _stub("ndtr_npdf")
log = _stub("log")
log1p = _stub("log1p")
tanh = _stub("tanh")
sigmoid = _stub("sigmoid")
softplus = _stub("softplus")
erf = _stub("erf")
erfc = _stub("erfc")
ndtr = _stub("ndtr")
npdf = _stub("npdf")


like = _like  # like(x, c): the float64 constant c in x's dtype (folded at compile time); jitted code only


def maxnum(a, b):
    """max(a, b) ignoring a NaN operand (IEEE maxNum); vectorisable as a reduction. Jitted code only."""
    raise NotImplementedError("_vmath.maxnum runs inside @numba.njit code only")


def _by_type(x, f32, f64):
    if x == types.float32:
        return f32
    if x == types.float64:
        return f64
    return None


@overload(exp, inline="always")
def _ol_exp(x):
    return _by_type(x, lambda x: _exp(x, _EXP_K32, _EXP_Q32), lambda x: _exp(x, _EXP_K64, _EXP_Q64))


@overload(exp_neg, inline="always")
def _ol_exp_neg(x):
    return _by_type(x, lambda x: _exp_neg(x, _EXPN_K32, _EXP_Q32), lambda x: _exp_neg(x, _EXPN_K64, _EXP_Q64))


@overload(ndtr_npdf, inline="always")
def _ol_ndtr_npdf(x):
    return _by_type(x, lambda x: _ndtr_npdf32(x), lambda x: _ndtr_npdf64(x))


@overload(log, inline="always")
def _ol_log(x):
    return _by_type(x, lambda x: _log(x, _LOG_K32, _LOG_P32), lambda x: _log(x, _LOG_K64, _LOG_P64))


@overload(log1p, inline="always")
def _ol_log1p(x):
    return _by_type(x, lambda x: _log1p(x, _LOG_K32, _LOG_P32), lambda x: _log1p(x, _LOG_K64, _LOG_P64))


@overload(tanh, inline="always")
def _ol_tanh(x):
    return _by_type(x, lambda x: _tanh(x, _TANH_T32, _TANH_P32, _EXPN_K32, _EXP_Q32),
                    lambda x: _tanh(x, _TANH_T64, _TANH_P64, _EXPN_K64, _EXP_Q64))


@overload(sigmoid, inline="always")
def _ol_sigmoid(x):
    return _by_type(x, lambda x: _sigmoid(x, _EXPN_K32, _EXP_Q32), lambda x: _sigmoid(x, _EXPN_K64, _EXP_Q64))


@overload(softplus, inline="always")
def _ol_softplus(x):
    return _by_type(x, lambda x: _softplus(x, _LOG_K32, _LOG_P32, _EXPN_K32, _EXP_Q32),
                    lambda x: _softplus(x, _LOG_K64, _LOG_P64, _EXPN_K64, _EXP_Q64))


@overload(erf, inline="always")
def _ol_erf(x):
    return _by_type(x, lambda x: _erf32(x), lambda x: _erf64(x))


@overload(erfc, inline="always")
def _ol_erfc(x):
    return _by_type(x, lambda x: _erfc32(x), lambda x: _erfc64(x))


@overload(ndtr, inline="always")
def _ol_ndtr(x):
    return _by_type(x, lambda x: _ndtr32(x), lambda x: _ndtr64(x))


@overload(npdf, inline="always")
def _ol_npdf(x):
    return _by_type(x, lambda x: _npdf(x, _NDTR_XMAX32, _EXPN_K32, _EXP_Q32),
                    lambda x: _npdf(x, _NDTR_XMAX64, _EXPN_K64, _EXP_Q64))


@overload(maxnum, inline="always")
def _ol_maxnum(a, b):
    if isinstance(a, types.Float) and a == b:
        return lambda a, b: _maxnum(a, b)
    return None

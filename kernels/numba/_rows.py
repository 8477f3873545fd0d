"""Row primitives shared by the softmax-family kernels (softmax.py, cross_entropy.py, bce.py).

Each takes a contiguous 1-D row (float32 or float64) and runs vectorised loops over it; the kernels call them
once per row from a ``prange``. Jitted code only.

* `row_max`: the largest entry, as an integer max over order-preserving keys of the float bits. An integer
  max vectorises without fast-math and costs one op per vector; the float ``maxNum`` reduction costs three
  (its NaN handling), which made the max pass ~45% slower (float32, row in cache, this code's AVX-512 test
  machine: 0.98 -> 0.54 ms per 4096x4096 on one thread). The key of a float with bits ``i`` (read as a
  signed integer) is ``i ^ ((i >> (bits-1)) & MAX)``: positive floats keep their bits, negative ones have
  the magnitude bits flipped, so keys order exactly as the floats do, with ``-0 < +0``. A NaN orders above
  ``+inf`` (sign bit clear) or below ``-inf`` (sign bit set). Either way a NaN in the row poisons the row's
  sum of ``exp(x - max)`` (through ``max`` or through its own entry), which is what torch gives.
* `exp_sum(row, m, out)`: ``out = exp(row - m)`` (`_vmath.exp_neg`; ``m`` must be the row's max, so
  ``row - m <= 0`` or NaN, its domain), then the sum of out while it is in cache. The sum is float64 across
  blocks of `BLOCK` entries; within a block it is vector partial sums in the row's dtype (float32: each of
  LLVM's 64 partials on AVX-512 holds 8 terms before they are added pairwise, so a block sum is within ~10
  float32 roundings); a row of one block or less is summed in float64 directly. Only the block sums' add
  carries ``reassoc``, set on the one instruction (`_add_reassoc`).
  Against an exp pass then a float64 sum of every entry (a conversion per entry, half the vector width):
  2.70 -> 2.35 ms per 4096x4096 float32 in cache on one thread.
* `sum_f64`, `dot_f64`: float64 reductions with vector partial sums.

A row is always reduced in the same order, whatever thread runs it and wherever its arrays lie, so results
do not depend on the thread count or on memory placement (they can differ in the last bits between an
AVX2 and an AVX-512 machine, whose vector widths give different partial sums).

Caching note (as for `_vmath`): `exp_sum` is inlined into its callers, and Numba's on-disk cache of a caller
does not notice edits to this file. After changing it, delete ``kernels/numba/__pycache__``.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import _vmath as vm

# Entries per block of `exp_sum`: vector partial sums in the row's dtype within a block, float64 across
# blocks. 512 keeps each of the 64 float32 partials (16 lanes x 4 interleaved accumulators, AVX-512) at 8
# terms.
BLOCK = 512

# Reduction-only fast-math for `sum_f64` / `dot_f64`: reassociation lets LLVM keep vector partial sums.
_FM_SUM = {"reassoc", "contract", "nsz", "arcp"}


# -- intrinsics ------------------------------------------------------------------------------------------
def _key_ops(builder, value, bits):
    # i ^ ((i >> (bits - 1)) & MAX): an involution, so the same ops map a key back to the float's bits
    it = ir.IntType(bits)
    sign = builder.ashr(value, ir.Constant(it, bits - 1))
    return builder.xor(value, builder.and_(sign, ir.Constant(it, (1 << (bits - 1)) - 1)))


@intrinsic
def _order_key(typingctx, x):
    """The signed integer whose order is x's order as a float (see the module docstring)."""
    if not isinstance(x, types.Float):
        return None
    bits = x.bitwidth

    def codegen(context, builder, sig, args):
        return _key_ops(builder, builder.bitcast(args[0], ir.IntType(bits)), bits)

    return types.int64(x) if bits == 64 else types.int32(x), codegen


@intrinsic
def _from_key(typingctx, key, like):
    """The float (of like's type) whose `_order_key` is key."""
    if not isinstance(like, types.Float) or not isinstance(key, types.Integer):
        return None
    if key.bitwidth != like.bitwidth:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(_key_ops(builder, args[0], like.bitwidth), args[1].type)

    return like(key, like), codegen


@intrinsic
def _add_reassoc(typingctx, a, b):
    """a + b marked ``reassoc contract`` on this one add: lets LLVM vectorise a sum that accumulates it,
    without giving fast-math to anything else in the loop."""
    if not isinstance(a, types.Float) or a != b:
        return None

    def codegen(context, builder, sig, args):
        add = builder.fadd(args[0], args[1])
        add.flags.extend(("reassoc", "contract"))
        return add

    return a(a, b), codegen


# -- row primitives --------------------------------------------------------------------------------------
@numba.njit(cache=True)
def row_max(row):
    """Largest entry of a non-empty row (a NaN may be returned when the row holds one)."""
    m = _order_key(row[0])
    for i in range(1, row.shape[0]):
        k = _order_key(row[i])
        m = max(m, k)
    return _from_key(m, row[0])


@numba.njit(cache=True)
def _exp_shifted(row, m, out):
    for i in range(row.shape[0]):
        out[i] = vm.exp_neg(row[i] - m)


@numba.njit(cache=True)
def _block_sum(a):
    s = vm.like(a[0], 0.0)
    for i in range(a.shape[0]):
        s = _add_reassoc(s, a[i])
    return s


@numba.njit(cache=True, inline="always")
def exp_sum(row, m, out):
    """``out[:] = exp(row - m)`` (m the row's max; out a same-length row of the same dtype), returns the
    float64 sum of out."""
    # Two passes, the second over out while it is in cache. One loop that stores and sums was no faster
    # (2.6-2.8 against 2.35 ms per 4096x4096 float32 in cache, one thread), and LLVM guards a loop that
    # loads row and stores out with a runtime alias check: where the two lie within a vector step of each
    # other (small arrays malloc'd side by side) it runs the scalar copy of the loop, which adds in another
    # order, so the sum depended on where the arrays were placed (test_bad_inputs caught a 1-ulp difference
    # between a strided input and its contiguous copy). The sum loop stores nothing, so it always takes the
    # vector path for a given length. Inlined (Numba IR): as a call it cost ~30 ns a row in argument
    # passing, 3.8 -> 7.2 us for 128 rows of 10 classes.
    _exp_shifted(row, m, out)
    n = out.shape[0]
    if n <= BLOCK:  # a row of one block: its float64 sum directly, as fast on a short row
        return sum_f64(out)
    s = 0.0
    for lo in range(0, n, BLOCK):
        s += np.float64(_block_sum(out[lo:min(lo + BLOCK, n)]))
    return s


@numba.njit(cache=True, fastmath=_FM_SUM)
def sum_f64(a):
    """float64 sum of a row."""
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i])
    return s


@numba.njit(cache=True, fastmath=_FM_SUM)
def dot_f64(a, b):
    """float64 sum of a * b over two rows of equal length."""
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i]) * np.float64(b[i])
    return s

"""Fused linear + bias + activation, ``act(x @ W^T + b)``, for the Numba backend.

What it fuses: the GEMM runs as one BLAS call (`matmul.blas_matmul`: OpenBLAS, see `matmul.EXPLAIN` for
why) writing straight into the output, and then one parallel pass adds the bias and applies the activation
in place. Against torch's ``F.gelu(F.linear(x, W, b))`` this saves a second ``(N, O)`` allocation (and its
page faults) and one write stream, and the activation is `_vmath`'s vectorised erf/sigmoid.

Tried and dropped: running the GEMM in row blocks of ~2-8 MiB of output and applying the epilogue to each
block while it is in cache. Measured 0.35x (128-row blocks) and 0.65x (512-row blocks) of the single call
for 4096x1024x4096 fp32 (shared 2-core machine, interleaved medians), because every BLAS call re-packs all
of W (16 MiB) and wakes its thread pool again; the DRAM pass the blocking would save costs far less.

The epilogue is one parallel pass over the rows (``prange``; on the calling thread below `SERIAL_BELOW`
outputs): bias added into the row, the row copied to
``saved`` when a gradient is wanted, then the activation in place with the vectorised row loops of
`activations.py` (no fastmath, NaN/inf as torch). Rows are independent and every element's arithmetic is
fixed, so results never depend on Numba's thread count (the GEMM's depend only on BLAS).

Saved for backward (as the NumPy reference): None for 'none', y for 'relu' (same mask as the
pre-activation, NaN included), the pre-activation for 'gelu', 'gelu_tanh', 'silu'; with ``save=False`` the
backward recomputes it. Backward: ``g_pre = grad * act'(saved)`` in one parallel pass, then BLAS for
``g_pre @ W`` and ``g_pre^T @ x``, and a row-sum for the bias.

Floor: 2*N*O*K flops at the BLAS's speed, plus one read+write of the ``(N, O)`` output for the epilogue
(4096x1024x4096 fp32: 34.4 GFLOP and 128 MiB).
"""
import contextlib

import numba
import numpy as np

from .. import _composed_linear_act as _composed
from . import _blocks
from . import _vmath as vm
from . import activations as _act
from . import matmul as _mm

ACTIVATIONS = _composed.ACTIVATIONS
_NO_CONTEXT = contextlib.nullcontext()
_CODES = {name: i for i, name in enumerate(ACTIVATIONS)}


@numba.njit(cache=True)
def _add_row(row, bias):
    for j in range(row.shape[0]):
        row[j] += bias[j]


@numba.njit(cache=True)
def _copy_row(src, dst):
    for j in range(src.shape[0]):
        dst[j] = src[j]


# In-place activations of one row. They are written here on a single array, not by calling the
# activations.py block loops with x is y: LLVM's runtime overlap check sends an aliased (in-place) call of
# those to the scalar fallback loop (measured ~3x slower). Same formulas and constants, so the same bits.
@numba.njit(cache=True, error_model="numpy")
def _gelu_erf_row(row):
    for j in range(row.shape[0]):
        v = row[j]
        row[j] = v * vm.ndtr(v)


@numba.njit(cache=True, error_model="numpy")
def _gelu_tanh_row(row):
    for j in range(row.shape[0]):
        v = row[j]
        u2 = vm.like(v, 2 * _act._KBETA) * (v + vm.like(v, _act._KKAPPA) * (v * v * v))  # 2u
        row[j] = v * vm.sigmoid(u2)  # 0.5 (1 + tanh(u)) = sigmoid(2u), as activations.py


@numba.njit(cache=True)
def _relu_row(row):
    for j in range(row.shape[0]):
        v = row[j]
        row[j] = v if not v < 0 else 0  # keeps NaN


@numba.njit(cache=True, error_model="numpy")
def _silu_row(row):
    for j in range(row.shape[0]):
        v = row[j]
        row[j] = v * vm.sigmoid(v)


@numba.njit(cache=True)
def _epilogue_row(y, i, bias, saved, code, has_bias, save):
    row = y[i]
    if has_bias:
        _add_row(row, bias)
    if save:
        _copy_row(row, saved[i])
    if code == 0:
        _gelu_erf_row(row)
    elif code == 1:
        _gelu_tanh_row(row)
    elif code == 2:
        _relu_row(row)
    elif code == 3:
        _silu_row(row)


@numba.njit(parallel=True, cache=True)
def _epilogue_kernel(y, bias, saved, code, has_bias, save):
    """y[i] = act(y[i] + bias) in place for every row; saved[i] = the pre-activation when ``save``."""
    for i in numba.prange(y.shape[0]):
        _epilogue_row(y, i, bias, saved, code, has_bias, save)


@numba.njit(cache=True)
def _epilogue_serial(y, bias, saved, code, has_bias, save):
    """`_epilogue_kernel` on the calling thread (small outputs)."""
    for i in range(y.shape[0]):
        _epilogue_row(y, i, bias, saved, code, has_bias, save)


@numba.njit(cache=True)
def _grad_pre_row(saved, grad, out, i, code):
    if code == 0:
        _act._gelu_erf_bwd_block(saved[i], grad[i], out[i])
    elif code == 1:
        _act._gelu_tanh_bwd_block(saved[i], grad[i], out[i])
    elif code == 2:
        _act._relu_bwd_block(saved[i], grad[i], out[i])
    else:
        _act._silu_bwd_block(saved[i], grad[i], out[i])


@numba.njit(parallel=True, cache=True)
def _grad_pre_kernel(saved, grad, out, code):
    """out[i] = grad[i] * act'(saved[i]) for every row (saved: pre-activation, or y for relu)."""
    for i in numba.prange(saved.shape[0]):
        _grad_pre_row(saved, grad, out, i, code)


@numba.njit(cache=True)
def _grad_pre_serial(saved, grad, out, code):
    """`_grad_pre_kernel` on the calling thread (small outputs)."""
    for i in range(saved.shape[0]):
        _grad_pre_row(saved, grad, out, i, code)


# Outputs with fewer elements run the epilogue (and the backward's act' pass) on the calling thread. Right
# after a multi-threaded OpenBLAS call, whose worker spins on the other core for ~0.1 s, a parallel Numba pass waits
# for that core: a lone ``linear_act`` of 128x256 -> 256 (32K outputs) took 8.0 ms instead of ~0.1 ms
# (2-core Zen 5 VM, 2026-11-27). The pass itself is a few microseconds at this size.
SERIAL_BELOW = 1 << 17


def _epilogue(y, b, s, code, has_bias, keep):
    (_epilogue_serial if y.size < SERIAL_BELOW else _epilogue_kernel)(y, b, s, code, has_bias, keep)


def _grad_pre(saved, grad, out, code):
    (_grad_pre_serial if grad.size < SERIAL_BELOW else _grad_pre_kernel)(saved, grad, out, code)


def _code(activation):
    _composed.check(activation)
    return _CODES[activation]


def linear_act_forward(x, weight, bias, activation, save):
    """``act(x @ weight^T + bias)``: one BLAS GEMM into the output, then bias + activation in place.

    Args:
        x: ``(N, K)`` float32/float64 C-contiguous array.
        weight: ``(O, K)`` array of the same dtype (used transposed in place: never copied).
        bias: ``(O,)`` array or None.
        activation: ``'gelu'``, ``'gelu_tanh'``, ``'relu'``, ``'silu'`` or ``'none'``.
        save: whether to return what the backward needs (see the module docstring).

    Returns:
        ``(y, saved)``: y ``(N, O)`` C-contiguous; saved ``(N, O)`` or None.

    Example:
        >>> y, _ = linear_act_forward(np.ones((1, 2)), np.ones((3, 2)), None, "relu", False)
        >>> y.tolist()
        [[2.0, 2.0, 2.0]]
    """
    code = _code(activation)
    n, o = x.shape[0], weight.shape[0]
    y = _blocks.empty((n, o), x.dtype)
    keep = save and activation not in ("none", "relu")
    saved = _blocks.empty_like(y) if keep else None
    if y.size == 0:
        return y, (y if save and activation == "relu" else saved)
    has_bias = bias is not None
    b = bias if has_bias else np.empty(0, x.dtype)
    s = saved if keep else np.empty((0, 0), x.dtype)
    # weight.T is a view: BLAS reads it transposed, no copy. Where the own gemm is the in-step GEMM (AVX-512),
    # the product is marked as followed by a Numba kernel, so a large one runs there instead of on OpenBLAS,
    # whose spinning workers stall the parallel epilogue: lone 1024^3 relu took 20.0 ms that way against
    # 9.3 ms for the GEMM alone, and 6.0 ms now. With AVX2 the in-step GEMM would be MKL, slower than
    # OpenBLAS here by more than the stall (matmul module docstring), so OpenBLAS stays.
    with _mm.between_numba_kernels() if _mm.OWN_GEMM_IN_STEP else _NO_CONTEXT:
        _mm.blas_matmul(x, weight.T, out=y)
    if code != 4 or has_bias:
        _epilogue(y, b, s, code, has_bias, keep)
    return y, (y if save and activation == "relu" else saved)


def linear_act_backward(grad, x, weight, bias, saved, activation, need_input=True):
    """Gradients of :func:`linear_act_forward`.

    Args:
        grad: ``(N, O)`` C-contiguous upstream gradient.
        x, weight, bias: the forward inputs (bias ``(O,)`` or None).
        saved: the forward's ``saved`` (None: the pre-activation is recomputed with one GEMM).
        activation: the forward's activation.
        need_input: False when no gradient w.r.t. x is wanted: grad_x is then None (one GEMM fewer).

    Returns:
        ``(grad_x, grad_weight, grad_bias_or_None)`` of shapes ``(N, K)``, ``(O, K)``, ``(O,)``.

    Example:
        >>> gx, gw, gb = linear_act_backward(np.ones((1, 3)), np.ones((1, 2)), np.ones((3, 2)), None, None, "relu")
        >>> gx.tolist(), gb
        ([[3.0, 3.0]], None)
    """
    code = _code(activation)
    if code == 4:
        g_pre = grad
    else:
        if saved is None:
            saved, _ = linear_act_forward(x, weight, bias, "none", False)
            if code == 2:
                _epilogue(saved, np.empty(0, x.dtype), np.empty((0, 0), x.dtype), 2, False, False)
        g_pre = _blocks.empty_like(grad)
        if grad.size:
            _grad_pre(saved, grad, g_pre, code)
    return _mm.linear_backward(g_pre, x, weight, bias is not None, need_input=need_input)


EXPLAIN = {
    "linear_act": "one BLAS GEMM (OpenBLAS via np.matmul) into the output, then bias + activation in place in one "
                  "parallel Numba pass (vectorised _vmath erf/sigmoid); no second (N, O) array",
}

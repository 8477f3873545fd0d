"""Batched matmul and linear on CuPy arrays, through cuBLAS (``cupy.matmul``).

No custom kernel: cuBLAS is at or near the hardware's peak for these shapes, so the backend's job is only
to express each gradient as one GEMM on transposed views (cuBLAS reads them through its transpose flags,
with no copy). Floor: 2 * B * M * N * K FLOPs per GEMM; the bias add and its gradient are bandwidth-bound
passes over the output. CuPy leaves TF32 off by default (``CUPY_TF32=0``), so float32 GEMMs are IEEE fp32.
"""
from __future__ import annotations

from . import _source as src


def _mm(cp, a, b):
    """``a @ b``; an empty inner dimension gives zeros without relying on the GEMM's handling of K == 0."""
    if a.shape[-1] == 0:
        return cp.zeros(a.shape[:-1] + b.shape[-1:], dtype=a.dtype)
    return cp.matmul(a, b)


def matmul(a, b):
    """Batched matrix product.

    Args:
        a: ``(B, M, K)`` float CuPy array.
        b: ``(B, K, N)`` array of the same dtype.

    Returns:
        ``(B, M, N)`` array ``a @ b`` (zeros when K == 0).

    Example:
        >>> c = matmul(cupy.ones((2, 3, 4)), cupy.ones((2, 4, 5)))  # doctest: +SKIP
    """
    cp = src.cupy()
    src.check_float(a, b)
    return _mm(cp, a, b)


def matmul_backward(grad, a, b, needs=(True, True)):
    """Gradients of `matmul`: ``grad @ b^T`` and ``a^T @ grad``.

    Args:
        grad: ``(B, M, N)`` upstream gradient.
        a: ``(B, M, K)`` forward left operand.
        b: ``(B, K, N)`` forward right operand.
        needs: ``(need_a, need_b)``; a gradient not needed is not computed and comes back as None.

    Returns:
        ``(grad_a, grad_b)``: ``(B, M, K)`` and ``(B, K, N)``.
    """
    cp = src.cupy()
    src.check_float(grad, a, b)
    grad_a = cp.ascontiguousarray(_mm(cp, grad, b.transpose(0, 2, 1))) if needs[0] else None
    grad_b = cp.ascontiguousarray(_mm(cp, a.transpose(0, 2, 1), grad)) if needs[1] else None
    return grad_a, grad_b


def linear(x, weight, bias):
    """Affine map ``x @ weight^T + bias``, as ``torch.nn.functional.linear``.

    Args:
        x: ``(N, K)`` float CuPy array.
        weight: ``(O, K)`` array of the same dtype.
        bias: ``(O,)`` array or None.

    Returns:
        ``(N, O)`` array.
    """
    cp = src.cupy()
    src.check_float(x, weight, bias)
    y = _mm(cp, x, weight.T)
    if bias is not None:
        y += bias
    return y


def linear_backward(grad, x, weight, has_bias, need_input=True):
    """Gradients of `linear`.

    Args:
        grad: ``(N, O)`` upstream gradient.
        x: ``(N, K)`` forward input.
        weight: ``(O, K)`` forward weight.
        has_bias: whether the forward had a bias.
        need_input: False when no gradient w.r.t. x is wanted (a first layer): grad_x is then None, one GEMM fewer.

    Returns:
        ``(grad_x, grad_weight, grad_bias_or_None)``: ``grad @ weight`` ``(N, K)``, ``grad^T @ x`` ``(O, K)``,
        and ``grad.sum(0)`` ``(O,)`` when has_bias.
    """
    cp = src.cupy()
    src.check_float(grad, x, weight)
    grad_x = _mm(cp, grad, weight) if need_input else None
    grad_w = cp.ascontiguousarray(_mm(cp, grad.T, x))
    grad_b = None
    if has_bias:  # half gradients are summed in float32, then rounded once
        grad_b = grad.sum(axis=0, dtype=src.acc_dtype(src.check_float(grad))).astype(grad.dtype)
    return grad_x, grad_w, grad_b

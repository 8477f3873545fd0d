"""Batched matmul and linear (``x @ W.T + b``) in NumPy: the reference for every backend.

Plain ``np.matmul``; the backward formulas are the usual ones: for ``C = A @ B``,
``dA = dC @ B^T`` and ``dB = A^T @ dC``; for ``y = x @ W^T + b``, ``dx = dy @ W``, ``dW = dy^T @ x``,
``db = sum_rows(dy)``. Empty dimensions give correctly shaped (zero-filled when K == 0) results.

Floor: 2*B*M*N*K flops (compute-bound); backward twice that.
"""
import numpy as np


def matmul(a, b):
    """Batched matrix product.

    Args:
        a: ``(B, M, K)`` float32/float64 array.
        b: ``(B, K, N)`` array of the same dtype.

    Returns:
        ``(B, M, N)`` array ``a @ b``.

    Example:
        >>> matmul(np.ones((1, 2, 3)), np.ones((1, 3, 4))).shape
        (1, 2, 4)
    """
    return np.matmul(a, b)


def matmul_backward(grad, a, b, needs=(True, True)):
    """Gradients of :func:`matmul`.

    Args:
        grad: ``(B, M, N)`` upstream gradient.
        a, b: the forward inputs, ``(B, M, K)`` and ``(B, K, N)``.
        needs: ``(need_a, need_b)``; a gradient not needed is not computed and comes back as None.

    Returns:
        ``(grad_a, grad_b)``: ``grad @ b^T`` of shape ``(B, M, K)`` and ``a^T @ grad`` of shape ``(B, K, N)``.

    Example:
        >>> ga, gb = matmul_backward(np.ones((1, 2, 4)), np.ones((1, 2, 3)), np.ones((1, 3, 4)))
        >>> ga.shape, gb.shape
        ((1, 2, 3), (1, 3, 4))
    """
    return (np.matmul(grad, b.transpose(0, 2, 1)) if needs[0] else None,
            np.matmul(a.transpose(0, 2, 1), grad) if needs[1] else None)


def linear(x, weight, bias):
    """Affine map ``x @ weight^T + bias`` (torch.nn.functional.linear).

    Args:
        x: ``(N, K)`` float32/float64 array.
        weight: ``(O, K)`` array of the same dtype.
        bias: ``(O,)`` array or None.

    Returns:
        ``(N, O)`` array.

    Example:
        >>> linear(np.ones((2, 3)), np.ones((4, 3)), np.arange(4.0)).tolist()[0]
        [3.0, 4.0, 5.0, 6.0]
    """
    y = np.matmul(x, weight.T)
    if bias is not None:
        y += bias
    return y


def linear_backward(grad, x, weight, has_bias, need_input=True):
    """Gradients of :func:`linear`.

    Args:
        grad: ``(N, O)`` upstream gradient.
        x: ``(N, K)`` forward input.
        weight: ``(O, K)`` forward weight.
        has_bias: whether the forward had a bias.
        need_input: False when no gradient w.r.t. x is wanted (a first layer): grad_x is then None, one GEMM fewer.

    Returns:
        ``(grad_x, grad_weight, grad_bias_or_None)`` of shapes ``(N, K)``, ``(O, K)``, ``(O,)``.

    Example:
        >>> gx, gw, gb = linear_backward(np.ones((2, 4)), np.ones((2, 3)), np.ones((4, 3)), True)
        >>> gx.shape, gw.shape, gb.tolist()
        ((2, 3), (4, 3), [2.0, 2.0, 2.0, 2.0])
    """
    grad_bias = grad.sum(axis=0) if has_bias else None
    return (np.matmul(grad, weight) if need_input else None), np.matmul(grad.T, x), grad_bias


# What `dlcore.explain` adds for ops this module serves.
EXPLAIN = {"matmul": "the reference calls BLAS through np.matmul", "linear": "the reference calls BLAS through np.matmul"}

"""Triton batched matrix product and linear layer, forward and backward.

One kernel, ``_matmul_kernel``: each program computes a ``BLOCK_M x BLOCK_N`` tile of ``C = A @ B`` (+ bias)
with ``tl.dot`` over ``BLOCK_K`` slices, accumulating in fp32 (fp64 for fp64). Operands come with
arbitrary strides, so every transpose the backward needs (``grad @ B^T``, ``A^T @ grad``, ``x @ W^T``)
is a stride swap, never a copy. fp32 operands use ``input_precision="ieee"``: fp32-accurate results,
no silent tf32 (at fp32-FMA speed on the GPU); fp16/bf16 run on the tensor cores.

Programs are ordered in groups of GROUP_M tile-rows so that consecutive programs share A and B tiles
in L2. Floor: ``2*B*M*N*K`` FLOPs (compute-bound at useful sizes); bytes ``(M*K + K*N + M*N)*itemsize``
per batch.
"""
import torch
import triton
import triton.language as tl

from ._common import acc_dtype, col_sum, dot_precision, interpreting


def _configs():
    if interpreting():  # the interpreter would run every config: one small tile
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}, num_warps=4)]
    cfg = [
        # Hopper fp16/bf16 tiles (Triton's matmul tutorial sizes)
        (128, 256, 64, 8, 3, 8),
        (128, 128, 64, 8, 4, 4),
        (128, 64, 32, 8, 4, 4),
        (64, 128, 32, 8, 4, 4),
        (64, 64, 32, 8, 4, 4),
        # small-register tiles for fp32 IEEE (FMA) and fp64
        (64, 64, 16, 8, 3, 4),
        (32, 64, 32, 8, 3, 4),
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": g}, num_stages=s, num_warps=w)
        for m, n, k, g, s, w in cfg
    ]


def _prune(configs, named_args, **kwargs):
    """Drop tiles far larger than the problem (less compile time, no wasted lanes); keep at least one."""
    M, N = named_args["M"], named_args["N"]
    keep = [c for c in configs
            if c.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(M))
            and c.kwargs["BLOCK_N"] <= max(64, triton.next_power_of_2(N))]
    return keep or configs[-1:]


@triton.autotune(configs=_configs(), key=["M", "N", "K", "HAS_BIAS", "PREC"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr,  # A (B, M, K), B (B, K, N), C (B, M, N), any strides
    bias_ptr,  # (N,) added to every row of C, or a dummy when not HAS_BIAS
    M, N, K,
    stride_ab, stride_am, stride_ak,
    stride_bb, stride_bk, stride_bn,
    stride_cb, stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr,  # fp32 accumulator (fp64 for fp64 operands)
    PREC: tl.constexpr,  # tl.dot input_precision: "ieee" for fp32
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)  # int64 batch offsets
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: GROUP_M tile-rows are swept column by column, so A and B tiles stay in L2
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # wrap rows/columns past the edge onto valid ones (results discarded by the store mask): the loads
    # need no M/N mask and stay vectorised
    rm = (offs_m % M).to(tl.int64)
    rn = (offs_n % N).to(tl.int64)
    a_ptrs = a_ptr + batch * stride_ab + rm[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + batch * stride_bb + offs_k[:, None] * stride_bk + rn[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)  # accumulate in fp32 whatever the operand dtype
    for k in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k
        a = tl.load(a_ptrs, mask=k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC, out_dtype=ACC)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn).to(ACC)[None, :]
    c_ptrs = c_ptr + batch * stride_cb + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _mm(a, b, bias=None, out=None):
    """C = A @ B (+ bias) for 3-D operands of any strides; returns a fresh contiguous (B, M, N)."""
    Bt, M, K = a.shape
    N = b.shape[2]
    if out is None:
        out = torch.empty((Bt, M, N), dtype=a.dtype, device=a.device)
    if Bt == 0 or M == 0 or N == 0:
        return out
    if K == 0:  # an empty sum: zeros (plus the bias), without a launch
        out.zero_()
        if bias is not None:
            out += bias
        return out

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), Bt)

    _matmul_kernel[grid](
        a, b, out, bias if bias is not None else a,
        M, N, K,
        a.stride(0), a.stride(1), a.stride(2),
        b.stride(0), b.stride(1), b.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        HAS_BIAS=bias is not None, ACC=acc_dtype(a.dtype), PREC=dot_precision(a.dtype),
    )
    return out


def matmul(a, b):
    """Batched matrix product.

    Args:
        a: ``(B, M, K)`` float tensor (fp16/bf16/fp32/fp64), any strides.
        b: ``(B, K, N)`` tensor of a's dtype.

    Returns:
        ``(B, M, N)`` tensor of a's dtype, accumulated in fp32 (fp64 for fp64); fp32 is IEEE, not tf32.

    Example:
        >>> c = matmul(torch.randn(2, 64, 32, device="cuda"), torch.randn(2, 32, 16, device="cuda"))
    """
    return _mm(a, b)


def matmul_backward(grad, a, b, needs=(True, True)):
    """Gradients of ``a @ b``: ``grad @ b^T`` and ``a^T @ grad`` (transposes are stride swaps).

    Args:
        grad: ``(B, M, N)`` upstream gradient.
        a: ``(B, M, K)``.
        b: ``(B, K, N)``.
        needs: ``(need_a, need_b)``; a gradient not needed is not computed and comes back as None.

    Returns:
        ``(grad_a, grad_b)``: ``(B, M, K)`` and ``(B, K, N)``, a's dtype.
    """
    return (_mm(grad, b.transpose(1, 2)) if needs[0] else None, _mm(a.transpose(1, 2), grad) if needs[1] else None)


def linear(x, weight, bias):
    """Affine map ``x @ weight^T + bias`` with the bias added in the kernel's epilogue.

    Args:
        x: ``(N, K)`` float tensor.
        weight: ``(O, K)``, x's dtype.
        bias: ``(O,)`` or None.

    Returns:
        ``(N, O)`` tensor of x's dtype.
    """
    y = _mm(x.unsqueeze(0), weight.t().unsqueeze(0), bias.contiguous() if bias is not None else None)
    return y.reshape(x.shape[0], weight.shape[0])


def linear_backward(grad, x, weight, has_bias, need_input=True):
    """Gradients of the linear layer.

    Args:
        grad: ``(N, O)`` upstream gradient.
        x: ``(N, K)`` forward input.
        weight: ``(O, K)``.
        has_bias: whether the forward had a bias.
        need_input: False when no gradient w.r.t. x is wanted (a first layer): grad_x is then None, one GEMM fewer.

    Returns:
        ``(grad_x (N, K), grad_weight (O, K), grad_bias (O,) or None)``, x's dtype.
    """
    g3 = grad.unsqueeze(0)
    grad_x = _mm(g3, weight.unsqueeze(0))[0] if need_input else None
    grad_w = _mm(grad.t().unsqueeze(0), x.unsqueeze(0))[0]
    grad_b = col_sum(grad).to(grad.dtype) if has_bias else None
    return grad_x, grad_w, grad_b

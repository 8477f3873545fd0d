"""Helpers shared by the Triton launchers: block-size choice, accumulator dtype, and two small reductions.

Nothing here is part of the backend contract (see ../README.md); the op modules import it privately.
"""
import os

import torch
import triton
import triton.language as tl

# The largest row a single program keeps in registers; longer rows use the looped (online) kernels.
# 16K fp32 values over 8-16 warps is about 32-64 registers per thread: past that Triton spills.
MAX_FUSED_BLOCK = 16384
# The chunk the looped kernels walk a long row with.
LOOP_BLOCK = 4096
# Elements per program of the 1-D elementwise kernels (16-byte vectors for fp32 over 4 warps x 2 rounds).
ELEMENTWISE_BLOCK = 1024

# Accepted floating dtypes; fp64 accumulates in fp64, everything else in fp32.
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(dtype):
    """The Triton accumulator dtype for tensors of ``dtype``: fp64 for fp64, else fp32."""
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"dlcore.kernels.triton: unsupported dtype {dtype}")
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype) -> str:
    """``input_precision`` for tl.dot: IEEE for fp32 (no silent tf32), the default for 16-bit types."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def row_block(n_cols: int, max_block: int | None = None):
    """(BLOCK, ONE_PASS) for a row-wise kernel over ``n_cols`` columns.

    A row that fits in ``max_block`` is held whole in registers (one read, one write); a longer row is
    walked in LOOP_BLOCK chunks by an online version.
    """
    max_block = MAX_FUSED_BLOCK if max_block is None else max_block
    block = triton.next_power_of_2(max(n_cols, 1))
    if block <= max_block:
        return max(block, 16), True
    return min(LOOP_BLOCK, max_block), False


def num_warps_for(block: int) -> int:
    """Warps for a row program of ``block`` elements (the Triton softmax tutorial's heuristic)."""
    if block >= 16384:
        return 16
    if block >= 4096:
        return 8
    return 4


def num_programs(device, work: int, per_sm: int = 1) -> int:
    """How many programs a persistent grid launches: enough to fill the GPU, never more than ``work``."""
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 2  # interpreter: few programs, each exercising the loop
    return max(1, min(work, sms * per_sm))


@triton.jit
def _partial_sum_kernel(
    x_ptr,  # *T, n elements, contiguous
    part_ptr,  # *ACC, one partial sum per program
    n,  # number of elements
    ACC: tl.constexpr,  # accumulator dtype (fp32, or fp64 for fp64 input)
    BLOCK: tl.constexpr,
):
    """Grid-stride partial sums: program p adds blocks p, p + P, ... Floor: reads n elements once."""
    pid = tl.program_id(0).to(tl.int64)  # int64: n may pass 2^31
    nprog = tl.num_programs(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=ACC)  # accumulate in fp32 (fp64 for fp64)
    for start in range(pid * BLOCK, n, nprog * BLOCK):
        idx = start + offs
        acc += tl.load(x_ptr + idx, mask=idx < n, other=0.0).to(ACC)
    tl.store(part_ptr + pid, tl.sum(acc, axis=0))


def sum_all(x: torch.Tensor, acc=None) -> torch.Tensor:
    """Deterministic sum of a contiguous tensor as a 0-d tensor of the accumulator dtype (fp32/fp64).

    Two launches: per-program partials over a grid-stride loop, then one program folds the partials.
    """
    acc = acc_dtype(x.dtype) if acc is None else acc
    out_dtype = torch.float64 if acc == tl.float64 else torch.float32
    n = x.numel()
    if n == 0:
        return torch.zeros((), dtype=out_dtype, device=x.device)
    block = 1024 if not interpreting() else 256
    nprog = num_programs(x.device, triton.cdiv(n, block), per_sm=4)
    parts = torch.empty(nprog, dtype=out_dtype, device=x.device)
    _partial_sum_kernel[(nprog,)](x, parts, n, ACC=acc, BLOCK=block)
    if nprog == 1:
        return parts.reshape(())
    out = torch.empty(1, dtype=out_dtype, device=x.device)
    _partial_sum_kernel[(1,)](parts, out, nprog, ACC=acc, BLOCK=triton.next_power_of_2(min(nprog, 1024)))
    return out.reshape(())


@triton.jit
def _col_sum_kernel(
    x_ptr,  # *T, (R, C) with row stride stride_r and unit column stride
    out_ptr,  # *ACC, (SPLITS, C): one partial column sum per row split
    R,
    C,
    stride_r,
    rows_per_split,  # rows each split covers (a multiple of BLOCK_R)
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Partial column sums: program (c, s) sums rows [s*rows_per_split, ...) of BLOCK_C columns.

    Floor: reads R*C elements once, writes SPLITS*C partials.
    """
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    r_start = pid_s * rows_per_split
    r_end = tl.minimum(r_start + rows_per_split, R)
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC)  # accumulate in fp32 (fp64 for fp64)
    for r0 in range(r_start, r_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_r + cols[None, :]
        acc += tl.load(ptrs, mask=(rows < r_end)[:, None] & cmask[None, :], other=0.0).to(ACC)
    tl.store(out_ptr + pid_s.to(tl.int64) * C + cols, tl.sum(acc, axis=0), mask=cmask)


def col_sum(x: torch.Tensor, acc=None) -> torch.Tensor:
    """Column sums of a 2-D tensor, returned in the accumulator dtype (fp32, or fp64 for fp64).

    Splits the rows across programs so that a few columns still fill the GPU, then folds the
    (splits, C) partials with a second launch of the same kernel. Deterministic.
    """
    acc = acc_dtype(x.dtype) if acc is None else acc
    out_dtype = torch.float64 if acc == tl.float64 else torch.float32
    R, C = x.shape
    if C == 0 or R == 0:
        return torch.zeros(C, dtype=out_dtype, device=x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    block_c = min(triton.next_power_of_2(C), 64 if interpreting() else 128)
    block_r = 16 if interpreting() else 32
    col_blocks = triton.cdiv(C, block_c)
    splits = num_programs(x.device, triton.cdiv(R, block_r), per_sm=4) // col_blocks if R > 4 * block_r else 1
    splits = max(1, splits)
    rows_per_split = triton.cdiv(triton.cdiv(R, splits), block_r) * block_r
    splits = triton.cdiv(R, rows_per_split)
    out = torch.empty((splits, C), dtype=out_dtype, device=x.device)
    _col_sum_kernel[(col_blocks, splits)](
        x, out, R, C, x.stride(0), rows_per_split, ACC=acc, BLOCK_R=block_r, BLOCK_C=block_c
    )
    if splits == 1:
        return out.reshape(C)
    return col_sum(out, acc)


@triton.jit
def sqrt_ieee(v):
    """Correctly rounded square root: tl.sqrt_rn for fp32 (tl.sqrt may be approximate), tl.sqrt for fp64."""
    if v.dtype == tl.float64:
        r = tl.sqrt(v)
    else:
        r = tl.sqrt_rn(v)
    return r

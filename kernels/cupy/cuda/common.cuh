// common.cuh: dtype plumbing and warp/block reductions shared by every dlcore CuPy kernel.
//
// Each .cu file is compiled once per dtype with exactly one of -DDL_DTYPE_FLOAT32, -DDL_DTYPE_FLOAT64 or
// -DDL_DTYPE_FLOAT16 (float32 when none is given), which picks
//   dl_t    the storage type of every floating array argument (float, double, or the bits of an IEEE half),
//   dl_acc  the type every sum, exp and log is computed in (float for float32 and float16, double for float64).
// Kernels read with dl_load() and write with dl_store(), so one source serves all three dtypes, and half
// inputs are always accumulated in fp32.
//
// kernels/cupy/_source.py pastes this header (and math.cuh) in place of the `#include` lines, so NVRTC sees
// one self-contained string; nvcc (the compile test) finds them beside the .cu files. Nothing here includes a
// system header, so NVRTC needs no include path. Row offsets are 64-bit everywhere (`long long`): a (R, C) array may hold more than 2^31 elements.
#pragma once

#if defined(DL_DTYPE_FLOAT64)
typedef double dl_t;
typedef double dl_acc;
#elif defined(DL_DTYPE_FLOAT16)
typedef unsigned short dl_t;  // the 16 bits of an IEEE binary16; converted with cvt, no cuda_fp16.h needed
typedef float dl_acc;         // accumulate half inputs in fp32
#else
typedef float dl_t;
typedef float dl_acc;
#endif

#define DL_FULL_MASK 0xffffffffu

// Dynamic shared memory, typed. (The CPU emulator used by the tests defines its own version first.)
#ifndef DL_DYNAMIC_SMEM
#define DL_DYNAMIC_SMEM(type, name)                               \
    extern __shared__ __align__(16) unsigned char dl_smem_raw_[]; \
    type* name = reinterpret_cast<type*>(dl_smem_raw_)
#endif

// ---- loads and stores ---------------------------------------------------------------------------------
#if defined(DL_DTYPE_FLOAT16)
__device__ __forceinline__ float dl_load(dl_t h) {
#ifdef DL_EMU
    return dl_emu_half_to_float(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}
__device__ __forceinline__ dl_t dl_store(float f) {
#ifdef DL_EMU
    return dl_emu_float_to_half(f);
#else
    dl_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));  // round to nearest even, as torch's .half()
    return h;
#endif
}
#else
__device__ __forceinline__ dl_acc dl_load(dl_t v) { return (dl_acc)v; }
__device__ __forceinline__ dl_t dl_store(dl_acc v) { return (dl_t)v; }
#endif

// ---- math: float/double overloads (dl_exp, dl_log, ...), dl_inf, NaN-propagating dl_max ---------------
#include "math.cuh"
#define DL_INF (dl_inf(dl_acc(0)))

// ---- warp and block reductions -------------------------------------------------------------------------
// Butterfly (xor) shuffles: every lane ends with the full result. Blocks are whole warps (blockDim.x a
// multiple of 32, at most 1024) and every thread of the block must call the block_* helpers.
template <typename A>
__device__ __forceinline__ A dl_warp_sum(A v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DL_FULL_MASK, v, o);
    return v;
}

template <typename A>
__device__ __forceinline__ A dl_warp_max(A v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = dl_max(v, __shfl_xor_sync(DL_FULL_MASK, v, o));
    return v;
}

// Sum over the block; `red` is a __shared__ scratch of at least 32 values. Returns the total to every thread.
template <typename A>
__device__ A dl_block_sum(A v, A* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = dl_warp_sum(v);
    __syncthreads();  // every thread has read `red` from any previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nwarps ? red[lane] : A(0);
        v = dl_warp_sum(v);  // the shuffles also order warp 0's reads of red[] before lane 0's write below
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    return red[0];
}

// Online log-sum-exp state (m, s): the running max m and s = sum(exp(x - m)).
// A state with m == -inf has s == 0 and contributes nothing; merging two such states must not evaluate
// exp(-inf - -inf) = NaN, hence the guards. A NaN anywhere makes m or s NaN, as torch's softmax does.
template <typename A>
__device__ __forceinline__ void dl_lse_merge(A& m, A& s, A m2, A s2) {
    const A mn = dl_max(m, m2);
    const A a = (m == -dl_inf(A(0))) ? A(0) : dl_exp(m - mn);
    const A b = (m2 == -dl_inf(A(0))) ? A(0) : dl_exp(m2 - mn);
    s = s * a + s2 * b;
    m = mn;
}

// Add one element x to the state: one exp per element (rescale s only when the max moves).
template <typename A>
__device__ __forceinline__ void dl_lse_push(A& m, A& s, A x) {
    if (x > m) {               // m may be -inf: exp(-inf - x) is then 0 and s was 0
        s = s * dl_exp(m - x) + A(1);
        m = x;
    } else if (x != -dl_inf(A(0))) {  // -inf adds exactly 0 (and would give exp(NaN) when m == -inf)
        s += dl_exp(x - m);    // a NaN x fails `x > m`, lands here and poisons s
    }
}

// Merge the (m, s) states of the whole block; `red` holds at least 64 values. Every thread gets the result.
template <typename A>
__device__ void dl_block_lse(A& m, A& s, A* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const A m2 = __shfl_xor_sync(DL_FULL_MASK, m, o);
        const A s2 = __shfl_xor_sync(DL_FULL_MASK, s, o);
        dl_lse_merge(m, s, m2, s2);
    }
    __syncthreads();
    if (lane == 0) {
        red[warp] = m;
        red[32 + warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < nwarps ? red[lane] : -dl_inf(A(0));
        s = lane < nwarps ? red[32 + lane] : A(0);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const A m2 = __shfl_xor_sync(DL_FULL_MASK, m, o);
            const A s2 = __shfl_xor_sync(DL_FULL_MASK, s, o);
            dl_lse_merge(m, s, m2, s2);
        }
        if (lane == 0) {
            red[0] = m;
            red[32] = s;
        }
    }
    __syncthreads();
    m = red[0];
    s = red[32];
}

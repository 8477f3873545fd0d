// math.cuh: float/double overloads of the math functions dlcore's kernels use, and NaN-aware max/min.
//
// Included by common.cuh (RawKernels) and used as a preamble by every ElementwiseKernel, so that templated
// code (losses.cuh, the activation formulas) calls expf for float and exp for double explicitly instead of
// relying on the C++ overloads of CUDA's math headers. No system header: NVRTC needs no include path (and
// has no INFINITY macro, hence dl_inf).
#pragma once

__device__ __forceinline__ float dl_inf(float) { return __int_as_float(0x7f800000); }
__device__ __forceinline__ double dl_inf(double) { return __longlong_as_double(0x7ff0000000000000LL); }

__device__ __forceinline__ float dl_exp(float x) { return expf(x); }
__device__ __forceinline__ double dl_exp(double x) { return exp(x); }
__device__ __forceinline__ float dl_log(float x) { return logf(x); }
__device__ __forceinline__ double dl_log(double x) { return log(x); }
__device__ __forceinline__ float dl_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double dl_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float dl_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dl_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dl_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double dl_abs(double x) { return fabs(x); }
__device__ __forceinline__ float dl_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dl_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float dl_erf(float x) { return erff(x); }
__device__ __forceinline__ double dl_erf(double x) { return erf(x); }

// NaN-propagating max / min (fmaxf drops NaN, torch's max keeps it): a NaN in a row must poison that row.
template <typename A>
__device__ __forceinline__ A dl_max(A a, A b) { return (a > b || a != a) ? a : b; }
template <typename A>
__device__ __forceinline__ A dl_min(A a, A b) { return (a < b || a != a) ? a : b; }

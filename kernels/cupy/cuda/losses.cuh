// losses.cuh: the pointwise formulas of the loss kernels, templated on the compute type A.
//
// Shared verbatim by the RawKernels of bce.cu (which include this file) and by the ElementwiseKernels of
// bce.py (which use it, after math.cuh, as their preamble), so each formula exists exactly once.
#pragma once
#include "math.cuh"

// log(1 + exp(-x)) without overflow: log1p(exp(-|x|)) + max(-x, 0). Finite for x = +-1e4 (exp never sees a
// positive argument); a NaN x stays NaN.
template <typename A>
__device__ __forceinline__ A dl_softplus_neg(A x) {
    return dl_log1p(dl_exp(-dl_abs(x))) + (x < A(0) ? -x : A(0));
}

// sigmoid(x) from the branch whose exp cannot overflow.
template <typename A>
__device__ __forceinline__ A dl_sigmoid(A x) {
    if (x >= A(0)) return A(1) / (A(1) + dl_exp(-x));
    const A e = dl_exp(x);
    return e / (A(1) + e);
}

// binary_cross_entropy_with_logits for one element, torch's stable form:
//   (1 - y) x + (1 + (pw - 1) y) * log(1 + exp(-x));  pw = 1 when there is no pos_weight.
template <typename A>
__device__ __forceinline__ A dl_bce_loss(A x, A y, A pw) {
    const A log_weight = A(1) + (pw - A(1)) * y;
    return (A(1) - y) * x + log_weight * dl_softplus_neg(x);
}

// d loss / d x = (1 + (pw - 1) y) sigmoid(x) - pw y   (= sigmoid(x) - y when pw = 1).
template <typename A>
__device__ __forceinline__ A dl_bce_grad(A x, A y, A pw) {
    const A log_weight = A(1) + (pw - A(1)) * y;
    return log_weight * dl_sigmoid(x) - pw * y;
}

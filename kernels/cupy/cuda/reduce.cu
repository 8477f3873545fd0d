// reduce.cu: the second, deterministic stage of dlcore's two-stage reductions.
//
// Loss kernels (mse, bce, cross_entropy) and layer_norm's weight/bias gradient first write per-block partial
// sums in dl_acc (fp32 for float32/float16, fp64 for float64); these kernels fold the partials in a fixed
// order and store one dl_t result. No atomics anywhere, so the same input gives bitwise-equal output.
#include "common.cuh"

// total = sum(part[0:m]) / divisor[0], written to out[0]. Launch: grid (1,), block (B,), B a multiple of 32.
// The divisor lives on the device so that a count computed by an earlier kernel (cross-entropy's number of
// non-ignored targets) never round-trips through the host; 0/0 gives NaN, torch's mean of nothing.
// Floor: reads m * sizeof(dl_acc) bytes (m is at most a few thousand partials).
extern "C" __global__ void dl_sum_partials(const dl_acc* __restrict__ part, long long m,
                                           const dl_acc* __restrict__ divisor, dl_t* __restrict__ out) {
    __shared__ dl_acc red[32];
    dl_acc acc = dl_acc(0);
    for (long long p = threadIdx.x; p < m; p += blockDim.x) acc += part[p];
    acc = dl_block_sum(acc, red);
    if (threadIdx.x == 0) out[0] = dl_store(acc / divisor[0]);
}

// out[c] = sum_p part[p, c] for a (P, D) array of partials, one thread per column, rows in order.
// Launch: grid (ceil(D / B),), block (B,). Adjacent threads read adjacent columns: coalesced.
// Floor: reads P * D * sizeof(dl_acc), writes D * sizeof(dl_t) bytes.
extern "C" __global__ void dl_col_sum(const dl_acc* __restrict__ part, long long P, long long D,
                                      dl_t* __restrict__ out) {
    const long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= D) return;  // no barrier in this kernel, so an early exit is safe
    dl_acc acc = dl_acc(0);
    for (long long p = 0; p < P; ++p) acc += part[p * D + c];
    out[c] = dl_store(acc);
}

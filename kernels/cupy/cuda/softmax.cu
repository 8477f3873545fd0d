// softmax.cu: row-wise softmax / log_softmax over a C-contiguous (R, C) array, forward and backward.
//
// One block per row (grid-stride over rows, so any R fits the grid), threads striding across the row so a
// warp's loads are coalesced. Reductions: per-thread partials, then warp shuffles, then shared memory.
//
// Non-finite policy (torch's, RELIABILITY.md items 5-7): the max is subtracted before exp, so +-1e4 logits
// are finite; a -inf entry gets exactly 0 probability; a row that is all -inf, or holds NaN or +inf, comes
// out all NaN (exp(-inf - -inf), exp(inf - inf) and NaN itself all give NaN), exactly as torch does.
#include "common.cuh"

// y = softmax(x) (log_y == 0) or log_softmax(x) (log_y == 1) along each row.
// Numerics: one online pass keeps (max, sum exp(x - max)) per thread, rescaling the sum when the max moves
// (one exp per element), then the per-thread states merge across the block (dl_block_lse); a second pass
// writes exp(x - max) / sum, or x - max - log(sum).
// Floor: reads R*C and writes R*C elements (2 * R * C * sizeof(dl_t) bytes); the second read of the row is
// served from L1/L2 for rows up to a few hundred KB.
extern "C" __global__ void softmax_fwd(const dl_t* __restrict__ x, dl_t* __restrict__ y, long long R, long long C,
                                       int log_y) {
    __shared__ dl_acc red[64];
    for (long long row = blockIdx.x; row < R; row += gridDim.x) {
        const dl_t* xr = x + row * C;  // 64-bit row offset
        dl_t* yr = y + row * C;
        dl_acc m = -DL_INF, s = dl_acc(0);
        for (long long c = threadIdx.x; c < C; c += blockDim.x) dl_lse_push(m, s, dl_load(xr[c]));
        dl_block_lse(m, s, red);
        if (log_y) {
            const dl_acc shift = m + dl_log(s);  // log-sum-exp of the row
            for (long long c = threadIdx.x; c < C; c += blockDim.x) yr[c] = dl_store(dl_load(xr[c]) - shift);
        } else {
            const dl_acc inv = dl_acc(1) / s;
            for (long long c = threadIdx.x; c < C; c += blockDim.x)
                yr[c] = dl_store(dl_exp(dl_load(xr[c]) - m) * inv);
        }
    }
}

// grad_x from the forward output y and the upstream gradient g, along each row:
//   softmax:      gx = y * (g - sum(g * y))
//   log_softmax:  gx = g - exp(y) * sum(g)
// One block reduction per row, then one elementwise pass. Floor: reads 2 * R * C, writes R * C elements.
extern "C" __global__ void softmax_bwd(const dl_t* __restrict__ y, const dl_t* __restrict__ g, dl_t* __restrict__ gx,
                                       long long R, long long C, int log_y) {
    __shared__ dl_acc red[32];
    for (long long row = blockIdx.x; row < R; row += gridDim.x) {
        const dl_t* yr = y + row * C;
        const dl_t* gr = g + row * C;
        dl_t* out = gx + row * C;
        dl_acc part = dl_acc(0);
        if (log_y) {
            for (long long c = threadIdx.x; c < C; c += blockDim.x) part += dl_load(gr[c]);
        } else {
            for (long long c = threadIdx.x; c < C; c += blockDim.x) part += dl_load(gr[c]) * dl_load(yr[c]);
        }
        const dl_acc total = dl_block_sum(part, red);
        if (log_y) {
            for (long long c = threadIdx.x; c < C; c += blockDim.x)
                out[c] = dl_store(dl_load(gr[c]) - dl_exp(dl_load(yr[c])) * total);
        } else {
            for (long long c = threadIdx.x; c < C; c += blockDim.x) {
                const dl_acc yv = dl_load(yr[c]);
                out[c] = dl_store(yv * (dl_load(gr[c]) - total));
            }
        }
    }
}

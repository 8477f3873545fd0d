// cross_entropy.cu: softmax cross-entropy from logits (N, C) and int64 class indices (N,), with ignore_index
// and label smoothing; the loss and d(loss)/d(logits) in one fused pass over each row.
//
// Per row, with lse = log(sum_j exp(x_j)) and eps the label smoothing:
//   loss  = lse - (1 - eps) x_t - (eps / C) sum_j x_j        (= (1-eps) nll + eps * mean_j(-log p_j))
//   dx_j  = mult * (p_j - (1 - eps) [j == t] - eps / C),     p_j = exp(x_j - lse)
// where mult is the upstream gradient of the row: g[row * g_stride] * scale[0] (scale = 1 / n_valid for
// 'mean'). Rows whose target equals ignore_index get loss 0 and gradient 0.
#include "common.cuh"

// n_valid = number of targets != ignore_index, as dl_acc, for the 'mean' divisor and gradient scale.
// Launch: grid (1,), block (B,). Floor: reads N * 8 bytes.
extern "C" __global__ void ce_count_valid(const long long* __restrict__ target, long long N, long long ignore_index,
                                          dl_acc* __restrict__ count, dl_acc* __restrict__ inv_count) {
    __shared__ dl_acc red[32];
    dl_acc c = dl_acc(0);
    for (long long i = threadIdx.x; i < N; i += blockDim.x) c += target[i] != ignore_index ? dl_acc(1) : dl_acc(0);
    c = dl_block_sum(c, red);
    if (threadIdx.x == 0) {
        count[0] = c;
        inv_count[0] = c > dl_acc(0) ? dl_acc(1) / c : dl_acc(0);  // every row ignored: all gradients are 0
    }
}

// One block per row (grid-stride over rows).
// Numerics: an online (max, sum exp(x - max)) pass gives lse with the max subtracted (finite for +-1e4
// logits; -inf logits add exactly 0); the smoothing sum of x is only taken when eps > 0, so -inf logits
// with eps == 0 never produce 0 * inf. The gradient pass recomputes exp(x - lse) (recompute, not store).
// want_loss / want_grad pick the outputs (a pointer that is not wanted may be any valid pointer).
// Floor: reads N*C elements (twice when the gradient is wanted, the 2nd from L1/L2) and N targets;
// writes N losses (dl_acc) and, with the gradient, N*C elements.
extern "C" __global__ void ce_fwd_bwd(const dl_t* __restrict__ x, const long long* __restrict__ target,
                                      long long N, long long C, long long ignore_index, dl_acc smoothing,
                                      const dl_t* __restrict__ g, long long g_stride,
                                      const dl_acc* __restrict__ scale, dl_acc* __restrict__ loss,
                                      dl_t* __restrict__ gx, int want_loss, int want_grad) {
    __shared__ dl_acc red[64];
    for (long long row = blockIdx.x; row < N; row += gridDim.x) {
        const dl_t* xr = x + row * C;  // 64-bit row offset
        const long long t = target[row];
        if (t == ignore_index) {  // uniform over the block: every thread sees the same row
            if (want_loss && threadIdx.x == 0) loss[row] = dl_acc(0);
            if (want_grad)
                for (long long c = threadIdx.x; c < C; c += blockDim.x) gx[row * C + c] = dl_store(dl_acc(0));
            continue;
        }
        dl_acc m = -DL_INF, s = dl_acc(0), sx = dl_acc(0);
        for (long long c = threadIdx.x; c < C; c += blockDim.x) {
            const dl_acc v = dl_load(xr[c]);
            dl_lse_push(m, s, v);
            sx += v;
        }
        dl_block_lse(m, s, red);
        const dl_acc lse = m + dl_log(s);
        const dl_acc off = smoothing / dl_acc(C);  // eps / C
        if (want_loss) {
            dl_acc sum_x = dl_acc(0);
            if (smoothing > dl_acc(0)) sum_x = dl_block_sum(sx, red);  // condition is uniform over the block
            if (threadIdx.x == 0) {
                dl_acc l = lse - (dl_acc(1) - smoothing) * dl_load(xr[t]);
                if (smoothing > dl_acc(0)) l -= off * sum_x;
                loss[row] = l;
            }
        }
        if (want_grad) {
            const dl_acc mult = dl_load(g[row * g_stride]) * scale[0];
            const dl_acc on = dl_acc(1) - smoothing;
            for (long long c = threadIdx.x; c < C; c += blockDim.x) {
                const dl_acc p = dl_exp(dl_load(xr[c]) - lse);
                const dl_acc d = p - (c == t ? on : dl_acc(0)) - off;
                gx[row * C + c] = dl_store(mult * d);
            }
        }
    }
}

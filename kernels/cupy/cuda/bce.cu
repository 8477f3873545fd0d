// bce.cu: the first stage of binary_cross_entropy_with_logits' 'mean' / 'sum' reduction over (R, C).
//
// Each block sums the stable per-element loss (losses.cuh) over a grid-stride slice of the flattened array in
// dl_acc and writes one partial; reduce.cu's dl_sum_partials folds them in a fixed order (deterministic).
#include "common.cuh"
#include "losses.cuh"

// part[blockIdx.x] = sum over this block's elements of loss(x, y, pw[i % C]) (pw = 1 when has_pw == 0;
// pw may then be any valid pointer). Floor: reads 2 * n * sizeof(dl_t) bytes (+ C for pos_weight, cached).
extern "C" __global__ void bce_partial(const dl_t* __restrict__ x, const dl_t* __restrict__ y,
                                       const dl_t* __restrict__ pw, long long n, long long C, int has_pw,
                                       dl_acc* __restrict__ part) {
    __shared__ dl_acc red[32];
    dl_acc acc = dl_acc(0);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const dl_acc p = has_pw ? dl_load(pw[i % C]) : dl_acc(1);
        acc += dl_bce_loss(dl_load(x[i]), dl_load(y[i]), p);
    }
    acc = dl_block_sum(acc, red);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// mse.cu: the first stage of mse_loss's 'mean' / 'sum' reduction over two C-contiguous 1-D arrays.
//
// Each block sums (x - y)^2 over a grid-stride slice in dl_acc (fp32 for float32/float16, fp64 for float64)
// and writes one partial; reduce.cu's dl_sum_partials folds the partials in a fixed order and divides by n
// (or 1). Two stages instead of atomics: the same input always gives the same bits.
#include "common.cuh"

// part[blockIdx.x] = sum over this block's elements of (x - y)^2.
// Launch: grid (G,), block (B,), G * B threads striding over n (64-bit index).
// Floor: reads 2 * n * sizeof(dl_t) bytes, writes G partials.
extern "C" __global__ void mse_partial(const dl_t* __restrict__ x, const dl_t* __restrict__ y, long long n,
                                       dl_acc* __restrict__ part) {
    __shared__ dl_acc red[32];
    dl_acc acc = dl_acc(0);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const dl_acc d = dl_load(x[i]) - dl_load(y[i]);
        acc += d * d;
    }
    acc = dl_block_sum(acc, red);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

// layer_norm.cu: LayerNorm over the rows of a C-contiguous (R, D) array, forward and backward.
//
// Forward: one block per row (grid-stride over rows). Backward: one block per row for grad_x, and a
// column-tiled kernel writing per-chunk partial sums for grad_weight / grad_bias, folded in order by
// reduce.cu's dl_col_sum (deterministic: no atomics).
#include "common.cuh"

// y = (x - mean) * rstd * w + b, mean and rstd written per row (in dl_t, as the contract asks).
// Numerics: two passes over the row in dl_acc, shifted by a pivot (the row's first element, x0). With
// dm = sum(x - x0) / D, every centred value is computed as (x - x0) - dm: for a row like 1e4 + 1e-2 noise,
// x - x0 is exact and dm is small and accurate, whereas an fp32 mean near 1e4 is itself rounded by ~5e-4,
// 5% of the spread (and a plain fp32 sum of the row rounds by ~0.03 per add). The biased variance is the
// mean of ((x - x0) - dm)^2 (no E[x^2] - E[x]^2 cancellation); a constant row gives variance 0 and
// rstd = 1/sqrt(eps). rstd is 1/sqrt(var + eps) (not rsqrt, ~2 ulp off). The saved mean is x0 + dm.
// has_w / has_b select the affine parts (w, b may be any valid pointer when unused).
// Floor: reads R*D (+2D) elements, writes R*D + 2R elements; the 2nd and 3rd reads of a row hit L1/L2.
extern "C" __global__ void ln_fwd(const dl_t* __restrict__ x, const dl_t* __restrict__ w, const dl_t* __restrict__ b,
                                  dl_t* __restrict__ y, dl_t* __restrict__ mean_out, dl_t* __restrict__ rstd_out,
                                  long long R, long long D, dl_acc eps, int has_w, int has_b) {
    __shared__ dl_acc red[32];
    for (long long row = blockIdx.x; row < R; row += gridDim.x) {
        const dl_t* xr = x + row * D;  // 64-bit row offset
        dl_t* yr = y + row * D;
        dl_acc pivot = D > 0 ? dl_load(xr[0]) : dl_acc(0);  // the same value in every thread
        if (!(pivot - pivot == dl_acc(0))) pivot = dl_acc(0);   // inf / NaN pivot: no shift (NaN still propagates)
        dl_acc s = dl_acc(0);
        for (long long c = threadIdx.x; c < D; c += blockDim.x) s += dl_load(xr[c]) - pivot;
        const dl_acc dm = dl_block_sum(s, red) / dl_acc(D);  // mean - pivot
        dl_acc q = dl_acc(0);
        for (long long c = threadIdx.x; c < D; c += blockDim.x) {
            const dl_acc d = (dl_load(xr[c]) - pivot) - dm;
            q += d * d;
        }
        const dl_acc var = dl_block_sum(q, red) / dl_acc(D);
        const dl_acc rstd = dl_acc(1) / dl_sqrt(var + eps);
        const dl_acc mean = pivot + dm;
        for (long long c = threadIdx.x; c < D; c += blockDim.x) {
            dl_acc v = ((dl_load(xr[c]) - pivot) - dm) * rstd;
            if (has_w) v *= dl_load(w[c]);
            if (has_b) v += dl_load(b[c]);
            yr[c] = dl_store(v);
        }
        if (threadIdx.x == 0) {
            mean_out[row] = dl_store(mean);
            rstd_out[row] = dl_store(rstd);
        }
    }
}

// grad_x = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), with gw = g * w (g when has_w == 0) and
// xhat recomputed from the saved statistics (recompute instead of storing xhat). The saved mean is rounded
// to dl_t (by ~5e-4 near 1e4 in fp32, 5% of a 1e-2 spread), so it serves as a pivot: x - mean is exact
// there, and dm = mean(x - mean) restores the lost digits: xhat = ((x - mean) - dm) * rstd. dm is written
// to dm_out for ln_bwd_wb.
// Floor: reads 2 * R * D (+D) elements and 2R statistics, writes R * D elements (the extra pass over x for
// dm is served from L1/L2).
extern "C" __global__ void ln_bwd_x(const dl_t* __restrict__ g, const dl_t* __restrict__ x, const dl_t* __restrict__ w,
                                    const dl_t* __restrict__ mean, const dl_t* __restrict__ rstd,
                                    dl_t* __restrict__ gx, dl_acc* __restrict__ dm_out, long long R, long long D,
                                    int has_w) {
    __shared__ dl_acc red[32];
    for (long long row = blockIdx.x; row < R; row += gridDim.x) {
        const dl_t* gr = g + row * D;
        const dl_t* xr = x + row * D;
        dl_t* out = gx + row * D;
        const dl_acc mu = dl_load(mean[row]), rs = dl_load(rstd[row]);
        dl_acc s0 = dl_acc(0);
        for (long long c = threadIdx.x; c < D; c += blockDim.x) s0 += dl_load(xr[c]) - mu;
        const dl_acc dm = dl_block_sum(s0, red) / dl_acc(D);
        dl_acc sa = dl_acc(0), sb = dl_acc(0);
        for (long long c = threadIdx.x; c < D; c += blockDim.x) {
            const dl_acc gw = has_w ? dl_load(gr[c]) * dl_load(w[c]) : dl_load(gr[c]);
            sa += gw;
            sb += gw * ((dl_load(xr[c]) - mu) - dm) * rs;
        }
        const dl_acc mean_gw = dl_block_sum(sa, red) / dl_acc(D);
        const dl_acc mean_gwx = dl_block_sum(sb, red) / dl_acc(D);
        for (long long c = threadIdx.x; c < D; c += blockDim.x) {
            const dl_acc gw = has_w ? dl_load(gr[c]) * dl_load(w[c]) : dl_load(gr[c]);
            const dl_acc xhat = ((dl_load(xr[c]) - mu) - dm) * rs;
            out[c] = dl_store(rs * (gw - mean_gw - xhat * mean_gwx));
        }
        if (threadIdx.x == 0) dm_out[row] = dm;
    }
}

// Partial column sums for grad_weight = sum_r g * xhat and grad_bias = sum_r g, xhat as in ln_bwd_x (which
// must run first: it writes dm).
// Launch: grid (ceil(D / 32), P), block (32, 8). Block (bx, by) covers columns [32 bx, 32 bx + 32) and rows
// [by * rows_per_chunk, (by + 1) * rows_per_chunk); thread (tx, ty) walks rows ty, ty + 8, ... so each warp
// reads 32 adjacent columns of one row (coalesced). The 8 row-partials are folded in shared memory (row
// stride 33 avoids bank conflicts) and written to part_w / part_b at [by, column], in dl_acc.
// Floor: reads 2 * R * D elements + 3R statistics, writes 2 * P * D partials.
extern "C" __global__ void ln_bwd_wb(const dl_t* __restrict__ g, const dl_t* __restrict__ x,
                                     const dl_t* __restrict__ mean, const dl_t* __restrict__ rstd,
                                     const dl_acc* __restrict__ dm, dl_acc* __restrict__ part_w,
                                     dl_acc* __restrict__ part_b, long long R, long long D,
                                     long long rows_per_chunk) {
    __shared__ dl_acc sw[8][33];
    __shared__ dl_acc sb[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const long long col = (long long)blockIdx.x * 32 + tx;
    const long long r0 = (long long)blockIdx.y * rows_per_chunk;
    const long long r1 = r0 + rows_per_chunk < R ? r0 + rows_per_chunk : R;
    dl_acc aw = dl_acc(0), ab = dl_acc(0);
    if (col < D) {
        for (long long r = r0 + ty; r < r1; r += 8) {
            const dl_acc gv = dl_load(g[r * D + col]);
            aw += gv * ((dl_load(x[r * D + col]) - dl_load(mean[r])) - dm[r]) * dl_load(rstd[r]);
            ab += gv;
        }
    }
    sw[ty][tx] = aw;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && col < D) {
        dl_acc tw = dl_acc(0), tb = dl_acc(0);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            tw += sw[k][tx];
            tb += sb[k][tx];
        }
        part_w[(long long)blockIdx.y * D + col] = tw;
        part_b[(long long)blockIdx.y * D + col] = tb;
    }
}

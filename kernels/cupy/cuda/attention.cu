// attention.cu: scaled dot-product attention, flash-style (no (L, S) matrix in memory), forward and backward.
//
// Shapes: q (B, L, E), k (B, S, E), v (B, S, Ev), out (B, L, Ev), all C-contiguous; lse (B, L) in dl_acc.
// Masks: mask_kind 0 none, 1 causal (key j visible to query i iff j <= i, torch's top-left tril), 2 bool
// (true = attend), 3 additive (added to the scaled score). A bool/additive mask is read through element
// strides (msb, msl, mss), any of which may be 0 (a broadcast view) or negative.
//
// Layout of work: one warp per query row (forward, dq) or per key row (dk/dv), ATT_WARPS rows per block
// sharing shared-memory tiles of 32 keys (or 32 queries): lane j of a warp owns key (query) j of the tile
// when scores are formed, and output columns lane, lane + 32, ... when they are accumulated. A launch
// covers at most ATT_COLS output columns; the launcher loops over column chunks for wider heads.
//
// Numerics:
//  * online softmax (forward): running max m and sum l per row; a new tile rescales l and the output
//    accumulator by exp(m_old - m_new), so only one pass over the keys is needed and exp never overflows;
//  * masking is a select: a masked score becomes -inf whatever q.k was, and a masked key's V row (or, in the
//    backward, its dS) is skipped by a warp ballot rather than multiplied by 0, so NaN or 1e10 in masked-out
//    K/V positions cannot reach the output; an additive -inf is treated as masked the same way;
//  * a row with no visible key (fully masked, or S == 0) gets output 0 and lse -inf, as torch; its
//    gradients are 0;
//  * the backward recomputes P = exp(s - lse) tile by tile from the saved lse (recompute, not store) and
//    uses delta = rowsum(dO * O), so dS = P * (dP - delta) needs no second softmax pass;
//  * all accumulation is in dl_acc (fp32 for float16 inputs).
#include "common.cuh"

#define ATT_WARPS 8                    // rows per block (one warp each)
#define ATT_THREADS (ATT_WARPS * 32)
#define ATT_PER_LANE 8                 // output columns per lane, kept in registers (unrolled, constant index)
#define ATT_COLS (32 * ATT_PER_LANE)   // output columns per launch

// The scaled, masked score of query i and key j in batch b.
__device__ __forceinline__ dl_acc att_score(dl_acc dot, dl_acc scale, int kind, const unsigned char* mask_b,
                                            const dl_t* mask_f, long long moff, long long i, long long j) {
    const dl_acc s = dot * scale;
    if (kind == 1) return j > i ? -DL_INF : s;
    if (kind == 2) return mask_b[moff] ? s : -DL_INF;
    if (kind == 3) {
        const dl_acc a = dl_load(mask_f[moff]);
        return a == -DL_INF ? -DL_INF : s + a;  // select: -inf masks even a NaN score
    }
    return s;
}

// Forward: out[b, i, ev0:ev0+evn] and (write_lse) lse[b, i].
// Work item = (b, block of ATT_WARPS queries), grid-stride. Shared memory (dl_acc): K tile [32][E|1],
// V tile [32][evn], the block's query rows [ATT_WARPS][E].
// Floor: reads q, k, v once per query block: B*L*E + ceil(L/8)*B*S*(E+Ev) elements (K/V re-read per query
// block, from L2 for moderate S); writes B*L*Ev + B*L. FLOPs 2*B*L*S*(E+Ev) (half that with causal).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_fwd(const dl_t* __restrict__ q, const dl_t* __restrict__ k, const dl_t* __restrict__ v,
         const unsigned char* __restrict__ mask_b, const dl_t* __restrict__ mask_f, long long msb, long long msl,
         long long mss, int mask_kind, dl_t* __restrict__ out, dl_acc* __restrict__ lse, long long B, long long L,
         long long S, int E, int Ev, int ev0, int evn, dl_acc scale, int write_lse) {
    DL_DYNAMIC_SMEM(dl_acc, sm);
    const int ldk = E | 1;  // odd row stride: lane j reading Ks[j * ldk + e] touches 32 different banks
    dl_acc* Ks = sm;
    dl_acc* Vs = Ks + 32 * ldk;
    dl_acc* Qs = Vs + 32 * evn;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const long long tiles = (L + ATT_WARPS - 1) / ATT_WARPS;
    for (long long item = blockIdx.x; item < B * tiles; item += gridDim.x) {
        const long long b = item / tiles, i0 = (item - b * tiles) * ATT_WARPS, i = i0 + w;
        const bool row_ok = i < L;
        __syncthreads();  // the previous item is done with Qs
        for (int e = lane; e < E; e += 32) Qs[w * E + e] = row_ok ? dl_load(q[(b * L + i) * E + e]) : dl_acc(0);
        dl_acc m = -DL_INF, l = dl_acc(0);
        dl_acc acc[ATT_PER_LANE];
#pragma unroll
        for (int t = 0; t < ATT_PER_LANE; ++t) acc[t] = dl_acc(0);
        long long s_end = S;
        if (mask_kind == 1 && i0 + ATT_WARPS < S) s_end = i0 + ATT_WARPS;  // causal: no key beyond the last row
        for (long long j0 = 0; j0 < s_end; j0 += 32) {  // trip count is uniform over the block
            __syncthreads();  // Ks / Vs are free, Qs is written
            for (int idx = threadIdx.x; idx < 32 * E; idx += blockDim.x) {
                const int jj = idx / E, e = idx - jj * E;
                const long long j = j0 + jj;
                Ks[jj * ldk + e] = j < S ? dl_load(k[(b * S + j) * E + e]) : dl_acc(0);
            }
            for (int idx = threadIdx.x; idx < 32 * evn; idx += blockDim.x) {
                const int jj = idx / evn, e = idx - jj * evn;
                const long long j = j0 + jj;
                Vs[jj * evn + e] = j < S ? dl_load(v[(b * S + j) * Ev + ev0 + e]) : dl_acc(0);
            }
            __syncthreads();
            const long long j = j0 + lane;
            dl_acc sc = -DL_INF;
            if (row_ok && j < S) {
                dl_acc dot = dl_acc(0);
                for (int e = 0; e < E; ++e) dot += Qs[w * E + e] * Ks[lane * ldk + e];
                sc = att_score(dot, scale, mask_kind, mask_b, mask_f, b * msb + i * msl + j * mss, i, j);
            }
            const unsigned live = __ballot_sync(DL_FULL_MASK, sc != -DL_INF);
            const dl_acc m_new = dl_max(m, dl_warp_max(sc));
            if (m_new == -DL_INF) continue;  // nothing visible yet: l and acc stay 0 (warp-uniform)
            // rescale what was accumulated under the old max; m == -inf means l and acc are still 0
            const dl_acc alpha = m == -DL_INF ? dl_acc(0) : dl_exp(m - m_new);
            const dl_acc p = ((live >> lane) & 1u) ? dl_exp(sc - m_new) : dl_acc(0);
            l = l * alpha + dl_warp_sum(p);
#pragma unroll
            for (int t = 0; t < ATT_PER_LANE; ++t) acc[t] *= alpha;
            for (int jj = 0; jj < 32; ++jj) {
                const dl_acc pj = __shfl_sync(DL_FULL_MASK, p, jj);
                if ((live >> jj) & 1u) {  // warp-uniform select: a masked key's V row is never read
#pragma unroll
                    for (int t = 0; t < ATT_PER_LANE; ++t) {
                        const int e = lane + 32 * t;
                        if (e < evn) acc[t] += pj * Vs[jj * evn + e];
                    }
                }
            }
            m = m_new;
        }
        if (row_ok) {
            const bool empty = m == -DL_INF;  // no visible key: output 0, lse -inf
#pragma unroll
            for (int t = 0; t < ATT_PER_LANE; ++t) {
                const int e = lane + 32 * t;
                if (e < evn) out[(b * L + i) * Ev + ev0 + e] = dl_store(empty ? dl_acc(0) : acc[t] / l);
            }
            if (write_lse && lane == 0) lse[b * L + i] = empty ? -DL_INF : m + dl_log(l);
        }
    }
}

// delta[r] = sum_e dout[r, e] * out[r, e] for the B*L rows: one warp per row. Floor: reads 2*B*L*Ev.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_bwd_delta(const dl_t* __restrict__ dout, const dl_t* __restrict__ out, dl_acc* __restrict__ delta,
               long long rows, int Ev) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (long long r0 = (long long)blockIdx.x * ATT_WARPS; r0 < rows; r0 += (long long)gridDim.x * ATT_WARPS) {
        const long long r = r0 + w;
        dl_acc s = dl_acc(0);
        if (r < rows)
            for (int e = lane; e < Ev; e += 32) s += dl_load(dout[r * Ev + e]) * dl_load(out[r * Ev + e]);
        s = dl_warp_sum(s);  // every lane of the warp calls it (r is warp-uniform)
        if (r < rows && lane == 0) delta[r] = s;
    }
}

// dq[b, i, e0:e0+en] = scale * sum_j dS_ij k_j with dS_ij = P_ij (dO_i . v_j - delta_i), P_ij = exp(s_ij - lse_i).
// Work item = (b, block of ATT_WARPS queries). Shared memory (dl_acc): K tile [32][E|1], V tile [32][Ev|1],
// query rows [ATT_WARPS][E], dO rows [ATT_WARPS][Ev].
// Floor: reads q, dO, lse, delta once and k, v once per query block; writes B*L*E.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_bwd_dq(const dl_t* __restrict__ q, const dl_t* __restrict__ k, const dl_t* __restrict__ v,
            const dl_t* __restrict__ dout, const dl_acc* __restrict__ lse, const dl_acc* __restrict__ delta,
            const unsigned char* __restrict__ mask_b, const dl_t* __restrict__ mask_f, long long msb, long long msl,
            long long mss, int mask_kind, dl_t* __restrict__ dq, long long B, long long L, long long S, int E,
            int Ev, int e0, int en, dl_acc scale) {
    DL_DYNAMIC_SMEM(dl_acc, sm);
    const int ldk = E | 1, ldv = Ev | 1;
    dl_acc* Ks = sm;
    dl_acc* Vs = Ks + 32 * ldk;
    dl_acc* Qs = Vs + 32 * ldv;
    dl_acc* Gs = Qs + ATT_WARPS * E;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const long long tiles = (L + ATT_WARPS - 1) / ATT_WARPS;
    for (long long item = blockIdx.x; item < B * tiles; item += gridDim.x) {
        const long long b = item / tiles, i0 = (item - b * tiles) * ATT_WARPS, i = i0 + w;
        const bool row_ok = i < L;
        __syncthreads();
        for (int e = lane; e < E; e += 32) Qs[w * E + e] = row_ok ? dl_load(q[(b * L + i) * E + e]) : dl_acc(0);
        for (int e = lane; e < Ev; e += 32) Gs[w * Ev + e] = row_ok ? dl_load(dout[(b * L + i) * Ev + e]) : dl_acc(0);
        const dl_acc lse_i = row_ok ? lse[b * L + i] : -DL_INF;
        const dl_acc d_i = row_ok ? delta[b * L + i] : dl_acc(0);
        dl_acc acc[ATT_PER_LANE];
#pragma unroll
        for (int t = 0; t < ATT_PER_LANE; ++t) acc[t] = dl_acc(0);
        long long s_end = S;
        if (mask_kind == 1 && i0 + ATT_WARPS < S) s_end = i0 + ATT_WARPS;
        for (long long j0 = 0; j0 < s_end; j0 += 32) {
            __syncthreads();
            for (int idx = threadIdx.x; idx < 32 * E; idx += blockDim.x) {
                const int jj = idx / E, e = idx - jj * E;
                const long long j = j0 + jj;
                Ks[jj * ldk + e] = j < S ? dl_load(k[(b * S + j) * E + e]) : dl_acc(0);
            }
            for (int idx = threadIdx.x; idx < 32 * Ev; idx += blockDim.x) {
                const int jj = idx / Ev, e = idx - jj * Ev;
                const long long j = j0 + jj;
                Vs[jj * ldv + e] = j < S ? dl_load(v[(b * S + j) * Ev + e]) : dl_acc(0);
            }
            __syncthreads();
            const long long j = j0 + lane;
            dl_acc sc = -DL_INF;
            if (row_ok && j < S) {
                dl_acc dot = dl_acc(0);
                for (int e = 0; e < E; ++e) dot += Qs[w * E + e] * Ks[lane * ldk + e];
                sc = att_score(dot, scale, mask_kind, mask_b, mask_f, b * msb + i * msl + j * mss, i, j);
            }
            const bool mine = sc != -DL_INF;
            const unsigned live = __ballot_sync(DL_FULL_MASK, mine);
            if (live == 0u) continue;  // warp-uniform
            dl_acc ds = dl_acc(0);
            if (mine) {
                const dl_acc p = dl_exp(sc - lse_i);
                dl_acc dp = dl_acc(0);
                for (int e = 0; e < Ev; ++e) dp += Gs[w * Ev + e] * Vs[lane * ldv + e];
                ds = p * (dp - d_i);
            }
            for (int jj = 0; jj < 32; ++jj) {
                const dl_acc dsj = __shfl_sync(DL_FULL_MASK, ds, jj);
                if ((live >> jj) & 1u) {
#pragma unroll
                    for (int t = 0; t < ATT_PER_LANE; ++t) {
                        const int e = lane + 32 * t;
                        if (e < en) acc[t] += dsj * Ks[jj * ldk + e0 + e];
                    }
                }
            }
        }
        if (row_ok) {
#pragma unroll
            for (int t = 0; t < ATT_PER_LANE; ++t) {
                const int e = lane + 32 * t;
                if (e < en) dq[(b * L + i) * E + e0 + e] = dl_store(acc[t] * scale);
            }
        }
    }
}

// dk[b, j, ek0:ek0+ekn] = scale * sum_i dS_ij q_i and dv[b, j, ev0:ev0+evn] = sum_i P_ij dO_i.
// Work item = (b, block of ATT_WARPS keys); the queries are walked in tiles of 32 (from the first tile that
// can see the block's keys, under causal). Shared memory (dl_acc): Q tile [32][E|1], dO tile [32][Ev|1],
// lse and delta of the tile [32] each, the block's key rows [ATT_WARPS][E] and value rows [ATT_WARPS][Ev].
// Floor: reads k, v once and q, dO, lse, delta once per key block; writes B*S*(E+Ev).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
attn_bwd_dkdv(const dl_t* __restrict__ q, const dl_t* __restrict__ k, const dl_t* __restrict__ v,
              const dl_t* __restrict__ dout, const dl_acc* __restrict__ lse, const dl_acc* __restrict__ delta,
              const unsigned char* __restrict__ mask_b, const dl_t* __restrict__ mask_f, long long msb,
              long long msl, long long mss, int mask_kind, dl_t* __restrict__ dk, dl_t* __restrict__ dv,
              long long B, long long L, long long S, int E, int Ev, int ek0, int ekn, int ev0, int evn,
              dl_acc scale) {
    DL_DYNAMIC_SMEM(dl_acc, sm);
    const int ldq = E | 1, ldg = Ev | 1;
    dl_acc* Qs = sm;
    dl_acc* Gs = Qs + 32 * ldq;
    dl_acc* Ls = Gs + 32 * ldg;
    dl_acc* Ds = Ls + 32;
    dl_acc* Kw = Ds + 32;
    dl_acc* Vw = Kw + ATT_WARPS * E;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const long long tiles = (S + ATT_WARPS - 1) / ATT_WARPS;
    for (long long item = blockIdx.x; item < B * tiles; item += gridDim.x) {
        const long long b = item / tiles, jb = (item - b * tiles) * ATT_WARPS, j = jb + w;
        const bool key_ok = j < S;
        __syncthreads();
        for (int e = lane; e < E; e += 32) Kw[w * E + e] = key_ok ? dl_load(k[(b * S + j) * E + e]) : dl_acc(0);
        for (int e = lane; e < Ev; e += 32) Vw[w * Ev + e] = key_ok ? dl_load(v[(b * S + j) * Ev + e]) : dl_acc(0);
        dl_acc acc_k[ATT_PER_LANE], acc_v[ATT_PER_LANE];
#pragma unroll
        for (int t = 0; t < ATT_PER_LANE; ++t) acc_k[t] = acc_v[t] = dl_acc(0);
        const long long i_start = mask_kind == 1 ? (jb / 32) * 32 : 0;  // causal: queries i >= j only
        for (long long i0 = i_start; i0 < L; i0 += 32) {
            __syncthreads();
            for (int idx = threadIdx.x; idx < 32 * E; idx += blockDim.x) {
                const int ii = idx / E, e = idx - ii * E;
                const long long i = i0 + ii;
                Qs[ii * ldq + e] = i < L ? dl_load(q[(b * L + i) * E + e]) : dl_acc(0);
            }
            for (int idx = threadIdx.x; idx < 32 * Ev; idx += blockDim.x) {
                const int ii = idx / Ev, e = idx - ii * Ev;
                const long long i = i0 + ii;
                Gs[ii * ldg + e] = i < L ? dl_load(dout[(b * L + i) * Ev + e]) : dl_acc(0);
            }
            if (threadIdx.x < 32) {
                const long long i = i0 + threadIdx.x;
                Ls[threadIdx.x] = i < L ? lse[b * L + i] : -DL_INF;
                Ds[threadIdx.x] = i < L ? delta[b * L + i] : dl_acc(0);
            }
            __syncthreads();
            const long long i = i0 + lane;
            dl_acc sc = -DL_INF;
            if (key_ok && i < L) {
                dl_acc dot = dl_acc(0);
                for (int e = 0; e < E; ++e) dot += Qs[lane * ldq + e] * Kw[w * E + e];
                sc = att_score(dot, scale, mask_kind, mask_b, mask_f, b * msb + i * msl + j * mss, i, j);
            }
            const bool mine = sc != -DL_INF;
            const unsigned live = __ballot_sync(DL_FULL_MASK, mine);
            if (live == 0u) continue;  // warp-uniform
            dl_acc p = dl_acc(0), ds = dl_acc(0);
            if (mine) {
                p = dl_exp(sc - Ls[lane]);
                dl_acc dp = dl_acc(0);
                for (int e = 0; e < Ev; ++e) dp += Gs[lane * ldg + e] * Vw[w * Ev + e];
                ds = p * (dp - Ds[lane]);
            }
            for (int ii = 0; ii < 32; ++ii) {
                const dl_acc pi = __shfl_sync(DL_FULL_MASK, p, ii);
                const dl_acc dsi = __shfl_sync(DL_FULL_MASK, ds, ii);
                if ((live >> ii) & 1u) {  // select: pairs that are masked out never contribute
#pragma unroll
                    for (int t = 0; t < ATT_PER_LANE; ++t) {
                        const int e = lane + 32 * t;
                        if (e < evn) acc_v[t] += pi * Gs[ii * ldg + ev0 + e];
                        if (e < ekn) acc_k[t] += dsi * Qs[ii * ldq + ek0 + e];
                    }
                }
            }
        }
        if (key_ok) {
#pragma unroll
            for (int t = 0; t < ATT_PER_LANE; ++t) {
                const int e = lane + 32 * t;
                if (e < ekn) dk[(b * S + j) * E + ek0 + e] = dl_store(acc_k[t] * scale);
                if (e < evn) dv[(b * S + j) * Ev + ev0 + e] = dl_store(acc_v[t]);
            }
        }
    }
}

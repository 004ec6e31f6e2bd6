// Block-sparse (radial) attention backward, FlashAttention-2 style, with warp-level tensor-core
// mma (m16n8k16, f32 accumulation): runs on sm_80 and later (prepended: common.cuh,
// attention_constants.cuh (HEAD_DIM, ELEM_BF16), attention_tiles.cuh, shared with the forward). Three passes, one per compile unit
// (PASS), launched in this order on one stream:
//   PASS 0  sparse_attention_bwd_delta: delta = rowsum(dO * O) per query row, f32.
//   PASS 1  sparse_attention_bwd_dkdv: one CTA per (64 keys, head, batch) walks the TRANSPOSED
//           mask row of its key block (the query blocks that attend it) and accumulates
//           dV = P^T dO and dK = scale * dS^T Q in registers; writes dk, dv once (zero for a key
//           block no query attends).
//   PASS 2  sparse_attention_bwd_dq: one CTA per (64 queries, head, batch) walks the mask row of
//           its query block, as the forward does, and accumulates dQ = scale * dS K; writes dq
//           once. No atomics: every output element is written by one thread, in a fixed order
//           (bitwise deterministic).
// with P = exp(scale * q k^T - lse) (the forward's probabilities, from its lse), dP = dO V^T and
// dS = P * (dP - delta).
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/attention_backward.rs):
//   PASS       0, 1 or 2 (above)
//   HEAD_DIM   64 or 128
//   ELEM_BF16  1 = bf16 tensors, 0 = f16
//   BLOCK      mask block size, 64 or 128 (PASS 1 and 2 only)
//   STAGES     1 or 2: buffers of the streamed tiles (PASS 1 and 2 only)
//   TESSERA_SMEM_BYTES  PASS 0: 0; PASS 1: (2 + 2*STAGES) * 64 * (HEAD_DIM + 8) * 2
//                       + STAGES * 2 * 64 * 4; PASS 2: (2 + 2*STAGES) * 64 * (HEAD_DIM + 8) * 2
//   TESSERA_THREADS     128
//
// Layouts (row-major), as the forward (sparse_attention.cu): q, k, v, o, dO, dq, dk, dv
// [batch, tokens, heads, HEAD_DIM] of one 16-bit type; lse (natural log) and delta f32
// [batch, heads, tokens]. The mask is BSR over num_blocks = ceil(tokens / BLOCK) block rows
// (indptr u32 [num_blocks + 1], indices u32 sorted within each row); PASS 1 reads the transposed
// mask in the same form (block row c lists the query blocks that attend key block c, sorted).
// Rows at or past `tokens` (the padding of a partial last block) are loaded as zeros and never
// written; a padded query gets lse = +inf (so P = 0) and delta = 0; a padded key gets P = 0.
//
// Both tile passes keep their own 64 rows resident in shared memory (PASS 1: K and V; PASS 2: Q
// and dO) and stream the other side's tiles of 64 rows (PASS 1: Q, dO and their lse and delta;
// PASS 2: K and V) through cp.async, double-buffered with STAGES 2 (tile j+1 loads while tile j
// is computed). 4 warps of 16 resident rows each; each warp's operands come from shared memory
// through ldmatrix (.trans where the contraction runs over the streamed rows), so that the
// registers hold only the two accumulators and one tile's scores. Rows are padded by 8 elements
// (16 bytes) so that the 8 row addresses of each ldmatrix phase hit distinct banks. The
// softmax runs in the log2 domain: P = exp2(s * scale * log2(e) - lse * log2(e)).

#ifndef PASS
#error "PASS is required (0 = delta, 1 = dk/dv, 2 = dq)"
#endif
#if PASS != 0 && PASS != 1 && PASS != 2
#error "PASS must be 0, 1 or 2"
#endif
#if PASS != 0
#ifndef BLOCK
#error "BLOCK is required (mask block size, 64 or 128)"
#endif
#ifndef STAGES
#error "STAGES is required (1 or 2 buffers of streamed tiles)"
#endif
#if BLOCK != 64 && BLOCK != 128
#error "BLOCK must be 64 or 128"
#endif
#if STAGES != 1 && STAGES != 2
#error "STAGES must be 1 or 2"
#endif
#endif

namespace attn_bwd {

constexpr int D = HEAD_DIM;
constexpr bool BF16 = ELEM_BF16 != 0;
constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
constexpr float LOG2E = 1.4426950408889634074f;

}  // namespace attn_bwd

#if PASS == 0

namespace attn_bwd {

constexpr int LANES_PER_ROW = 8;
constexpr int ROWS_PER_CTA = TESSERA_THREADS / LANES_PER_ROW;
constexpr int PER_LANE = D / LANES_PER_ROW;  // 8 or 16 elements: one or two 16-byte loads

static_assert(TESSERA_SMEM_BYTES == 0, "the host's shared-memory size for the delta pass must be 0");
static_assert(TESSERA_THREADS == 128, "the host's threads per CTA for the delta pass must be 128 (16 rows of 8 lanes)");

}  // namespace attn_bwd

// delta[b, h, t] = sum_d dO[b, t, h, d] * O[b, t, h, d] in f32, for the `rows` = batch * tokens *
// heads rows of o and d_o (row r = (b * tokens + t) * heads + h); 8 lanes per row.
extern "C" __global__ void __launch_bounds__(TESSERA_THREADS)
sparse_attention_bwd_delta(const u16* __restrict__ o, const u16* __restrict__ d_o, float* __restrict__ delta,
                           int tokens, int heads, i64 rows) {
    using namespace attn_bwd;
    const i64 row = (i64)blockIdx.x * ROWS_PER_CTA + threadIdx.x / LANES_PER_ROW;
    const int part = threadIdx.x % LANES_PER_ROW;
    float sum = 0.0f;
    if (row < rows) {
        const i64 at = row * D + part * PER_LANE;
#pragma unroll
        for (int c = 0; c < PER_LANE / 8; ++c) {
            const uint4 x = *reinterpret_cast<const uint4*>(o + at + c * 8);
            const uint4 y = *reinterpret_cast<const uint4*>(d_o + at + c * 8);
            const u32 xs[4] = {x.x, x.y, x.z, x.w};
            const u32 ys[4] = {y.x, y.y, y.z, y.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                sum += half_to_f32<BF16>((u16)(xs[i] & 0xffffu)) * half_to_f32<BF16>((u16)(ys[i] & 0xffffu));
                sum += half_to_f32<BF16>((u16)(xs[i] >> 16)) * half_to_f32<BF16>((u16)(ys[i] >> 16));
            }
        }
    }
    // The 8 lanes of a row are consecutive and aligned to 8 within the warp.
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    sum += __shfl_xor_sync(0xffffffffu, sum, 4);
    if (row < rows && part == 0) {
        const int h = (int)(row % heads);
        const i64 bt = row / heads;
        const int t = (int)(bt % tokens);
        const i64 b = bt / tokens;
        delta[(b * heads + h) * tokens + t] = sum;
    }
}

#else  // PASS 1 or 2

namespace attn_bwd {

constexpr int BM = 64;                 // resident rows per CTA
constexpr int NWARPS = BM / 16;        // 16 resident rows per warp
constexpr int NTHREADS = NWARPS * 32;
constexpr int BN = 64;                 // streamed rows per tile
constexpr int SUB = BLOCK / BN;        // tiles per mask block
constexpr int STRIDE = D + 8;          // shared-memory row stride, elements
constexpr int TILE_ELEMS = BN * STRIDE;
constexpr int HALF_ELEMS = (2 + 2 * STAGES) * TILE_ELEMS;  // 2 resident + STAGES x 2 streamed
constexpr int FLOAT_ELEMS = PASS == 1 ? STAGES * 2 * BN : 0;  // lse and delta per stage (PASS 1)

static_assert(BM == BN, "resident and streamed tiles have the same rows");
static_assert(HALF_ELEMS * 2 + FLOAT_ELEMS * 4 == TESSERA_SMEM_BYTES,
              "the host's shared-memory size must be the resident and streamed tiles (and PASS 1's lse and delta)");
static_assert(NTHREADS == TESSERA_THREADS, "the host's threads per CTA must be one warp per 16 resident rows");

// The streamed tiles of a BSR row (as the forward's key tiles): every block is SUB tiles, except
// that tiles starting at or past `tokens` are dropped. Only the last block (num_blocks - 1) can
// be partial, and indices are sorted, so such tiles can only be at the very end.
struct TileWalk {
    int first;
    int ntiles;
    const u32* indices;
    __device__ TileWalk(const u32* __restrict__ indptr, const u32* __restrict__ idx, int row, int tokens)
        : indices(idx) {
        first = (int)indptr[row];
        const int last = (int)indptr[row + 1];
        ntiles = (last - first) * SUB;
        if (SUB > 1 && last > first) {
            const int tail = tokens - (int)idx[last - 1] * BLOCK;  // >= 1
            const int valid = (tail + BN - 1) / BN;
            if (valid < SUB) ntiles -= SUB - valid;
        }
    }
    __device__ int row0(int j) const { return (int)indices[first + j / SUB] * BLOCK + (j % SUB) * BN; }
};

// acc[2 * np + {0, 1}] (16 resident rows x 16 streamed rows np) += A B^T over the head
// dimension: A = this warp's 16 rows of `resident` (ldmatrix), B = the 64 rows of `streamed`
// (ldmatrix, non-transposed: the head dimension is contiguous in both).
__device__ __forceinline__ void rows_dot_rows(float acc[BN / 8][4], const u16* resident, const u16* streamed,
                                              int warp, int lane) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        u32 a[4];
        {
            const int r = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
            const int c = kk * 16 + (lane / 16) * 8;
            ldmatrix_x4(a, resident + r * STRIDE + c);
        }
#pragma unroll
        for (int np = 0; np < BN / 16; ++np) {
            u32 r[4];
            const int row = np * 16 + (lane / 16) * 8 + (lane % 8);
            const int col = kk * 16 + ((lane / 8) % 2) * 8;
            ldmatrix_x4(r, streamed + row * STRIDE + col);
            const u32 b0[2] = {r[0], r[1]};
            const u32 b1[2] = {r[2], r[3]};
            mma_16816<BF16>(acc[2 * np], a, b0);
            mma_16816<BF16>(acc[2 * np + 1], a, b1);
        }
    }
}

// Writes this warp's 16 accumulator rows times `mul` to global rows row0 + warp * 16 + (0..16)
// (those < tokens) of out (base: token 0 of this batch and head), staged through `stage` (this
// warp's own 16 x STRIDE rows of shared memory) for 16-byte row-contiguous stores.
__device__ __forceinline__ void store_rows(u16* __restrict__ out, const float acc[D / 8][4], float mul, u16* stage,
                                           int row0, int tokens, i64 tok_stride, int lane) {
    const int g = lane / 4, tq = lane % 4;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        const int c = dt * 8 + 2 * tq;
        *reinterpret_cast<u32*>(stage + g * STRIDE + c) = pack2<BF16>(acc[dt][0] * mul, acc[dt][1] * mul);
        *reinterpret_cast<u32*>(stage + (g + 8) * STRIDE + c) = pack2<BF16>(acc[dt][2] * mul, acc[dt][3] * mul);
    }
    __syncwarp();
#pragma unroll
    for (int i = lane; i < 16 * CHUNKS; i += 32) {
        const int r = i / CHUNKS, c = i % CHUNKS;
        const int t = row0 + r;
        if (t < tokens) {
            *reinterpret_cast<uint4*>(out + (i64)t * tok_stride + c * 8) =
                *reinterpret_cast<const uint4*>(stage + r * STRIDE + c * 8);
        }
    }
}

__device__ __forceinline__ void zero(float acc[D / 8][4]) {
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = 0.0f;
    }
}

__device__ __forceinline__ void zero_scores(float s[BN / 8][4]) {
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][e] = 0.0f;
    }
}

}  // namespace attn_bwd

#endif

#if PASS == 1

// dk, dv for the 64 keys blockIdx.x * 64.. of head blockIdx.y, batch blockIdx.z, over the query
// tiles of the transposed mask's row t_indptr/t_indices of their key block.
extern "C" __global__ void __launch_bounds__(attn_bwd::NTHREADS)
sparse_attention_bwd_dkdv(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                          const u16* __restrict__ d_o, const float* __restrict__ lse,
                          const float* __restrict__ delta, u16* __restrict__ dk, u16* __restrict__ dv,
                          const u32* __restrict__ t_indptr, const u32* __restrict__ t_indices, int tokens,
                          int heads, float scale, float scale_log2) {
    using namespace attn_bwd;
    extern __shared__ __align__(16) u16 smem[];

    const int k0 = blockIdx.x * BM;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int tq = lane % 4;

    const i64 tok_stride = (i64)heads * D;
    const i64 base = ((i64)b * tokens * heads + h) * D;  // token 0 of batch b, head h
    const float* const lse_row = lse + ((i64)b * heads + h) * tokens;
    const float* const delta_row = delta + ((i64)b * heads + h) * tokens;
    const TileWalk walk(t_indptr, t_indices, k0 / BLOCK, tokens);

    u16* const sk = smem;
    u16* const sv = smem + TILE_ELEMS;
    float* const fbuf = reinterpret_cast<float*>(smem + HALF_ELEMS);
    auto stream_q = [&](int s) { return smem + (2 + 2 * s) * TILE_ELEMS; };
    auto stream_do = [&](int s) { return smem + (3 + 2 * s) * TILE_ELEMS; };
    auto stream_lse = [&](int s) { return fbuf + s * 2 * BN; };
    auto stream_delta = [&](int s) { return fbuf + s * 2 * BN + BN; };

    // Query tile j into stage s: q and dO rows by cp.async, lse (log2 domain; +inf for padded
    // rows, so that P = 0) and delta by plain stores (visible after the next barrier).
    auto load_tile = [&](int j, int s) {
        const int q0 = walk.row0(j);
        attn_load_rows<BN, NTHREADS, D>(stream_q(s), q + base, q0, tokens, tok_stride);
        attn_load_rows<BN, NTHREADS, D>(stream_do(s), d_o + base, q0, tokens, tok_stride);
        for (int i = threadIdx.x; i < BN; i += NTHREADS) {
            const int t = q0 + i;
            stream_lse(s)[i] = t < tokens ? lse_row[t] * LOG2E : TESSERA_INF;
            stream_delta(s)[i] = t < tokens ? delta_row[t] : 0.0f;
        }
    };

    attn_load_rows<BM, NTHREADS, D>(sk, k + base, k0, tokens, tok_stride);
    attn_load_rows<BM, NTHREADS, D>(sv, v + base, k0, tokens, tok_stride);
    cp_async_commit();
    if (walk.ntiles > 0) load_tile(0, 0);
    cp_async_commit();

    float acc_dk[D / 8][4], acc_dv[D / 8][4];
    zero(acc_dk);
    zero(acc_dv);

    for (int j = 0; j < walk.ntiles; ++j) {
        const int s = STAGES == 2 ? (j & 1) : 0;
        if (STAGES == 2 && j + 1 < walk.ntiles) {
            load_tile(j + 1, (j + 1) & 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else if (STAGES == 1 && j > 0) {
            load_tile(j, 0);  // the previous iteration's last barrier freed the stage
            cp_async_commit();
            cp_async_wait<0>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        const u16* const sq = stream_q(s);
        const u16* const sdo = stream_do(s);
        const float* const sl = stream_lse(s);
        const float* const sd = stream_delta(s);

        // S^T = K Q^T and dP^T = V dO^T: 16 keys x 64 queries per warp.
        float pt[BN / 8][4], dst[BN / 8][4];
        zero_scores(pt);
        zero_scores(dst);
        rows_dot_rows(pt, sk, sq, warp, lane);
        rows_dot_rows(dst, sv, sdo, warp, lane);

        // P^T = exp2(S^T scale log2(e) - lse log2(e)) and dS^T = P^T (dP^T - delta), by the
        // query (column) of each element.
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = nt * 8 + 2 * tq + (e & 1);
                const float p = exp2f(fmaf(pt[nt][e], scale_log2, -sl[col]));
                dst[nt][e] = p * (dst[nt][e] - sd[col]);
                pt[nt][e] = p;
            }
        }

        // dV += P^T dO, dK += dS^T Q (scaled at the end).
        attn_weights_times_rows<BF16, D, BN>(acc_dv, pt, sdo, lane);
        attn_weights_times_rows<BF16, D, BN>(acc_dk, dst, sq, lane);
        __syncthreads();  // this stage is refilled by a later iteration
    }
    cp_async_wait<0>();
    __syncthreads();  // with no tile, the K/V copies may still be in flight

    // Stage each warp's rows in its own rows of the K and V tiles (no warp reads them any more).
    store_rows(dk + base, acc_dk, scale, sk + warp * 16 * STRIDE, k0 + warp * 16, tokens, tok_stride, lane);
    store_rows(dv + base, acc_dv, 1.0f, sv + warp * 16 * STRIDE, k0 + warp * 16, tokens, tok_stride, lane);
}

#endif

#if PASS == 2

// dq for the 64 queries blockIdx.x * 64.. of head blockIdx.y, batch blockIdx.z, over the key
// tiles of the mask's row of their query block.
extern "C" __global__ void __launch_bounds__(attn_bwd::NTHREADS)
sparse_attention_bwd_dq(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                        const u16* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
                        u16* __restrict__ dq, const u32* __restrict__ indptr, const u32* __restrict__ indices,
                        int tokens, int heads, float scale, float scale_log2) {
    using namespace attn_bwd;
    extern __shared__ __align__(16) u16 smem[];

    const int q0 = blockIdx.x * BM;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;
    const int tq = lane % 4;

    const i64 tok_stride = (i64)heads * D;
    const i64 base = ((i64)b * tokens * heads + h) * D;
    const float* const lse_row = lse + ((i64)b * heads + h) * tokens;
    const float* const delta_row = delta + ((i64)b * heads + h) * tokens;
    const TileWalk walk(indptr, indices, q0 / BLOCK, tokens);

    u16* const sq = smem;
    u16* const sdo = smem + TILE_ELEMS;
    auto stream_k = [&](int s) { return smem + (2 + 2 * s) * TILE_ELEMS; };
    auto stream_v = [&](int s) { return smem + (3 + 2 * s) * TILE_ELEMS; };
    auto load_tile = [&](int j, int s) {
        const int key0 = walk.row0(j);
        attn_load_rows<BN, NTHREADS, D>(stream_k(s), k + base, key0, tokens, tok_stride);
        attn_load_rows<BN, NTHREADS, D>(stream_v(s), v + base, key0, tokens, tok_stride);
    };

    attn_load_rows<BM, NTHREADS, D>(sq, q + base, q0, tokens, tok_stride);
    attn_load_rows<BM, NTHREADS, D>(sdo, d_o + base, q0, tokens, tok_stride);
    cp_async_commit();
    if (walk.ntiles > 0) load_tile(0, 0);
    cp_async_commit();

    // This thread's rows g and g + 8 of the warp: lse in the log2 domain (+inf for padded rows,
    // so that P = 0) and delta.
    float lse2[2], dl[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int t = q0 + warp * 16 + g + 8 * i;
        lse2[i] = t < tokens ? lse_row[t] * LOG2E : TESSERA_INF;
        dl[i] = t < tokens ? delta_row[t] : 0.0f;
    }

    float acc[D / 8][4];
    zero(acc);

    for (int j = 0; j < walk.ntiles; ++j) {
        const int s = STAGES == 2 ? (j & 1) : 0;
        if (STAGES == 2 && j + 1 < walk.ntiles) {
            load_tile(j + 1, (j + 1) & 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else if (STAGES == 1 && j > 0) {
            load_tile(j, 0);
            cp_async_commit();
            cp_async_wait<0>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        const u16* const sk = stream_k(s);
        const u16* const sv = stream_v(s);
        const int key0 = walk.row0(j);

        // S = Q K^T and dP = dO V^T: 16 queries x 64 keys per warp.
        float p[BN / 8][4], ds[BN / 8][4];
        zero_scores(p);
        zero_scores(ds);
        rows_dot_rows(p, sq, sk, warp, lane);
        rows_dot_rows(ds, sdo, sv, warp, lane);

        // P = exp2(S scale log2(e) - lse log2(e)) (0 for keys past the end) and
        // dS = P (dP - delta), by the query (row) of each element.
        const bool partial = key0 + BN > tokens;
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >> 1;
                float x = exp2f(fmaf(p[nt][e], scale_log2, -lse2[i]));
                if (partial && key0 + nt * 8 + 2 * tq + (e & 1) >= tokens) x = 0.0f;
                ds[nt][e] = x * (ds[nt][e] - dl[i]);
            }
        }

        // dQ += dS K (scaled at the end).
        attn_weights_times_rows<BF16, D, BN>(acc, ds, sk, lane);
        __syncthreads();  // this stage is refilled by a later iteration
    }
    cp_async_wait<0>();
    __syncthreads();

    store_rows(dq + base, acc, scale, sq + warp * 16 * STRIDE, q0 + warp * 16, tokens, tok_stride, lane);
}

#endif

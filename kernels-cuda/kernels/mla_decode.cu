// MLA absorbed decode over the paged latent cache, with split-KV, on the tensor cores
// (mma.sync m16n8k16 bf16, f32 accumulation).
//
// Compile-time constants:
//   FMT       0 = bf16 cache records [latent bf16 | rope bf16]
//             1 = FP8 records [latent e4m3 | latent/128 f32 scales | rope bf16]
//   LATENT    latent_dim, or 0 = taken from the run-time argument (then ROPE is too)
//   ROPE      rope_dim when LATENT != 0
//   DV_CHUNK  output (latent) columns per CTA; latent_dim > DV_CHUNK gives several column
//             chunks, each recomputing the scores
//
// Problem (one KV head, multi-query): for request b, the rows are its s_q * heads queries, row
// r = i * heads + h (the order of q); query i sees keys j < len - (s_q - 1 - i).
//   q       bf16 [batch, s_q * heads, qk]          qk = latent + rope
//   cache   u8   [num_pages, page_size, token_bytes]
//   block_table i32 [batch, max_pages]; seq_lens i32 [batch]
//   o       bf16 [batch, s_q * heads, latent]      (direct mode, splits == 1)
//   lse     f32  [batch, heads, s_q], natural log  (direct mode)
//   ws      f32  split mode: [splits, batch, s_q * heads, latent] (each split's normalized o),
//                then [splits, batch, s_q * heads] (each split's lse)
//
// CTA: 8 warps, M = 16 * RS rows (RS row slices of 16), key tiles of N keys. Warp (rs, cw),
// rs < RS, cw < CW = 8 / RS:
//   S = Q K^T   rows rs*16..+16, keys cw*KW..+KW of the tile over all qk dims, for the first
//               SCW = min(CW, N / 8) warps of the slice (KW = N / SCW, 8 or 16 keys);
//   softmax     online, f32, in the log2 domain; the row max is exchanged between the CW warps
//               of a row slice through shared memory, the row sums stay per warp until the end;
//   O += P V    rows rs*16..+16, latent columns cw*WC..+WC of the CTA's chunk (WC = DV_CHUNK/CW),
//               P (bf16) read back from shared memory for all N keys, V = the latent part of
//               the same shared-memory key tile.
// Shared memory: Q [M][qk+8] bf16, key tiles [N][qk+8] bf16 (two, double-buffered with cp.async,
// for bf16 records; one for FP8, which stages raw records in two buffers [N][token_bytes
// rounded up to 16] and dequantizes them: e4m3 times a power-of-two scale is exact in bf16),
// P [M][N+8] bf16, the row-max / row-sum exchange [CW][M] f32.
// The +8 padding makes every ldmatrix conflict-free (the row pitch is an odd number of 16 bytes).
//
// Error signal: a block-table entry read for a key (only those of keys < len) outside
// 0..num_pages, or a length outside 0..=max_pages*page_size, is never dereferenced; the outputs
// of the rows of that CTA (and so of their request in split mode) become NaN.

#ifndef FMT
#define FMT 0
#endif
#ifndef LATENT
#define LATENT 0
#endif
#ifndef ROPE
#define ROPE 0
#endif
#ifndef DV_CHUNK
#define DV_CHUNK 256
#endif

#define MLA_WARPS 8
#define MLA_THREADS 256

// ---- local helpers ---------------------------------------------------------------------------

// ldmatrix: two 8x8 b16 matrices (lanes 0-15 give the row addresses).
__device__ __forceinline__ void mla_ldmatrix_x2(u32 r[2], const void* smem_row) {
    u32 addr = (u32)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}

// Copies 4 bytes global -> shared; when !valid, writes 4 zero bytes instead (src not read).
__device__ __forceinline__ void mla_cp_async_4(void* smem, const void* gmem, bool valid) {
    u32 addr = (u32)__cvta_generic_to_shared(smem);
    int src_size = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(addr), "l"(gmem), "r"(src_size));
}

// Four e4m3 codes (little-endian in w) to f32, exactly.
__device__ __forceinline__ void mla_e4m3x4_to_f32(u32 w, float f[4]) {
#if __CUDA_ARCH__ >= 890
    u32 h01, h23;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h01) : "h"((u16)(w & 0xffffu)));
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h23) : "h"((u16)(w >> 16)));
    f[0] = f16_to_f32((u16)(h01 & 0xffffu));
    f[1] = f16_to_f32((u16)(h01 >> 16));
    f[2] = f16_to_f32((u16)(h23 & 0xffffu));
    f[3] = f16_to_f32((u16)(h23 >> 16));
#else
#pragma unroll
    for (int i = 0; i < 4; ++i) f[i] = e4m3_to_f32((u8)((w >> (8 * i)) & 0xffu));
#endif
}

// Bytes of dynamic shared memory; the host computes the same (ops/mla.rs, `decode_smem_bytes`).
__host__ __device__ __forceinline__ int mla_raw_pitch(int token_bytes) { return (token_bytes + 15) / 16 * 16; }

// ---- the decode kernel -------------------------------------------------------------------------

template <int RS, int N>
__device__ __forceinline__ void mla_decode_impl(
    const u16* __restrict__ q, const u8* __restrict__ cache, const int* __restrict__ block_table,
    const int* __restrict__ seq_lens, u16* __restrict__ o, float* __restrict__ lse,
    float* __restrict__ ws, int batch, int s_q, int heads,
    int max_pages, int page_size, int num_pages, int latent_rt, int rope_rt, int token_bytes,
    int splits, int row_groups, int col_chunks, float scale_log2) {
    constexpr int M = 16 * RS;
    constexpr int CW = MLA_WARPS / RS;
    constexpr int SCW = CW < N / 8 ? CW : N / 8;  // warps per row slice that compute S
    constexpr int KW = N / SCW;                   // keys per warp in S
    constexpr int KNT = KW / 8;                   // S n-tiles per warp
    constexpr int WC = DV_CHUNK / CW;             // output columns per warp
    constexpr int NT = WC / 8;                    // O n-tiles per warp
    static_assert(KW == 8 || KW == 16, "keys per warp must be 8 or 16");
    static_assert(NT % 2 == 0, "output columns per warp must be a multiple of 16");
    static_assert(N % 16 == 0, "key tile must be a multiple of 16");

    const int latent = LATENT ? LATENT : latent_rt;
    const int rope = LATENT ? ROPE : rope_rt;
    const int qk = latent + rope;
    const int QS = qk + 8;  // row pitch of Q and K tiles, elements

    extern __shared__ __align__(16) u8 smem[];
    u16* sQ = reinterpret_cast<u16*>(smem);
    u16* sK = sQ + M * QS;
    constexpr int KBUF = FMT == 0 ? 2 : 1;
    u8* sRaw = reinterpret_cast<u8*>(sK + KBUF * N * QS);
    const int raw_pitch = mla_raw_pitch(token_bytes);
    u16* sP = reinterpret_cast<u16*>(sRaw + (FMT == 1 ? 2 * N * raw_pitch : 0));
    constexpr int PS = N + 8;  // pitch of P, elements
    float* sRed = reinterpret_cast<float*>(sP + M * PS);

    // Block -> (request, split, column chunk, row group); row groups of one request run together.
    i64 bid = blockIdx.x;
    const int rg = (int)(bid % row_groups);
    bid /= row_groups;
    const int chunk = (int)(bid % col_chunks);
    bid /= col_chunks;
    const int split = (int)(bid % splits);
    const int b = (int)(bid / splits);

    const int tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32;
    const int rs = warp / CW, cw = warp % CW;
    const int g = lane / 4, tq = lane % 4;
    const bool s_warp = cw < SCW;  // this warp computes scores

    const int rows_total = s_q * heads;
    const int r0 = rg * M;
    const int rows_here = min(M, rows_total - r0);
    const int len_raw = seq_lens[b];
    const bool bad_len = len_raw < 0 || (i64)len_raw > (i64)max_pages * page_size;
    const int len = bad_len ? 0 : len_raw;
    // Keys visible to the last row of this CTA, and this split's share of them.
    const int i_last = (r0 + rows_here - 1) / heads;
    const int kv_end = max(0, len - (s_q - 1 - i_last));
    const int per_split = ((len + splits - 1) / splits + N - 1) / N * N;
    const int k_begin = split * per_split;
    const int k_end = min(k_begin + per_split, kv_end);
    const int ntiles = k_end > k_begin ? (k_end - k_begin + N - 1) / N : 0;

    // Keys each of this thread's two rows may see (exclusive bound); padding rows see none.
    int lim[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const int r = r0 + rs * 16 + g + 8 * ri;
        if (r < rows_total) {
            const int i = r / heads;
            lim[ri] = min(len - (s_q - 1 - i), k_end);
        } else {
            lim[ri] = -1;
        }
    }

    int bad_page = 0;  // set when a block-table entry in use is out of range

    const i64 bt_row = (i64)b * max_pages;
    // Issues the copies of key tile t into `dst` (bf16 records) or the raw buffer (FP8).
    auto load_tile = [&](int t, int buf) {
        const int j0 = k_begin + t * N;
        for (int kk = warp; kk < N; kk += MLA_WARPS) {
            const int j = j0 + kk;
            bool valid = j < k_end;
            const u8* src = cache;
            if (valid) {
                const int page = __ldg(block_table + bt_row + j / page_size);
                if (page < 0 || page >= num_pages) {
                    valid = false;
                    bad_page = 1;
                } else {
                    src = cache + ((i64)page * page_size + j % page_size) * token_bytes;
                }
            }
#if FMT == 0
            u16* dst = sK + (buf * N + kk) * QS;
            for (int c = lane; c < qk / 8; c += 32) cp_async_16(dst + c * 8, src + c * 16, valid);
#else
            u8* dst = sRaw + (buf * N + kk) * raw_pitch;
            if ((token_bytes & 15) == 0) {
                for (int c = lane; c < token_bytes / 16; c += 32) cp_async_16(dst + c * 16, src + c * 16, valid);
            } else {
                for (int c = lane; c < token_bytes / 4; c += 32) mla_cp_async_4(dst + c * 4, src + c * 4, valid);
            }
#endif
        }
    };

    // Prologue: Q and the first key tile.
    {
        const u16* qb = q + ((i64)b * rows_total + r0) * qk;
        const int cpr = qk / 8;  // 16-byte chunks per row
        for (int idx = tid; idx < M * cpr; idx += MLA_THREADS) {
            const int row = idx / cpr, c = idx % cpr;
            const bool valid = row < rows_here;
            cp_async_16(sQ + row * QS + c * 8, valid ? (const void*)(qb + (i64)row * qk + c * 8) : (const void*)q, valid);
        }
    }
    if (ntiles > 0) load_tile(0, 0);
    cp_async_commit();

    float m[2] = {TESSERA_NEG_INF, TESSERA_NEG_INF};
    float l[2] = {0.0f, 0.0f};
    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;

    const int col0 = chunk * DV_CHUNK + cw * WC;  // first output column of this warp

    for (int t = 0; t < ntiles; ++t) {
        cp_async_wait<0>();
        __syncthreads();  // tile t is in; every warp is done with tile t-1
        if (t + 1 < ntiles) load_tile(t + 1, (t + 1) & 1);
        cp_async_commit();
#if FMT == 1
        {
            // Dequantize the raw records of tile t into the bf16 key tile.
            const u8* rawb = sRaw + (t & 1) * N * raw_pitch;
            const int groups = latent / 128;
            for (int kk = warp; kk < N; kk += MLA_WARPS) {
                const u8* rec = rawb + kk * raw_pitch;
                const float* scales = reinterpret_cast<const float*>(rec + latent);
                u16* dst = sK + kk * QS;
                for (int w = lane; w < latent / 4; w += 32) {
                    const u32 codes = *reinterpret_cast<const u32*>(rec + 4 * w);
                    const float s = scales[w / 32];
                    float f[4];
                    mla_e4m3x4_to_f32(codes, f);
                    uint2 out;
                    out.x = pack2<true>(f[0] * s, f[1] * s);
                    out.y = pack2<true>(f[2] * s, f[3] * s);
                    *reinterpret_cast<uint2*>(dst + 4 * w) = out;
                }
                const u32* rsrc = reinterpret_cast<const u32*>(rec + latent + 4 * groups);
                u32* rdst = reinterpret_cast<u32*>(dst + latent);
                for (int w = lane; w < rope / 2; w += 32) rdst[w] = rsrc[w];
            }
        }
        __syncthreads();
        const u16* sKt = sK;
#else
        const u16* sKt = sK + (t & 1) * N * QS;
#endif
        const int j0 = k_begin + t * N;

        // ---- S = Q K^T for rows rs*16.., keys cw*KW.. ----
        float s[KNT][4];
#pragma unroll
        for (int nt = 0; nt < KNT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = 0.0f;
        if (s_warp) {
            const u16* qa = sQ + (rs * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * QS + (lane / 16) * 8;
            if constexpr (KW == 16) {
                const u16* kb = sKt + (cw * KW + (lane % 8) + (lane / 16) * 8) * QS + ((lane / 8) % 2) * 8;
#pragma unroll 4
                for (int k0 = 0; k0 < qk; k0 += 16) {
                    u32 a[4], bb[4];
                    ldmatrix_x4(a, qa + k0);
                    ldmatrix_x4(bb, kb + k0);
                    const u32 b0[2] = {bb[0], bb[1]};
                    const u32 b1[2] = {bb[2], bb[3]};
                    mma_16816<true>(s[0], a, b0);
                    mma_16816<true>(s[KNT - 1], a, b1);
                }
            } else {
                const u16* kb = sKt + (cw * KW + (lane % 8)) * QS + ((lane / 8) % 2) * 8;
#pragma unroll 4
                for (int k0 = 0; k0 < qk; k0 += 16) {
                    u32 a[4], bb[2];
                    ldmatrix_x4(a, qa + k0);
                    mla_ldmatrix_x2(bb, kb + k0);
                    mma_16816<true>(s[0], a, bb);
                }
            }
        }

        // ---- scale, mask, row max ----
        // (Warps that compute no scores see only -inf, and write no P.)
        float mx[2] = {TESSERA_NEG_INF, TESSERA_NEG_INF};
#pragma unroll
        for (int nt = 0; nt < KNT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = j0 + cw * KW + nt * 8 + 2 * tq + (e & 1);
                const int ri = e >> 1;
                const float v = s_warp && key < lim[ri] ? s[nt][e] * scale_log2 : TESSERA_NEG_INF;
                s[nt][e] = v;
                mx[ri] = fmaxf(mx[ri], v);
            }
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
            mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 1));
            mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 2));
            if (tq == 0) sRed[cw * M + rs * 16 + g + 8 * ri] = mx[ri];
        }
        __syncthreads();
        float alpha[2], off[2];
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
            float mt = TESSERA_NEG_INF;
#pragma unroll
            for (int c = 0; c < CW; ++c) mt = fmaxf(mt, sRed[c * M + rs * 16 + g + 8 * ri]);
            const float m_new = fmaxf(m[ri], mt);
            off[ri] = m_new == TESSERA_NEG_INF ? 0.0f : m_new;
            alpha[ri] = exp2f(m[ri] - off[ri]);
            m[ri] = m_new;
        }

        // ---- P = exp2(S - m), row sums, P to shared memory as bf16 ----
        float ps[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < KNT; ++nt) {
            if (!s_warp) break;
            const float p0 = exp2f(s[nt][0] - off[0]);
            const float p1 = exp2f(s[nt][1] - off[0]);
            const float p2 = exp2f(s[nt][2] - off[1]);
            const float p3 = exp2f(s[nt][3] - off[1]);
            const u32 lo = pack2<true>(p0, p1);
            const u32 hi = pack2<true>(p2, p3);
            // Sum the probabilities as rounded, so that o is exactly normalized.
            ps[0] += bf16_to_f32((u16)(lo & 0xffffu)) + bf16_to_f32((u16)(lo >> 16));
            ps[1] += bf16_to_f32((u16)(hi & 0xffffu)) + bf16_to_f32((u16)(hi >> 16));
            const int key = cw * KW + nt * 8 + 2 * tq;
            *reinterpret_cast<u32*>(sP + (rs * 16 + g) * PS + key) = lo;
            *reinterpret_cast<u32*>(sP + (rs * 16 + g + 8) * PS + key) = hi;
        }
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) l[ri] = l[ri] * alpha[ri] + ps[ri];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            acc[nt][0] *= alpha[0];
            acc[nt][1] *= alpha[0];
            acc[nt][2] *= alpha[1];
            acc[nt][3] *= alpha[1];
        }
        __syncthreads();

        // ---- O += P V for rows rs*16.., columns col0.. ----
        {
            const u16* pa = sP + (rs * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * PS + (lane / 16) * 8;
            const u16* vb = sKt + ((lane % 8) + ((lane / 8) % 2) * 8) * QS + col0 + (lane / 16) * 8;
#pragma unroll
            for (int k0 = 0; k0 < N; k0 += 16) {
                u32 a[4];
                ldmatrix_x4(a, pa + k0);
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    if (LATENT == 0 && col0 + np * 16 >= latent) break;
                    u32 bb[4];
                    ldmatrix_x4_trans(bb, vb + k0 * QS + np * 16);
                    const u32 b0[2] = {bb[0], bb[1]};
                    const u32 b1[2] = {bb[2], bb[3]};
                    mma_16816<true>(acc[2 * np], a, b0);
                    mma_16816<true>(acc[2 * np + 1], a, b1);
                }
            }
        }
    }

    // ---- epilogue: total row sums, normalize, write ----
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 1);
        l[ri] += __shfl_xor_sync(0xffffffffu, l[ri], 2);
    }
    cp_async_wait<0>();
    // Also a barrier: every warp is past its last read of sRed.
    const bool bad = __syncthreads_or(bad_len || bad_page) != 0;
#pragma unroll
    for (int ri = 0; ri < 2; ++ri)
        if (tq == 0) sRed[cw * M + rs * 16 + g + 8 * ri] = l[ri];
    __syncthreads();
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const int rl = rs * 16 + g + 8 * ri;
        const int r = r0 + rl;
        if (r >= rows_total) continue;
        float lt = 0.0f;
#pragma unroll
        for (int c = 0; c < CW; ++c) lt += sRed[c * M + rl];
        float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
        float lse_v = lt > 0.0f ? (m[ri] + log2f(lt)) * 0.69314718055994531f : TESSERA_NEG_INF;
        if (bad) {
            inv = TESSERA_NAN;
            lse_v = TESSERA_NAN;
        }
        if (splits == 1) {
            u16* orow = o + ((i64)b * rows_total + r) * latent;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int col = col0 + nt * 8 + 2 * tq;
                if (LATENT == 0 && col >= latent) break;
                *reinterpret_cast<u32*>(orow + col) = pack2<true>(acc[nt][2 * ri] * inv, acc[nt][2 * ri + 1] * inv);
            }
            if (chunk == 0 && cw == 0 && tq == 0) {
                const int i = r / heads, h = r % heads;
                lse[((i64)b * heads + h) * s_q + i] = lse_v;
            }
        } else {
            const i64 wrow = ((i64)split * batch + b) * rows_total + r;
            float* orow = ws + wrow * latent;
            float* ws_lse = ws + (i64)splits * batch * rows_total * latent;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int col = col0 + nt * 8 + 2 * tq;
                if (LATENT == 0 && col >= latent) break;
                *reinterpret_cast<float2*>(orow + col) = make_float2(acc[nt][2 * ri] * inv, acc[nt][2 * ri + 1] * inv);
            }
            if (chunk == 0 && cw == 0 && tq == 0) ws_lse[wrow] = lse_v;
        }
    }
}

#define MLA_DECODE_ENTRY(NAME, RS, N)                                                              \
    extern "C" __global__ void __launch_bounds__(MLA_THREADS, 1) NAME(                             \
        const u16* __restrict__ q, const u8* __restrict__ cache, const int* __restrict__ block_table, \
        const int* __restrict__ seq_lens, u16* __restrict__ o, float* __restrict__ lse,           \
        float* __restrict__ ws, int batch, int s_q, int heads,                                    \
        int max_pages, int page_size, int num_pages, int latent_rt, int rope_rt, int token_bytes, \
        int splits, int row_groups, int col_chunks, float scale_log2) {                           \
        mla_decode_impl<RS, N>(q, cache, block_table, seq_lens, o, lse, ws, batch, s_q,  \
                               heads, max_pages, page_size, num_pages, latent_rt, rope_rt,        \
                               token_bytes, splits, row_groups, col_chunks, scale_log2);          \
    }

MLA_DECODE_ENTRY(mla_decode_r4n32, 4, 32)
MLA_DECODE_ENTRY(mla_decode_r2n32, 2, 32)
MLA_DECODE_ENTRY(mla_decode_r1n64, 1, 64)
MLA_DECODE_ENTRY(mla_decode_r1n32, 1, 32)

// ---- split combine -------------------------------------------------------------------------------

// One block of 128 threads per (request, row): merges the splits' partial outputs by log-sum-exp.
//   ws f32 [splits, batch, rows, latent] (partial o), then [splits, batch, rows] (partial lse)
//   o bf16 [batch, rows, latent]; lse f32 [batch, heads, s_q]   (rows = s_q * heads)
// All splits -inf (no key seen): o = 0, lse = -inf. Any NaN: NaN.
extern "C" __global__ void __launch_bounds__(128) mla_combine(
    const float* __restrict__ ws, u16* __restrict__ o, float* __restrict__ lse, int batch, int s_q,
    int heads, int latent, int splits) {
    const int rows = s_q * heads;
    const float* ws_o = ws;
    const float* ws_lse = ws + (i64)splits * batch * rows * latent;
    const i64 br = blockIdx.x;  // b * rows + r
    const int b = (int)(br / rows), r = (int)(br % rows);
    const i64 split_stride = (i64)batch * rows;
    float mx = TESSERA_NEG_INF;
    bool nan = false;
    for (int sp = 0; sp < splits; ++sp) {
        const float v = ws_lse[sp * split_stride + br];
        nan |= v != v;
        mx = fmaxf(mx, v);
    }
    float total = TESSERA_NEG_INF;
    if (nan) {
        total = TESSERA_NAN;
    } else if (mx != TESSERA_NEG_INF) {
        float sum = 0.0f;
        for (int sp = 0; sp < splits; ++sp) sum += expf(ws_lse[sp * split_stride + br] - mx);
        total = mx + logf(sum);
    }
    u16* orow = o + br * latent;
    for (int c = threadIdx.x * 4; c < latent; c += 128 * 4) {
        float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (nan) {
            a[0] = a[1] = a[2] = a[3] = TESSERA_NAN;
        } else if (mx != TESSERA_NEG_INF) {
            for (int sp = 0; sp < splits; ++sp) {
                const float ls = ws_lse[sp * split_stride + br];
                if (ls == TESSERA_NEG_INF) continue;
                const float w = expf(ls - total);
                const float4 v = *reinterpret_cast<const float4*>(ws_o + (sp * split_stride + br) * latent + c);
                a[0] += w * v.x;
                a[1] += w * v.y;
                a[2] += w * v.z;
                a[3] += w * v.w;
            }
        }
        uint2 out;
        out.x = pack2<true>(a[0], a[1]);
        out.y = pack2<true>(a[2], a[3]);
        *reinterpret_cast<uint2*>(orow + c) = out;
    }
    if (threadIdx.x == 0) {
        const int i = r / heads, h = r % heads;
        lse[((i64)b * heads + h) * s_q + i] = total;
    }
}

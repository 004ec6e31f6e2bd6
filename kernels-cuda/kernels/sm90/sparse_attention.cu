// Block-sparse (radial) attention forward for sm_90a: wgmma, a TMA + mbarrier pipeline filled by
// one producer thread, two math warpgroups of 64 query rows each. Prepended:
// common.cuh, attention_constants.cuh (HEAD_DIM, ELEM_BF16), sm90/hopper.cuh, sm90/wgmma.cuh
// (WgmmaBf16 / WgmmaF16 / WgmmaRegA).
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/attention.rs):
//   HEAD_DIM, ELEM_BF16 (attention_constants.cuh)
//   BLOCK      mask block size: 128 (a CTA's 128 query rows are one mask block row)
//   STAGES     K and V tiles in flight: 2 or 3
//   TESSERA_SMEM_BYTES  AttnSm90Smem::END below;  TESSERA_THREADS 384
//
// Problem and layouts: those of kernels/sparse_attention.cu (q, k, v, o [batch, tokens, heads,
// HEAD_DIM]; lse f32 [batch, heads, tokens], natural log; the BSR mask indptr/indices over
// ceil(tokens / BLOCK) block rows, shared by every batch and head). Keys >= tokens score -inf;
// query rows >= tokens are computed on zeros and never written; a row with no block gets o = 0
// and lse = -inf. One more input: `row_order` u32 [num_blocks], the block rows in the order CTAs
// take them within a (head, batch) (the host orders them by length bins, longest first, and by
// position within a bin: the long rows do not form the tail, and the rows that run together
// read nearly the same key blocks). q, k and v arrive as TMA tensor maps (`q_map`, `k_map`,
// `v_map`): each the 3-D tensor (heads x HEAD_DIM, tokens, batch) of 16-bit elements, boxes of
// [128 tokens][64], 128-byte swizzle, so that tokens at or past `tokens` of a batch read as zeros.
//
// Grid: one CTA per (block row, head, batch), linear: CTA i takes block row
// row_order[i % num_blocks] of (head, batch) i / num_blocks (h = that % heads).
//   producer WG  one thread copies Q (on q_full), then key block t (K then V: 128 rows of
//                HEAD_DIM, one TMA box per 64 columns) into the 128-byte-swizzled stage
//                t % STAGES; K completes on full_k, V on full_v, and each has its own "empty"
//                barrier, so that the next K lands while the previous V is still being read.
//   math WG w    rows 64w..64w+63 of the CTA's 128: S = Q K^T (wgmma m64n128k16, both operands
//                K-major in shared memory); online softmax in registers (log2 domain); P stays in
//                registers as the A operand of O += P V (wgmma with A from registers, V
//                MN-major). The S of block t+1 is issued before the P V of block t, so the
//                softmax of one block runs while the tensor cores work on the other.
// Shared memory (1024-byte aligned, 128-byte swizzle: 16-byte chunk c of row r of a 64-column
// block lives at r * 128 + ((c ^ (r % 8)) * 16)):
//   Q   HEAD_DIM / 64 column blocks of [128 rows][64]
//   K   STAGES x (HEAD_DIM / 64) column blocks of [128 keys][64];  V likewise
//   the barriers.

#ifndef BLOCK
#error "BLOCK is required (mask block size: 128)"
#endif
#ifndef STAGES
#error "STAGES is required (K and V tiles in flight: 2 or 3)"
#endif
#if STAGES != 2 && STAGES != 3
#error "STAGES must be 2 or 3"
#endif
#if BLOCK != 128
#error "the sm90 attention kernel takes mask blocks of 128 (one block row per CTA)"
#endif

#define ATT90_ROWS 128                 // query rows per CTA (two math warpgroups of 64)
#define ATT90_KEYS 128                 // keys per tile (one mask block)
#define ATT90_STAGES STAGES
#define ATT90_CB (HEAD_DIM / 64)       // 64-column blocks per row
#define ATT90_THREADS 384

#if ELEM_BF16
#define ATT90_MMA_S WgmmaBf16<ATT90_KEYS, 0>
#else
#define ATT90_MMA_S WgmmaF16<ATT90_KEYS, 0>
#endif
#define ATT90_MMA_PV WgmmaRegA<HEAD_DIM, ELEM_BF16>

// Byte offsets of the shared-memory regions; the host's size (kernels-cuda/src/plan/attention.rs)
// is checked against END at compile time.
struct AttnSm90Smem {
    static constexpr int Q_BLOCK = ATT90_ROWS * 128;    // one [128 rows][64] column block
    static constexpr int KV_BLOCK = ATT90_KEYS * 128;   // one [128 keys][64] column block
    static constexpr int TILE = ATT90_CB * KV_BLOCK;    // a K or a V tile
    static constexpr int Q = 0;
    static constexpr int K = Q + ATT90_CB * Q_BLOCK;
    static constexpr int V = K + ATT90_STAGES * TILE;
    static constexpr int FULL_K = V + ATT90_STAGES * TILE;
    static constexpr int FULL_V = FULL_K + ATT90_STAGES * 8;
    static constexpr int EMPTY_K = FULL_V + ATT90_STAGES * 8;
    static constexpr int EMPTY_V = EMPTY_K + ATT90_STAGES * 8;
    static constexpr int Q_FULL = EMPTY_V + ATT90_STAGES * 8;
    static constexpr int END = Q_FULL + 8;
};
static_assert(AttnSm90Smem::END == TESSERA_SMEM_BYTES, "the host's shared-memory size must match the sm90 attention layout");
static_assert(TESSERA_THREADS == ATT90_THREADS, "the sm90 attention kernel runs 3 warpgroups");


// How far (log2 domain) a row's score may pass its running maximum before the maximum moves
// and O is rescaled (FlashAttention-4's conditional rescaling).
#define ATT90_RESCALE_SLACK 8.0f

// 2^x on the SFU alone (exp2f adds a range check and two multiplies for results below 2^-126;
// here those flush to 0, far under the bf16/f16 resolution of P). exp2(-inf) = 0.
__device__ __forceinline__ float att90_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

extern "C" __global__ void __launch_bounds__(ATT90_THREADS, 1)
sparse_attention_fwd_sm90(const __grid_constant__ TmaDesc q_map, const __grid_constant__ TmaDesc k_map,
                          const __grid_constant__ TmaDesc v_map, u16* __restrict__ o, float* __restrict__ lse,
                          const u32* __restrict__ indptr, const u32* __restrict__ indices,
                          const u32* __restrict__ row_order, int tokens, int heads, float scale_log2) {
    constexpr int D = HEAD_DIM;
    constexpr bool BF16 = ELEM_BF16 != 0;
    extern __shared__ __align__(1024) u8 smem[];
    u8* sQ = smem + AttnSm90Smem::Q;
    u8* sK = smem + AttnSm90Smem::K;
    u8* sV = smem + AttnSm90Smem::V;
    u64* full_k = reinterpret_cast<u64*>(smem + AttnSm90Smem::FULL_K);
    u64* full_v = reinterpret_cast<u64*>(smem + AttnSm90Smem::FULL_V);
    u64* empty_k = reinterpret_cast<u64*>(smem + AttnSm90Smem::EMPTY_K);
    u64* empty_v = reinterpret_cast<u64*>(smem + AttnSm90Smem::EMPTY_V);
    u64* q_full = reinterpret_cast<u64*>(smem + AttnSm90Smem::Q_FULL);

    // (head, batch) outer, block rows inner: the CTAs that run together share one head's K and V
    // in L2 (a head's whole K and V is a few tens of MB at video lengths).
    const int num_blocks = (tokens + ATT90_ROWS - 1) / ATT90_ROWS;
    const int row_block = (int)row_order[blockIdx.x % num_blocks];
    const int hb = (int)(blockIdx.x / num_blocks);
    const int h = hb % heads, b = hb / heads;
    const int q0 = row_block * ATT90_ROWS;
    const i64 tok_stride = (i64)heads * D;
    const i64 base = ((i64)b * tokens * heads + h) * D;
    const int first = (int)indptr[row_block];
    const int ntiles = (int)indptr[row_block + 1] - first;
    // Only the last key block can be partial, and indices are sorted: it is then this row's last
    // tile (the math warpgroups need no index loads of their own).
    const bool last_partial =
        ntiles > 0 && tokens % ATT90_KEYS != 0 && (int)indices[first + ntiles - 1] == num_blocks - 1;

    const int tid = threadIdx.x;
    const int wg = tid / 128;
    const int t128 = tid % 128;

    if (tid == 0) {
        for (int s = 0; s < ATT90_STAGES; ++s) {
            mbar_init(&full_k[s], 1);
            mbar_init(&full_v[s], 1);
            mbar_init(&empty_k[s], 2);
            mbar_init(&empty_v[s], 2);
        }
        mbar_init(q_full, 1);
        mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) {
        // ---- producer: one thread issues every copy ----
        setmaxnreg_dec<24>();
        if (t128 == 0) {
            tma_prefetch_desc(&q_map);
            tma_prefetch_desc(&k_map);
            tma_prefetch_desc(&v_map);
            mbar_arrive_expect_tx(q_full, ATT90_CB * AttnSm90Smem::Q_BLOCK);
#pragma unroll
            for (int cb = 0; cb < ATT90_CB; ++cb)
                tma_load_3d(sQ + cb * AttnSm90Smem::Q_BLOCK, &q_map, q_full, h * D + cb * 64, q0, b);
            for (int t = 0; t < ntiles; ++t) {
                const int s = t % ATT90_STAGES;
                const u32 parity = ((t / ATT90_STAGES) & 1) ^ 1;
                const int key0 = (int)indices[first + t] * ATT90_KEYS;
                mbar_wait(&empty_k[s], parity);
                mbar_arrive_expect_tx(&full_k[s], AttnSm90Smem::TILE);
#pragma unroll
                for (int cb = 0; cb < ATT90_CB; ++cb)
                    tma_load_3d(sK + s * AttnSm90Smem::TILE + cb * AttnSm90Smem::KV_BLOCK, &k_map, &full_k[s],
                                h * D + cb * 64, key0, b);
                mbar_wait(&empty_v[s], parity);
                mbar_arrive_expect_tx(&full_v[s], AttnSm90Smem::TILE);
#pragma unroll
                for (int cb = 0; cb < ATT90_CB; ++cb)
                    tma_load_3d(sV + s * AttnSm90Smem::TILE + cb * AttnSm90Smem::KV_BLOCK, &v_map, &full_v[s],
                                h * D + cb * 64, key0, b);
            }
        }
        return;
    }
    // ---- math warpgroups ----
    setmaxnreg_inc<240>();
    const int mw = wg - 1;
    const int warp = t128 / 32, lane = t128 % 32;
    const int g = lane / 4, tq = lane % 4;

    mbar_wait(q_full, 0);  // Q (zeros past `tokens`)

    float o_acc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) o_acc[i] = 0.0f;
    float m_run[2] = {TESSERA_NEG_INF, TESSERA_NEG_INF};
    float l_run[2] = {0.0f, 0.0f};  // this thread's part of the row sums
    float sacc[ATT90_KEYS / 2];          // S of the current tile, then its P in f32
    u32 p_frag[ATT90_KEYS / 16][4];      // P of the previous tile: the A operand of its P V
    const u64 q_desc = wgmma_desc(sQ + 64 * mw * 128, 16, 1024, WGMMA_SWIZZLE_128B);

    // S = Q K^T for tile t, issued and committed (not waited for).
    auto issue_s = [&](int t) {
        const int s = t % ATT90_STAGES;
        mbar_wait(&full_k[s], (t / ATT90_STAGES) & 1);
        const u64 k_desc = wgmma_desc(sK + s * AttnSm90Smem::TILE, 16, 1024, WGMMA_SWIZZLE_128B);
        wgmma_fence();
#pragma unroll
        for (int cb = 0; cb < ATT90_CB; ++cb)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const u64 qoff = (u64)((cb * AttnSm90Smem::Q_BLOCK + kk * 32) >> 4);
                const u64 koff = (u64)((cb * AttnSm90Smem::KV_BLOCK + kk * 32) >> 4);
                ATT90_MMA_S::mma(sacc, q_desc + qoff, k_desc + koff, (cb | kk) != 0);
            }
        wgmma_commit();
    };
    // Waits until V of tile t has landed.
    auto wait_v = [&](int t) {
        mbar_wait(&full_v[t % ATT90_STAGES], (t / ATT90_STAGES) & 1);
    };
    // O += P V for tile t (V already waited for), issued and committed.
    auto issue_pv = [&](int t) {
        const u64 v_desc = wgmma_desc(sV + (t % ATT90_STAGES) * AttnSm90Smem::TILE, AttnSm90Smem::KV_BLOCK, 1024,
                                      WGMMA_SWIZZLE_128B);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < ATT90_KEYS / 16; ++kk)
            ATT90_MMA_PV::mma(o_acc, p_frag[kk], v_desc + (u64)((kk * 16 * 128) >> 4), 1);
        wgmma_commit();
    };
    // The online softmax of tile t's S (keys past `tokens`: -inf): the new row maxima (log2
    // domain), sacc <- P = exp2(S scale - m) in f32, the row sums; `alpha` gets the factor the
    // old O and l are scaled by.
    auto softmax = [&](int t, float (&alpha)[2]) {
        // Only the last key block can be partial, and only as the row's last tile.
        if (last_partial && t == ntiles - 1) {
            const int key0 = (num_blocks - 1) * ATT90_KEYS;
#pragma unroll
            for (int n8 = 0; n8 < ATT90_KEYS / 8; ++n8)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (key0 + n8 * 8 + 2 * tq + (e & 1) >= tokens) sacc[n8 * 4 + e] = TESSERA_NEG_INF;
        }
        // Row maxima of the raw scores (scale_log2 > 0: the op checks softmax_scale > 0, so the
        // scaling folds into the exponent's FMA), as four independent partial maxima and sums
        // per row (one chain over 32 values would be bound by the instruction latency).
        float mp[2][4];
#pragma unroll
        for (int i = 0; i < 4; ++i) mp[0][i] = mp[1][i] = TESSERA_NEG_INF;
#pragma unroll
        for (int n8 = 0; n8 < ATT90_KEYS / 8; ++n8)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float& m = mp[e / 2][(n8 % 2) * 2 + (e & 1)];
                m = fmaxf(m, sacc[n8 * 4 + e]);
            }
        float msub[2];
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
            float mx = fmaxf(fmaxf(mp[ri][0], mp[ri][1]), fmaxf(mp[ri][2], mp[ri][3]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            // The running maximum moves only when a score passes it by more than 8 (log2
            // domain): P stays <= 2^8, exact in f32 and as precise in bf16, and O is rescaled
            // far less often (1.5-3 % faster on the radial masks, session 19). The first
            // finite score always moves it (-inf before); m and l stay consistent for lse.
            const float m_cand = fmaxf(m_run[ri], mx * scale_log2);
            const float m_new = m_cand - m_run[ri] > ATT90_RESCALE_SLACK ? m_cand : m_run[ri];
            // A row with no finite score yet: subtract 0 so that exp2 gives 0, not NaN.
            msub[ri] = m_new == TESSERA_NEG_INF ? 0.0f : m_new;
            alpha[ri] = att90_exp2(m_run[ri] - msub[ri]);
            m_run[ri] = m_new;
        }
        float sp[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int n8 = 0; n8 < ATT90_KEYS / 8; ++n8)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = att90_exp2(fmaf(sacc[n8 * 4 + e], scale_log2, -msub[e / 2]));
                sacc[n8 * 4 + e] = p;
                sp[e / 2][(n8 % 2) * 2 + (e & 1)] += p;
            }
#pragma unroll
        for (int ri = 0; ri < 2; ++ri)
            l_run[ri] = l_run[ri] * alpha[ri] + ((sp[ri][0] + sp[ri][1]) + (sp[ri][2] + sp[ri][3]));
    };
    // P (sacc) into the A fragments: k-step kk covers keys 16kk..16kk+15, i.e. S's n8 tiles 2kk
    // and 2kk + 1 (row g: a[0], a[2]; row g + 8: a[1], a[3]).
    auto pack_p = [&]() {
#pragma unroll
        for (int kk = 0; kk < ATT90_KEYS / 16; ++kk) {
            p_frag[kk][0] = pack2<BF16>(sacc[8 * kk + 0], sacc[8 * kk + 1]);
            p_frag[kk][1] = pack2<BF16>(sacc[8 * kk + 2], sacc[8 * kk + 3]);
            p_frag[kk][2] = pack2<BF16>(sacc[8 * kk + 4], sacc[8 * kk + 5]);
            p_frag[kk][3] = pack2<BF16>(sacc[8 * kk + 6], sacc[8 * kk + 7]);
        }
    };
    // After the wait for a P V: O and its A registers are fenced there (no read of O moves
    // above the wait, no register of P is reused before it).
    auto fence_pv = [&]() {
        reg_fence_all(o_acc);
#pragma unroll
        for (int kk = 0; kk < ATT90_KEYS / 16; ++kk)
#pragma unroll
            for (int i = 0; i < 4; ++i) reg_fence(p_frag[kk][i]);
    };
    auto release = [&](u64* bars, int t) {
        if (t128 == 0) mbar_arrive(&bars[t % ATT90_STAGES]);
    };
    // Rescales O where a row maximum moved in this warp (after the first blocks it rarely does,
    // within ATT90_RESCALE_SLACK, and alpha is exactly 1 otherwise).
    auto rescale_o = [&](const float (&alpha)[2]) {
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int i = 0; i < D / 2; ++i) o_acc[i] *= alpha[(i / 2) & 1];
        }
    };

    if (ntiles > 0) {
        float alpha[2];
        issue_s(0);
        wgmma_wait<0>();
        reg_fence_all(sacc);
        release(empty_k, 0);
        softmax(0, alpha);
        wait_v(0);
        pack_p();
        for (int t = 1; t < ntiles; ++t) {
            // S of tile t and the P V of tile t - 1 go to the tensor cores; the softmax of tile
            // t runs while that P V does. The wait for V of tile t (a loop: a basic-block edge
            // that ptxas does not schedule across) sits between the softmax and the wait for
            // the P V, so that the wait cannot be hoisted above the softmax.
            issue_s(t);
            issue_pv(t - 1);
            wgmma_wait<1>();  // S of tile t
            reg_fence_all(sacc);
            release(empty_k, t);
            softmax(t, alpha);
            wait_v(t);
            wgmma_wait<0>();  // P V of tile t - 1
            fence_pv();
            release(empty_v, t - 1);
            pack_p();
            rescale_o(alpha);
        }
        issue_pv(ntiles - 1);
        wgmma_wait<0>();
        fence_pv();
        release(empty_v, ntiles - 1);
    }

    // ---- epilogue: row sums over the quad, o = O / l, lse = (m + log2 l) ln 2 ----
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        l_run[ri] += __shfl_xor_sync(0xffffffffu, l_run[ri], 1);
        l_run[ri] += __shfl_xor_sync(0xffffffffu, l_run[ri], 2);
    }
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const int t = q0 + 64 * mw + warp * 16 + g + 8 * ri;
        if (t >= tokens) continue;
        const bool any = l_run[ri] > 0.0f;
        const float inv = any ? 1.0f / l_run[ri] : 0.0f;
        u16* orow = o + base + (i64)t * tok_stride;
#pragma unroll
        for (int n8 = 0; n8 < D / 8; ++n8)
            *reinterpret_cast<u32*>(orow + n8 * 8 + 2 * tq) =
                pack2<BF16>(o_acc[n8 * 4 + 2 * ri] * inv, o_acc[n8 * 4 + 2 * ri + 1] * inv);
        if (tq == 0)
            lse[((i64)b * heads + h) * tokens + t] =
                any ? (m_run[ri] + log2f(l_run[ri])) * 0.69314718055994531f : TESSERA_NEG_INF;
    }
}

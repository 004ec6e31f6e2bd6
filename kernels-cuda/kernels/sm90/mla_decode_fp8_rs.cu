// MLA absorbed decode over the paged FP8 latent cache for sm_90a with the cache operand of both
// products in registers ("RS" wgmma: A from registers, B from shared memory), for few query rows
// per request (ROWS = 16 per CTA: the memory-bound decode of tensor-parallel shards).
// Prepended: common.cuh, mla_work.cuh (the CTA's queries and keys), sm90/hopper.cuh,
// sm90/mla_fp8_rs.cuh (what this kernel shares with sm90/mla_decode_fp8_rs_pairs.cu).
//
// Compile-time constants (all required):
//   LATENT 512, ROPE 64 (DeepSeek-V3's dims), ROWS 16, VARLEN (0 = s_q queries per request,
//   1 = cu_seqlens_q offsets), TESSERA_SMEM_BYTES = MlaSm90Fp8RsSmem::END,
//   TESSERA_THREADS 384 (two math warpgroups; a producer warpgroup of which one warp copies).
//
// Problem, layouts, split mode and error signalling: those of kernels/mla_decode.cu (rows
// r = i * heads + h of a request, q bf16 [batch, s_q * heads, 576], o bf16 [batch, s_q * heads,
// 512], lse f32 [batch, heads, s_q], the split workspace, NaN outputs for a bad length or
// block-table entry). FP8 records: [512 e4m3 | 4 f32 scales | 64 bf16 rope] (656 bytes).
//
// Why registers: the kernel that dequantizes into a bf16 tile in shared memory moves about
// 4.7 KB of shared-memory traffic per key at 16 rows (the bf16 tile written, then read as K and
// as V), and is bound by it. Here the raw records are copied into shared memory by bulk copies
// (one per run of keys on a page) and each math thread converts the codes it needs straight into
// its wgmma A fragments: about 2.2 KB per key.
//
// The products, transposed so that the 16 query rows are the wgmma N:
//   S^T (64 keys x 16) = sum_g scale_g(key) * (K_g Q'_g^T) + K_rope Q'_rope^T
//       K_g: the 128 codes of group g as f16 (exact: cvt.rn.f16x2.e4m3x2), Q'_g = q * 2^e_row
//       in f16 (e_row puts the row's largest |latent| in [2^14, 2^15): exact, no overflow), one
//       accumulator per group, each scaled by its keys' scales after the wgmmas (f32); the rope
//       in bf16 (raw from the record; q's rope bf16 * 2^e_row) into a fifth accumulator.
//       S = S^T * 2^-e_row, folded into each column's softmax multiplier.
//   O^T (512 x 16) += V^T (512 x 64 keys) P'^T
//       V^T: the codes as bf16 (exact: e4m3 -> f16 -> f32 -> bf16), P'_g = P * scale_g(key) in
//       bf16 (four copies of P^T, one per group g of 128 dims: the scale varies along the keys),
//       O^T tiles 2g and 2g + 1 (dims of group g) read copy g.
// Register layouts (wgmma m64nNk16 A fragment: a0 = (row l/4, cols 2(l%4)..+1), a1 = (row l/4 + 8,
// same cols), a2 / a3 = cols + 8; rows 16w.. for warp w): both products permute their
// contraction index and their M index so that a thread's fragments come from a few contiguous
// bytes of the raw records, bank-conflict free; Q'^T, P'^T and the output staging carry the
// same permutations (one source: the r8_* index functions of sm90/mla_fp8_rs.cuh).
//   S^T rows (keys): row 16w + 8h + g is key r8_s_key(w, h, g) of the tile.
//   S^T contraction (dims): latent dim d is logical column r8_latent_column(d) of Q'^T, rope dim
//       r the rope's column r8_rope_column(r). A thread (lane quarter tq) reads 16 contiguous
//       bytes of a key's latent per 4 k-steps (LDS.128), 16 of its rope per 2.
//   V^T rows (dims): row 16w + 8h + g of O^T tile 2p + s is dim 128p + 4(8w + g) + 2s + h;
//       V^T columns (keys) are the tile's keys in order. A thread reads one 32-bit word (4 dims)
//       of each of its 4 keys per k-step and group pair, and builds the fragments of two O^T
//       tiles with byte permutes.
//
// Grid: units x row groups (mla_work.cuh). 384 threads:
//   producer warp   (warp 0 of warpgroup 2, 56 registers; its other warps only wait at the end)
//                   per tile of 64 keys: reads the tile's block-table entries, waits for its
//                   stage to be free, zero-fills the keys past the split's end and on bad pages
//                   (flagged: NaN outputs), then one bulk copy (cp.async.bulk) per run of keys on
//                   one page, all completing on the stage's full barrier (every lane arrives, lane 0
//                   first with the expected bytes). (An L2 prefetch of the records 4 or 8 tiles
//                   ahead was slower.)
//   math WG w       the tiles t = w, w + 2, ..: its own softmax state and O^T; at the end the two
//                   states are merged through shared memory. Each chunk's bytes are read one
//                   chunk ahead; a stage is released as soon as its last bytes are in registers
//                   (the wgmmas read registers, not the stage).
// Shared memory:
//   RAW   4 stages x 64 records (656 bytes each, as in the cache)
//   Q     9 column blocks of [16 rows][64 logical dims], 128-byte swizzle (f16 latent, bf16 rope)
//   P     per math WG, 4 copies (groups) of [16 rows][64 keys] bf16, 128-byte swizzle
//   small column maxima and sums, the row exponents, the merge factors, barriers, flag.
// After the last tile the RAW stages hold the two warpgroups' O^T (f32 [16][516] each).

#ifndef LATENT
#error "LATENT is required (512)"
#endif
#ifndef ROPE
#error "ROPE is required (64)"
#endif
#ifndef ROWS
#error "ROWS is required (16)"
#endif
#ifndef VARLEN
#error "VARLEN is required (0 = s_q queries per request, 1 = cu_seqlens_q offsets)"
#endif
#if LATENT != 512 || ROPE != 64
#error "the sm90 register-operand FP8 MLA decode kernel is built for latent 512 + rope 64"
#endif
#if ROWS != 16
#error "ROWS must be 16"
#endif
#if VARLEN != 0 && VARLEN != 1
#error "VARLEN must be 0 or 1"
#endif

#define R8_STAGES 4  // raw tiles in flight

struct MlaSm90Fp8RsSmem {
    static constexpr int TILE = R8_TILE_BYTES;
    static constexpr int Q_BLOCK = R8_Q_BLOCK;
    static constexpr int P_COPY = ROWS * 128;      // one [ROWS][64 keys] bf16 copy
    static constexpr int RAW = 0;
    static constexpr int Q = RAW + R8_STAGES * TILE;
    static constexpr int P = Q + 9 * Q_BLOCK;
    static constexpr int COL_MAX = P + 2 * 4 * P_COPY;      // [2 WGs][ROWS][4 warps] f32
    static constexpr int COL_SUM = COL_MAX + 2 * 4 * ROWS * 4;
    static constexpr int ROW_EXP = COL_SUM + 2 * 4 * ROWS * 4;  // [ROWS] int: e_row
    static constexpr int MERGE = ROW_EXP + ROWS * 4;            // [2][ROWS] f32 factors, [2][ROWS] f32 m_run
    static constexpr int FULL = MERGE + 4 * ROWS * 4;
    static constexpr int EMPTY = FULL + R8_STAGES * 8;
    static constexpr int FLAGS = EMPTY + R8_STAGES * 8;
    static constexpr int END = FLAGS + 16;
};
static_assert(MlaSm90Fp8RsSmem::END == TESSERA_SMEM_BYTES, "the host's shared-memory size must match the layout");
static_assert(TESSERA_THREADS == R8_THREADS, "the register-operand FP8 decode kernel runs 3 warpgroups");
static_assert(MlaSm90Fp8RsSmem::Q % 1024 == 0 && MlaSm90Fp8RsSmem::P % 1024 == 0, "swizzled blocks: 1024-byte aligned");
static_assert(2 * ROWS * R8_OUT_PITCH * 4 <= R8_STAGES * MlaSm90Fp8RsSmem::TILE, "the output staging must fit in RAW");

// Named barriers (0 is __syncthreads): per math WG w, MAX + w and P + w; END all 384 threads.
#define R8_BAR_MAX 1   // 1, 2: a WG's column maxima written
#define R8_BAR_P 3     // 3, 4: a WG's P' copies written (and the maxima read)
#define R8_BAR_MATH 5  // both math WGs: Q'^T staged (R8_BAR_END, R8_BAR_OUT: sm90/mla_fp8_rs.cuh)

extern "C" __global__ void __launch_bounds__(R8_THREADS, 1) mla_decode(MLA_DECODE_PARAMS) {
    (void)latent_rt;
    (void)rope_rt;
    (void)col_chunks;
    (void)cache_map;
    (void)scale_map;
    constexpr int latent = LATENT;
    extern __shared__ __align__(1024) u8 smem[];
    u8* sRaw = smem + MlaSm90Fp8RsSmem::RAW;
    u8* sQ = smem + MlaSm90Fp8RsSmem::Q;
    float* sMax = reinterpret_cast<float*>(smem + MlaSm90Fp8RsSmem::COL_MAX);
    float* sSum = reinterpret_cast<float*>(smem + MlaSm90Fp8RsSmem::COL_SUM);
    int* sExp = reinterpret_cast<int*>(smem + MlaSm90Fp8RsSmem::ROW_EXP);
    float* sMerge = reinterpret_cast<float*>(smem + MlaSm90Fp8RsSmem::MERGE);
    u64* full = reinterpret_cast<u64*>(smem + MlaSm90Fp8RsSmem::FULL);
    u64* empty = reinterpret_cast<u64*>(smem + MlaSm90Fp8RsSmem::EMPTY);
    int* bad_page_flag = reinterpret_cast<int*>(smem + MlaSm90Fp8RsSmem::FLAGS);

    const i64 bid = blockIdx.x;
    const int rg = (int)(bid % row_groups);
    const int unit = (int)(bid / row_groups);
    const int tid = threadIdx.x;

    const int r0 = rg * ROWS;
    MlaCtaWork work;
    if (!mla_cta_work(seq_lens, cu_seqlens_q, schedule, unit, r0, ROWS, R8_KEYS, batch, s_q, total_q, heads,
                      max_pages, page_size, ws_slots, work))
        return;
    const int b = work.b;
    const int q_begin = work.q_begin, n_q = work.n_q, rows_total = work.rows_total;
    const int len = work.len, k_begin = work.k_begin, k_end = work.k_end, ntiles = work.ntiles;

    if (tid == 0) {
        for (int s = 0; s < R8_STAGES; ++s) {
            mbar_init(&full[s], 32);   // the producer warp's lanes (+ the copies' bytes)
            mbar_init(&empty[s], 128);  // every thread of the consuming math WG
        }
        *bad_page_flag = 0;
        mbar_fence_init();
    }
    __syncthreads();

    if (tid >= 256) {
        r8_producer_warpgroup<R8_STAGES>(cache, block_table, (i64)b * max_pages, k_begin, k_end, ntiles, page_size,
                                         num_pages, sRaw, full, empty, bad_page_flag);
        return;
    }

    // ---- math warpgroups ----
    setmaxnreg_inc<224>();
    const int wg = tid / 128, t128 = tid % 128;
    const int warp = t128 / 32, lane = t128 % 32;
    const int g = lane / 4, tq = lane % 4;
    u8* sP = smem + MlaSm90Fp8RsSmem::P + wg * 4 * MlaSm90Fp8RsSmem::P_COPY;

    // Q rows r0.. into Q'^T, by WG 0 (WG 1 waits at the barrier).
    if (wg == 0) {
        r8_stage_q(sQ, sExp, q + ((i64)q_begin * heads + r0) * R8_QK, rows_total - r0, t128, 128);
        fence_proxy_async_smem();
    }
    named_barrier_sync(R8_BAR_MATH, 256);

    // This thread's columns (query rows r8_column(ci, tq)): the keys each sees, the softmax multiplier.
    int lim[R8_NC];
    float cmul[R8_NC];
    r8_columns(lim, cmul, sExp, tq, r0, rows_total, len, n_q, heads, k_end, scale_log2);
    float o_acc[8 * R8_NACC];
#pragma unroll
    for (int i = 0; i < 8 * R8_NACC; ++i) o_acc[i] = 0.0f;
    float m_run[R8_NC], l_run[R8_NC];
#pragma unroll
    for (int ci = 0; ci < R8_NC; ++ci) {
        m_run[ci] = TESSERA_NEG_INF;
        l_run[ci] = 0.0f;
    }
    const u64 q_desc = wgmma_desc(sQ, 16, 1024, WGMMA_SWIZZLE_128B);
    const u64 p_desc = wgmma_desc(sP, 16, 1024, WGMMA_SWIZZLE_128B);
    // This thread's two S^T rows (keys of the tile) and their record offsets in a stage.
    const int key_h[2] = {r8_s_key(warp, 0, g), r8_s_key(warp, 1, g)};

    for (int t = wg; t < ntiles; t += 2) {
        const int s = t % R8_STAGES;
        const u8* stage = sRaw + s * MlaSm90Fp8RsSmem::TILE;
        const u8* rec0 = stage + key_h[0] * R8_REC;
        const u8* rec1 = stage + key_h[1] * R8_REC;
        mbar_wait(&full[s], (t / R8_STAGES) & 1);

        // S^T in 10 chunks: the latent's 8 of 4 k-steps (f16), the rope's 2 of 2 (bf16); each chunk's
        // bytes are read one chunk ahead, two chunks' fragments are in flight.
        float acc[5][R8_NACC];
        u32 fr[2][4][4];
        auto chunk_at = [&](int J) { return J < 8 ? 64 * J + 16 * tq : R8_ROPE_AT + 64 * (J - 8) + 16 * tq; };
        uint4 nw0 = *reinterpret_cast<const uint4*>(rec0 + chunk_at(0));
        uint4 nw1 = *reinterpret_cast<const uint4*>(rec1 + chunk_at(0));
#pragma unroll
        for (int J = 0; J < 10; ++J) {
            const uint4 w0 = nw0, w1 = nw1;
            if (J < 9) {
                nw0 = *reinterpret_cast<const uint4*>(rec0 + chunk_at(J + 1));
                nw1 = *reinterpret_cast<const uint4*>(rec1 + chunk_at(J + 1));
            }
            if (J >= 2) wgmma_wait<1>();
            u32(&f)[4][4] = fr[J % 2];
            const u32 a[4] = {w0.x, w0.y, w0.z, w0.w}, c[4] = {w1.x, w1.y, w1.z, w1.w};
            if (J < 8) {
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    r8_e4m3x4_f16(a[k], f[k][0], f[k][2]);
                    r8_e4m3x4_f16(c[k], f[k][1], f[k][3]);
                    r8_reg_fence(f[k]);
                }
                wgmma_fence();
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const int kk = 4 * J + k;
                    const u64 qo = (u64)(((kk / 4) * MlaSm90Fp8RsSmem::Q_BLOCK + (kk % 4) * 32) >> 4);
                    r8_wgmma_f16(acc[J / 2], f[k], q_desc + qo, (J % 2) | k);
                }
            } else {
#pragma unroll
                for (int k = 0; k < 2; ++k) {
                    f[k][0] = a[2 * k];
                    f[k][1] = c[2 * k];
                    f[k][2] = a[2 * k + 1];
                    f[k][3] = c[2 * k + 1];
                    r8_reg_fence(f[k]);
                }
                wgmma_fence();
#pragma unroll
                for (int k = 0; k < 2; ++k) {
                    const int kk = 2 * (J - 8) + k;  // rope k-step: logical columns LATENT + 16 kk..
                    const int L = LATENT + 16 * kk;
                    const u64 qo = (u64)(((L / 64) * MlaSm90Fp8RsSmem::Q_BLOCK + ((L % 64) / 8) * 16) >> 4);
                    r8_wgmma_bf16(acc[4], f[k], q_desc + qo, (J - 8) | k);
                }
            }
            wgmma_commit();
        }
        // The two keys' scales (needed for S and P').
        const float4 sc0 = *reinterpret_cast<const float4*>(rec0 + R8_SCALES_AT);
        const float4 sc1 = *reinterpret_cast<const float4*>(rec1 + R8_SCALES_AT);
        const float scl[2][4] = {{sc0.x, sc0.y, sc0.z, sc0.w}, {sc1.x, sc1.y, sc1.z, sc1.w}};
        // V^T's words of step v of O^T += V^T P'^T (below); step 0's are read now, under the softmax.
        auto v_words = [&](int v, u32 (&wv)[2][4]) {
#pragma unroll
            for (int pp = 0; pp < 2; ++pp)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = 16 * (v / 2) + 2 * tq + (e & 1) + 8 * (e / 2);
                    const int p = 2 * (v % 2) + pp;
                    wv[pp][e] = *reinterpret_cast<const u32*>(stage + key * R8_REC + 128 * p + 4 * (8 * warp + g));
                }
        };
        u32 nwv[2][4];
        v_words(0, nwv);
        wgmma_wait<0>();
#pragma unroll
        for (int a = 0; a < 5; ++a) reg_fence_all(acc[a]);

        // S' = sum_g scale_g acc_g + acc_rope; mask; the column maxima over the WG's 4 warps.
        const int jbase = k_begin + t * R8_KEYS;
        float sv[R8_NACC];
        float mloc[R8_NC];
#pragma unroll
        for (int ci = 0; ci < R8_NC; ++ci) mloc[ci] = TESSERA_NEG_INF;
#pragma unroll
        for (int i = 0; i < R8_NACC; ++i) {
            const int h = (i / 2) & 1, ci = 2 * (i / 4) + (i & 1);
            float v = acc[4][i];
#pragma unroll
            for (int gr = 0; gr < 4; ++gr) v = fmaf(acc[gr][i], scl[h][gr], v);
            v = jbase + key_h[h] < lim[ci] ? v * cmul[ci] : TESSERA_NEG_INF;
            sv[i] = v;
            mloc[ci] = fmaxf(mloc[ci], v);
        }
        // [column][warp] per WG: a column's four warps in one 16-byte read.
        float* sX = sMax + wg * ROWS * 4;
#pragma unroll
        for (int ci = 0; ci < R8_NC; ++ci) {
            mloc[ci] = fmaxf(mloc[ci], __shfl_xor_sync(0xffffffffu, mloc[ci], 4));
            mloc[ci] = fmaxf(mloc[ci], __shfl_xor_sync(0xffffffffu, mloc[ci], 8));
            mloc[ci] = fmaxf(mloc[ci], __shfl_xor_sync(0xffffffffu, mloc[ci], 16));
            if (g == 0) sX[((ci / 2) * 8 + 2 * tq + (ci & 1)) * 4 + warp] = mloc[ci];
        }
        named_barrier_sync(R8_BAR_MAX + wg, 128);
        float alpha[R8_NC], m_use[R8_NC];
        bool moved = false;
#pragma unroll
        for (int ci = 0; ci < R8_NC; ++ci) {
            const int c = (ci / 2) * 8 + 2 * tq + (ci & 1);
            const float4 mx = *reinterpret_cast<const float4*>(sX + c * 4);
            const float m_new = fmaxf(m_run[ci], fmaxf(fmaxf(mx.x, mx.y), fmaxf(mx.z, mx.w)));
            m_use[ci] = m_new == TESSERA_NEG_INF ? 0.0f : m_new;
            alpha[ci] = r8_ex2(m_run[ci] - m_use[ci]);
            moved |= alpha[ci] != 1.0f;
            m_run[ci] = m_new;
        }
        // P = exp2(S - m); P'_g = P * scale_g(key) as bf16 into copy g of P'^T ([ROWS][64 keys]).
#pragma unroll
        for (int ci = 0; ci < R8_NC; ++ci) l_run[ci] *= alpha[ci];
        float p[R8_NACC];
#pragma unroll
        for (int i = 0; i < R8_NACC; ++i) {
            const int ci = 2 * (i / 4) + (i & 1);
            p[i] = r8_ex2(sv[i] - m_use[ci]);
            l_run[ci] += p[i];
        }
        // Keys key_h[0] and key_h[0] + 1 (rows g and g + 8) of column c: one bf16 pair per copy.
        const int k0 = key_h[0];
#pragma unroll
        for (int n8 = 0; n8 < ROWS / 8; ++n8)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int i = n8 * 4 + e, c = n8 * 8 + 2 * tq + e;
                const u32 at = swizzle128(c, k0 / 8) + (k0 % 8) * 2;
#pragma unroll
                for (int gr = 0; gr < 4; ++gr)
                    *reinterpret_cast<u32*>(sP + gr * MlaSm90Fp8RsSmem::P_COPY + at) =
                        pack2<true>(p[i] * scl[0][gr], p[i + 2] * scl[1][gr]);
            }
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
            for (int i = 0; i < 8 * R8_NACC; ++i) o_acc[i] *= alpha[2 * ((i % R8_NACC) / 4) + (i & 1)];
        }
        reg_fence_all(o_acc);
        fence_proxy_async_smem();
        named_barrier_sync(R8_BAR_P + wg, 128);

        // O^T += V^T P'^T in 8 steps v: k-step kk = v / 2 (keys 16kk..), group pairs p = 2 (v % 2) + {0, 1}
        // (O^T tiles 2p, 2p + 1): the words of dims 128p + 4(8 warp + g).. of keys 16kk + 2tq + {0, 1, 8, 9}.
        u32 vf[2][2][2][4];
#pragma unroll
        for (int v = 0; v < 8; ++v) {
            const int kk = v / 2;
            u32 wv[2][4];
#pragma unroll
            for (int pp = 0; pp < 2; ++pp)
#pragma unroll
                for (int e = 0; e < 4; ++e) wv[pp][e] = nwv[pp][e];
            if (v < 7) v_words(v + 1, nwv);
            if (v >= 2) wgmma_wait<1>();
            u32(&f)[2][2][4] = vf[v % 2];
#pragma unroll
            for (int pp = 0; pp < 2; ++pp) {
                // Byte permutes: x01 = (key 2tq dim d0, key 2tq + 1 dim d0, the same of dim d0 + 1), ..
                const u32 x01 = r8_prmt(wv[pp][0], wv[pp][1], 0x5140);
                const u32 x23 = r8_prmt(wv[pp][0], wv[pp][1], 0x7362);
                const u32 y01 = r8_prmt(wv[pp][2], wv[pp][3], 0x5140);  // keys + 8, + 9
                const u32 y23 = r8_prmt(wv[pp][2], wv[pp][3], 0x7362);
                // Tile 2p: rows g (dim d0), g + 8 (d0 + 1); tile 2p + 1: d0 + 2, d0 + 3.
                u32 h[8];
                r8_e4m3x4_f16(x01, h[0], h[1]);
                r8_e4m3x4_f16(y01, h[2], h[3]);
                r8_e4m3x4_f16(x23, h[4], h[5]);
                r8_e4m3x4_f16(y23, h[6], h[7]);
#pragma unroll
                for (int e = 0; e < 8; ++e) f[pp][e / 4][e % 4] = r8_f16x2_bf16(h[e]);
                r8_reg_fence(f[pp][0]);
                r8_reg_fence(f[pp][1]);
            }
            // This thread's last reads of the stage are in registers: back to the producer once
            // every thread of the warpgroup's are.
            if (v == 7) mbar_arrive(&empty[s]);
            wgmma_fence();
#pragma unroll
            for (int pp = 0; pp < 2; ++pp) {
                const int p = 2 * (v % 2) + pp;
                const u64 b_desc = p_desc + (u64)((p * MlaSm90Fp8RsSmem::P_COPY + kk * 32) >> 4);
                r8_wgmma_bf16(o_acc + (2 * p) * R8_NACC, f[pp][0], b_desc, 1);
                r8_wgmma_bf16(o_acc + (2 * p + 1) * R8_NACC, f[pp][1], b_desc, 1);
            }
            wgmma_commit();
        }
        wgmma_wait<0>();
        reg_fence_all(o_acc);
    }

    // ---- epilogue: both WGs' O^T and softmax states into shared memory, merged, written ----
    mla_decode_epilogue_begins();
#pragma unroll
    for (int ci = 0; ci < R8_NC; ++ci) {
        l_run[ci] += __shfl_xor_sync(0xffffffffu, l_run[ci], 4);
        l_run[ci] += __shfl_xor_sync(0xffffffffu, l_run[ci], 8);
        l_run[ci] += __shfl_xor_sync(0xffffffffu, l_run[ci], 16);
        const int c = (ci / 2) * 8 + 2 * tq + (ci & 1);
        if (g == 0) sSum[(wg * 4 + warp) * ROWS + c] = l_run[ci];
        if (g == 0 && warp == 0) sMerge[2 * ROWS + wg * ROWS + c] = m_run[ci];
    }
    // Every copy has landed and been read (the producer is done once its flag is posted): RAW is
    // the output staging.
    named_barrier_sync(R8_BAR_END, R8_THREADS);
    float* stage = reinterpret_cast<float*>(sRaw) + wg * ROWS * R8_OUT_PITCH;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int e = 0; e < R8_NACC; ++e) {
            const int c = (e / 4) * 8 + 2 * tq + (e & 1);
            const int d = r8_out_dim(i, warp, (e / 2) & 1, g);
            stage[c * R8_OUT_PITCH + d] = o_acc[i * R8_NACC + e];
        }
    const bool bad = work.bad_len || *bad_page_flag != 0;
    if (wg == 0 && t128 < ROWS) {
        const int c = t128;
        const float* su = sSum + c;
        const float l0 = su[0] + su[ROWS] + su[2 * ROWS] + su[3 * ROWS];
        const float l1 = su[4 * ROWS] + su[5 * ROWS] + su[6 * ROWS] + su[7 * ROWS];
        const float m0 = sMerge[2 * ROWS + c], m1 = sMerge[3 * ROWS + c];
        const float m = fmaxf(m0, m1);
        const float mu = m == TESSERA_NEG_INF ? 0.0f : m;
        const float a0 = exp2f(m0 - mu), a1 = exp2f(m1 - mu);
        const float lt = a0 * l0 + a1 * l1;
        const float inv = bad ? TESSERA_NAN : (lt > 0.0f ? 1.0f / lt : 0.0f);
        sMerge[c] = a0 * inv;
        sMerge[ROWS + c] = a1 * inv;
        if (r0 + c < rows_total) {
            const float lse_v = bad ? TESSERA_NAN : (lt > 0.0f ? (m + log2f(lt)) * 0.69314718055994531f : TESSERA_NEG_INF);
            mla_store_row_lse(work, lse, ws, r0 + c, heads, s_q, total_q, ws_slots, latent, lse_v);
        }
    }
    named_barrier_sync(R8_BAR_OUT, R8_THREADS);
    const float* st0 = reinterpret_cast<const float*>(sRaw);
    const float* st1 = st0 + ROWS * R8_OUT_PITCH;
    const int rows_here = min(ROWS, rows_total - r0);
    for (int idx = tid; idx < rows_here * (LATENT / 4); idx += 256) {
        const int c = idx / (LATENT / 4), d = (idx % (LATENT / 4)) * 4;
        const float f0 = sMerge[c], f1 = sMerge[ROWS + c];
        const float4 x = *reinterpret_cast<const float4*>(st0 + c * R8_OUT_PITCH + d);
        const float4 y = *reinterpret_cast<const float4*>(st1 + c * R8_OUT_PITCH + d);
        const float4 v = make_float4(x.x * f0 + y.x * f1, x.y * f0 + y.y * f1, x.z * f0 + y.z * f1, x.w * f0 + y.w * f1);
        mla_store_row4(work, o, ws, r0 + c, heads, latent, d, v);
    }
}

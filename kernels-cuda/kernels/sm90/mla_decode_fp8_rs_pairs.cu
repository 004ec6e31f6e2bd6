// MLA absorbed decode over the paged FP8 latent cache for sm_90a with the cache operand in
// registers, 32 query rows per CTA (h_q 16 at s_q 2, and h_q 128 in four row groups).
// Prepended: common.cuh, mla_work.cuh (the CTA's queries and keys), sm90/hopper.cuh,
// sm90/mla_fp8_rs.cuh (what this kernel shares with sm90/mla_decode_fp8_rs.cu, whose header
// describes the register-operand products, the fragment permutations and the producer).
//
// Compile-time constants (all required): LATENT 512, ROPE 64, ROWS 32, VARLEN (0 = s_q queries
// per request, 1 = cu_seqlens_q offsets), TESSERA_SMEM_BYTES = MlaSm90Fp8RsSmem::END,
// TESSERA_THREADS 384. Problem, layouts, split mode and error signalling: those of
// kernels/mla_decode.cu.
//
// At 32 rows one warpgroup cannot hold O^T (128 registers a thread) beside S^T's accumulators, so
// the tiles go in pairs, as in FlashMLA's schedule: for the pair (2j, 2j + 1)
//   - math warpgroup w computes S^T of tile 2j + w (N = 32; the latent in two halves of two scale
//     groups, with the rope in the first, folded into S after each half: three accumulators);
//   - the two exchange their tiles' column maxima (barrier X), so that both hold the same running
//     maximum; each writes P of its tile (bf16 [32 rows][64 keys], one store per key pair) and
//     sums it into its own column sums;
//   - after barrier P, warpgroup w computes O^T for the dims of its half (256w.., scale groups
//     2w, 2w + 1) over both tiles: V^T's codes converted as in the 16-row kernel and multiplied by
//     their keys' scales in the fragments (bf16x2: exact for the power-of-two scales of the
//     format), so that one P per tile serves both halves (the 16-row kernel's four P copies per
//     group would not fit beside four stages).
// A lone last tile (an odd count) is warpgroup 0's; warpgroup 1's S is all masked then. Every
// stage is read by both warpgroups (their V halves) and released by all 256 math threads. At the
// end the two warpgroups' column sums are added (same maximum), each normalizes and stages its
// half of O, warpgroup 0 writes the log-sum-exp.
// Shared memory: RAW 4 stages of 64 records; Q'^T 9 blocks of [32][64]; P [2 tiles][32][64] bf16;
// the column maxima per warpgroup [32][4 warps], the pair's tile maxima [parity][2][32], the
// column sums [2][4][32], the row exponents; barriers, flag. After the last tile RAW holds the
// output staging (f32 [32][516]).

#ifndef LATENT
#error "LATENT is required (512)"
#endif
#ifndef ROPE
#error "ROPE is required (64)"
#endif
#ifndef ROWS
#error "ROWS is required (32)"
#endif
#ifndef VARLEN
#error "VARLEN is required (0 = s_q queries per request, 1 = cu_seqlens_q offsets)"
#endif
#if LATENT != 512 || ROPE != 64
#error "the sm90 register-operand FP8 MLA decode kernel is built for latent 512 + rope 64"
#endif
#if ROWS != 32
#error "ROWS must be 32"
#endif
#if VARLEN != 0 && VARLEN != 1
#error "VARLEN must be 0 or 1"
#endif

#define R8_STAGES 4  // raw tiles in flight

struct MlaSm90Fp8RsSmem {
    static constexpr int TILE = R8_TILE_BYTES;
    static constexpr int Q_BLOCK = R8_Q_BLOCK;
    static constexpr int P_TILE = ROWS * 128;      // one [ROWS][64 keys] bf16 P
    static constexpr int RAW = 0;
    static constexpr int Q = RAW + R8_STAGES * TILE;
    static constexpr int P = Q + 9 * Q_BLOCK;                   // [2 tiles of the pair]
    static constexpr int COL_MAX = P + 2 * P_TILE;              // [2 WGs][ROWS][4 warps] f32
    static constexpr int TILE_MAX = COL_MAX + 2 * ROWS * 4 * 4;  // [2 parities][2 WGs][ROWS] f32
    static constexpr int COL_SUM = TILE_MAX + 2 * 2 * ROWS * 4;  // [2 WGs][4 warps][ROWS] f32
    static constexpr int ROW_EXP = COL_SUM + 2 * 4 * ROWS * 4;   // [ROWS] int: e_row
    static constexpr int FULL = ROW_EXP + ROWS * 4;
    static constexpr int EMPTY = FULL + R8_STAGES * 8;
    static constexpr int FLAGS = EMPTY + R8_STAGES * 8;
    static constexpr int END = FLAGS + 16;
};
static_assert(MlaSm90Fp8RsSmem::END == TESSERA_SMEM_BYTES, "the host's shared-memory size must match the layout");
static_assert(TESSERA_THREADS == R8_THREADS, "the register-operand FP8 decode kernel runs 3 warpgroups");
static_assert(MlaSm90Fp8RsSmem::Q % 1024 == 0 && MlaSm90Fp8RsSmem::P % 1024 == 0, "swizzled blocks: 1024-byte aligned");
static_assert(ROWS * R8_OUT_PITCH * 4 <= R8_STAGES * MlaSm90Fp8RsSmem::TILE, "the output staging must fit in RAW");

// Named barriers (0 is __syncthreads): per math WG w, MAX + w; the pair's X and P, both math WGs.
#define R8_BAR_MAX 1   // 1, 2: a WG's column maxima (at the end its column sums) written
#define R8_BAR_X 3     // both math WGs: the pair's tile maxima written
#define R8_BAR_P 4     // both math WGs: the pair's P written
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
    float* sTileMax = reinterpret_cast<float*>(smem + MlaSm90Fp8RsSmem::TILE_MAX);
    int* sExp = reinterpret_cast<int*>(smem + MlaSm90Fp8RsSmem::ROW_EXP);
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
            mbar_init(&empty[s], 256);  // every math thread (both read every tile's V)
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
    u8* sP = smem + MlaSm90Fp8RsSmem::P;

    // Q rows r0.. into Q'^T, by both WGs.
    r8_stage_q(sQ, sExp, q + ((i64)q_begin * heads + r0) * R8_QK, rows_total - r0, tid, 256);
    fence_proxy_async_smem();
    named_barrier_sync(R8_BAR_MATH, 256);

    int lim[R8_NC];
    float cmul[R8_NC];
    r8_columns(lim, cmul, sExp, tq, r0, rows_total, len, n_q, heads, k_end, scale_log2);
    // O^T tiles 4wg.. (dims 256wg.., groups 2wg, 2wg + 1) over both tiles of every pair.
    float o_acc[4 * R8_NACC];
#pragma unroll
    for (int i = 0; i < 4 * R8_NACC; ++i) o_acc[i] = 0.0f;
    // The softmax state, the same in both WGs; l_run sums this WG's tiles only.
    float m_run[R8_NC], l_run[R8_NC];
#pragma unroll
    for (int ci = 0; ci < R8_NC; ++ci) {
        m_run[ci] = TESSERA_NEG_INF;
        l_run[ci] = 0.0f;
    }
    const u64 q_desc = wgmma_desc(sQ, 16, 1024, WGMMA_SWIZZLE_128B);
    const u64 p_desc = wgmma_desc(sP, 16, 1024, WGMMA_SWIZZLE_128B);
    const int key_h[2] = {r8_s_key(warp, 0, g), r8_s_key(warp, 1, g)};

    for (int t0 = 0; t0 < ntiles; t0 += 2) {
        const int t = t0 + wg;           // this WG's tile of the pair
        const bool two = t0 + 1 < ntiles;  // the pair has a second tile
        float sv[R8_NACC];
        if (t < ntiles) {
            const int s = t % R8_STAGES;
            const u8* stage = sRaw + s * MlaSm90Fp8RsSmem::TILE;
            const u8* rec0 = stage + key_h[0] * R8_REC;
            const u8* rec1 = stage + key_h[1] * R8_REC;
            mbar_wait(&full[s], (t / R8_STAGES) & 1);
            const float4 sc0 = *reinterpret_cast<const float4*>(rec0 + R8_SCALES_AT);
            const float4 sc1 = *reinterpret_cast<const float4*>(rec1 + R8_SCALES_AT);
            const float scl[2][4] = {{sc0.x, sc0.y, sc0.z, sc0.w}, {sc1.x, sc1.y, sc1.z, sc1.w}};
            // S^T in two halves of 5 chunks: latent groups 0, 1 and the rope, then groups 2, 3
            // (three accumulators of 16, folded into sv after each half).
#pragma unroll
            for (int i = 0; i < R8_NACC; ++i) sv[i] = 0.0f;
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                float acc[3][R8_NACC];
                u32 fr[2][4][4];
                // Chunk c of this half: latent chunk 4 half + c (c < 4), else rope chunk c - 4 (half 0).
                const int nch = half == 0 ? 6 : 4;
                auto chunk_at = [&](int c) {
                    return c < 4 ? 64 * (4 * half + c) + 16 * tq : R8_ROPE_AT + 64 * (c - 4) + 16 * tq;
                };
                uint4 nw0 = *reinterpret_cast<const uint4*>(rec0 + chunk_at(0));
                uint4 nw1 = *reinterpret_cast<const uint4*>(rec1 + chunk_at(0));
#pragma unroll
                for (int c = 0; c < 6; ++c) {
                    if (c >= nch) break;
                    const uint4 w0 = nw0, w1 = nw1;
                    if (c + 1 < nch) {
                        nw0 = *reinterpret_cast<const uint4*>(rec0 + chunk_at(c + 1));
                        nw1 = *reinterpret_cast<const uint4*>(rec1 + chunk_at(c + 1));
                    }
                    if (c >= 2) wgmma_wait<1>();
                    u32(&f)[4][4] = fr[c % 2];
                    const u32 a[4] = {w0.x, w0.y, w0.z, w0.w}, b1[4] = {w1.x, w1.y, w1.z, w1.w};
                    if (c < 4) {
#pragma unroll
                        for (int k = 0; k < 4; ++k) {
                            r8_e4m3x4_f16(a[k], f[k][0], f[k][2]);
                            r8_e4m3x4_f16(b1[k], f[k][1], f[k][3]);
                            r8_reg_fence(f[k]);
                        }
                        wgmma_fence();
#pragma unroll
                        for (int k = 0; k < 4; ++k) {
                            const int kk = 4 * (4 * half + c) + k;
                            const u64 qo = (u64)(((kk / 4) * MlaSm90Fp8RsSmem::Q_BLOCK + (kk % 4) * 32) >> 4);
                            r8_wgmma_f16(acc[c / 2], f[k], q_desc + qo, (c % 2) | k);
                        }
                    } else {
#pragma unroll
                        for (int k = 0; k < 2; ++k) {
                            f[k][0] = a[2 * k];
                            f[k][1] = b1[2 * k];
                            f[k][2] = a[2 * k + 1];
                            f[k][3] = b1[2 * k + 1];
                            r8_reg_fence(f[k]);
                        }
                        wgmma_fence();
#pragma unroll
                        for (int k = 0; k < 2; ++k) {
                            const int L = LATENT + 16 * (2 * (c - 4) + k);
                            const u64 qo = (u64)(((L / 64) * MlaSm90Fp8RsSmem::Q_BLOCK + ((L % 64) / 8) * 16) >> 4);
                            r8_wgmma_bf16(acc[2], f[k], q_desc + qo, (c - 4) | k);
                        }
                    }
                    wgmma_commit();
                }
                wgmma_wait<0>();
#pragma unroll
                for (int x = 0; x < 3; ++x) reg_fence_all(acc[x]);
#pragma unroll
                for (int i = 0; i < R8_NACC; ++i) {
                    const int h = (i / 2) & 1;
                    float v = fmaf(acc[0][i], scl[h][2 * half], fmaf(acc[1][i], scl[h][2 * half + 1], sv[i]));
                    if (half == 0) v += acc[2][i];
                    sv[i] = v;
                }
            }
            // Mask and scale.
            const int jbase = k_begin + t * R8_KEYS;
#pragma unroll
            for (int i = 0; i < R8_NACC; ++i) {
                const int h = (i / 2) & 1, ci = 2 * (i / 4) + (i & 1);
                sv[i] = jbase + key_h[h] < lim[ci] ? sv[i] * cmul[ci] : TESSERA_NEG_INF;
            }
        } else {
#pragma unroll
            for (int i = 0; i < R8_NACC; ++i) sv[i] = TESSERA_NEG_INF;
        }
        // This tile's column maxima over the WG's 4 warps, then the pair's over both WGs.
        float mloc[R8_NC];
#pragma unroll
        for (int ci = 0; ci < R8_NC; ++ci) mloc[ci] = TESSERA_NEG_INF;
#pragma unroll
        for (int i = 0; i < R8_NACC; ++i) {
            const int ci = 2 * (i / 4) + (i & 1);
            mloc[ci] = fmaxf(mloc[ci], sv[i]);
        }
        float* sX = sMax + wg * ROWS * 4;
#pragma unroll
        for (int ci = 0; ci < R8_NC; ++ci) {
            mloc[ci] = fmaxf(mloc[ci], __shfl_xor_sync(0xffffffffu, mloc[ci], 4));
            mloc[ci] = fmaxf(mloc[ci], __shfl_xor_sync(0xffffffffu, mloc[ci], 8));
            mloc[ci] = fmaxf(mloc[ci], __shfl_xor_sync(0xffffffffu, mloc[ci], 16));
            if (g == 0) sX[((ci / 2) * 8 + 2 * tq + (ci & 1)) * 4 + warp] = mloc[ci];
        }
        named_barrier_sync(R8_BAR_MAX + wg, 128);
        float* tmax = sTileMax + ((t0 / 2) % 2) * 2 * ROWS;  // by pair parity
        float m_tile[R8_NC];
#pragma unroll
        for (int ci = 0; ci < R8_NC; ++ci) {
            const int c = (ci / 2) * 8 + 2 * tq + (ci & 1);
            const float4 mx = *reinterpret_cast<const float4*>(sX + c * 4);
            m_tile[ci] = fmaxf(fmaxf(mx.x, mx.y), fmaxf(mx.z, mx.w));
            if (warp == 0 && g == 0) tmax[wg * ROWS + c] = m_tile[ci];
        }
        named_barrier_sync(R8_BAR_X, 256);
        float alpha[R8_NC], m_use[R8_NC];
        bool moved = false;
#pragma unroll
        for (int ci = 0; ci < R8_NC; ++ci) {
            const int c = (ci / 2) * 8 + 2 * tq + (ci & 1);
            const float m_pair = fmaxf(tmax[c], tmax[ROWS + c]);  // the same order in both WGs
            const float m_new = fmaxf(m_run[ci], m_pair);
            m_use[ci] = m_new == TESSERA_NEG_INF ? 0.0f : m_new;
            alpha[ci] = r8_ex2(m_run[ci] - m_use[ci]);
            moved |= alpha[ci] != 1.0f;
            m_run[ci] = m_new;
            l_run[ci] *= alpha[ci];
        }
        // P of this WG's tile (bf16, [ROWS][64 keys]): keys key_h[0], + 1 of column c in one store.
        u8* pw = sP + wg * MlaSm90Fp8RsSmem::P_TILE;
        const int k0 = key_h[0];
#pragma unroll
        for (int n8 = 0; n8 < ROWS / 8; ++n8)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int i = n8 * 4 + e, ci = 2 * n8 + e, c = n8 * 8 + 2 * tq + e;
                const float p0 = r8_ex2(sv[i] - m_use[ci]), p1 = r8_ex2(sv[i + 2] - m_use[ci]);
                l_run[ci] += p0 + p1;
                *reinterpret_cast<u32*>(pw + swizzle128(c, k0 / 8) + (k0 % 8) * 2) = pack2<true>(p0, p1);
            }
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
            for (int i = 0; i < 4 * R8_NACC; ++i) o_acc[i] *= alpha[2 * ((i % R8_NACC) / 4) + (i & 1)];
        }
        reg_fence_all(o_acc);
        fence_proxy_async_smem();
        named_barrier_sync(R8_BAR_P, 256);

        // O^T (this WG's dims) += V^T P^T over the pair's tiles x, 4 k-steps v each, groups
        // p = 2wg + pp: V^T's codes as bf16 times their keys' scales (bf16x2 multiply: exact for
        // power-of-two scales).
        u32 vf[2][2][2][4];
        // Step q (tile q / 4 of the pair, k-step q % 4): the words and scales this thread reads,
        // one step ahead.
        auto v_load = [&](int q, u32 (&wv)[2][4], float (&sk)[2][4]) {
            const u8* st = sRaw + ((t0 + q / 4) % R8_STAGES) * MlaSm90Fp8RsSmem::TILE;
#pragma unroll
            for (int pp = 0; pp < 2; ++pp)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int key = 16 * (q % 4) + 2 * tq + (e & 1) + 8 * (e / 2);
                    const int p = 2 * wg + pp;
                    wv[pp][e] = *reinterpret_cast<const u32*>(st + key * R8_REC + 128 * p + 4 * (8 * warp + g));
                    sk[pp][e] = *reinterpret_cast<const float*>(st + key * R8_REC + R8_SCALES_AT + 4 * p);
                }
        };
        const int steps = two ? 8 : 4;
        mbar_wait(&full[t0 % R8_STAGES], (t0 / R8_STAGES) & 1);  // completed: the copies' visibility here
        u32 nwv[2][4];
        float nsk[2][4];
        v_load(0, nwv, nsk);
#pragma unroll
        for (int q = 0; q < 8; ++q) {
            if (q >= steps) break;
            const int x = q / 4, v = q % 4;
            u32 wv[2][4];
            float sk[2][4];
#pragma unroll
            for (int pp = 0; pp < 2; ++pp)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    wv[pp][e] = nwv[pp][e];
                    sk[pp][e] = nsk[pp][e];
                }
            if (q + 1 < steps) {
                if (q == 3) mbar_wait(&full[(t0 + 1) % R8_STAGES], ((t0 + 1) / R8_STAGES) & 1);
                v_load(q + 1, nwv, nsk);
            }
            if (q >= 2) wgmma_wait<1>();
            u32(&f)[2][2][4] = vf[q % 2];
#pragma unroll
            for (int pp = 0; pp < 2; ++pp) {
                const u32 x01 = r8_prmt(wv[pp][0], wv[pp][1], 0x5140);
                const u32 x23 = r8_prmt(wv[pp][0], wv[pp][1], 0x7362);
                const u32 y01 = r8_prmt(wv[pp][2], wv[pp][3], 0x5140);
                const u32 y23 = r8_prmt(wv[pp][2], wv[pp][3], 0x7362);
                const u32 s01 = pack2<true>(sk[pp][0], sk[pp][1]), s89 = pack2<true>(sk[pp][2], sk[pp][3]);
                u32 h[8];
                r8_e4m3x4_f16(x01, h[0], h[1]);
                r8_e4m3x4_f16(y01, h[2], h[3]);
                r8_e4m3x4_f16(x23, h[4], h[5]);
                r8_e4m3x4_f16(y23, h[6], h[7]);
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    f[pp][e / 4][e % 4] = r8_mul_bf16x2(r8_f16x2_bf16(h[e]), (e % 4) < 2 ? s01 : s89);
                r8_reg_fence(f[pp][0]);
                r8_reg_fence(f[pp][1]);
            }
            // This thread's last reads of tile x's stage are in registers (the next step's of the
            // same tile were read ahead): release it once every math thread's are.
            if (v == 3) mbar_arrive(&empty[(t0 + x) % R8_STAGES]);
            wgmma_fence();
#pragma unroll
            for (int pp = 0; pp < 2; ++pp) {
                const u64 b_desc = p_desc + (u64)((x * MlaSm90Fp8RsSmem::P_TILE + v * 32) >> 4);
                r8_wgmma_bf16(o_acc + (2 * pp) * R8_NACC, f[pp][0], b_desc, 1);
                r8_wgmma_bf16(o_acc + (2 * pp + 1) * R8_NACC, f[pp][1], b_desc, 1);
            }
            wgmma_commit();
        }
        wgmma_wait<0>();
        reg_fence_all(o_acc);
    }

    // ---- epilogue: the column sums of both WGs, normalize, stage O (rows x latent), write ----
    mla_decode_epilogue_begins();
#pragma unroll
    for (int ci = 0; ci < R8_NC; ++ci) {
        l_run[ci] += __shfl_xor_sync(0xffffffffu, l_run[ci], 4);
        l_run[ci] += __shfl_xor_sync(0xffffffffu, l_run[ci], 8);
        l_run[ci] += __shfl_xor_sync(0xffffffffu, l_run[ci], 16);
        if (g == 0) sSum[(wg * 4 + warp) * ROWS + (ci / 2) * 8 + 2 * tq + (ci & 1)] = l_run[ci];
    }
    named_barrier_sync(R8_BAR_END, R8_THREADS);
    const bool bad = work.bad_len || *bad_page_flag != 0;
    float* stage = reinterpret_cast<float*>(sRaw);
    float inv[R8_NC];
#pragma unroll
    for (int ci = 0; ci < R8_NC; ++ci) {
        const int c = (ci / 2) * 8 + 2 * tq + (ci & 1);
        float lt = 0.0f;
#pragma unroll
        for (int w = 0; w < 8; ++w) lt += sSum[w * ROWS + c];
        inv[ci] = bad ? TESSERA_NAN : (lt > 0.0f ? 1.0f / lt : 0.0f);
        if (wg == 0 && g == 0 && warp == 0 && r0 + c < rows_total) {
            const float lse_v = bad ? TESSERA_NAN
                                    : (lt > 0.0f ? (m_run[ci] + log2f(lt)) * 0.69314718055994531f : TESSERA_NEG_INF);
            mla_store_row_lse(work, lse, ws, r0 + c, heads, s_q, total_q, ws_slots, latent, lse_v);
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < R8_NACC; ++e) {
            const int c = (e / 4) * 8 + 2 * tq + (e & 1);
            const int d = r8_out_dim(4 * wg + i, warp, (e / 2) & 1, g);
            stage[c * R8_OUT_PITCH + d] = o_acc[i * R8_NACC + e] * inv[2 * (e / 4) + (e & 1)];
        }
    named_barrier_sync(R8_BAR_OUT, R8_THREADS);
    const int rows_here = min(ROWS, rows_total - r0);
    for (int idx = tid; idx < rows_here * (LATENT / 4); idx += 256) {
        const int c = idx / (LATENT / 4), d = (idx % (LATENT / 4)) * 4;
        const float4 v = *reinterpret_cast<const float4*>(stage + c * R8_OUT_PITCH + d);
        mla_store_row4(work, o, ws, r0 + c, heads, latent, d, v);
    }
}

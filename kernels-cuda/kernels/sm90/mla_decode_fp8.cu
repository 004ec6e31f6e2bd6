// MLA absorbed decode over the paged latent cache (FP8, or bf16: "transposed bf16") for sm_90a,
// for few query rows per request (h_q * s_q <= 32 per CTA: the memory-bound decode of
// tensor-parallel shards). Prepended: common.cuh, mla_work.cuh (the CTA's queries and keys),
// sm90/hopper.cuh, sm90/mla_tiles.cuh (FMT 0's record copies), sm90/wgmma.cuh.
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/mla.rs):
//   FMT         1 = FP8 records [latent e4m3 | latent/128 f32 scales | rope bf16] (656 bytes);
//               0 = bf16 records [latent bf16 | rope bf16] (1152 bytes): the two non-math
//               warpgroups only copy (loaders, below), the math warpgroup is the same code
//   LATENT      512 and ROPE 64 (DeepSeek-V3's dims)
//   ROWS        16 or 32: query rows per CTA (heads x s_q folded, as every MLA decode kernel)
//   VARLEN      0 = s_q queries per request, 1 = cu_seqlens_q offsets (as kernels/mla_decode.cu)
//   TESSERA_SMEM_BYTES  MlaSm90Fp8Smem::END below
//   TESSERA_THREADS     384 (a math warpgroup and two dequantizing / loading warpgroups)
//
// Problem, layouts, split mode and error signalling: exactly those of kernels/mla_decode.cu
// (rows r = i * heads + h of a request, q bf16 [batch, s_q * heads, qk], o bf16
// [batch, s_q * heads, latent], lse f32 [batch, heads, s_q], the split workspace, NaN outputs
// for a bad length or block-table entry); the host launches all of them through one code path.
//
// The product is computed transposed, so that the few query rows are the wgmma N (16 or 32) and
// no tensor-core work is spent on padding rows (the bf16 kernel pads its rows to 64):
//   S^T (64 keys x ROWS) = K (64 x 576) Q^T          wgmma m64nROWSk16, A = K, B = Q, both K-major
//   O^T (512 x ROWS)    += V^T (512 x 64 keys) P^T   8 x wgmma m64nROWSk16, A = V^T (MN-major)
// with the softmax over the columns of S^T (a row maximum is a column maximum: reduced over the
// lanes of a warp, then over the 4 warps through shared memory).
// Grid: units x row groups, a unit being a (request, split) of the split-KV schedule
// (mla_work.cuh); key tiles of 64 keys, two bf16 tiles in shared memory.
//   dequant WGs (2)  thread (key k of the tile, quarter q): loads with 16-byte ld.global.nc, one
//                    tile ahead in registers (no shared-memory staging of the raw bytes), the
//                    latent chunks q, q + 4, .., q + 28 (16 codes each) of key k, its 4 scales
//                    and rope chunks q, q + 4; converts e4m3 -> bf16 times the group's scale
//                    (cvt.rn.f16x2.e4m3x2, f32 multiply, bf16 round: exact for power-of-two
//                    scales) into the swizzled bf16 tile; keys past the split (or on a bad page,
//                    flagged, never read) are zeros. full[t % 2] completes when a tile is in.
//   math WG          per tile: S^T, mask, column maxima, P^T (bf16) into shared memory, O^T
//                    rescaled where a maximum moved, O^T += V^T P^T; the tile is released
//                    (empty[t % 2]) once its wgmmas are done, while the dequantizers fill the
//                    other tile.
//   FMT 0: loader WGs thread (keys k0 and k0 + 32 of the tile, chunk c of 8): 16-byte cp.async
//                    of chunk c of each column block of both records straight into the swizzled
//                    tile (zero-fill past the split or on a bad page, flagged, never read), block
//                    table looked up one tile ahead; column block cb completes on
//                    full[t % 2][cb] (cp.async.mbarrier.arrive.noinc), so S^T starts on the
//                    first 8 KB while the rest is in flight.
// Shared memory (1024-byte aligned, 128-byte swizzle: 16-byte chunk c of row r of a 128-byte-wide
// block at r * 128 + ((c ^ (r % 8)) * 16)):
//   Q   9 column blocks of [ROWS rows][64 dims]
//   K   2 tiles x 9 column blocks of [64 keys][64 dims] bf16; V = the first 8 blocks
//   P   [ROWS rows][64 keys] bf16
//   column maxima and sums [4 warps][ROWS] f32 each, the barriers, the bad-page flag.
// After the last tile the first K tile is the output's staging buffer ([ROWS][516] f32).
//
// Measured no faster (dev/NOTES-mla-decode-sm90.md, "The f16 route", which says where the
// variants are): MMAs on the unscaled codes in f16 (dequantizers that only
// convert), whole-record loads, mbarrier waits with a suspend hint. At h_q 16 the loads alone
// and the math alone each take ~0.55x the bf16 kernel's time, together ~0.83x.

#ifndef FMT
#error "FMT is required (1 = FP8 records, 0 = bf16 records)"
#endif
#ifndef LATENT
#error "LATENT is required (512)"
#endif
#ifndef ROPE
#error "ROPE is required (64)"
#endif
#ifndef ROWS
#error "ROWS is required (16 or 32)"
#endif
#ifndef VARLEN
#error "VARLEN is required (0 = s_q queries per request, 1 = cu_seqlens_q offsets)"
#endif
#if (FMT != 0 && FMT != 1) || LATENT != 512 || ROPE != 64
#error "the sm90 transposed MLA decode kernel is built for FP8 or bf16 records of latent 512 + rope 64"
#endif
#if ROWS != 16 && ROWS != 32
#error "ROWS must be 16 or 32"
#endif
#if VARLEN != 0 && VARLEN != 1
#error "VARLEN must be 0 or 1"
#endif

#define M8_KEYS 64                      // keys per tile (the wgmma M of S^T)
#define M8_QK (LATENT + ROPE)           // 576
#define M8_BLOCKS (M8_QK / 64)          // 9 column blocks of 64 dims
#define M8_V_BLOCKS (LATENT / 64)       // 8 of them are V
#define M8_THREADS 384
#define M8_SCALES_AT LATENT             // byte offset of the 4 f32 scales in a record
#define M8_ROPE_AT (LATENT + LATENT / 32)  // 528: the bf16 rope
#define M8_OUT_PITCH (LATENT + 4)       // f32 per row of the output staging (bank spread)
#define M8_NACC (ROWS / 2)              // accumulator floats per thread of one m64nROWS wgmma
#define M8_FULL_BARS (FMT == 0 ? M8_BLOCKS : 1)  // full barriers per tile: per column block for bf16

// Byte offsets of the shared-memory regions; the host's size (kernels-cuda/src/plan/mla.rs) is
// checked against END at compile time.
struct MlaSm90Fp8Smem {
    static constexpr int KEY_BLOCK = M8_KEYS * 128;  // one [64 keys][64 dims] bf16 block
    static constexpr int Q_BLOCK = ROWS * 128;       // one [ROWS][64 dims] bf16 block
    static constexpr int Q = 0;
    static constexpr int K = Q + M8_BLOCKS * Q_BLOCK;
    static constexpr int TILE = M8_BLOCKS * KEY_BLOCK;
    static constexpr int P = K + 2 * TILE;
    static constexpr int COL_MAX = P + ROWS * 128;
    static constexpr int COL_SUM = COL_MAX + 4 * ROWS * 4;
    static constexpr int FULL = COL_SUM + 4 * ROWS * 4;
    static constexpr int EMPTY = FULL + 2 * M8_FULL_BARS * 8;
    static constexpr int FLAGS = EMPTY + 2 * 8;
    static constexpr int END = FLAGS + 16;
};
static_assert(MlaSm90Fp8Smem::END == TESSERA_SMEM_BYTES, "the host's shared-memory size must match the sm90 FP8 decode layout");
static_assert(TESSERA_THREADS == M8_THREADS, "the sm90 FP8 decode kernel runs 3 warpgroups");
static_assert(MlaSm90Fp8Smem::K % 1024 == 0, "the key tiles must be 1024-byte aligned");
static_assert(ROWS * M8_OUT_PITCH * 4 <= MlaSm90Fp8Smem::TILE, "the output staging must fit in a key tile");

// Named barriers (0 is __syncthreads).
#define M8_BAR_MAX 1   // the math WG: column maxima written
#define M8_BAR_P 2     // the math WG: P written (and the maxima read)
#define M8_BAR_END 3   // all three WGs: the dequantizers' bad-page flag is final
#define M8_BAR_OUT 4   // the math WG: the output staged

#if FMT == 1
// 16 bytes from global memory through the non-coherent path (the cache is read-only here).
__device__ __forceinline__ uint4 m8_ldg16(const u8* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

#endif

// O^T tile += V^T P^T: D(64 latent x ROWS) (+)= A(64 x 16 keys, MN-major) * B(ROWS x 16, K-major).
__device__ __forceinline__ void m8_wgmma_vt(float* d, u64 a, u64 b) {
#if ROWS == 16
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 1, "
        "0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(a), "l"(b));
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, "
        "%13, %14, %15}, %16, %17, p, 1, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b));
#endif
}

#if FMT == 1
// The raw bytes of one key of a tile that one dequantizing thread converts.
struct M8Raw {
    uint4 codes[8];  // latent chunks q + 4m (m = 0..7) of 16 codes
    uint4 rope[2];   // rope chunks q and q + 4 (8 bf16 each)
    uint4 scales;    // the 4 f32 scales
};
#endif

extern "C" __global__ void __launch_bounds__(M8_THREADS, 1) mla_decode(
    MLA_DECODE_PARAMS) {
    (void)latent_rt;
    (void)rope_rt;
    (void)col_chunks;
    constexpr int latent = LATENT;
    extern __shared__ __align__(1024) u8 smem[];
    u8* sQ = smem + MlaSm90Fp8Smem::Q;
    u8* sK = smem + MlaSm90Fp8Smem::K;
    u8* sP = smem + MlaSm90Fp8Smem::P;
    float* sMax = reinterpret_cast<float*>(smem + MlaSm90Fp8Smem::COL_MAX);
    float* sSum = reinterpret_cast<float*>(smem + MlaSm90Fp8Smem::COL_SUM);
    u64* full = reinterpret_cast<u64*>(smem + MlaSm90Fp8Smem::FULL);
    u64* empty = reinterpret_cast<u64*>(smem + MlaSm90Fp8Smem::EMPTY);
    int* bad_page_flag = reinterpret_cast<int*>(smem + MlaSm90Fp8Smem::FLAGS);

    const i64 bid = blockIdx.x;
    const int rg = (int)(bid % row_groups);
    const int unit = (int)(bid / row_groups);
    const int tid = threadIdx.x;
    const int wg = tid / 128;  // 0 math, 1 and 2 dequantize
    const int t128 = tid % 128;

    const int r0 = rg * ROWS;
    MlaCtaWork work;
    if (!mla_cta_work(seq_lens, cu_seqlens_q, schedule, unit, r0, ROWS, M8_KEYS, batch, s_q, total_q, heads,
                      max_pages, page_size, ws_slots, work))
        return;
    const int b = work.b;
    const int q_begin = work.q_begin, n_q = work.n_q, rows_total = work.rows_total;
    const int len = work.len, k_begin = work.k_begin, k_end = work.k_end, ntiles = work.ntiles;

    if (tid == 0) {
        for (int s = 0; s < 2 * M8_FULL_BARS; ++s) mbar_init(&full[s], 256);
        for (int s = 0; s < 2; ++s) {
            mbar_init(&empty[s], 4);  // lane 0 of each math warp, after its wgmmas of the tile
        }
        *bad_page_flag = 0;
        mbar_fence_init();
    }
    __syncthreads();

    if (wg != 0) {
        setmaxnreg_dec<136>();  // 256 x 136 + 128 x 232 = 384 x 168, the launch allocation
        const int dtid = tid - 128;           // 0..255
        const i64 bt_row = (i64)b * max_pages;
        int bad_page = 0;
#if FMT == 0
        // ---- loaders: bf16 records -> the key tiles, with cp.async ----
        // Thread dtid copies chunk dtid % 8 of every column block of keys k0 and k0 + 32 (a warp:
        // 4 records x 128 contiguous bytes per copy). The records' byte offsets (-1: zero-fill)
        // are looked up one tile ahead of the copies.
        const int k0 = dtid / 8, chunk = dtid % 8;
        auto lookup = [&](int t, i64 (&rec)[2]) {
#pragma unroll
            for (int k = 0; k < 2; ++k)
                rec[k] = t < ntiles ? mla_record_offset(block_table, bt_row, k_begin + t * M8_KEYS + 32 * k + k0, k_end,
                                                        page_size, num_pages, token_bytes, bad_page)
                                    : -1;
        };
        i64 rec_next[2];
        lookup(0, rec_next);
        for (int t = 0; t < ntiles; ++t) {
            const int s = t % 2;
            const i64 rec[2] = {rec_next[0], rec_next[1]};
            lookup(t + 1, rec_next);
            mbar_wait(&empty[s], ((t / 2) & 1) ^ 1);
            u8* tile = sK + s * MlaSm90Fp8Smem::TILE;
            // Column block by column block, each completing on its own barrier.
#pragma unroll 1
            for (int cb = 0; cb < M8_BLOCKS; ++cb) {
                mla_copy_record_chunks(tile + cb * MlaSm90Fp8Smem::KEY_BLOCK, cache, rec, cb, k0, 32, chunk);
                cp_async_mbar_arrive(&full[s * M8_BLOCKS + cb]);
            }
        }
#else
        // ---- dequantizers: FP8 records -> the bf16 key tiles ----
        const int key = (dtid / 32) * 8 + dtid % 8;  // key of the tile
        const int qr = (dtid % 32) / 8;       // quarter: latent chunks qr + 4m, rope chunks qr, qr + 4
        // The record of key `key` of tile t, or null (past the split's keys, or a bad page).
        auto record = [&](int t) -> const u8* {
            if (t >= ntiles) return nullptr;
            const i64 off = mla_record_offset(block_table, bt_row, k_begin + t * M8_KEYS + key, k_end, page_size,
                                              num_pages, token_bytes, bad_page);
            return off < 0 ? nullptr : cache + off;
        };
        auto load = [&](int t, M8Raw& r) {
            const u8* rec = record(t);
            if (rec != nullptr) {
#pragma unroll
                for (int m = 0; m < 8; ++m) r.codes[m] = m8_ldg16(rec + 16 * (qr + 4 * m));
                r.scales = m8_ldg16(rec + M8_SCALES_AT);
                r.rope[0] = m8_ldg16(rec + M8_ROPE_AT + 16 * qr);
                r.rope[1] = m8_ldg16(rec + M8_ROPE_AT + 16 * (qr + 4));
            } else {
#pragma unroll
                for (int m = 0; m < 8; ++m) r.codes[m] = make_uint4(0, 0, 0, 0);
                r.scales = make_uint4(0, 0, 0, 0);
                r.rope[0] = r.rope[1] = make_uint4(0, 0, 0, 0);
            }
        };
        auto store = [&](int t, const M8Raw& r) {
            const int s = t % 2;
            mbar_wait(&empty[s], ((t / 2) & 1) ^ 1);
            u8* tile = sK + s * MlaSm90Fp8Smem::TILE;
            const float sc[4] = {__uint_as_float(r.scales.x), __uint_as_float(r.scales.y),
                                 __uint_as_float(r.scales.z), __uint_as_float(r.scales.w)};
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                // Latent chunk qr + 4m (dims 16(qr + 4m)..) is bf16 chunks 2qr, 2qr + 1 of block m.
                const float s_m = sc[m / 2];
                const uint2 a = mla_e4m3x4_scaled(r.codes[m].x, s_m);
                const uint2 c = mla_e4m3x4_scaled(r.codes[m].y, s_m);
                const uint2 d = mla_e4m3x4_scaled(r.codes[m].z, s_m);
                const uint2 e = mla_e4m3x4_scaled(r.codes[m].w, s_m);
                u8* blk = tile + m * MlaSm90Fp8Smem::KEY_BLOCK;
                *reinterpret_cast<uint4*>(blk + swizzle128(key, 2 * qr)) = make_uint4(a.x, a.y, c.x, c.y);
                *reinterpret_cast<uint4*>(blk + swizzle128(key, 2 * qr + 1)) = make_uint4(d.x, d.y, e.x, e.y);
            }
            u8* rope_blk = tile + M8_V_BLOCKS * MlaSm90Fp8Smem::KEY_BLOCK;
            *reinterpret_cast<uint4*>(rope_blk + swizzle128(key, qr)) = r.rope[0];
            *reinterpret_cast<uint4*>(rope_blk + swizzle128(key, qr + 4)) = r.rope[1];
            fence_proxy_async_smem();
            mbar_arrive(&full[s]);
        };
        // Two register sets, so that one tile's loads are in flight while the other converts.
        M8Raw ra, rb;
        load(0, ra);
        for (int t = 0; t < ntiles; t += 2) {
            load(t + 1, rb);
            store(t, ra);
            if (t + 1 < ntiles) {
                load(t + 2, ra);
                store(t + 1, rb);
            }
        }
#endif
        if (bad_page) atomicOr(bad_page_flag, 1);
        named_barrier_sync(M8_BAR_END, M8_THREADS);
        return;
    }

    // ---- math warpgroup ----
    setmaxnreg_inc<232>();
    const int warp = t128 / 32, lane = t128 % 32;
    const int g = lane / 4, tq = lane % 4;

    // Q rows r0.. of this request into the swizzled Q blocks (zero rows past the request's).
    for (int idx = t128; idx < ROWS * (M8_QK / 8); idx += 128) {
        const int row = idx / (M8_QK / 8), c = idx % (M8_QK / 8);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r0 + row < rows_total)
            v = *reinterpret_cast<const uint4*>(q + ((i64)q_begin * heads + r0 + row) * M8_QK + c * 8);
        *reinterpret_cast<uint4*>(sQ + (c / 8) * MlaSm90Fp8Smem::Q_BLOCK + swizzle128(row, c % 8)) = v;
    }
    fence_proxy_async_smem();
    named_barrier_sync(M8_BAR_P, 128);

    // This thread's columns (query rows) c = n8 * 8 + 2 tq + e1, index ci = 2 n8 + e1, and the
    // keys each sees (causal over the s_q positions).
    constexpr int NC = ROWS / 4;
    int lim[NC];
#pragma unroll
    for (int ci = 0; ci < NC; ++ci) {
        const int r = r0 + (ci / 2) * 8 + 2 * tq + (ci & 1);
        lim[ci] = r < rows_total ? min(len - (n_q - 1 - r / heads), k_end) : -1;
    }
    float o_acc[M8_V_BLOCKS * M8_NACC];
#pragma unroll
    for (int i = 0; i < M8_V_BLOCKS * M8_NACC; ++i) o_acc[i] = 0.0f;
    float m_run[NC], l_run[NC];
#pragma unroll
    for (int ci = 0; ci < NC; ++ci) {
        m_run[ci] = TESSERA_NEG_INF;
        l_run[ci] = 0.0f;
    }
    const u64 q_desc = wgmma_desc(sQ, 16, 1024, WGMMA_SWIZZLE_128B);
    const u64 p_desc = wgmma_desc(sP, 16, 1024, WGMMA_SWIZZLE_128B);
    float sacc[M8_NACC];

    // S^T of tile t (issued and committed).
    auto issue_s = [&](int t) {
        const int s = t % 2;
        if (FMT == 1) mbar_wait(&full[s], (t / 2) & 1);
        const u64 k_desc = wgmma_desc(sK + s * MlaSm90Fp8Smem::TILE, 16, 1024, WGMMA_SWIZZLE_128B);
        if (FMT == 1) wgmma_fence();
#pragma unroll
        for (int cb = 0; cb < M8_BLOCKS; ++cb) {
            if (FMT == 0) {
                // bf16: column block cb's cp.async copies landed (generic-proxy writes: fenced
                // before the wgmma reads them through the async proxy). A wgmma fence after each
                // wait: ptxas would otherwise inject one (C7519) for the accumulator.
                mbar_wait(&full[s * M8_BLOCKS + cb], (t / 2) & 1);
                fence_proxy_async_smem();
                wgmma_fence();
            }
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const u64 ko = (u64)((cb * MlaSm90Fp8Smem::KEY_BLOCK + kk * 32) >> 4);
                const u64 qo = (u64)((cb * MlaSm90Fp8Smem::Q_BLOCK + kk * 32) >> 4);
                WgmmaBf16<ROWS, 0>::mma(sacc, k_desc + ko, q_desc + qo, (cb | kk) != 0);
            }
        }
        wgmma_commit();
    };

    for (int t = 0; t < ntiles; ++t) {
        const int s = t % 2;
        issue_s(t);
        wgmma_wait<0>();
        reg_fence_all(sacc);

        // Mask, scale, this thread's column maxima over its 2 keys, then over the warp's 16 keys.
        const int jbase = k_begin + t * M8_KEYS + warp * 16 + g;
        float sv[M8_NACC];
        float mloc[NC];
#pragma unroll
        for (int ci = 0; ci < NC; ++ci) mloc[ci] = TESSERA_NEG_INF;
#pragma unroll
        for (int n8 = 0; n8 < ROWS / 8; ++n8)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int ci = 2 * n8 + (e & 1);
                const int j = jbase + 8 * (e / 2);
                const float v = j < lim[ci] ? sacc[n8 * 4 + e] * scale_log2 : TESSERA_NEG_INF;
                sv[n8 * 4 + e] = v;
                mloc[ci] = fmaxf(mloc[ci], v);
            }
#pragma unroll
        for (int ci = 0; ci < NC; ++ci) {
            mloc[ci] = fmaxf(mloc[ci], __shfl_xor_sync(0xffffffffu, mloc[ci], 4));
            mloc[ci] = fmaxf(mloc[ci], __shfl_xor_sync(0xffffffffu, mloc[ci], 8));
            mloc[ci] = fmaxf(mloc[ci], __shfl_xor_sync(0xffffffffu, mloc[ci], 16));
            if (g == 0) sMax[warp * ROWS + (ci / 2) * 8 + 2 * tq + (ci & 1)] = mloc[ci];
        }
        named_barrier_sync(M8_BAR_MAX, 128);
        float alpha[NC], m_use[NC];
        bool moved = false;
#pragma unroll
        for (int ci = 0; ci < NC; ++ci) {
            const int c = (ci / 2) * 8 + 2 * tq + (ci & 1);
            const float m_tile = fmaxf(fmaxf(sMax[c], sMax[ROWS + c]), fmaxf(sMax[2 * ROWS + c], sMax[3 * ROWS + c]));
            const float m_new = fmaxf(m_run[ci], m_tile);
            m_use[ci] = m_new == TESSERA_NEG_INF ? 0.0f : m_new;
            alpha[ci] = exp2f(m_run[ci] - m_use[ci]);
            moved |= alpha[ci] != 1.0f;
            m_run[ci] = m_new;
        }
        // P^T = exp2(S^T - m) as bf16 into the P tile ([ROWS rows][64 keys], K-major for the
        // P V wgmma); column sums in f32 per thread.
#pragma unroll
        for (int ci = 0; ci < NC; ++ci) l_run[ci] *= alpha[ci];
#pragma unroll
        for (int n8 = 0; n8 < ROWS / 8; ++n8)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int ci = 2 * n8 + (e & 1);
                const float p = exp2f(sv[n8 * 4 + e] - m_use[ci]);
                l_run[ci] += p;
                const int c = n8 * 8 + 2 * tq + (e & 1);
                const int k = warp * 16 + g + 8 * (e / 2);
                *reinterpret_cast<u16*>(sP + swizzle128(c, k / 8) + (k % 8) * 2) = f32_to_bf16(p);
            }
        // Rescale O^T only where a maximum moved in this warp.
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
            for (int i = 0; i < M8_V_BLOCKS * M8_NACC; ++i) o_acc[i] *= alpha[2 * ((i % M8_NACC) / 4) + (i & 1)];
        }
        fence_proxy_async_smem();
        named_barrier_sync(M8_BAR_P, 128);

        // O^T += V^T P^T (8 latent tiles of 64). (Issuing the next tile's S^T before waiting for
        // it made ptxas serialize every wgmma (C7515), and measured slower.)
        const u8* tile = sK + s * MlaSm90Fp8Smem::TILE;
        wgmma_fence();
#pragma unroll
        for (int i = 0; i < M8_V_BLOCKS; ++i) {
            const u64 v_desc = wgmma_desc(tile + i * MlaSm90Fp8Smem::KEY_BLOCK, 1024, 1024, WGMMA_SWIZZLE_128B);
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
                m8_wgmma_vt(o_acc + i * M8_NACC, v_desc + (u64)((kk * 16 * 128) >> 4), p_desc + (u64)((kk * 32) >> 4));
        }
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence_all(o_acc);
        if (lane == 0) mbar_arrive(&empty[s]);  // the tile goes back to the dequantizers
    }

    // ---- epilogue: column sums over the warps, normalize, stage O (rows x latent), write ----
    mla_decode_epilogue_begins();
#pragma unroll
    for (int ci = 0; ci < NC; ++ci) {
        l_run[ci] += __shfl_xor_sync(0xffffffffu, l_run[ci], 4);
        l_run[ci] += __shfl_xor_sync(0xffffffffu, l_run[ci], 8);
        l_run[ci] += __shfl_xor_sync(0xffffffffu, l_run[ci], 16);
        if (g == 0) sSum[warp * ROWS + (ci / 2) * 8 + 2 * tq + (ci & 1)] = l_run[ci];
    }
    // Every dequantizer is done (its flag posted) and every wgmma has read its tiles: the first
    // key tile becomes the output staging.
    named_barrier_sync(M8_BAR_END, M8_THREADS);
    const bool bad = work.bad_len || *bad_page_flag != 0;
    float* stage = reinterpret_cast<float*>(sK);
    float inv[NC];
#pragma unroll
    for (int ci = 0; ci < NC; ++ci) {
        const int c = (ci / 2) * 8 + 2 * tq + (ci & 1);
        const float lt = sSum[c] + sSum[ROWS + c] + sSum[2 * ROWS + c] + sSum[3 * ROWS + c];
        inv[ci] = bad ? TESSERA_NAN : (lt > 0.0f ? 1.0f / lt : 0.0f);
        if (g == 0 && warp == 0 && r0 + c < rows_total) {
            const float lse_v = bad ? TESSERA_NAN
                                    : (lt > 0.0f ? (m_run[ci] + log2f(lt)) * 0.69314718055994531f : TESSERA_NEG_INF);
            mla_store_row_lse(work, lse, ws, r0 + c, heads, s_q, total_q, ws_slots, latent, lse_v);
        }
    }
#pragma unroll
    for (int i = 0; i < M8_V_BLOCKS; ++i)
#pragma unroll
        for (int n8 = 0; n8 < ROWS / 8; ++n8)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int c = n8 * 8 + 2 * tq + (e & 1);
                const int d = i * 64 + warp * 16 + g + 8 * (e / 2);
                stage[c * M8_OUT_PITCH + d] = o_acc[i * M8_NACC + n8 * 4 + e] * inv[2 * n8 + (e & 1)];
            }
    named_barrier_sync(M8_BAR_OUT, 128);
    const int rows_here = min(ROWS, rows_total - r0);
    for (int idx = t128; idx < rows_here * (LATENT / 4); idx += 128) {
        const int c = idx / (LATENT / 4), d = (idx % (LATENT / 4)) * 4;
        const float4 v = *reinterpret_cast<const float4*>(stage + c * M8_OUT_PITCH + d);
        mla_store_row4(work, o, ws, r0 + c, heads, latent, d, v);
    }
}

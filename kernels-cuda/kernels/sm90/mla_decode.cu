// MLA absorbed decode over the paged latent cache for sm_90a: wgmma, a cp.async + mbarrier
// pipeline filled by a producer warpgroup, two math warpgroups. Prepended: common.cuh,
// mla_work.cuh (the CTA's queries and keys), sm90/hopper.cuh, sm90/mla_tiles.cuh (the record
// copies), sm90/wgmma.cuh (WgmmaBf16).
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/mla.rs):
//   FMT         0 = bf16 cache records [latent bf16 | rope bf16]; 1 = FP8 records [latent e4m3 |
//               latent/128 f32 scales | rope bf16] (656 bytes; SEESAW 1 only: see below)
//   LATENT      512 and ROPE 64 (DeepSeek-V3's dims; other layouts take the mma.sync kernel)
//   VARLEN      0 = s_q queries per request, 1 = cu_seqlens_q offsets (as kernels/mla_decode.cu)
//   TESSERA_SMEM_BYTES  MlaSm90Smem::END below
//   TESSERA_THREADS     384 (a producer warpgroup and two math warpgroups)
//
// Problem, layouts, split mode and error signalling: exactly those of kernels/mla_decode.cu
// (rows r = i * heads + h of a request, q bf16 [batch, s_q * heads, qk], o bf16
// [batch, s_q * heads, latent], lse f32 [batch, heads, s_q], the split workspace, NaN outputs
// for a bad length or block-table entry); the host launches both through one code path.
//
// Grid: units x row groups, a unit being a (request, split) of the split-KV schedule
// (mla_work.cuh, written by mla_schedule.cu before this launch; CTAs past its units exit at once).
// CTA: 64 query rows (a row group) of one request, one split of its keys, all 512 output columns;
// key tiles of 64 keys in STAGES = 2 shared-memory buffers.
//   producer WG   copies key tile t (64 records of 1152 bytes, looked up in the block table) with
//                 16-byte cp.async into the 128-byte-swizzled K layout below, zero-filling keys
//                 past the split's range, one column block at a time: block cb completes on
//                 full[t % 2][cb], so that S starts on the first block while the rest is in flight.
//   math WG w     S_w = Q K^T for keys 32w..32w+32 of the tile (wgmma m64n32k16, 36 k-steps,
//                 both operands K-major from shared memory); the row max is exchanged with the
//                 other WG through shared memory; P_w = exp2(S_w - m) (bf16) goes to the shared P
//                 tile; then O_w (64 x 256, columns 256w..) += P (64 x 64) V (the latent part of
//                 the same key tile, MN-major) with wgmma m64n256k16; the stage is released to
//                 the producer (empty[t % 2]) when both WGs' P V are done.
// Shared memory (all 1024-byte aligned, 128-byte swizzle: the 16-byte chunk c of row r of a
// 128-byte-wide block lives at r * 128 + ((c ^ (r % 8)) * 16)):
//   Q   9 column blocks of [64 rows][64 dims]      (9 x 8 KB)
//   K   STAGES x 9 column blocks of [64 keys][64]  (2 x 72 KB); V = its first 8 blocks
//   P   [64 rows][64 keys] bf16                    (8 KB)
//   row maxima [2][64] f32, row sums [2][64] f32, the barriers, the bad-page flag.

#ifndef FMT
#error "FMT is required (0 = bf16 records)"
#endif
#ifndef LATENT
#error "LATENT is required (512)"
#endif
#ifndef ROPE
#error "ROPE is required (64)"
#endif
#ifndef VARLEN
#error "VARLEN is required (0 = s_q queries per request, 1 = cu_seqlens_q offsets)"
#endif
#if (FMT != 0 && FMT != 1) || LATENT != 512 || ROPE != 64
#error "the sm90 MLA decode kernel is built for bf16 or FP8 records of latent 512 + rope 64"
#endif
#if VARLEN != 0 && VARLEN != 1
#error "VARLEN must be 0 or 1"
#endif

// SEESAW 1: FlashMLA's schedule (dev/NOTES-mla-decode-sm90.md, "the refill, with TMA at the
// release"). Key tiles in pairs (a in stage 0, b = a + 1 in stage 1); math warpgroup w computes S
// of tile a + w over all 64 keys (m64n64) and its softmax, and owns output columns 256w.. of both
// tiles: WG 0 takes P_a V_a[L] from registers, WG 1 (after WG 0's maximum) P_b V_b[R], then each
// the other's rescaled P through shared memory; each issues the S of its next tile at the end of
// the pair, while the other still works. A stage is refilled in two parts (L = column blocks
// 0..3, R = 4..8): the warpgroup that read a part last issues its TMA copies (the tile two
// ahead) as soon as it is done with it. The producer warpgroup only loads tiles 0 and 1 (and
// zeroes the partial tile, below). Q's rope block lives in registers (A of the rope k-steps),
// its shared memory holds P_b.
// The cache is read through the tensor map `cache_map` ([records][576] bf16, boxes of [64 keys]
// [64 dims], 128-byte swizzle), one box per column block of a tile: the host keeps SEESAW to page
// sizes that are multiples of 64. Tiles wholly past the split's end are read from outside the
// map (zeros); a bad page is flagged and read the same way. The last tile's keys past the end
// may hold anything (NaN in unused slots) and must be zero before P V (their P is 0, but
// 0 x NaN is NaN): that tile's copies complete on `landed` instead, and the producer warpgroup
// zeroes those rows, then completes the tile's full barriers. (Zeroing in the math warpgroups,
// even behind a branch not taken, cost them 4 %.)
#ifndef SEESAW
#error "SEESAW is required (0 = the default schedule with cp.async loads, 1 = FlashMLA's with TMA refills)"
#endif
#if SEESAW != 0 && SEESAW != 1
#error "SEESAW must be 0 or 1"
#endif
#if FMT == 1 && !SEESAW
#error "FP8 records (FMT 1) are built with SEESAW 1 only"
#endif

// FMT 1 (FP8 records): the same schedule and bf16 tiles; a refill brings the codes, not the bf16
// values. The releasing thread's TMA copies a part's two 128-code groups (boxes of [64 keys][128
// bytes] from `cache_map`, [records][656] bytes) into the part's last two column blocks, and the
// rope (bf16 already) straight into column block 8; the stage's first refilled part (L of stage
// 0, R of stage 1: the order the warpgroups release them) also brings the tile's scales (a box
// of [64 keys][16 bytes] from `scale_map`). All but the rope complete on raw[stage][part]. The
// producer warpgroup, idle in the bf16 build, converts: per part it waits for raw, then for each
// of the two groups reads its codes (thread i: codes 64 (i / 64).. of key i % 64), multiplies them
// by the key's scale of that group (bf16 by truncation: exact for the format's power-of-two
// scales, mla_e4m3x4_scaled_truncated), writes the group's two bf16 column blocks and completes their
// full barriers (128 arrivals: every producer thread, after its proxy fence). The first group's
// blocks are free; the second's hold the raw codes of both groups, so the warpgroup syncs
// (MLA90_BAR_CONVERT) between reading and writing them. It zeroes the keys of the split's last
// tile past its end (unused slots may hold NaN codes or scales) instead of converting them; keys
// read from outside the map are zero codes with zero scales.

#define MLA90_ROWS 64                     // query rows per CTA (one wgmma M)
#define MLA90_KEYS 64                     // keys per tile
#define MLA90_STAGES 2                    // key tiles in shared memory
#define MLA90_QK (LATENT + ROPE)          // 576
#define MLA90_BLOCKS (MLA90_QK / 64)      // 9 column blocks of 64 dims
#define MLA90_V_BLOCKS (LATENT / 64)      // 8 of them are V
#define MLA90_RECORD_CHUNKS (MLA90_QK / 8)  // 72 16-byte chunks per record
#define MLA90_THREADS 384
// Registers per thread after setmaxnreg (3 x 128 threads x 168 at launch): the producer's
// conversion (FMT 1) runs 10 % faster with 56 than with 40 (harness, h_q 128), where the math
// warpgroups still fit in 224; more for the producer makes the math spill.
#define MLA90_PRODUCER_REGS (FMT == 1 ? 56 : 40)
#define MLA90_MATH_REGS (FMT == 1 ? 224 : 232)

// Byte offsets of the shared-memory regions; the host's size (kernels-cuda/src/plan/mla.rs) is
// checked against END at compile time.
struct MlaSm90Smem {
    static constexpr int BLOCK_BYTES = MLA90_ROWS * 128;             // one [64][64] bf16 block
    static constexpr int Q = 0;
    static constexpr int K = Q + MLA90_BLOCKS * BLOCK_BYTES;
    static constexpr int STAGE_BYTES = MLA90_BLOCKS * MLA90_KEYS * 128;
    static constexpr int P = K + MLA90_STAGES * STAGE_BYTES;
#if FMT == 1
    // FP8: the tiles' scales [stage][64 keys][4] f32 (1 KB a stage) where the bf16 build keeps
    // its row maxima (unused by the seesaw) and sums; the epilogue's row sums [2][64] f32 reuse
    // stage 0's scales (read by the producer before the last tiles' full barriers complete, so
    // before any math thread reaches the epilogue). Then the raw barriers [stage][part].
    static constexpr int SCALES = P + MLA90_ROWS * 128;
    static constexpr int SCALE_STAGE_BYTES = MLA90_KEYS * 16;
    static constexpr int ROW_SUM = SCALES;
    static constexpr int FULL = SCALES + MLA90_STAGES * SCALE_STAGE_BYTES;  // [stage][column block]
    static constexpr int RAW = FULL + MLA90_STAGES * MLA90_BLOCKS * 8;
    static constexpr int FLAGS = RAW + MLA90_STAGES * 2 * 8;
#else
    static constexpr int ROW_MAX = P + MLA90_ROWS * 128;
    static constexpr int ROW_SUM = ROW_MAX + 2 * MLA90_ROWS * 4;
    static constexpr int FULL = ROW_SUM + 2 * MLA90_ROWS * 4;  // [stage][column block]
    static constexpr int EMPTY = FULL + MLA90_STAGES * MLA90_BLOCKS * 8;
    static constexpr int FLAGS = EMPTY + MLA90_STAGES * 8;
#endif
#if SEESAW
    // The running row maximum, WG 0's and WG 1's rescale factors of the pair, [64] f32 each
    // (EMPTY above is unused).
    static constexpr int SEESAW_M = FLAGS + 16;
    static constexpr int SCALE0 = SEESAW_M + MLA90_ROWS * 4;
    static constexpr int SCALE1 = SCALE0 + MLA90_ROWS * 4;
#if FMT == 1
    static constexpr int END = SCALE1 + MLA90_ROWS * 4;
#else
    static constexpr int LANDED = SCALE1 + MLA90_ROWS * 4;  // [part]: the last tile's copies
    static constexpr int END = LANDED + 2 * 8;
#endif
#else
    static constexpr int END = FLAGS + 16;
#endif
};
static_assert(MlaSm90Smem::END == TESSERA_SMEM_BYTES, "the host's shared-memory size must match the sm90 decode layout");
static_assert(TESSERA_THREADS == MLA90_THREADS, "the sm90 decode kernel runs 3 warpgroups");

// Named barriers (0 is __syncthreads).
#define MLA90_BAR_MAX 1   // the two math WGs: row maxima written
#define MLA90_BAR_P 2     // the two math WGs: P written
#define MLA90_BAR_END 3   // all three WGs: the producer's bad-page flag is final
#if SEESAW
#define MLA90_BAR_SCALE0 4  // WG 0 -> WG 1: the pair's first maximum and WG 0's factor written
#define MLA90_BAR_SCALE1 5  // WG 1 -> WG 0: the pair's maximum and WG 1's factor written
#define MLA90_BAR_P0 6      // WG 0 -> WG 1: P_a (rescaled) in sP
#define MLA90_BAR_P1 7      // WG 1 -> WG 0: P_b in the Q rope block, and P_a V_a[R] issued
#define MLA90_BAR_ZEROED 8  // the producer WG: the last tile's rows past the end are zero (FMT 0)
#define MLA90_BAR_CONVERT 8  // the producer WG: a part's codes all read, its blocks may be written (FMT 1)

// The column blocks of a stage's part (SEESAW refills a stage in two): L = 0..3, R = 4..8.
__device__ __forceinline__ int mla90_part_begin(int part) { return part * 4; }
__device__ __forceinline__ int mla90_part_end(int part) { return part == 0 ? 4 : MLA90_BLOCKS; }
#endif

// S of 2 V keys (the V f32 of an m64n(2V) accumulator fragment: keys jbase + 8 n8 + 2 tq + {0, 1}
// of the thread's two rows) in the log2 domain: scaled by scale_log2, keys at or past the row's
// limit lim[ri] -inf; mloc = the rows' maxima over the quad.
template <int V>
__device__ __forceinline__ void mla90_scale_mask_s(float (&sacc)[V], int jbase, int tq, const int (&lim)[2],
                                                   float scale_log2, float (&mloc)[2]) {
    mloc[0] = mloc[1] = TESSERA_NEG_INF;
#pragma unroll
    for (int n8 = 0; n8 < V / 4; ++n8)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int ri = e / 2;
            const int j = jbase + n8 * 8 + tq * 2 + (e & 1);
            const float v = j < lim[ri] ? sacc[n8 * 4 + e] * scale_log2 : TESSERA_NEG_INF;
            sacc[n8 * 4 + e] = v;
            mloc[ri] = fmaxf(mloc[ri], v);
        }
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        mloc[ri] = fmaxf(mloc[ri], __shfl_xor_sync(0xffffffffu, mloc[ri], 1));
        mloc[ri] = fmaxf(mloc[ri], __shfl_xor_sync(0xffffffffu, mloc[ri], 2));
    }
}

extern "C" __global__ void __launch_bounds__(MLA90_THREADS, 1) mla_decode(
    MLA_DECODE_PARAMS) {
    (void)latent_rt;
    (void)rope_rt;
    (void)col_chunks;
    constexpr int latent = LATENT;
    extern __shared__ __align__(1024) u8 smem[];
    u8* sQ = smem + MlaSm90Smem::Q;
    u8* sK = smem + MlaSm90Smem::K;
    u8* sP = smem + MlaSm90Smem::P;
    float* sSum = reinterpret_cast<float*>(smem + MlaSm90Smem::ROW_SUM);
    u64* full = reinterpret_cast<u64*>(smem + MlaSm90Smem::FULL);
#if FMT == 0
    u64* empty = reinterpret_cast<u64*>(smem + MlaSm90Smem::EMPTY);
#endif
    int* bad_page_flag = reinterpret_cast<int*>(smem + MlaSm90Smem::FLAGS);

    // Block -> (unit, row group); row groups of one unit (a (request, split) of the schedule,
    // mla_work.cuh) run together.
    const i64 bid = blockIdx.x;
    const int rg = (int)(bid % row_groups);
    const int unit = (int)(bid / row_groups);

    const int tid = threadIdx.x;
    const int wg = tid / 128;  // 0 producer, 1 and 2 math
    const int t128 = tid % 128;

    // This unit's request and split, its queries and keys (mla_work.cuh). CTAs past the schedule's
    // units, or past the request's rows (VARLEN), have nothing to do; the whole CTA leaves before
    // any barrier.
    const int r0 = rg * MLA90_ROWS;
    MlaCtaWork work;
    if (!mla_cta_work(seq_lens, cu_seqlens_q, schedule, unit, r0, MLA90_ROWS, MLA90_KEYS, batch, s_q, total_q, heads,
                      max_pages, page_size, ws_slots, work))
        return;
    const int b = work.b;
    const int q_begin = work.q_begin, n_q = work.n_q, rows_total = work.rows_total, rows_pad = work.rows_pad;
    const bool bad_len = work.bad_len;
    const int len = work.len, k_begin = work.k_begin, k_end = work.k_end;
    // The seesaw takes the tiles in pairs: an odd count gets one more, all past the split's keys
    // (read as zeros, masked by the math).
    const int ntiles = SEESAW ? (work.ntiles + 1) & ~1 : work.ntiles;
#if SEESAW
    const TmaDesc* map = reinterpret_cast<const TmaDesc*>(&cache_map);
    const int outside = num_pages * page_size;  // the first row past the map
#if FMT == 1
    const TmaDesc* smap = reinterpret_cast<const TmaDesc*>(&scale_map);
    u64* const raw = reinterpret_cast<u64*>(smem + MlaSm90Smem::RAW);
    u8* const sScales = smem + MlaSm90Smem::SCALES;
#else
    (void)scale_map;
    u64* const landed = reinterpret_cast<u64*>(smem + MlaSm90Smem::LANDED);
#endif
    // The split's last tile when it ends inside the tile (its keys past the end need zeroing).
    const int partial_tile = (k_end - k_begin) % MLA90_KEYS != 0 ? work.ntiles - 1 : -1;
    // Page sizes are multiples of 64 and powers of two in practice: shifts instead of divisions.
    const int page_shift = (page_size & (page_size - 1)) == 0 ? __ffs(page_size) - 1 : -1;
    // Tile t's map row, read through the block table: outside the map past the split's end
    // (the entry is not read), or for a bad page (flagged in bad_page).
    auto tile_row = [&](int t, int& bad_page) {
        const int j = k_begin + t * MLA90_KEYS;
        const int p = page_shift >= 0 ? j >> page_shift : j / page_size;
        const int page = j < k_end ? __ldg(block_table + (i64)b * max_pages + p) : 0;
        if (j >= k_end) return outside;
        if (page < 0 || page >= num_pages) {
            bad_page = 1;
            return outside;
        }
        return page_shift >= 0 ? (page << page_shift) + (j & (page_size - 1)) : page * page_size + j % page_size;
    };
#if FMT == 1
    // Part `part` of tile t from map row `row` into stage `stage` by TMA (one thread): its two
    // code groups into its last two column blocks and, with the stage's first refilled part, the
    // tile's scales, all on raw[stage][part]; with R, the rope into block 8 on its full barrier.
    auto copy_part = [&](int t, int stage, int part, int row) {
        (void)t;
        u8* const st = sK + stage * MlaSm90Smem::STAGE_BYTES;
        u64* const bar = &raw[stage * 2 + part];
        const bool scales = part == stage;
        mbar_arrive_expect_tx(bar, 2 * MlaSm90Smem::BLOCK_BYTES + (scales ? MlaSm90Smem::SCALE_STAGE_BYTES : 0));
#pragma unroll
        for (int h = 0; h < 2; ++h)
            tma_load_2d(st + (part * 4 + 2 + h) * MlaSm90Smem::BLOCK_BYTES, map, bar, (2 * part + h) * 128, row);
        if (scales) tma_load_2d(sScales + stage * MlaSm90Smem::SCALE_STAGE_BYTES, smap, bar, LATENT, row);
        if (part == 1) {
            u64* const rope_bar = &full[stage * MLA90_BLOCKS + 8];
            mbar_arrive_expect_tx(rope_bar, MlaSm90Smem::BLOCK_BYTES);
            tma_load_2d(st + 8 * MlaSm90Smem::BLOCK_BYTES, map, rope_bar, LATENT + LATENT / 32, row);
        }
    };
#else
    // Part `part` of tile t (column blocks 0..3 or 4..8) from map row `row` into stage `stage` by
    // TMA (one thread): each block completes on its full barrier, or the whole part on
    // landed[part] for the partial tile.
    auto copy_part = [&](int t, int stage, int part, int row) {
        const int cb_from = mla90_part_begin(part), cb_to = mla90_part_end(part);
        const bool to_landed = t == partial_tile;
        if (to_landed) mbar_arrive_expect_tx(&landed[part], (cb_to - cb_from) * MlaSm90Smem::BLOCK_BYTES);
#pragma unroll
        for (int cb = cb_from; cb < cb_to; ++cb) {
            u64* bar = to_landed ? &landed[part] : &full[stage * MLA90_BLOCKS + cb];
            if (!to_landed) mbar_arrive_expect_tx(bar, MlaSm90Smem::BLOCK_BYTES);
            tma_load_2d(sK + stage * MlaSm90Smem::STAGE_BYTES + cb * MlaSm90Smem::BLOCK_BYTES, map, bar, cb * 64, row);
        }
    };
#endif
#endif

    if (tid == 0) {
        for (int s = 0; s < MLA90_STAGES; ++s) {
            // SEESAW: one arrival (the TMA's issuer, with the block's bytes); else the producer's
            // 128 cp.async arrivals. FP8: the producer's 128 conversions, the rope block the TMA's.
            for (int cb = 0; cb < MLA90_BLOCKS; ++cb)
                mbar_init(&full[s * MLA90_BLOCKS + cb], SEESAW && (FMT == 0 || cb == 8) ? 1 : 128);
#if FMT == 1
            mbar_init(&raw[s * 2], 1);
            mbar_init(&raw[s * 2 + 1], 1);
#else
            mbar_init(&empty[s], 2);
#endif
        }
#if SEESAW && FMT == 0
        mbar_init(&landed[0], 1);
        mbar_init(&landed[1], 1);
#endif
        *bad_page_flag = 0;
        mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) {
        // ---- producer: key tiles into the swizzled stages ----
        setmaxnreg_dec<MLA90_PRODUCER_REGS>();
        int bad_page = 0;
#if SEESAW
        // Tiles 0 and 1; the math warpgroups issue every later refill as they release a part.
        if (tid == 0) {
            tma_prefetch_desc(map);
#if FMT == 1
            tma_prefetch_desc(smap);
#endif
            for (int t = 0; t < 2 && t < ntiles; ++t) {
                const int row = tile_row(t, bad_page);
                copy_part(t, t, 0, row);
                copy_part(t, t, 1, row);
            }
        }
#if FMT == 1
        // Every part of every tile, in the order the math warpgroups release them (a pair's: L of
        // stage 0, R of stage 1, R of stage 0, L of stage 1), converted as its codes land.
        // A warp's lanes on 32 consecutive keys, so that the 8 lanes of each 16-byte store phase
        // write 8 different swizzle chunks (with two lanes per key, writing the same chunk of two
        // blocks, they shared banks: 2 % slower, session 19).
        const int key = t128 % 64, half = t128 / 64;
        const int valid_last = partial_tile >= 0 ? k_end - (k_begin + partial_tile * MLA90_KEYS) : MLA90_KEYS;
        for (int t = 0; t < ntiles; t += 2) {
            const u32 parity = (t / 2) & 1;
#pragma unroll 1
            for (int e = 0; e < 4; ++e) {
                const int stage = e & 1, part = (e == 1 || e == 2) ? 1 : 0;
                const bool zero = t + stage == partial_tile && key >= valid_last;
                u8* const st = sK + stage * MlaSm90Smem::STAGE_BYTES;
                const float* const sc =
                    reinterpret_cast<const float*>(sScales + stage * MlaSm90Smem::SCALE_STAGE_BYTES) + key * 4;
                mbar_wait(&raw[stage * 2 + part], parity);
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    // Group 2 part + h: codes in block 4 part + 2 + h, values to blocks
                    // 4 part + 2h (codes 0..63) and 4 part + 2h + 1 (64..127); this thread's
                    // 64 codes are chunks 4 half.. of its key's row. Group 1's blocks hold the
                    // codes of both groups until every thread has read them.
                    const u8* const codes = st + (part * 4 + 2 + h) * MlaSm90Smem::BLOCK_BYTES;
                    uint4 c[4];
#pragma unroll
                    for (int i = 0; i < 4; ++i) c[i] = *reinterpret_cast<const uint4*>(codes + swizzle128(key, 4 * half + i));
                    const float scale = sc[2 * part + h];
                    if (h == 1) named_barrier_sync(MLA90_BAR_CONVERT, 128);
                    u8* const dst = st + (part * 4 + 2 * h + half) * MlaSm90Smem::BLOCK_BYTES;
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        uint4 lo = make_uint4(0, 0, 0, 0), hi = make_uint4(0, 0, 0, 0);
                        if (!zero) {
                            const uint2 a = mla_e4m3x4_scaled_truncated(c[i].x, scale);
                            const uint2 b2 = mla_e4m3x4_scaled_truncated(c[i].y, scale);
                            const uint2 c2 = mla_e4m3x4_scaled_truncated(c[i].z, scale);
                            const uint2 d = mla_e4m3x4_scaled_truncated(c[i].w, scale);
                            lo = make_uint4(a.x, a.y, b2.x, b2.y);
                            hi = make_uint4(c2.x, c2.y, d.x, d.y);
                        }
                        *reinterpret_cast<uint4*>(dst + swizzle128(key, 2 * i)) = lo;
                        *reinterpret_cast<uint4*>(dst + swizzle128(key, 2 * i + 1)) = hi;
                    }
                    fence_proxy_async_smem();
                    mbar_arrive(&full[stage * MLA90_BLOCKS + part * 4 + 2 * h]);
                    mbar_arrive(&full[stage * MLA90_BLOCKS + part * 4 + 2 * h + 1]);
                }
            }
        }
#else
        // The partial tile: as each part lands, zero its V rows past the end, then complete the
        // part's full barriers (one arrival each, no bytes).
        if (partial_tile >= 0) {
            const int stage = partial_tile % MLA90_STAGES;
            const int valid = k_end - (k_begin + partial_tile * MLA90_KEYS);
            u8* const st = sK + stage * MlaSm90Smem::STAGE_BYTES;
            for (int i = 0; i < 2; ++i) {
                const int part = i ^ stage;  // the order the math warpgroups release a stage's parts
                const int cb_from = mla90_part_begin(part), cb_to = mla90_part_end(part);
                mbar_wait(&landed[part], 0);
                const int v_blocks = min(cb_to, MLA90_V_BLOCKS) - cb_from;
                for (int idx = t128; idx < (MLA90_KEYS - valid) * v_blocks * 8; idx += 128) {
                    const int row = valid + idx / (v_blocks * 8), cb = cb_from + (idx / 8) % v_blocks, c = idx % 8;
                    *reinterpret_cast<uint4*>(st + cb * MlaSm90Smem::BLOCK_BYTES + swizzle128(row, c)) =
                        make_uint4(0, 0, 0, 0);
                }
                fence_proxy_async_smem();
                named_barrier_sync(MLA90_BAR_ZEROED, 128);
                if (t128 == 0)
                    for (int cb = cb_from; cb < cb_to; ++cb) mbar_arrive(&full[stage * MLA90_BLOCKS + cb]);
            }
        }
#endif
#else
        const i64 bt_row = (i64)b * max_pages;
        // Thread i copies chunk i % 8 of every column block of keys 16k + i / 8 (k = 0..3) of a
        // tile. It looks up those 4 records (byte offsets, or -1 to zero-fill: past the range, or
        // a bad page, which is flagged and never read) one tile ahead of the copies.
        const int key0 = t128 / 8, chunk = t128 % 8;
        auto lookup = [&](int t, i64 (&rec)[4]) {
#pragma unroll
            for (int k = 0; k < 4; ++k)
                rec[k] = t < ntiles ? mla_record_offset(block_table, bt_row, k_begin + t * MLA90_KEYS + 16 * k + key0,
                                                        k_end, page_size, num_pages, token_bytes, bad_page)
                                    : -1;
        };
        i64 rec_next[4];
        lookup(0, rec_next);
        for (int t = 0; t < ntiles; ++t) {
            const int s = t % MLA90_STAGES;
            i64 rec[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) rec[k] = rec_next[k];
            lookup(t + 1, rec_next);
            mbar_wait(&empty[s], ((t / MLA90_STAGES) & 1) ^ 1);
            u8* stage = sK + s * MlaSm90Smem::STAGE_BYTES;
            // Column block by column block, each completing on its own barrier, so that the
            // math warpgroups start on the first block while the others are in flight.
#pragma unroll 1
            for (int cb = 0; cb < MLA90_BLOCKS; ++cb) {
                mla_copy_record_chunks(stage + cb * MlaSm90Smem::BLOCK_BYTES, cache, rec, cb, key0, 16, chunk);
                cp_async_mbar_arrive(&full[s * MLA90_BLOCKS + cb]);
            }
        }
#endif
        if (bad_page) atomicOr(bad_page_flag, 1);
        named_barrier_sync(MLA90_BAR_END, MLA90_THREADS);
        return;
    }

    // ---- math warpgroups ----
    setmaxnreg_inc<MLA90_MATH_REGS>();
    const int mw = wg - 1;                 // 0: keys 0..31 of each tile, output columns 0..255
    const int warp = t128 / 32, lane = t128 % 32;
    const int g = lane / 4, tq = lane % 4;
    const int mtid = tid - 128;            // 0..255 over both math WGs

    // Q rows r0.. of this request into the swizzled Q blocks (zero rows past the request's).
    for (int idx = mtid; idx < MLA90_ROWS * MLA90_RECORD_CHUNKS; idx += 256) {
        const int row = idx / MLA90_RECORD_CHUNKS, c = idx % MLA90_RECORD_CHUNKS;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r0 + row < rows_total)
            v = *reinterpret_cast<const uint4*>(q + ((i64)q_begin * heads + r0 + row) * MLA90_QK + c * 8);
        *reinterpret_cast<uint4*>(sQ + (c / 8) * MlaSm90Smem::BLOCK_BYTES + swizzle128(row, c % 8)) = v;
    }
    fence_proxy_async_smem();
    named_barrier_sync(MLA90_BAR_P, 256);

    // This thread's two accumulator rows (wgmma layout: warp w rows 16w + g and 16w + g + 8).
    int lim[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const int r = r0 + warp * 16 + g + 8 * ri;
        lim[ri] = r < rows_total ? min(len - (n_q - 1 - r / heads), k_end) : -1;
    }

#if SEESAW
    float o_acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) o_acc[i] = 0.0f;
    float m_run[2];
    float l_run[2] = {0.0f, 0.0f};  // this WG's part of the row sums (its keys), at the running maximum
    const u64 q_desc = wgmma_desc(sQ, 16, 1024, WGMMA_SWIZZLE_128B);
    float* const s_m = reinterpret_cast<float*>(smem + MlaSm90Smem::SEESAW_M);
    float* const s_scale0 = reinterpret_cast<float*>(smem + MlaSm90Smem::SCALE0);
    float* const s_scale1 = reinterpret_cast<float*>(smem + MlaSm90Smem::SCALE1);
    // The role, provably uniform over the warp (ptxas then keeps the wgmma pipelines of the two
    // roles' code apart).
    const int role = __shfl_sync(0xffffffffu, mw, 0);
    const int row_a = warp * 16 + g;  // this thread's rows: row_a, row_a + 8
    // Raw maxima are -inf while a row has seen no key; factors exp2(old - use(new)) are then 0.
    auto use = [](float m) { return m == TESSERA_NEG_INF ? 0.0f : m; };

    // Q's rope block (column block 8) as this warp's A fragments, for the rope k-steps of S.
    u32 q8[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
        ldmatrix_x4(q8[kk], sQ + 8 * MlaSm90Smem::BLOCK_BYTES +
                                swizzle128(warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2), 2 * kk + lane / 16));
    if (role == 0 && tq == 0) {
        s_m[row_a] = TESSERA_NEG_INF;
        s_m[row_a + 8] = TESSERA_NEG_INF;
    }
    named_barrier_sync(MLA90_BAR_P, 256);  // both WGs hold block 8: it is P_b's from now on
    u8* const s_pb = sQ + 8 * MlaSm90Smem::BLOCK_BYTES;

    // S of the tile in this WG's stage (parity `parity`), into sacc (issued, committed per block:
    // 9 groups). Blocks in the order the producer fills the stage, the rope block last with Q
    // from registers.
    float sacc[32];
    u8* const own = sK + role * MlaSm90Smem::STAGE_BYTES;
    const u64 own_desc = wgmma_desc(own, 16, 1024, WGMMA_SWIZZLE_128B);
    auto issue_s = [&](u32 parity, int from, int to) {
#pragma unroll
        for (int i = from; i < to; ++i) {
            const int cb = i < 8 ? ((i / 4) ^ role) * 4 + i % 4 : 8;
            mbar_wait(&full[role * MLA90_BLOCKS + cb], parity);
            fence_proxy_async_smem();
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const u64 off = (u64)((cb * MlaSm90Smem::BLOCK_BYTES + kk * 32) >> 4);
                if (i < 8)
                    WgmmaBf16<64, 0>::mma(sacc, q_desc + off, own_desc + off, (i | kk) != 0);
                else
                    WgmmaRegAK<64, 1>::mma(sacc, q8[kk], own_desc + off, 1);
            }
            wgmma_commit();
        }
    };
    // Scale and mask S (tile t), this thread's row maxima over it.
    auto mask_s = [&](int t, float (&mloc)[2]) {
        mla90_scale_mask_s(sacc, k_begin + t * MLA90_KEYS, tq, lim, scale_log2, mloc);
    };
    // o_acc *= f (per row), skipped where no factor of the warp differs from 1.
    auto rescale_o = [&](const float (&f)[2]) {
        if (__any_sync(0xffffffffu, f[0] != 1.0f || f[1] != 1.0f)) {
#pragma unroll
            for (int i = 0; i < 128; ++i) o_acc[i] *= f[(i / 2) & 1];
        }
        reg_fence_all(o_acc);
    };
    // The running maxima m_run and this WG's rescale factors to s_m and s_scale (lane 0 of each
    // quad, after the quad's reads of s_m), then the other WG is told through barrier `bar`.
    auto publish_maximum = [&](float* s_scale, const float (&factor)[2], u32 bar) {
        __syncwarp();
        if (tq == 0) {
#pragma unroll
            for (int ri = 0; ri < 2; ++ri) {
                s_m[row_a + 8 * ri] = m_run[ri];
                s_scale[row_a + 8 * ri] = factor[ri];
            }
        }
        __threadfence_block();
        named_barrier_arrive(bar, 256);
    };
    // P = exp2(S - m_run) in sacc, l_run = l_run f + the rows' sums of P, o_acc *= f.
    auto exponentiate_s = [&](const float (&f)[2]) {
        float psum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < 32; ++i) {
            sacc[i] = exp2f(sacc[i] - use(m_run[(i / 2) & 1]));
            psum[(i / 2) & 1] += sacc[i];
        }
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) l_run[ri] = l_run[ri] * f[ri] + psum[ri];
        rescale_o(f);
    };
    // sacc -> P fragments (bf16, A of m64n256k16), and P into a shared [64][64] tile.
    u32 p_frag[4][4];
    auto pack_p = [&]() {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int i = 0; i < 4; ++i) p_frag[kk][i] = pack2<true>(sacc[8 * kk + 2 * i], sacc[8 * kk + 2 * i + 1]);
    };
    auto store_p = [&](u8* tile) {
#pragma unroll
        for (int n8 = 0; n8 < 8; ++n8)
#pragma unroll
            for (int ri = 0; ri < 2; ++ri)
                *reinterpret_cast<u32*>(tile + swizzle128(row_a + 8 * ri, n8) + tq * 4) =
                    pack2<true>(sacc[n8 * 4 + 2 * ri], sacc[n8 * 4 + 2 * ri + 1]);
        fence_proxy_async_smem();
    };
    // O (this WG's 256 columns) += P V: P from registers / from a shared tile, V the stage's
    // column blocks 4 role.. (MN-major). Issued and committed.
    auto pv_regs = [&](const u8* stage) {
        const u64 v_desc =
            wgmma_desc(stage + role * 4 * MlaSm90Smem::BLOCK_BYTES, MlaSm90Smem::BLOCK_BYTES, 1024, WGMMA_SWIZZLE_128B);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int i = 0; i < 4; ++i) reg_fence(p_frag[kk][i]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) WgmmaRegA<256, 1>::mma(o_acc, p_frag[kk], v_desc + (u64)((kk * 16 * 128) >> 4), 1);
        wgmma_commit();
    };
    auto pv_smem = [&](const u8* stage, const u8* p_tile) {
        const u64 p_desc = wgmma_desc(p_tile, 16, 1024, WGMMA_SWIZZLE_128B);
        const u64 v_desc =
            wgmma_desc(stage + role * 4 * MlaSm90Smem::BLOCK_BYTES, MlaSm90Smem::BLOCK_BYTES, 1024, WGMMA_SWIZZLE_128B);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            WgmmaBf16<256, 1>::mma(o_acc, p_desc + (u64)((kk * 32) >> 4), v_desc + (u64)((kk * 16 * 128) >> 4), 1);
        wgmma_commit();
    };
    // A part of a stage this warpgroup read last in pair pr: its refill, the tile two ahead in
    // that stage (pair pr + 1's), if any, issued now by one thread. Its block-table entry is read
    // here too: read at the pair's start instead (a pair ahead), the math warpgroups were 2-10 %
    // slower (session 13).
    int bad_page = 0;
    auto release = [&](int pr, int stage, int part) {
        const int t = 2 * (pr + 1) + stage;
        if (t128 == 0 && t < ntiles) copy_part(t, stage, part, tile_row(t, bad_page));
    };
    u8* const stage_a = sK;
    u8* const stage_b = sK + MlaSm90Smem::STAGE_BYTES;

    const int npairs = ntiles / 2;
    if (npairs > 0) issue_s(0, 0, MLA90_BLOCKS);
    wgmma_wait<0>();
    reg_fence_all(sacc);
    for (int pr = 0; pr < npairs; ++pr) {
        const bool more = pr + 1 < npairs;
        const u32 next_parity = (pr + 1) & 1;
        float mloc[2], f[2];
        if (role == 0) {
            // 1. Softmax of tile a against the running maximum (WG 1's of the last pair).
            mask_s(2 * pr, mloc);
#pragma unroll
            for (int ri = 0; ri < 2; ++ri) {
                const float m_prev = s_m[row_a + 8 * ri];
                m_run[ri] = fmaxf(m_prev, mloc[ri]);
                f[ri] = exp2f(m_prev - use(m_run[ri]));
            }
            publish_maximum(s_scale0, f, MLA90_BAR_SCALE0);
            exponentiate_s(f);
            // 2. O_L += P_a V_a[L] (P from registers); then stage a's L part is free.
            pack_p();
            pv_regs(stage_a);
            wgmma_wait<0>();
            reg_fence_all(o_acc);
            release(pr, 0, 0);
            // 3. The pair's maximum (WG 1's): P_a rescaled to it, for WG 1.
            named_barrier_sync(MLA90_BAR_SCALE1, 256);
#pragma unroll
            for (int ri = 0; ri < 2; ++ri) {
                f[ri] = s_scale1[row_a + 8 * ri];
                l_run[ri] *= f[ri];
            }
#pragma unroll
            for (int i = 0; i < 32; ++i) sacc[i] *= f[(i / 2) & 1];
            store_p(sP);
            __threadfence_block();
            named_barrier_arrive(MLA90_BAR_P0, 256);
            // 4. O_L (rescaled) += P_b V_b[L], P_b from WG 1 through shared memory.
            named_barrier_sync(MLA90_BAR_P1, 256);
            rescale_o(f);
            pv_smem(stage_b, s_pb);
        } else {
            // 1. Softmax of tile b against WG 0's maximum of the pair.
            named_barrier_sync(MLA90_BAR_SCALE0, 256);
            mask_s(2 * pr + 1, mloc);
#pragma unroll
            for (int ri = 0; ri < 2; ++ri) {
                const float m_a = s_m[row_a + 8 * ri];
                m_run[ri] = fmaxf(m_a, mloc[ri]);
                const float f1 = exp2f(m_a - use(m_run[ri]));
                f[ri] = f1 * s_scale0[row_a + 8 * ri];
                mloc[ri] = f1;
            }
            publish_maximum(s_scale1, mloc, MLA90_BAR_SCALE1);
            exponentiate_s(f);
            // 2. P_b for WG 0; O_R += P_b V_b[R] (P from registers).
            store_p(s_pb);
            pack_p();
            pv_regs(stage_b);
            // 3. O_R += P_a V_a[R], P_a from WG 0; then tell WG 0 P_b is in.
            named_barrier_sync(MLA90_BAR_P0, 256);
            pv_smem(stage_a, sP);
            __threadfence_block();
            named_barrier_arrive(MLA90_BAR_P1, 256);
            // 4. Stage b's R part is free once P_b V_b[R] is done, stage a's once P_a V_a[R] is.
            wgmma_wait<1>();
            release(pr, 1, 1);
            wgmma_wait<0>();
            reg_fence_all(o_acc);
            release(pr, 0, 1);
        }
        // 5. S of this WG's tile of the next pair (WG 0's own L part was released first; WG 0
        //    frees stage b's L part once its P_b V_b[L] is done, within its S).
        if (role == 0) {
            if (more) {
                issue_s(next_parity, 0, 4);  // its own L part, released first
                wgmma_wait<4>();             // P_b V_b[L] is done
            } else {
                wgmma_wait<0>();
            }
            reg_fence_all(o_acc);
            release(pr, 1, 0);
            if (more) issue_s(next_parity, 4, MLA90_BLOCKS);
        } else if (more) {
            issue_s(next_parity, 0, MLA90_BLOCKS);
        }
        wgmma_wait<0>();
        reg_fence_all(sacc);
        reg_fence_all(o_acc);
    }
    // The final maximum (WG 1's of the last pair; WG 0 saw it published at its BAR_SCALE1).
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) m_run[ri] = npairs > 0 ? s_m[row_a + 8 * ri] : TESSERA_NEG_INF;
#else
    float* const sMax = reinterpret_cast<float*>(smem + MlaSm90Smem::ROW_MAX);  // [WG][64] row maxima
    float o_acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) o_acc[i] = 0.0f;
    float m_run[2] = {TESSERA_NEG_INF, TESSERA_NEG_INF};
    float l_run[2] = {0.0f, 0.0f};
    const u64 q_desc = wgmma_desc(sQ, 16, 1024, WGMMA_SWIZZLE_128B);

    for (int t = 0; t < ntiles; ++t) {
        const int s = t % MLA90_STAGES;
        const u32 parity = (t / MLA90_STAGES) & 1;
        const u8* stage = sK + s * MlaSm90Smem::STAGE_BYTES;

        // S = Q K^T over this WG's 32 keys.
        float sacc[16];
        const u64 k_desc = wgmma_desc(stage + mw * 32 * 128, 16, 1024, WGMMA_SWIZZLE_128B);
        wgmma_fence();
#pragma unroll
        for (int cb = 0; cb < MLA90_BLOCKS; ++cb) {
            mbar_wait(&full[s * MLA90_BLOCKS + cb], parity);
            fence_proxy_async_smem();
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const u64 off = (u64)((cb * MlaSm90Smem::BLOCK_BYTES + kk * 32) >> 4);
                WgmmaBf16<32, 0>::mma(sacc, q_desc + off, k_desc + off, (cb | kk) != 0);
            }
        }
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence_all(sacc);

        // Mask, scale, this WG's row maxima.
        float mloc[2];
        mla90_scale_mask_s(sacc, k_begin + t * MLA90_KEYS + mw * 32, tq, lim, scale_log2, mloc);
#pragma unroll
        for (int ri = 0; ri < 2; ++ri)
            if (tq == 0) sMax[mw * MLA90_ROWS + warp * 16 + g + 8 * ri] = mloc[ri];
        named_barrier_sync(MLA90_BAR_MAX, 256);
        float alpha[2], m_use[2];
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
            const float other = sMax[(1 - mw) * MLA90_ROWS + warp * 16 + g + 8 * ri];
            const float m_new = fmaxf(m_run[ri], fmaxf(mloc[ri], other));
            m_use[ri] = m_new == TESSERA_NEG_INF ? 0.0f : m_new;
            alpha[ri] = exp2f(m_run[ri] - m_use[ri]);
            m_run[ri] = m_new;
        }
        // P = exp2(S - m) as bf16 into columns 32mw.. of the P tile; row sums in f32.
#pragma unroll
        for (int n8 = 0; n8 < 4; ++n8)
#pragma unroll
            for (int ri = 0; ri < 2; ++ri) {
                const float p0 = exp2f(sacc[n8 * 4 + 2 * ri] - m_use[ri]);
                const float p1 = exp2f(sacc[n8 * 4 + 2 * ri + 1] - m_use[ri]);
                l_run[ri] = l_run[ri] * (n8 == 0 ? alpha[ri] : 1.0f) + p0 + p1;
                const int row = warp * 16 + g + 8 * ri;
                *reinterpret_cast<u32*>(sP + swizzle128(row, mw * 4 + n8) + tq * 4) = pack2<true>(p0, p1);
            }
        // Rescale O only where a row maximum moved in this warp (after the first tiles it rarely
        // does; alpha is exactly 1 otherwise).
        if (__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) {
#pragma unroll
            for (int i = 0; i < 128; ++i) o_acc[i] *= alpha[(i / 2) & 1];
        }
        fence_proxy_async_smem();
        named_barrier_sync(MLA90_BAR_P, 256);

        // O_w += P V[:, 256w .. 256w + 256].
        const u64 p_desc = wgmma_desc(sP, 16, 1024, WGMMA_SWIZZLE_128B);
        const u64 v_desc = wgmma_desc(stage + mw * 4 * MlaSm90Smem::BLOCK_BYTES, MlaSm90Smem::BLOCK_BYTES, 1024,
                                      WGMMA_SWIZZLE_128B);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            WgmmaBf16<256, 1>::mma(o_acc, p_desc + (u64)((kk * 32) >> 4), v_desc + (u64)((kk * 16 * 128) >> 4), 1);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence_all(o_acc);
        if (t128 == 0) mbar_arrive(&empty[s]);
    }
#endif

    // ---- epilogue: total row sums (both WGs' keys), normalize, write ----
    mla_decode_epilogue_begins();
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        l_run[ri] += __shfl_xor_sync(0xffffffffu, l_run[ri], 1);
        l_run[ri] += __shfl_xor_sync(0xffffffffu, l_run[ri], 2);
        if (tq == 0) sSum[mw * MLA90_ROWS + warp * 16 + g + 8 * ri] = l_run[ri];
    }
#if SEESAW
    if (bad_page) atomicOr(bad_page_flag, 1);  // a refill's page (flag read after the barrier)
#endif
    named_barrier_sync(MLA90_BAR_END, MLA90_THREADS);
    const bool bad = bad_len || *bad_page_flag != 0;
    float* ws_lse = ws + (i64)ws_slots * rows_pad * latent;
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const int row = warp * 16 + g + 8 * ri;
        const int r = r0 + row;
        if (r >= rows_total) continue;
        const float lt = sSum[row] + sSum[MLA90_ROWS + row];
        float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
        float lse_v = lt > 0.0f ? (m_run[ri] + log2f(lt)) * 0.69314718055994531f : TESSERA_NEG_INF;
        if (bad) {
            inv = TESSERA_NAN;
            lse_v = TESSERA_NAN;
        }
        const bool write_lse = mw == 0 && tq == 0;
        if (work.splits == 1) {
            u16* orow = o + ((i64)q_begin * heads + r) * latent + mw * 256;
#pragma unroll
            for (int n8 = 0; n8 < 32; ++n8)
                *reinterpret_cast<u32*>(orow + n8 * 8 + 2 * tq) =
                    pack2<true>(o_acc[n8 * 4 + 2 * ri] * inv, o_acc[n8 * 4 + 2 * ri + 1] * inv);
            if (write_lse) lse[mla_lse_index(b, r, q_begin, heads, s_q, total_q)] = lse_v;
        } else {
            const i64 wrow = (i64)work.ws_slot * rows_pad + r;
            float* orow = ws + wrow * latent + mw * 256;
#pragma unroll
            for (int n8 = 0; n8 < 32; ++n8)
                *reinterpret_cast<float2*>(orow + n8 * 8 + 2 * tq) =
                    make_float2(o_acc[n8 * 4 + 2 * ri] * inv, o_acc[n8 * 4 + 2 * ri + 1] * inv);
            if (write_lse) ws_lse[wrow] = lse_v;
        }
    }
}

// Block-scaled FP8 GEMM for Hopper (sm_90a): D[m][n] = sum_kb sA[m][kb] * sB[n/128][kb] *
// sum_{k in block kb} A[m][k] * B[n][k], bf16 out, f32 accumulation promoted every 128 of K.
//
// Layouts (row-major): A e4m3 [m, k] (K-major), sA f32 [m, ceil(k/128)], B e4m3 [n, k] (K-major),
// sB f32 [ceil(n/128), ceil(k/128)], D bf16 [m, n].
// Grouped (mixture of experts, GROUPING != 0): B [groups, n, k], sB [groups, ceil(n/128), ...];
//   GROUPING 1 (contiguous): A, sA, D as above, group g owning rows [offsets[g], offsets[g+1])
//     (`groups` holds the num_groups + 1 offsets, each but the last a multiple of 128, so no
//     tile spans two groups);
//   GROUPING 2 (masked): A [num_groups, m, k], sA [num_groups, m, ...], D [num_groups, m, n],
//     `groups` holds the row counts: only tiles below a group's count are scheduled, and D's
//     rows at or past it are not written (a warpgroup's rows all below the count go out by TMA
//     store, the others are copied from the epilogue tile row by row, or stored from registers
//     when EPI_SWIZZLE is 0).
//
// Design (warp-specialized, persistent):
//   - CTA = 1 producer warpgroup + MATH_WG math warpgroups (128 threads each). BLOCK_M x BLOCK_N
//     output tiles, K in blocks of 128 (the scale granularity), STAGES shared-memory stages.
//   - Producer warp 0 (one thread): per stage, TMA copies of the A box (128 K-bytes x BLOCK_M rows)
//     and the B box (128 x BLOCK_N), 128-byte swizzled, completing on the stage's full barrier.
//     Producer warp 1: per stage, the BLOCK_M activation scales of the K block (sA is K-minor, so
//     TMA cannot fetch a column of it) and the <= 3 weight scales the tile touches, stored to
//     shared memory, one arrival per lane on the same full barrier.
//   - Math warpgroup j owns rows [j * BLOCK_M / MATH_WG, ...) of the tile in 64-row sub-tiles:
//     per K block and sub-tile, 4 wgmma m64 x BLOCK_N x k32 (both operands from shared memory),
//     wait, then promote into f32 registers: final += (sA[row] * sB[col block]) * acc. With two
//     math warpgroups one's promotion overlaps the other's wgmma.
//   - Stages are filled in rounds: every tile starts at stage 0 and the stage loop is unrolled, so
//     every shared-memory and barrier address is a constant (stages a tile's last round leaves
//     unused are passed through with plain arrivals). Measured on the H200: 15-20% faster than a
//     ring of stages continued across tiles with run-time stage indices.
//   - ACC_STAGES = 2 (one math warpgroup): two accumulators; K block kb + 1 is issued before kb is
//     promoted, so the warpgroup's next wgmma is always queued. Costs BLOCK_N / 2 more registers
//     per thread, which two math warpgroups do not have (ptxas then serializes the wgmma).
//   - CLUSTER_M = 2: the two CTAs of a cluster take vertically adjacent tiles (same columns): each
//     loads half of the B tile and multicasts it to both, halving B's L2 traffic; a stage is free
//     once the consumers of both CTAs released it (they arrive on both CTAs' empty barriers).
//   - Persistent grid: cluster c handles cluster tiles c, c + clusters, ... in a grouped order
//     (GROUP_M M-blocks share the B columns they read, for L2 reuse).
//   - A tile may straddle two or three 128-row blocks of sB (BLOCK_N not dividing 128): the column
//     where the scale changes is made a compile-time constant by dispatching the K loop on it.
//   - Epilogue (EPI_SWIZZLE > 0): each math warpgroup writes its bf16 rows into a swizzled
//     shared-memory tile (conflict-free 4-byte stores), then one thread stores it with TMA, one box
//     per EPI_SWIZZLE-byte column slab; the store drains while the next tile's K loop runs (its
//     completion is awaited only before the tile buffer is written again). EPI_SWIZZLE = 0: bf16
//     pairs stored straight from registers (for BLOCK_N whose rows are not a multiple of 32 bytes).
//   - SPLIT_K > 1 (small M, where too few tiles would leave SMs idle): a cluster of SPLIT_K CTAs
//     along x shares one output tile, CTA rank r taking K blocks [r * kb / SPLIT_K,
//     (r + 1) * kb / SPLIT_K). Each writes its f32 partial tile (register fragment order) into its
//     own drained stage buffers; after a cluster barrier, rank r sums fragment chunks r,
//     r + SPLIT_K, ... over ranks 0, 1, ... in that order (through distributed shared memory, so
//     the result is deterministic) and stores them as bf16. One tile per cluster: the grid is
//     tiles x SPLIT_K CTAs, not persistent.
//   - Edges: TMA fills rows / K beyond the tensors with zeros; D stores are clipped (TMA) or masked.
//
// Compile-time constants (every one required): BLOCK_M (64, 128 or 256), BLOCK_N (multiple of 8,
// 8..256), STAGES (>= 2), MATH_WG (1 or 2), EPI_SWIZZLE (0, 32, 64 or 128, dividing 2 * BLOCK_N),
// CLUSTER_M (1 or 2; 2 needs BLOCK_N a multiple of 16 and a launch with clusters of 2 along x),
// CTAS_PER_SM (1, or 2 with MATH_WG 1: the launch bounds; the host sizes shared memory to fit),
// SPLIT_K (1..8; > 1 needs CLUSTER_M 1, GROUPING 0, EPI_SWIZZLE 0 and a launch of tiles x SPLIT_K
// CTAs in clusters of SPLIT_K along x),
// GROUPING (0, 1 or 2, see above),
// ACC_STAGES (1: each K block is issued, waited for and promoted; 2: two accumulators, the next
// K block issued before the current one is promoted),
// TESSERA_SMEM_BYTES and TESSERA_THREADS (what the host launches with: checked against the kernel).

#if !defined(BLOCK_M) || !defined(BLOCK_N) || !defined(STAGES) || !defined(MATH_WG) || !defined(EPI_SWIZZLE) || \
    !defined(CLUSTER_M) || !defined(ACC_STAGES) || !defined(GROUPING) || !defined(SPLIT_K) ||                    \
    !defined(CTAS_PER_SM) || !defined(TESSERA_SMEM_BYTES) || !defined(TESSERA_THREADS)
#error "sm90/fp8_gemm.cu needs BLOCK_M, BLOCK_N, STAGES, MATH_WG, EPI_SWIZZLE, CLUSTER_M, ACC_STAGES, GROUPING, SPLIT_K, CTAS_PER_SM, TESSERA_SMEM_BYTES and TESSERA_THREADS"
#endif
#if CTAS_PER_SM != 1 && (CTAS_PER_SM != 2 || MATH_WG != 1)
#error "CTAS_PER_SM must be 1, or 2 with one math warpgroup"
#endif
#if SPLIT_K < 1 || SPLIT_K > 8
#error "SPLIT_K must be in 1..8 (a portable cluster size)"
#endif
#if SPLIT_K > 1 && (CLUSTER_M != 1 || GROUPING != 0 || EPI_SWIZZLE != 0)
#error "SPLIT_K > 1 needs CLUSTER_M 1, GROUPING 0 and EPI_SWIZZLE 0 (partials are reduced and stored from registers)"
#endif
#if GROUPING != 0 && GROUPING != 1 && GROUPING != 2
#error "GROUPING must be 0 (one GEMM), 1 (contiguous groups) or 2 (masked groups)"
#endif
#if GROUPING != 0 && CLUSTER_M != 1
#error "grouped GEMMs take one CTA per cluster (vertically adjacent tiles may belong to different groups)"
#endif
#if ACC_STAGES != 1 && (ACC_STAGES != 2 || BLOCK_M != 64 * MATH_WG)
#error "ACC_STAGES must be 1, or 2 with one 64-row sub-tile per math warpgroup"
#endif
#if CLUSTER_M != 1 && CLUSTER_M != 2
#error "CLUSTER_M must be 1 or 2"
#endif
#if CLUSTER_M == 2 && BLOCK_N % 16 != 0
#error "CLUSTER_M = 2 needs BLOCK_N a multiple of 16 (each CTA loads half of the B tile)"
#endif
#if EPI_SWIZZLE != 0 && EPI_SWIZZLE != 32 && EPI_SWIZZLE != 64 && EPI_SWIZZLE != 128
#error "EPI_SWIZZLE must be 0, 32, 64 or 128"
#endif
#if EPI_SWIZZLE != 0 && (2 * BLOCK_N) % EPI_SWIZZLE != 0
#error "EPI_SWIZZLE must divide the bytes of a BLOCK_N row of bf16"
#endif
#if BLOCK_N % 8 != 0 || BLOCK_N < 8 || BLOCK_N > 256
#error "BLOCK_N must be a multiple of 8 in 8..256"
#endif
#if MATH_WG != 1 && MATH_WG != 2
#error "MATH_WG must be 1 or 2"
#endif
#if BLOCK_M % (64 * MATH_WG) != 0 || BLOCK_M / (64 * MATH_WG) > 2
#error "BLOCK_M must be 64 * MATH_WG or 128 * MATH_WG"
#endif
#if STAGES < 2
#error "STAGES must be at least 2"
#endif

namespace fp8_gemm_sm90 {

constexpr int BK = 128;                            // K per stage (bytes of e4m3 per row)
constexpr int SUB = BLOCK_M / (64 * MATH_WG);      // 64-row sub-tiles per math warpgroup
constexpr int ACC = BLOCK_N / 2;                   // accumulator floats per thread per sub-tile
constexpr int THREADS = 128 * (1 + MATH_WG);
constexpr int GROUP_M = 16;                        // M-blocks per raster group

// Shared-memory layout (offsets from a 1024-byte aligned base; the host adds 1024 bytes of slack).
constexpr int A_STAGE = BLOCK_M * BK;
constexpr int B_STAGE = BLOCK_N * BK;
constexpr int D_BYTES = EPI_SWIZZLE ? BLOCK_M * BLOCK_N * 2 : 0;  // the epilogue's bf16 tile
constexpr int OFF_D = 0;
constexpr int OFF_A = OFF_D + D_BYTES;
constexpr int OFF_B = OFF_A + STAGES * A_STAGE;
constexpr int OFF_SA = OFF_B + STAGES * B_STAGE;           // f32 [STAGES][BLOCK_M]
constexpr int OFF_SB = OFF_SA + STAGES * BLOCK_M * 4;      // f32 [STAGES][4]
constexpr int OFF_FULL = OFF_SB + STAGES * 16;              // u64 [STAGES]
constexpr int OFF_EMPTY = OFF_FULL + STAGES * 8;            // u64 [STAGES]
constexpr int LAYOUT_BYTES = OFF_EMPTY + STAGES * 8;
constexpr int SMEM_BYTES = LAYOUT_BYTES + 1024;
static_assert(SMEM_BYTES == TESSERA_SMEM_BYTES, "the host's shared-memory size disagrees with this layout");
static_assert(THREADS == TESSERA_THREADS, "the host's threads per CTA disagree with this kernel");
static_assert(A_STAGE % 1024 == 0 && B_STAGE % 1024 == 0 && D_BYTES % 1024 == 0,
              "swizzled tiles must stay 1024-byte aligned");

constexpr u32 FULL_ARRIVALS = 1 + 32;              // the TMA thread + the scale warp's lanes
// Every math thread of the cluster releases a stage (it read the stage's scales with plain loads;
// compute-sanitizer racecheck reports the refill as racing with those reads when only lane 0 of
// each warp, or one thread per warpgroup after a named barrier, arrives; as fast on the H200).
constexpr u32 EMPTY_ARRIVALS = 128 * MATH_WG * CLUSTER_M;
constexpr int B_HALF = B_STAGE / CLUSTER_M;                 // the part of B a CTA loads
static_assert(B_HALF % 1024 == 0, "each CTA's part of the B tile must stay 1024-byte aligned");
constexpr int CLUSTER = CLUSTER_M * SPLIT_K;  // CTAs per cluster (one of the two is 1)
// Registers per thread after setmaxnreg (0: none): with two math warpgroups the producer
// warpgroup gives up what they take. (With one math warpgroup at two CTAs per SM, ptxas
// serializes the wgmma under setmaxnreg: the launch bounds' 128 registers apply instead.)
constexpr int PRODUCER_REGS = 40;
constexpr int MATH_REGS = MATH_WG == 2 ? 232 : 0;
constexpr int MATH_THREADS = 128 * MATH_WG;
constexpr int CHUNKS = SUB * BLOCK_N / 8;                   // float4 fragment chunks per math thread
// Split-K partials: f32 [CHUNKS][MATH_THREADS][4] over the drained A and B stage buffers.
constexpr int OFF_PARTIAL = OFF_A;
static_assert(SPLIT_K == 1 || CHUNKS * MATH_THREADS * 16 <= OFF_SA - OFF_A,
              "the split-K partial tile must fit in the stage buffers");

struct Tile {
    int m0, n0;    // first row (of A / sA / D over all groups) and first column (within the group)
    int b_row0;    // first row of B over all groups: group * n + n0
    int sb_row0;   // first row of sB over all groups: group * ceil(n/128) + n0 / 128
    int row_end;   // rows of D at or past this are not written (direct-store epilogue)
    bool valid;    // false: a masked group's tile past its count (skipped by every role; the
                   // scheduler enumerates none)
};

// The tile of cluster rank `rank` at linear cluster-tile index t; cluster tiles are CLUSTER_M
// vertically adjacent tiles in a grouped order (GROUP_M M-blocks share the B columns they read);
// a last CTA past m computes zeros that are never stored. With groups, the tile's group gives
// its B rows: contiguous groups by their offsets, masked groups by the tile index (group-major,
// only the tiles below each group's count).
struct Scheduler {
    int m, n, tiles_mc, tiles_n, num_tiles, sb_rows;
    const int* groups;
    int num_groups;

    __device__ __forceinline__ Scheduler(int m_, int n_, const int* groups_, int num_groups_) {
        m = m_;
        n = n_;
        groups = groups_;
        num_groups = num_groups_;
        tiles_mc = ((m + BLOCK_M - 1) / BLOCK_M + CLUSTER_M - 1) / CLUSTER_M;
        tiles_n = (n + BLOCK_N - 1) / BLOCK_N;
        sb_rows = (n + 127) / 128;
        num_tiles = tiles_mc * tiles_n;
        if constexpr (GROUPING == 2) {
            num_tiles = 0;
            for (int g = 0; g < num_groups; ++g) num_tiles += count_blocks(g) * tiles_n;
        }
    }

    // Masked groups: group g's row count, clamped to 0..m.
    __device__ __forceinline__ int group_count(int g) const { return min(max(__ldg(&groups[g]), 0), m); }

    // Masked groups: the M-blocks of group g below its count. Only those tiles are enumerated
    // (group-major), so the persistent CTAs share the work evenly.
    __device__ __forceinline__ int count_blocks(int g) const { return (group_count(g) + BLOCK_M - 1) / BLOCK_M; }

    __device__ __forceinline__ Tile at(int t, int rank) const {
        Tile r;
        int group = 0;
        int group_mc = tiles_mc;  // cluster M-blocks of the tile's group
        if constexpr (GROUPING == 2) {
            group_mc = count_blocks(0);
            while (t >= group_mc * tiles_n) {
                t -= group_mc * tiles_n;
                group_mc = count_blocks(++group);
            }
        }
        constexpr int GROUP = GROUP_M / CLUSTER_M;
        const int per_raster = GROUP * tiles_n;
        const int raster = t / per_raster;
        const int first_m = raster * GROUP;
        const int rows = min(group_mc - first_m, GROUP);
        const int in_raster = t - raster * per_raster;
        const int m_local = ((first_m + in_raster % rows) * CLUSTER_M + rank) * BLOCK_M;
        r.n0 = (in_raster / rows) * BLOCK_N;
        r.m0 = m_local;
        r.row_end = m;
        r.valid = true;
        if constexpr (GROUPING == 1) {
            // The last group whose first row is at or before the tile's (offsets ascending; an
            // empty group shares its offset with the next): a binary search.
            int hi = num_groups - 1;
            while (group < hi) {
                const int mid = (group + hi + 1) / 2;
                if (__ldg(&groups[mid]) <= m_local)
                    group = mid;
                else
                    hi = mid - 1;
            }
        } else if constexpr (GROUPING == 2) {
            const int count = group_count(group);
            r.valid = m_local < count;  // always, by the enumeration
            r.m0 = group * m + m_local;
            r.row_end = group * m + count;
        }
        r.b_row0 = group * n + r.n0;
        r.sb_row0 = group * sb_rows + r.n0 / 128;
        return r;
    }
};

// The K blocks [begin, begin + count) of split `split` of num_kb (balanced: counts differ by at
// most one; a split is empty only when num_kb < SPLIT_K).
struct KRange {
    int begin, count;
};
__device__ __forceinline__ KRange k_range(int num_kb, int split) {
    const int begin = split * num_kb / SPLIT_K;
    return KRange{begin, (split + 1) * num_kb / SPLIT_K - begin};
}

struct Pipe {
    int stage = 0;
    u32 phase = 0;
    __device__ __forceinline__ void next() {
        if (++stage == STAGES) {
            stage = 0;
            phase ^= 1;
        }
    }
};

// The scales of one K block for this thread's rows (per 64-row sub-tile: rows r and r + 8) and
// the tile's <= 3 weight-scale blocks.
struct KScales {
    float sa[SUB][2];
    float sb[3];
};

__device__ __forceinline__ KScales read_scales(const u8* smem, int stage, int row_in_tile) {
    const float* sa_smem = (const float*)(smem + OFF_SA) + stage * BLOCK_M;
    const float* sb_smem = (const float*)(smem + OFF_SB) + stage * 4;
    KScales r;
#pragma unroll
    for (int s = 0; s < SUB; ++s) {
        r.sa[s][0] = sa_smem[row_in_tile + s * 64];
        r.sa[s][1] = sa_smem[row_in_tile + s * 64 + 8];
    }
#pragma unroll
    for (int j = 0; j < 3; ++j) r.sb[j] = sb_smem[j];
    return r;
}

// Issues (and commits) the 4 wgmma of one K block for sub-tile `sub` into `acc`.
__device__ __forceinline__ void issue_k_block(float (&acc)[ACC], const u8* smem, int stage, int wg, int sub) {
    const u8* a_tile = smem + OFF_A + stage * A_STAGE + (wg * SUB + sub) * 64 * BK;
    const u64 a_desc = wgmma_desc(a_tile, 0, 1024, WGMMA_SWIZZLE_128B);
    const u64 b_desc = wgmma_desc(smem + OFF_B + stage * B_STAGE, 0, 1024, WGMMA_SWIZZLE_128B);
    reg_fence_all(acc);
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < BK / 32; ++k) {
        // +32 bytes of K per step: +2 in the descriptors' 16-byte address units.
        WgmmaE4M3<BLOCK_N>::mma(acc, a_desc + 2 * k, b_desc + 2 * k, k > 0 ? 1u : 0u);
    }
    wgmma_commit();
}

// This thread is done with `stage`: one arrival on the empty barrier of every CTA of the cluster
// (each CTA's producer refills the stage only when every math thread of both CTAs released it).
__device__ __forceinline__ void release_stage(u8* smem, int stage) {
    u64* empty = (u64*)(smem + OFF_EMPTY);
    if constexpr (CLUSTER_M == 1) {
        mbar_arrive(&empty[stage]);
    } else {
#pragma unroll
        for (int r = 0; r < CLUSTER_M; ++r) mbar_arrive_cluster(&empty[stage], r);
    }
}

// out += (sA[row] * sB[column block]) * acc, the column block of every 8 columns resolved at
// compile time from FORMER.
template <int FORMER>
__device__ __forceinline__ void promote(float (&out)[ACC], const float (&acc)[ACC], const float (&sa)[2],
                                        const float (&sb)[3]) {
#pragma unroll
    for (int i = 0; i < BLOCK_N / 8; ++i) {
        const float sbv = (8 * i < FORMER) ? sb[0] : ((8 * i < FORMER + 128) ? sb[1] : sb[2]);
        const float s0 = sa[0] * sbv, s1 = sa[1] * sbv;
        out[4 * i + 0] = fmaf(s0, acc[4 * i + 0], out[4 * i + 0]);
        out[4 * i + 1] = fmaf(s0, acc[4 * i + 1], out[4 * i + 1]);
        out[4 * i + 2] = fmaf(s1, acc[4 * i + 2], out[4 * i + 2]);
        out[4 * i + 3] = fmaf(s1, acc[4 * i + 3], out[4 * i + 3]);
    }
}

// The output coordinates of float4 chunk `c` (sub-tile c / (BLOCK_N / 8), column group
// c % (BLOCK_N / 8)) of math thread `mt` of the wgmma accumulator layout: values 0, 1 at
// (row, col), (row, col + 1) and 2, 3 at (row + 8, col), (row + 8, col + 1), relative to the tile.
struct ChunkAt {
    int row, col;
};
__device__ __forceinline__ ChunkAt chunk_at(int c, int mt) {
    const int wg = mt / 128, t = mt % 128;
    const int s = c / (BLOCK_N / 8), i = c % (BLOCK_N / 8);
    return ChunkAt{wg * 64 * SUB + s * 64 + (t / 32) * 16 + (t % 32) / 4, 8 * i + 2 * (t % 4)};
}

// Stores one chunk as two bf16 pairs, rows at or past row_end and columns past n left out.
__device__ __forceinline__ void store_chunk(u16* __restrict__ d, int row, int col, int row_end, int n, float v0,
                                           float v1, float v2, float v3) {
    if (col < n) {
        if (row < row_end) *(u32*)(d + (i64)row * n + col) = pack2<true>(v0, v1);
        if (row + 8 < row_end) *(u32*)(d + (i64)(row + 8) * n + col) = pack2<true>(v2, v3);
    }
}

// The epilogue tile's swizzle: the 16-byte chunk index of a row with row % 8 = r8 is XORed with
// this (EPI_SWIZZLE bytes per row of a column slab, as the TMA store's map reads them).
__device__ __forceinline__ u32 epi_chunk_xor(u32 r8) {
    return EPI_SWIZZLE == 128 ? r8 : (EPI_SWIZZLE == 64 ? (r8 / 2) % 4 : (r8 / 4) % 2);
}

// Writes this warpgroup's part of the tile (bf16).
__device__ __forceinline__ void epilogue(float (&out)[SUB][ACC], u8* smem, const Tile& tile, int wg, int m, int n,
                                         u16* __restrict__ d, const TmaDesc* tma_d) {
    const int t = threadIdx.x % 128;
    const int warp = t / 32, lane = t % 32;
#if EPI_SWIZZLE == 0
    // bf16 pairs straight to global memory, masked at the edges.
    (void)warp;
    (void)lane;
#pragma unroll
    for (int s = 0; s < SUB; ++s) {
#pragma unroll
        for (int i = 0; i < BLOCK_N / 8; ++i) {
            const ChunkAt at = chunk_at(s * (BLOCK_N / 8) + i, wg * 128 + t);
            store_chunk(d, tile.m0 + at.row, tile.n0 + at.col, tile.row_end, n, out[s][4 * i + 0], out[s][4 * i + 1],
                        out[s][4 * i + 2], out[s][4 * i + 3]);
        }
    }
#else
    // Rows into this warpgroup's swizzled smem tile, then one TMA store per column slab.
    constexpr int SLAB_COLS = EPI_SWIZZLE / 2;
    constexpr int WG_ROWS = 64 * SUB;
    u8* dbuf = smem + OFF_D + wg * WG_ROWS * BLOCK_N * 2;
    if (t == 0) tma_store_wait_read<0>();  // the previous tile's stores have read the buffer
    named_barrier_sync(1 + wg, 128);
    const int r8 = lane / 4;  // row % 8 of both of this thread's rows
    const u32 xor_chunk = epi_chunk_xor(r8);
#pragma unroll
    for (int s = 0; s < SUB; ++s) {
        const int row = s * 64 + warp * 16 + r8;
#pragma unroll
        for (int i = 0; i < BLOCK_N / 8; ++i) {
            const int slab = (8 * i) / SLAB_COLS;
            const u32 chunk = ((8 * i) % SLAB_COLS) / 8;
            u8* slab_base = dbuf + slab * WG_ROWS * EPI_SWIZZLE;
            const u32 off = ((chunk ^ xor_chunk) * 16) + 4 * (lane % 4);
            *(u32*)(slab_base + row * EPI_SWIZZLE + off) = pack2<true>(out[s][4 * i + 0], out[s][4 * i + 1]);
            *(u32*)(slab_base + (row + 8) * EPI_SWIZZLE + off) = pack2<true>(out[s][4 * i + 2], out[s][4 * i + 3]);
        }
    }
    fence_proxy_async_smem();
    named_barrier_sync(1 + wg, 128);
    const int wg_row0 = tile.m0 + wg * WG_ROWS;
    if (GROUPING != 2 || wg_row0 + WG_ROWS <= tile.row_end) {
        if (t == 0) {
#pragma unroll
            for (int slab = 0; slab < BLOCK_N / SLAB_COLS; ++slab)
                tma_store_2d(tma_d, dbuf + slab * WG_ROWS * EPI_SWIZZLE, tile.n0 + slab * SLAB_COLS, wg_row0);
            tma_store_commit();
        }
    } else {
        // A masked group's last rows: the TMA store cannot stop at the group's count, so the
        // warpgroup copies its rows below row_end from the tile to D, 16 bytes per thread and
        // step (consecutive threads on consecutive chunks of a row), columns past n left out.
        // The tile is read before this warpgroup's next epilogue (behind its named barrier).
        constexpr int ROW_CHUNKS = BLOCK_N / 8;
        const int rows = min(WG_ROWS, tile.row_end - wg_row0);
        for (int idx = t; idx < rows * ROW_CHUNKS; idx += 128) {
            const int row = idx / ROW_CHUNKS, c = idx % ROW_CHUNKS;
            const int slab = (8 * c) / SLAB_COLS;
            const u32 chunk = ((8 * c) % SLAB_COLS) / 8;
            const uint4 v = *reinterpret_cast<const uint4*>(dbuf + slab * WG_ROWS * EPI_SWIZZLE + row * EPI_SWIZZLE +
                                                            (chunk ^ epi_chunk_xor(row % 8)) * 16);
            const int col = tile.n0 + 8 * c;
            u16* const dst = d + (i64)(wg_row0 + row) * n + col;
            if (col + 8 <= n && n % 8 == 0) {
                *reinterpret_cast<uint4*>(dst) = v;
            } else {
                const u16* const h = reinterpret_cast<const u16*>(&v);
                for (int e = 0; e < 8 && col + e < n; ++e) dst[e] = h[e];
            }
        }
    }
#endif
}

// The K loop and epilogue of one tile for a math warpgroup; FORMER = the number of the tile's
// columns in the first 128-row block of sB (compile time, so the promotion needs no selects).
template <int FORMER>
__device__ __forceinline__ void math_tile(u8* smem, u32& round, const Tile& tile, int num_kb, int wg, int m, int n,
                                          u16* __restrict__ d, const TmaDesc* tma_d) {
    const int lane = threadIdx.x % 32;
    const int row_in_tile = wg * 64 * SUB + (threadIdx.x % 128) / 32 * 16 + lane / 4;  // + s * 64, + 8
    u64* full = (u64*)(smem + OFF_FULL);
    float out[SUB][ACC];
#pragma unroll
    for (int s = 0; s < SUB; ++s)
#pragma unroll
        for (int i = 0; i < ACC; ++i) out[s][i] = 0.0f;
    const int rounds = (num_kb + STAGES - 1) / STAGES;

#if ACC_STAGES == 1
    // Issue a K block, wait for it, promote it (the other math warpgroup's wgmma fill the gap).
    // The stage loop is unrolled so that every shared-memory address is a constant.
    float acc[ACC];
    for (int r = 0; r < rounds; ++r, ++round) {
#pragma unroll
        for (int stage = 0; stage < STAGES; ++stage) {
            mbar_wait(&full[stage], round & 1);
            if (r * STAGES + stage < num_kb) {
                const KScales sc = read_scales(smem, stage, row_in_tile);
#pragma unroll
                for (int s = 0; s < SUB; ++s) {
                    issue_k_block(acc, smem, stage, wg, s);
                    wgmma_wait<0>();
                    reg_fence_all(acc);
                    if (s == SUB - 1) release_stage(smem, stage);
                    promote<FORMER>(out[s], acc, sc.sa[s], sc.sb);
                }
            } else {
                release_stage(smem, stage);  // a stage this tile leaves empty
            }
        }
    }
#else
    // Two accumulators: K block kb + 1 is issued before K block kb is promoted, so this warpgroup
    // always has wgmma queued while its CUDA cores promote.
    float acc0[ACC], acc1[ACC];
    Pipe pipe, release;
    pipe.phase = release.phase = round & 1;
    if (num_kb > 0) {  // 0: an empty split (num_kb < SPLIT_K), its partial stays zero
        KScales sc0, sc1;
        // Waits for the next stage, reads its scales and issues its K block into acc.
        auto refill = [&](float(&acc)[ACC], KScales& sc) {
            mbar_wait(&full[pipe.stage], pipe.phase);
            sc = read_scales(smem, pipe.stage, row_in_tile);
            issue_k_block(acc, smem, pipe.stage, wg, 0);
            pipe.next();
        };
        // Releases the oldest stage and promotes its K block (complete) from acc.
        auto retire = [&](float(&acc)[ACC], const KScales& sc) {
            reg_fence_all(acc);
            release_stage(smem, release.stage);
            release.next();
            promote<FORMER>(out[0], acc, sc.sa[0], sc.sb);
        };
        refill(acc0, sc0);
        // Every pass of this loop enters and leaves with one K block in flight, in acc0, so that
        // every path reaches each wgmma with the same groups pending; where two paths differ
        // (a wait<1> on one, a wait<0> on the other), ptxas serializes every wgmma of the
        // kernel (C7518).
        int kb = 0;
        for (; kb + 2 < num_kb; kb += 2) {
            refill(acc1, sc1);
            wgmma_wait<1>();
            retire(acc0, sc0);
            refill(acc0, sc0);
            wgmma_wait<1>();
            retire(acc1, sc1);
        }
        // The last one or two K blocks (block kb in flight in acc0): both paths end with none.
        if (kb + 1 < num_kb) {
            refill(acc1, sc1);
            wgmma_wait<1>();
            retire(acc0, sc0);
            wgmma_wait<0>();
            retire(acc1, sc1);
        } else {
            wgmma_wait<0>();
            retire(acc0, sc0);
        }
        // The stages this tile leaves empty in its last round.
        for (int kb = num_kb; kb < rounds * STAGES; ++kb) {
            mbar_wait(&full[release.stage], release.phase);
            release_stage(smem, release.stage);
            release.next();
        }
    }
    round += rounds;
#endif
#if SPLIT_K == 1
    epilogue(out, smem, tile, wg, m, n, d, tma_d);
#else
    // This split's partial tile into the drained stage buffers (once every math warp is done
    // with them), in fragment order: chunk c of math thread mt at [c][mt].
    named_barrier_sync(1 + MATH_WG, MATH_THREADS);
    float4* partial = (float4*)(smem + OFF_PARTIAL);
    const int mt = threadIdx.x - 128;
#pragma unroll
    for (int s = 0; s < SUB; ++s)
#pragma unroll
        for (int i = 0; i < BLOCK_N / 8; ++i)
            partial[(s * (BLOCK_N / 8) + i) * MATH_THREADS + mt] =
                make_float4(out[s][4 * i + 0], out[s][4 * i + 1], out[s][4 * i + 2], out[s][4 * i + 3]);
    (void)tma_d;
#endif
}

#if SPLIT_K > 1
// After a cluster barrier that follows every split's partial store: this CTA (split `split`)
// sums chunks split, split + SPLIT_K, ... over the splits in rank order and stores them as bf16.
__device__ __forceinline__ void reduce_splits(const u8* smem, const Tile& tile, int split, int n,
                                              u16* __restrict__ d) {
    const float4* partial = (const float4*)(smem + OFF_PARTIAL);
    const int mt = threadIdx.x - 128;
    for (int c = split; c < CHUNKS; c += SPLIT_K) {
        const float4* at_c = &partial[c * MATH_THREADS + mt];
        float4 sum = ld_shared_cluster_f32x4(at_c, 0);
#pragma unroll
        for (int r = 1; r < SPLIT_K; ++r) {
            const float4 v = ld_shared_cluster_f32x4(at_c, r);
            sum.x += v.x;
            sum.y += v.y;
            sum.z += v.z;
            sum.w += v.w;
        }
        const ChunkAt at = chunk_at(c, mt);
        store_chunk(d, tile.m0 + at.row, tile.n0 + at.col, tile.row_end, n, sum.x, sum.y, sum.z, sum.w);
    }
}
#endif

// Dispatches math_tile on FORMER = min(BLOCK_N, 128 - n0 % 128), which is a multiple of
// gcd(BLOCK_N, 128) (tile starts are multiples of BLOCK_N), trying only those values.
__host__ __device__ constexpr int gcd_const(int a, int b) { return b == 0 ? a : gcd_const(b, a % b); }
constexpr int FORMER_STEP = gcd_const(BLOCK_N, 128);

template <int F>
__device__ __forceinline__ void math_tile_dispatch(int former, u8* smem, u32& round, const Tile& tile, int num_kb,
                                                   int wg, int m, int n, u16* __restrict__ d, const TmaDesc* tma_d) {
    constexpr int FC = F < BLOCK_N ? F : BLOCK_N;
    if constexpr (F + FORMER_STEP <= 128 && F < BLOCK_N) {
        if (former != FC) {
            math_tile_dispatch<F + FORMER_STEP>(former, smem, round, tile, num_kb, wg, m, n, d, tma_d);
            return;
        }
    }
    math_tile<FC>(smem, round, tile, num_kb, wg, m, n, d, tma_d);
}

}  // namespace fp8_gemm_sm90

extern "C" __global__ void __launch_bounds__(fp8_gemm_sm90::THREADS, CTAS_PER_SM)
    fp8_gemm_sm90_kernel(const __grid_constant__ TmaDesc tma_a, const __grid_constant__ TmaDesc tma_b,
                         const __grid_constant__ TmaDesc tma_d,
                         const float* __restrict__ sa, const float* __restrict__ sb, u16* __restrict__ d, int m,
                         int n, int k, const int* __restrict__ groups, int num_groups) {
    using namespace fp8_gemm_sm90;
    extern __shared__ u8 smem_raw[];
    // Offsetting the array (not casting through an integer) keeps the pointer in shared space.
    u8* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    u64* full = (u64*)(smem + OFF_FULL);
    u64* empty = (u64*)(smem + OFF_EMPTY);

    const int num_kb = (k + BK - 1) / BK;
    const Scheduler sched(m, n, groups, num_groups);
    const int num_tiles = sched.num_tiles;  // cluster tiles
    const int a_rows = GROUPING == 2 ? num_groups * m : m;  // rows of A and sA over all groups
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int rank = CLUSTER_M == 1 ? 0 : (int)cluster_cta_rank();  // the half of B multicast
    const int cluster = blockIdx.x / CLUSTER, clusters = gridDim.x / CLUSTER;
    // This CTA's K blocks (all of them without split-K).
    const KRange kr = k_range(num_kb, SPLIT_K == 1 ? 0 : (int)cluster_cta_rank());

    if (threadIdx.x == 0) {
        tma_prefetch_desc(&tma_a);
        tma_prefetch_desc(&tma_b);
        if (EPI_SWIZZLE != 0) tma_prefetch_desc(&tma_d);
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(&full[s], FULL_ARRIVALS);
            mbar_init(&empty[s], EMPTY_ARRIVALS);
        }
        mbar_fence_init();
    }
    if constexpr (CLUSTER_M == 1) {
        __syncthreads();
    } else {
        cluster_sync();  // the peer's barriers are initialized before any multicast or remote arrival
    }

    if (warp < 4) {
        // Producer warpgroup.
        if constexpr (MATH_REGS != 0) setmaxnreg_dec<PRODUCER_REGS>();
        const int rounds = (kr.count + STAGES - 1) / STAGES;
        if (warp == 0 && lane == 0) {
            // TMA: each tile fills the stages from 0, in rounds of STAGES K blocks (the last round
            // may leave stages empty: they are passed on with a plain arrival).
            u32 round = 0;
            for (int t = cluster; t < num_tiles; t += clusters) {
                const Tile tile = sched.at(t, rank);
                if (!tile.valid) continue;
                const int b_row = tile.b_row0 + rank * (BLOCK_N / CLUSTER_M);
                for (int r = 0; r < rounds; ++r, ++round) {
#pragma unroll
                    for (int stage = 0; stage < STAGES; ++stage) {
                        const int kb = kr.begin + r * STAGES + stage;
                        mbar_wait(&empty[stage], (round & 1) ^ 1);
                        if (r * STAGES + stage >= kr.count) {
                            mbar_arrive(&full[stage]);
                            continue;
                        }
                        mbar_arrive_expect_tx(&full[stage], A_STAGE + B_STAGE);
                        tma_load_2d(smem + OFF_A + stage * A_STAGE, &tma_a, &full[stage], kb * BK, tile.m0);
                        u8* b_dst = smem + OFF_B + stage * B_STAGE + rank * B_HALF;
                        if constexpr (CLUSTER_M == 1) {
                            tma_load_2d(b_dst, &tma_b, &full[stage], kb * BK, b_row);
                        } else {
                            tma_load_2d_multicast(b_dst, &tma_b, &full[stage], kb * BK, b_row, (1u << CLUSTER_M) - 1);
                        }
                    }
                }
            }
        } else if (warp == 1) {
            // Scales, in the same rounds: cp.async of this K block's activation scales and the
            // tile's weight scales into the stage, one arrival per lane once they have landed.
            float* sa_smem = (float*)(smem + OFF_SA);
            float* sb_smem = (float*)(smem + OFF_SB);
            u32 round = 0;
            for (int t = cluster; t < num_tiles; t += clusters) {
                const Tile tile = sched.at(t, rank);
                if (!tile.valid) continue;
                for (int r = 0; r < rounds; ++r, ++round) {
#pragma unroll
                    for (int stage = 0; stage < STAGES; ++stage) {
                        const int kb = kr.begin + r * STAGES + stage;
                        mbar_wait(&empty[stage], (round & 1) ^ 1);
                        if (r * STAGES + stage < kr.count) {
#pragma unroll
                            for (int i = lane; i < BLOCK_M; i += 32) {
                                const int row = tile.m0 + i;
                                cp_async_4(&sa_smem[stage * BLOCK_M + i],
                                           row < a_rows ? &sa[(i64)row * num_kb + kb] : sa, row < a_rows);
                            }
                            if (lane < 3) {
                                const bool in = tile.n0 / 128 + lane < sched.sb_rows;
                                const i64 srow = tile.sb_row0 + lane;
                                cp_async_4(&sb_smem[stage * 4 + lane], in ? &sb[srow * num_kb + kb] : sb, in);
                            }
                        }
                        // Arrives once this lane's copies have landed: the warp never waits on memory.
                        cp_async_mbar_arrive(&full[stage]);
                    }
                }
            }
        }
    } else {
        if constexpr (MATH_REGS != 0) setmaxnreg_inc<MATH_REGS>();
        // Through a shuffle so that ptxas sees it warp-uniform: the wgmma descriptors built from
        // it then stay in uniform registers (without it, every K block rebuilt them in vector
        // registers and moved them over: ~45 instructions from the full barrier to the first
        // wgmma, ~22 with it; 128 x 192 and 64 x 128 SASS, nvcc 13.0).
        const int wg = __shfl_sync(0xffffffffu, warp / 4 - 1, 0);
        u32 round = 0;
        for (int t = cluster; t < num_tiles; t += clusters) {
            const Tile tile = sched.at(t, rank);
            if (!tile.valid) continue;
            const int former = min(BLOCK_N, 128 - tile.n0 % 128);
            math_tile_dispatch<FORMER_STEP>(former, smem, round, tile, kr.count, wg, m, n, d, &tma_d);
        }
#if EPI_SWIZZLE != 0
        if (threadIdx.x % 128 == 0) tma_store_wait<0>();  // stores complete before the CTA exits
#endif
    }
#if SPLIT_K > 1
    // Every split's partial is in its shared memory; each CTA reduces its share of the tile (one
    // tile per cluster: the grid is tiles x SPLIT_K).
    __syncwarp();
    cluster_sync();
    if (warp >= 4 && cluster < num_tiles) reduce_splits(smem, sched.at(cluster, 0), (int)cluster_cta_rank(), n, d);
#endif
    if constexpr (CLUSTER > 1) {
        // No CTA leaves while a peer may still arrive on its barriers or read its partial.
        __syncwarp();
        cluster_sync();
    }
}

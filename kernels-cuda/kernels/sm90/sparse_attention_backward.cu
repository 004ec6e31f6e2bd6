// Block-sparse (radial) attention backward for sm_90a: the two tile passes of
// kernels/sparse_attention_backward.cu (PASS 1 dk/dv, PASS 2 dq; its PASS 0, delta, is reused as
// is) with wgmma, a TMA + mbarrier pipeline filled by a producer warpgroup and two math
// warpgroups of 64 resident rows each. Prepended: common.cuh, attention_constants.cuh (HEAD_DIM,
// ELEM_BF16), sm90/hopper.cuh, sm90/wgmma.cuh (WgmmaBf16 / WgmmaF16 / WgmmaRegA).
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/attention_backward.rs):
//   PASS       1 = dk/dv (sparse_attention_bwd_dkdv_sm90), 2 = dq (sparse_attention_bwd_dq_sm90),
//              3 = the fused variant's dq conversion (sparse_attention_bwd_dq_convert_sm90; needs
//              only HEAD_DIM and ELEM_BF16, TESSERA_THREADS 256, no shared memory)
//   HEAD_DIM, ELEM_BF16 (attention_constants.cuh)
//   BLOCK      mask block size: 128 (a CTA's 128 resident rows are one mask block)
//   STAGES     streamed tiles in flight: 2, 3 or 4
//   TESSERA_SMEM_BYTES  Bwd90Smem::END below;  TESSERA_THREADS 384
// Optional: BWD90_FUSED_DQ (0; 1 with PASS 1: below), BWD90_DQ_DETERMINISTIC (0),
// BWD90_DQ_WRITER (0; 1 with BWD90_FUSED_DQ, or with PASS 3: below), BWD90_OVERLAP (1 at
// HEAD_DIM 64 unless fused, else 0). The plan renders BWD90_FUSED_DQ 1, BWD90_DQ_WRITER 1 and
// BWD90_DQ_DETERMINISTIC 0 / 1 for its fused-dq dk/dv pass and BWD90_DQ_WRITER 1 for PASS 3;
// the plain fused build (BWD90_DQ_WRITER 0) and BWD90_OVERLAP are the nvcc harness's only.
//
// Problem, layouts, arguments and padding rules: those of kernels/sparse_attention_backward.cu
// (q, k, v, dO, dq, dk, dv [batch, tokens, heads, HEAD_DIM]; lse (natural log) and delta f32
// [batch, heads, tokens]; the BSR mask, and for PASS 1 its transpose, over ceil(tokens / 128)
// block rows). P = exp(scale q k^T - lse), dP = dO V^T, dS = P (dP - delta); dV = P^T dO,
// dK = scale dS^T Q, dQ = scale dS K. Deterministic: no atomics, every output element written
// once by one thread (a key block no query attends gets dk = dv = 0).
//
// Grid: (ceil(tokens / 128), heads, batch): CTA x owns the 128 rows of mask block x (PASS 1: keys,
// walking the transposed mask's row x; PASS 2: queries, walking the mask's row x).
//   producer WG  streams the other side's rows in tiles of 64 (a mask block is two tiles; a
//                tile starting at or past `tokens` is dropped): its thread 0 copies both tiles
//                of stage t % STAGES by TMA (stream_a_map, stream_b_map: PASS 1 q and dO, PASS 2
//                k and v, each the 3-D tensor (heads x HEAD_DIM, tokens, batch) in boxes of
//                [64 tokens][64], 128-byte swizzle: zeros past `tokens`), completing on full[s];
//                in PASS 1 the loaders also copy the tile's lse and delta (4-byte cp.async, zero
//                fill) and arrive there too.
//   math WG w    owns resident rows 64w..64w+63 (loaded by itself into swizzled shared memory).
//     PASS 1 per query tile: S^T = K Q^T and dP^T = V dO^T (wgmma m64n64, both operands
//       K-major in shared memory); P^T = exp2(S^T scale log2 e - lse log2 e); dS^T = P^T (dP^T -
//       delta); dV += P^T dO and dK += dS^T Q (wgmma with A from registers, B = the [64 query
//       rows][HEAD_DIM] tile, MN-major). A padded query row has zero q and dO (TMA zero
//       fill) and lse = delta = 0: P = 1, dP = 0, dS = 0, and its zero dO and q rows add nothing.
//     PASS 2 per key tile: S = Q K^T, dP = dO V^T, P (0 for keys past `tokens`), dS; dQ += dS K
//       (A from registers, B = the key tile MN-major). A padded query row gets lse = +inf: P = 0.
//   Overlap: the exp of P runs while the tensor cores compute dP; dS while they compute
//   dV (PASS 1); the S of the next tile is issued before the wait for this tile's last wgmma.
// Shared memory (1024-byte aligned, 128-byte swizzle: 16-byte chunk c of row r of a 64-column
// block lives at r * 128 + ((c ^ (r % 8)) * 16)):
//   RES_A, RES_B  the resident rows (PASS 1: K, V; PASS 2: Q, dO): HEAD_DIM / 64 column blocks
//                 of [128 rows][64] each
//   STAGE_A, STAGE_B  STAGES x the streamed tiles (PASS 1: Q, dO; PASS 2: K, V): HEAD_DIM / 64
//                 column blocks of [64 rows][64] each
//   DS            BWD90_FUSED_DQ only: 2 x the dS of a query tile, [64 query rows][128 keys] as
//                 two column blocks of [64 rows][64] (32 KB)
//   DQ            BWD90_DQ_WRITER only: one f32 dQ job per math warpgroup, 2 x [64][64] (32 KB),
//                 in the swizzled chunk layout of dq_accum below
//   LSE, DELTA    PASS 1 only: STAGES x 64 f32 each
//   FULL, EMPTY   STAGES mbarriers each
//   DQ_FULL, DQ_EMPTY  BWD90_DQ_WRITER only: 2 mbarriers each (one per math warpgroup)
//
// Fused dQ (BWD90_FUSED_DQ 1, PASS 1 only; the plan builds it only with BWD90_DQ_WRITER 1):
// sparse_attention_bwd_fused_sm90 is PASS 1 that also accumulates dQ, so that PASS 2 (which
// recomputes S and dP: 3 of the 7 matmuls) is not run; 5 matmuls in all, FlashAttention-3's count.
//   Per query tile, once both warpgroups have dS^T (their 64 keys x the tile's 64 queries) in
//   registers, each stores it as bf16/f16 into the shared buffer DS (t % 2), transposed by
//   stmatrix .trans into the K-major A operand [64 query rows][128 keys] (two 128-byte-swizzled
//   column blocks, warpgroup w's keys in block w), then a 256-thread named barrier. dQ_tile =
//   dS K (m64n64k16 x 8 k-steps over the CTA's 128 keys, A = DS, B = the resident K, MN-major):
//   at HEAD_DIM 128 warpgroup w computes columns 64w..64w+63 of every tile (32 registers); at 64
//   warpgroup (t & 1) computes all 64 columns of tile t. The tile goes into dq_accum (f32
//   [batch, heads, tokens, HEAD_DIM], zeroed by the host) by red.global.add.v2.f32, under the S
//   and dP of the next tile. PASS 3 (sparse_attention_bwd_dq_convert_sm90) then writes
//   dq = scale * dq_accum in the element type.
//   BWD90_DQ_DETERMINISTIC 0: the adds of different key blocks into one element race (f32
//     rounding depends on their order: dq may differ in its last bits from run to run).
//   BWD90_DQ_DETERMINISTIC 1: every element of dq_accum receives its adds in increasing key-block
//     order, so dq is bitwise the same on every run (same inputs and mask; not bitwise equal to
//     PASS 2's dq, which sums the tiles in another order). dq_turns (u32 [batch][heads]
//     [ceil(tokens / 64)][HEAD_DIM / 64], zeroed by the host) counts, per query tile and column
//     job, the key blocks that have added; t_rank (u32, parallel to t_indices: entry e of
//     transposed row kb, query block qb = t_indices[e], holds the rank of kb among the key blocks
//     of mask row qb, i.e. its position in that sorted row) is the count a CTA waits for before
//     it adds (one thread polls with ld.relaxed.gpu, then ld.acquire.gpu, a warpgroup barrier,
//     the adds, a barrier, red.release.gpu + 1). Deadlock-free for any grid: CTA (kb, h, b) waits only for CTAs
//     (kb' < kb, h, b), whose linear block index is lower; CTAs are dispatched in linear index
//     order (what the hardware does; CUDA does not promise it, FlashAttention-3's deterministic
//     mode relies on the same), so every CTA it waits for is resident or done, and by induction
//     on the index the lowest waiting CTA's predecessors all finish (a CTA never waits for a
//     later one: its tiles are walked in increasing query order and each wait is on lower kb).
//
// dQ writer (BWD90_DQ_WRITER 1, with BWD90_FUSED_DQ; FlashAttention-3's division of the work):
// the math warpgroups do not add into global memory. Warpgroup mw, once its dQ job of tile t is
// complete, waits on DQ_EMPTY[mw] (the buffer's previous job has been read), stores the 64 x 64
// f32 job into DQ[mw] (st.shared.v2, conflict-free in the swizzled layout), fence.proxy.async,
// arrives on DQ_FULL[mw] (128 arrivals) and goes on with the next tile. Producer warps 2 and 3
// are the writers of warpgroups 0 and 1 (warps 0 and 1 alone stream the tiles: full[] counts 64
// arrivals); lane 0 waits on DQ_FULL[mw], adds the whole job with one
// cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 (16 KB: the job is one contiguous
// chunk of dq_accum), cp.async.bulk.commit_group, waits and arrives on DQ_EMPTY[mw].
//   dq_accum layout (writer builds): f32 [batch][heads][ceil(tokens / 64) query tiles]
//     [HEAD_DIM / 64 column jobs][64 rows][64], element (row r, column c) of a job at
//     r * 64 + ((c / 8) ^ (r % 8)) * 8 + c % 8 (8-float groups XOR-swizzled by the row, so that
//     the wgmma-layout stores hit 32 distinct banks per half-warp); the rows of the last tile
//     past `tokens` are added too (zeros: dS = 0 there) and never read. PASS 3 with
//     BWD90_DQ_WRITER 1 (sparse_attention_bwd_dq_convert_tiled_sm90) reads this layout.
//   The bulk reduction adds element by element at L2 (SASS UBLKRED.G.S.ADD.F32.RN, a reduction
//   like red.global: not FTZ, unlike the REDG of the plain fused build), which the atomic mode
//   relies on for the concurrent jobs of other key blocks (FlashAttention-3 does the same).
//   Atomic: cp.async.bulk.wait_group.read 0 (the shared-memory source has been read) before the
//     DQ_EMPTY arrival; the global adds finish on their own (the kernel's end completes them).
//   Deterministic: the writer lane does the turn wait (ld.relaxed.gpu poll, ld.acquire.gpu;
//     before its DQ_FULL wait, so that it overlaps the job's product), then
//     fence.proxy.async.global (orders the acquire, a generic-proxy operation, before the
//     async-proxy reduction that follows), the reduction, cp.async.bulk.wait_group 0 (without
//     .read: the writes are complete and visible to this thread, not only the source read),
//     fence.proxy.async.global (makes those async-proxy writes part of what this thread's next
//     generic-proxy release covers), then red.release.gpu + 1. The next key block's writer
//     acquires that count, so its reduction is ordered after this one's writes. Deadlock freedom
//     as above: a writer waits only for lower key blocks; the math warpgroups wait only on their
//     own writer's DQ_EMPTY, which that writer arrives on once its (lower-kb) turn has come, and
//     they release each stage before that wait, so the producer never waits on other CTAs.
//   The per-tile 256-thread barrier stays: it is the dS exchange (each warpgroup's dQ product
//   reads both warpgroups' halves of DS), not a coupling the writer could replace; DS[t % 2] is
//   still rewritten only after barrier t + 1, which each warpgroup reaches after its wait for
//   dQ(t) (the writer hand-off happens after that wait and reads DQ, never DS).
//   Registers: setmaxnreg 24 / 240 at HEAD_DIM 128, 40 / 232 at 64 (BWD90_PRODUCER_REGS).

#ifndef PASS
#error "PASS is required (1 = dk/dv, 2 = dq, 3 = fused dq's f32 -> element conversion)"
#endif
#if PASS != 1 && PASS != 2 && PASS != 3
#error "PASS must be 1, 2 or 3 (the delta pass is kernels/sparse_attention_backward.cu's PASS 0)"
#endif

#if PASS == 3
#ifndef BWD90_DQ_WRITER
#define BWD90_DQ_WRITER 0
#endif
// dq [batch, tokens, heads, HEAD_DIM] (element type) = scale * dq_accum [batch, heads, tokens,
// HEAD_DIM] (f32): one thread per 8 consecutive outputs, groups = batch * tokens * heads *
// HEAD_DIM / 8. TESSERA_THREADS 256, no shared memory. BWD90_DQ_WRITER 1: dq_accum in the writer's
// tiled layout (header comment), sparse_attention_bwd_dq_convert_tiled_sm90.
static_assert(TESSERA_THREADS == 256, "the dq conversion runs 256 threads per CTA");
static_assert(TESSERA_SMEM_BYTES == 0, "the dq conversion uses no dynamic shared memory");
#if BWD90_DQ_WRITER
#define BWD90_DQ_CONVERT sparse_attention_bwd_dq_convert_tiled_sm90
#else
#define BWD90_DQ_CONVERT sparse_attention_bwd_dq_convert_sm90
#endif
extern "C" __global__ void __launch_bounds__(256)
BWD90_DQ_CONVERT(const float* __restrict__ dq_accum, u16* __restrict__ dq, int tokens, int heads, float scale,
                 i64 groups) {
    const i64 i = (i64)blockIdx.x * 256 + threadIdx.x;
    if (i >= groups) return;
    constexpr int C8 = HEAD_DIM / 8;
    const int c8 = (int)(i % C8);
    i64 r = i / C8;
    const int h = (int)(r % heads);
    r /= heads;
    const int t = (int)(r % tokens);
    const i64 b = r / tokens;
#if BWD90_DQ_WRITER
    const int qtiles = (tokens + 63) / 64, row = t % 64;
    const i64 job = (((b * heads + h) * qtiles + t / 64) * (HEAD_DIM / 64) + c8 / 8);
    const float4* src =
        reinterpret_cast<const float4*>(dq_accum + (job * 64 + row) * 64 + ((c8 % 8) ^ (row % 8)) * 8);
#else
    const float4* src = reinterpret_cast<const float4*>(dq_accum + ((b * heads + h) * tokens + t) * HEAD_DIM + c8 * 8);
#endif
    const float4 x = src[0], y = src[1];
    constexpr bool BF16 = ELEM_BF16 != 0;
    *reinterpret_cast<uint4*>(dq + i * 8) =
        make_uint4(pack2<BF16>(x.x * scale, x.y * scale), pack2<BF16>(x.z * scale, x.w * scale),
                   pack2<BF16>(y.x * scale, y.y * scale), pack2<BF16>(y.z * scale, y.w * scale));
}
#else  // PASS 1 or 2
#ifndef BLOCK
#error "BLOCK is required (mask block size: 128)"
#endif
#if BLOCK != 128
#error "the sm90 attention backward takes mask blocks of 128 (one block per CTA)"
#endif
#ifndef STAGES
#error "STAGES is required (streamed tiles in flight: 2, 3 or 4)"
#endif
#if STAGES < 2 || STAGES > 4
#error "STAGES must be 2, 3 or 4"
#endif
#ifndef BWD90_FUSED_DQ
#define BWD90_FUSED_DQ 0
#endif
#ifndef BWD90_DQ_DETERMINISTIC
#define BWD90_DQ_DETERMINISTIC 0
#endif
#ifndef BWD90_DQ_WRITER
#define BWD90_DQ_WRITER 0
#endif
#if BWD90_FUSED_DQ && PASS != 1
#error "BWD90_FUSED_DQ is a variant of PASS 1"
#endif
#if BWD90_DQ_WRITER && !BWD90_FUSED_DQ
#error "BWD90_DQ_WRITER is a variant of the fused dQ pass (BWD90_FUSED_DQ 1)"
#endif

#define BWD90_ROWS 128          // resident rows per CTA (one mask block, two math warpgroups)
#define BWD90_TILE 64           // streamed rows per tile
#define BWD90_CB (HEAD_DIM / 64)  // 64-column blocks per row
#define BWD90_THREADS 384
// Arrivals that release a stage: every math thread, after its last read of the stage. PASS 1
// reads the tile's lse and delta with plain loads; compute-sanitizer racecheck reports the
// producer's refill as racing with those reads when fewer threads arrive (one per warp after
// __syncwarp, or one per warpgroup after a named barrier: session 8), and every thread arriving
// is as fast (H200, nvcc harness).
#define BWD90_EMPTY_ARRIVALS 256
// Producer threads that stream the tiles (each arrives on full[s]): the whole warpgroup, or with
// BWD90_DQ_WRITER its warps 0 and 1 (warps 2 and 3 are the dQ writers).
#define BWD90_LOADERS (BWD90_DQ_WRITER ? 64 : 128)
// Arrivals that complete a stage: the TMA thread's (with the tiles' bytes), and in PASS 1 every
// loader's cp.async of the tile's lse and delta.
#define BWD90_FULL_ARRIVALS (1 + (PASS == 1 ? BWD90_LOADERS : 0))
// Registers per thread after setmaxnreg (256 x math + 128 x producer = 168 x 384, the launch's):
// 24 / 240, except 40 / 232 for the dQ writer at HEAD_DIM 64 (its 64 loaders spill 16 bytes at
// 24; at 128 the math warpgroups need the 240).
#ifndef BWD90_PRODUCER_REGS
#define BWD90_PRODUCER_REGS (BWD90_DQ_WRITER && HEAD_DIM == 64 ? 40 : 24)
#endif
#define BWD90_MATH_REGS ((168 * 3 - BWD90_PRODUCER_REGS) / 2)
// PASS 1: the elementwise work of a tile under the dV/dK wgmma of the previous one (32 more
// live registers: fits at HEAD_DIM 64; at 128 the warpgroups overlap only each other).
#ifndef BWD90_OVERLAP
#define BWD90_OVERLAP (HEAD_DIM == 64 && !BWD90_FUSED_DQ)
#endif
#if BWD90_OVERLAP && BWD90_FUSED_DQ
#error "the fused dQ variant runs PASS 1's loop without cross-tile overlap (BWD90_OVERLAP 0)"
#endif

#if ELEM_BF16
#define BWD90_MMA_SS WgmmaBf16<BWD90_TILE, 0>
#else
#define BWD90_MMA_SS WgmmaF16<BWD90_TILE, 0>
#endif
#define BWD90_MMA_RS WgmmaRegA<HEAD_DIM, ELEM_BF16>
// Fused dQ: dQ_tile (64 queries x 64 columns) += dS (K-major) K (MN-major)
#if ELEM_BF16
#define BWD90_MMA_DQ WgmmaBf16<64, 1>
#else
#define BWD90_MMA_DQ WgmmaF16<64, 1>
#endif

// Byte offsets of the shared-memory regions; the host's size (kernels-cuda/src/plan/
// attention_backward.rs) is checked against END at compile time.
struct Bwd90Smem {
    static constexpr int RES_BLOCK = BWD90_ROWS * 128;   // one [128 rows][64] column block
    static constexpr int TILE_BLOCK = BWD90_TILE * 128;  // one [64 rows][64] column block
    static constexpr int RES = BWD90_CB * RES_BLOCK;
    static constexpr int TILE = BWD90_CB * TILE_BLOCK;
    static constexpr int RES_A = 0;
    static constexpr int RES_B = RES_A + RES;
    static constexpr int STAGE_A = RES_B + RES;
    static constexpr int STAGE_B = STAGE_A + STAGES * TILE;
    // BWD90_FUSED_DQ: two buffers of dS, each [64 query rows][128 keys] K-major (two column blocks)
    static constexpr int DS_BUF = 2 * TILE_BLOCK;
    static constexpr int DS = STAGE_B + STAGES * TILE;
    // BWD90_DQ_WRITER: one f32 [64][64] dQ job per math warpgroup (swizzled, header comment)
    static constexpr int DQ_BUF = 64 * 64 * 4;
    static constexpr int DQ = DS + (BWD90_FUSED_DQ ? 2 * DS_BUF : 0);
    static constexpr int LSE = DQ + (BWD90_DQ_WRITER ? 2 * DQ_BUF : 0);
    static constexpr int DELTA = LSE + (PASS == 1 ? STAGES * BWD90_TILE * 4 : 0);
    static constexpr int FULL = DELTA + (PASS == 1 ? STAGES * BWD90_TILE * 4 : 0);
    static constexpr int EMPTY = FULL + STAGES * 8;
    static constexpr int DQ_FULL = EMPTY + STAGES * 8;
    static constexpr int DQ_EMPTY = DQ_FULL + (BWD90_DQ_WRITER ? 2 * 8 : 0);
    static constexpr int END = DQ_EMPTY + (BWD90_DQ_WRITER ? 2 * 8 : 0);
};
static_assert(Bwd90Smem::END == TESSERA_SMEM_BYTES,
              "the host's shared-memory size must match the sm90 attention backward layout");
static_assert(TESSERA_THREADS == BWD90_THREADS, "the sm90 attention backward runs 3 warpgroups");


// 2^x on the SFU alone (see sm90/sparse_attention.cu); exp2(-inf) = 0.
__device__ __forceinline__ float bwd90_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// The streamed tiles of one BSR row: every block is two tiles of 64 rows, except that a tile
// starting at or past `tokens` is dropped (only the last block can be partial and indices are
// sorted, so such a tile can only be the row's last).
struct Bwd90Walk {
    int first;
    int ntiles;
    const u32* indices;
    __device__ Bwd90Walk(const u32* __restrict__ indptr, const u32* __restrict__ idx, int row, int tokens)
        : indices(idx) {
        first = (int)indptr[row];
        const int last = (int)indptr[row + 1];
        ntiles = (last - first) * 2;
        if (last > first && tokens - (int)idx[last - 1] * BLOCK <= BWD90_TILE) ntiles -= 1;
    }
    __device__ int row0(int j) const { return (int)indices[first + j / 2] * BLOCK + (j % 2) * BWD90_TILE; }
};

// This warpgroup's 64 resident rows (64 mw.. of the CTA's 128, tokens row0 + 64 mw..) into the
// swizzled resident region `res` (zero rows past `tokens`), by plain loads and stores.
__device__ __forceinline__ void bwd90_load_resident(u8* res, const u16* __restrict__ base, int row0, int tokens,
                                                    i64 tok_stride, int mw, int t128) {
    constexpr int CHUNKS = HEAD_DIM / 8;
    for (int idx = t128; idx < 64 * CHUNKS; idx += 128) {
        const int row = 64 * mw + idx / CHUNKS, c = idx % CHUNKS;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (row0 + row < tokens)
            val = *reinterpret_cast<const uint4*>(base + (i64)(row0 + row) * tok_stride + c * 8);
        *reinterpret_cast<uint4*>(res + (c / 8) * Bwd90Smem::RES_BLOCK + swizzle128(row, c % 8)) = val;
    }
}

// acc (64 x 64, f32) = A B^T over HEAD_DIM: A this warpgroup's 64 resident rows (descriptor
// a_desc), B one streamed tile (descriptor b_desc), both K-major; issued, not committed.
__device__ __forceinline__ void bwd90_rows_dot_rows(float* acc, u64 a_desc, u64 b_desc) {
#pragma unroll
    for (int cb = 0; cb < BWD90_CB; ++cb)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const u64 aoff = (u64)((cb * Bwd90Smem::RES_BLOCK + kk * 32) >> 4);
            const u64 boff = (u64)((cb * Bwd90Smem::TILE_BLOCK + kk * 32) >> 4);
            BWD90_MMA_SS::mma(acc, a_desc + aoff, b_desc + boff, (cb | kk) != 0);
        }
}

// acc (64 x HEAD_DIM) += W B: W (64 x 64) from registers in the A-fragment layout, B one
// streamed tile [64 rows][HEAD_DIM] (MN-major, descriptor b_desc); issued, not committed.
__device__ __forceinline__ void bwd90_weights_times_tile(float* acc, const u32 (&w)[4][4], u64 b_desc) {
#pragma unroll
    for (int kk = 0; kk < BWD90_TILE / 16; ++kk)
        BWD90_MMA_RS::mma(acc, w[kk], b_desc + (u64)((kk * 16 * 128) >> 4), 1);
}

// Ends the live range of an accumulator that the next wgmma overwrites (its first k-step does not
// accumulate): without it, the wgmma's read-write operands keep it live around the loop (the
// fused dQ variant needs those registers). volatile: not hoisted out of the loop.
template <int N>
__device__ __forceinline__ void bwd90_undefine(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "=f"(r[i]));
}

// A 64 x 64 f32 accumulator (wgmma layout) into the A fragments of the next wgmma: k-step kk
// covers columns 16kk..16kk+15, i.e. n8 tiles 2kk and 2kk + 1.
template <bool BF16>
__device__ __forceinline__ void bwd90_pack(u32 (&f)[4][4], const float* acc) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        f[kk][0] = pack2<BF16>(acc[8 * kk + 0], acc[8 * kk + 1]);
        f[kk][1] = pack2<BF16>(acc[8 * kk + 2], acc[8 * kk + 3]);
        f[kk][2] = pack2<BF16>(acc[8 * kk + 4], acc[8 * kk + 5]);
        f[kk][3] = pack2<BF16>(acc[8 * kk + 6], acc[8 * kk + 7]);
    }
}

__device__ __forceinline__ void bwd90_fence_frags(u32 (&f)[4][4]) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) reg_fence(f[kk][i]);
}

// Writes this warpgroup's 64 x HEAD_DIM accumulator times `mul` to rows row0 + (0..64) (those <
// tokens) of out (base: token 0 of the batch and head).
template <bool BF16>
__device__ __forceinline__ void bwd90_store(u16* __restrict__ out, const float* acc, float mul, int row0, int tokens,
                                            i64 tok_stride, int warp, int g, int tq) {
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const int t = row0 + warp * 16 + g + 8 * ri;
        if (t >= tokens) continue;
        u16* row = out + (i64)t * tok_stride;
#pragma unroll
        for (int n8 = 0; n8 < HEAD_DIM / 8; ++n8)
            *reinterpret_cast<u32*>(row + n8 * 8 + 2 * tq) =
                pack2<BF16>(acc[n8 * 4 + 2 * ri] * mul, acc[n8 * 4 + 2 * ri + 1] * mul);
    }
}

#if PASS == 1 && BWD90_DQ_WRITER && BWD90_DQ_DETERMINISTIC
#define BWD90_ENTRY sparse_attention_bwd_fused_writer_deterministic_sm90
#elif PASS == 1 && BWD90_DQ_WRITER
#define BWD90_ENTRY sparse_attention_bwd_fused_writer_sm90
#elif PASS == 1 && BWD90_FUSED_DQ && BWD90_DQ_DETERMINISTIC
#define BWD90_ENTRY sparse_attention_bwd_fused_deterministic_sm90
#elif PASS == 1 && BWD90_FUSED_DQ
#define BWD90_ENTRY sparse_attention_bwd_fused_sm90
#elif PASS == 1
#define BWD90_ENTRY sparse_attention_bwd_dkdv_sm90
#else
#define BWD90_ENTRY sparse_attention_bwd_dq_sm90
#endif

// PASS 1: dk, dv for the 128 keys of key block blockIdx.x of head blockIdx.y, batch blockIdx.z,
// over the query tiles of the transposed mask's row (indptr/indices = t_indptr/t_indices).
// PASS 2: dq for the 128 queries of query block blockIdx.x over the key tiles of the mask's row.
// The arguments are those of the mma.sync kernel's pass (kernels/sparse_attention_backward.cu);
// the fused variant (BWD90_FUSED_DQ) also takes dq_accum, dq_turns and t_rank (header comment;
// dq_turns and t_rank are read only when BWD90_DQ_DETERMINISTIC).
#if PASS == 1 && BWD90_FUSED_DQ  // sparse_attention_bwd_fused[_writer]_sm90 / _fused[_writer]_deterministic_sm90
extern "C" __global__ void __launch_bounds__(BWD90_THREADS, 1)
BWD90_ENTRY(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
            const u16* __restrict__ d_o, const float* __restrict__ lse, const float* __restrict__ delta,
            u16* __restrict__ dk, u16* __restrict__ dv, float* __restrict__ dq_accum, u32* __restrict__ dq_turns,
            const u32* __restrict__ t_rank, const u32* __restrict__ indptr, const u32* __restrict__ indices,
            int tokens, int heads, float scale, float scale_log2, const __grid_constant__ TmaDesc stream_a_map,
            const __grid_constant__ TmaDesc stream_b_map)
#elif PASS == 1
extern "C" __global__ void __launch_bounds__(BWD90_THREADS, 1)
sparse_attention_bwd_dkdv_sm90(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                               const u16* __restrict__ d_o, const float* __restrict__ lse,
                               const float* __restrict__ delta, u16* __restrict__ dk, u16* __restrict__ dv,
                               const u32* __restrict__ indptr, const u32* __restrict__ indices, int tokens,
                               int heads, float scale, float scale_log2,
                               const __grid_constant__ TmaDesc stream_a_map,
                               const __grid_constant__ TmaDesc stream_b_map)
#else
extern "C" __global__ void __launch_bounds__(BWD90_THREADS, 1)
sparse_attention_bwd_dq_sm90(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                             const u16* __restrict__ d_o, const float* __restrict__ lse,
                             const float* __restrict__ delta, u16* __restrict__ dq, const u32* __restrict__ indptr,
                             const u32* __restrict__ indices, int tokens, int heads, float scale, float scale_log2,
                             const __grid_constant__ TmaDesc stream_a_map, const __grid_constant__ TmaDesc stream_b_map)
#endif
{
    constexpr int D = HEAD_DIM;
    constexpr bool BF16 = ELEM_BF16 != 0;
    constexpr float LOG2E = 1.4426950408889634074f;
    extern __shared__ __align__(1024) u8 smem[];
    u8* const s_res_a = smem + Bwd90Smem::RES_A;
    u8* const s_res_b = smem + Bwd90Smem::RES_B;
    u8* const s_stage_a = smem + Bwd90Smem::STAGE_A;
    u8* const s_stage_b = smem + Bwd90Smem::STAGE_B;
    u64* const full = reinterpret_cast<u64*>(smem + Bwd90Smem::FULL);
    u64* const empty = reinterpret_cast<u64*>(smem + Bwd90Smem::EMPTY);
#if BWD90_DQ_WRITER
    u64* const dq_full = reinterpret_cast<u64*>(smem + Bwd90Smem::DQ_FULL);
    u64* const dq_empty = reinterpret_cast<u64*>(smem + Bwd90Smem::DQ_EMPTY);
    constexpr int DQ_SPLIT = HEAD_DIM / 64;  // dQ column jobs per query tile (see the math warpgroups)
#endif

    const int row_block = blockIdx.x;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int r0 = row_block * BWD90_ROWS;  // first resident row (token)
    const i64 tok_stride = (i64)heads * D;
    const i64 base = ((i64)b * tokens * heads + h) * D;  // token 0 of batch b, head h
    const float* const lse_row = lse + ((i64)b * heads + h) * tokens;
    const float* const delta_row = delta + ((i64)b * heads + h) * tokens;
    const Bwd90Walk walk(indptr, indices, row_block, tokens);
    const int ntiles = walk.ntiles;
#if PASS == 1
    const u16* const res_a_src = k;
    const u16* const res_b_src = v;
#else
    const u16* const res_a_src = q;
    const u16* const res_b_src = d_o;
#endif

    const int tid = threadIdx.x;
    const int wg = tid / 128;
    const int t128 = tid % 128;

    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(&full[s], BWD90_FULL_ARRIVALS);
            mbar_init(&empty[s], BWD90_EMPTY_ARRIVALS);
        }
#if BWD90_DQ_WRITER
        for (int w = 0; w < 2; ++w) {
            mbar_init(&dq_full[w], 128);
            mbar_init(&dq_empty[w], 1);
        }
#endif
        mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) {
        // ---- producer ----
        setmaxnreg_dec<BWD90_PRODUCER_REGS>();
#if BWD90_DQ_WRITER
        if (t128 >= BWD90_LOADERS) {
            // ---- dQ writer of math warpgroup mw (warps 2, 3; lane 0 alone) ----
            const int mw = (t128 - BWD90_LOADERS) / 32;
            if (t128 % 32 != 0) return;
            const int qtiles = (tokens + BWD90_TILE - 1) / BWD90_TILE;
            const int job_col = DQ_SPLIT == 2 ? mw : 0;
            const u32 src = smem_u32(smem + Bwd90Smem::DQ + mw * Bwd90Smem::DQ_BUF);
            int j = 0;  // this writer's jobs so far
            for (int t = 0; t < ntiles; ++t) {
                if (DQ_SPLIT == 1 && (t & 1) != mw) continue;
                const i64 job = (((i64)b * heads + h) * qtiles + walk.row0(t) / BWD90_TILE) * DQ_SPLIT + job_col;
#if BWD90_DQ_DETERMINISTIC
                // The turn first (while the math warpgroup computes the job), then the job.
                u32* const turn = dq_turns + job;
                const u32 rank = t_rank[walk.first + t / 2];
                while (ld_relaxed_gpu(turn) != rank) {
                }
                (void)ld_acquire_gpu(turn);
                asm volatile("fence.proxy.async.global;" ::: "memory");
#endif
                mbar_wait(&dq_full[mw], j & 1);
                asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(
                                 dq_accum + job * (64 * 64)),
                             "r"(src), "n"(Bwd90Smem::DQ_BUF)
                             : "memory");
                tma_store_commit();
#if BWD90_DQ_DETERMINISTIC
                tma_store_wait<0>();  // source read, and the adds complete and visible to this thread
                asm volatile("fence.proxy.async.global;" ::: "memory");
                red_release_gpu_add(turn, 1);
#else
                tma_store_wait_read<0>();  // the source is read: the buffer is free
#endif
                mbar_arrive(&dq_empty[mw]);
                ++j;
            }
            tma_store_wait<0>();
            return;
        }
#endif
#if PASS == 2
        if (t128 != 0) return;  // PASS 2 streams only the TMA tiles
#endif
        if (t128 == 0) {
            tma_prefetch_desc(&stream_a_map);
            tma_prefetch_desc(&stream_b_map);
        }
        for (int t = 0; t < ntiles; ++t) {
            const int s = t % STAGES;
            mbar_wait(&empty[s], ((t / STAGES) & 1) ^ 1);
            const int row0 = walk.row0(t);
            if (t128 == 0) {
                mbar_arrive_expect_tx(&full[s], 2 * Bwd90Smem::TILE);
#pragma unroll
                for (int cb = 0; cb < BWD90_CB; ++cb) {
                    tma_load_3d(s_stage_a + s * Bwd90Smem::TILE + cb * Bwd90Smem::TILE_BLOCK, &stream_a_map, &full[s],
                                h * D + cb * 64, row0, b);
                    tma_load_3d(s_stage_b + s * Bwd90Smem::TILE + cb * Bwd90Smem::TILE_BLOCK, &stream_b_map, &full[s],
                                h * D + cb * 64, row0, b);
                }
            }
#if PASS == 1
#if BWD90_DQ_WRITER  // 64 loaders: each copies one lse and one delta
            {
                const int i = t128;
                const bool ok = row0 + i < tokens;
                cp_async_4(reinterpret_cast<float*>(smem + Bwd90Smem::LSE) + s * BWD90_TILE + i,
                           lse_row + (ok ? row0 + i : 0), ok);
                cp_async_4(reinterpret_cast<float*>(smem + Bwd90Smem::DELTA) + s * BWD90_TILE + i,
                           delta_row + (ok ? row0 + i : 0), ok);
            }
#else
            {
                const int i = t128 % BWD90_TILE;
                const bool ok = row0 + i < tokens;
                const float* src = (t128 < BWD90_TILE ? lse_row : delta_row) + (ok ? row0 + i : 0);
                float* dst = reinterpret_cast<float*>(smem + (t128 < BWD90_TILE ? Bwd90Smem::LSE : Bwd90Smem::DELTA)) +
                             s * BWD90_TILE + i;
                cp_async_4(dst, src, ok);
            }
#endif
            cp_async_mbar_arrive(&full[s]);
#endif
        }
        asm volatile("cp.async.wait_all;" ::: "memory");  // no copy outlives its thread
        return;
    }

    // ---- math warpgroups ----
    setmaxnreg_inc<BWD90_MATH_REGS>();
    const int mw = wg - 1;
    const int warp = t128 / 32, lane = t128 % 32;
    const int g = lane / 4, tq = lane % 4;

    bwd90_load_resident(s_res_a, res_a_src + base, r0, tokens, tok_stride, mw, t128);
    bwd90_load_resident(s_res_b, res_b_src + base, r0, tokens, tok_stride, mw, t128);
    fence_proxy_async_smem();
    named_barrier_sync(1 + mw, 128);

    const u64 a_desc = wgmma_desc(s_res_a + 64 * mw * 128, 16, 1024, WGMMA_SWIZZLE_128B);
    const u64 b_desc = wgmma_desc(s_res_b + 64 * mw * 128, 16, 1024, WGMMA_SWIZZLE_128B);
    auto stage_desc = [&](u8* region, int t) {  // K-major operand of S / dP
        return wgmma_desc(region + (t % STAGES) * Bwd90Smem::TILE, 16, 1024, WGMMA_SWIZZLE_128B);
    };
    auto stage_desc_mn = [&](u8* region, int t) {  // MN-major operand of the register-A wgmma
        return wgmma_desc(region + (t % STAGES) * Bwd90Smem::TILE, Bwd90Smem::TILE_BLOCK, 1024, WGMMA_SWIZZLE_128B);
    };

    float sacc[BWD90_TILE / 2];   // S (S^T in PASS 1), then P in f32
    float dpacc[BWD90_TILE / 2];  // dP (dP^T), then dS
    u32 ds_frag[4][4];            // dS (dS^T) of the previous tile: the A operand of dQ += dS K (dK += dS^T Q)

    // S and dP of tile t (waits for the tile to land), issued and committed as two groups.
    // Every wgmma group is issued and waited for within one loop iteration, with the same
    // groups pending at every wait on every path: ptxas serializes all wgmma of the kernel
    // (warning C7515) when a group issued in one iteration is waited for in the next.
    auto issue_s_dp = [&](int t) {
        mbar_wait(&full[t % STAGES], (t / STAGES) & 1);
        fence_proxy_async_smem();
        wgmma_fence();
        bwd90_rows_dot_rows(sacc, a_desc, stage_desc(s_stage_a, t));
        wgmma_commit();
        bwd90_rows_dot_rows(dpacc, b_desc, stage_desc(s_stage_b, t));
        wgmma_commit();
    };
    auto release = [&](int t) { mbar_arrive(&empty[t % STAGES]); };  // this thread is done with tile t's stage

#if PASS == 1
    u32 p_frag[4][4];  // P^T of the previous tile: the A operand of dV += P^T dO
    float acc_dv[D / 2], acc_dk[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) acc_dv[i] = acc_dk[i] = 0.0f;
    reg_fence_all(acc_dv);  // initialized before the first wgmma, not sunk below it
    reg_fence_all(acc_dk);

    // P^T = exp2(S^T scale log2 e - lse log2 e) into sacc, by the query (column) of each element.
    auto probabilities = [&](int t) {
        const float* const sl = reinterpret_cast<const float*>(smem + Bwd90Smem::LSE) + (t % STAGES) * BWD90_TILE;
#pragma unroll
        for (int n8 = 0; n8 < BWD90_TILE / 8; ++n8) {
            const float2 l = *reinterpret_cast<const float2*>(sl + n8 * 8 + 2 * tq);
            const float l0 = l.x * LOG2E, l1 = l.y * LOG2E;
#pragma unroll
            for (int e = 0; e < 4; ++e)
                sacc[n8 * 4 + e] = bwd90_exp2(fmaf(sacc[n8 * 4 + e], scale_log2, -((e & 1) ? l1 : l0)));
        }
    };
    // dS^T = P^T (dP^T - delta) into dpacc.
    auto score_grads = [&](int t) {
        const float* const sd = reinterpret_cast<const float*>(smem + Bwd90Smem::DELTA) + (t % STAGES) * BWD90_TILE;
#pragma unroll
        for (int n8 = 0; n8 < BWD90_TILE / 8; ++n8) {
            const float2 dl = *reinterpret_cast<const float2*>(sd + n8 * 8 + 2 * tq);
#pragma unroll
            for (int e = 0; e < 4; ++e)
                dpacc[n8 * 4 + e] = sacc[n8 * 4 + e] * (dpacc[n8 * 4 + e] - ((e & 1) ? dl.y : dl.x));
        }
    };
#if BWD90_OVERLAP  // (the loop without overlap packs and issues each product on its own)
    auto pack = [&]() {
        bwd90_pack<BF16>(p_frag, sacc);
        bwd90_pack<BF16>(ds_frag, dpacc);
        bwd90_fence_frags(p_frag);  // computed before the wgmma that reads them, not sunk into it
        bwd90_fence_frags(ds_frag);
    };
    // The register-A products of tile t: dV += P^T dO and dK += dS^T Q, issued and committed as
    // one group.
    auto issue_products = [&](int t) {
        wgmma_fence();
        bwd90_weights_times_tile(acc_dv, p_frag, stage_desc_mn(s_stage_b, t));
        bwd90_weights_times_tile(acc_dk, ds_frag, stage_desc_mn(s_stage_a, t));
        wgmma_commit();
    };
#endif
    auto fence_products = [&]() {  // their A fragments stay live until the products complete
        bwd90_fence_frags(p_frag);
        bwd90_fence_frags(ds_frag);
    };

#if BWD90_FUSED_DQ
    // dQ jobs: at HEAD_DIM 128 warpgroup mw computes columns 64 mw.. of every query tile; at 64,
    // warpgroup (t & 1) computes all 64 columns of tile t.
#if !BWD90_DQ_WRITER
    constexpr int DQ_SPLIT = D / 64;
#endif
    auto dq_mine = [&](int t) { return DQ_SPLIT == 2 || (t & 1) == mw; };
    const int dq_col0 = DQ_SPLIT == 2 ? 64 * mw : 0;
    float acc_dq[32];  // 64 queries x 64 columns of dQ (f32, wgmma layout), without `scale`
#pragma unroll
    for (int i = 0; i < 32; ++i) acc_dq[i] = 0.0f;
    reg_fence_all(acc_dq);
    u8* const s_ds = smem + Bwd90Smem::DS;
    // B of dQ = dS K: the resident K rows (all 128: both warpgroups' keys), MN-major, column
    // block dq_col0 / 64.
    const u64 dq_b_desc = wgmma_desc(s_res_a + (dq_col0 / 64) * Bwd90Smem::RES_BLOCK, Bwd90Smem::RES_BLOCK, 1024,
                                     WGMMA_SWIZZLE_128B);
    // dS^T of tile t (ds_frag: this warpgroup's 64 keys x 64 queries) into DS (t % 2) as dS,
    // K-major: stmatrix .trans stores each 8 x 8 fragment matrix (keys 16 warp + 8 (j % 2).., queries
    // 8 (2 kk + j / 2)..) as 8 query rows of 8 keys (one 16-byte chunk); then both warpgroups meet.
    // A buffer is rewritten two tiles later, after the barrier of the tile in between, which
    // both warpgroups reach only after waiting for their dQ product that read it.
    auto store_ds = [&](int t) {
        u8* const buf = s_ds + (t & 1) * Bwd90Smem::DS_BUF + mw * Bwd90Smem::TILE_BLOCK;
        const int j = lane / 8, i = lane % 8;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
            stmatrix_x4_trans(buf + swizzle128(8 * (2 * kk + j / 2) + i, 2 * warp + (j & 1)), ds_frag[kk][0],
                              ds_frag[kk][1], ds_frag[kk][2], ds_frag[kk][3]);
        fence_proxy_async_smem();
        named_barrier_sync(3, 256);
    };
    // dQ_tile = dS K over the CTA's 128 keys (k-step kk: keys 16 kk.., DS column block kk / 4),
    // issued and committed.
    auto issue_dq = [&](int t) {
        const u64 a = wgmma_desc(s_ds + (t & 1) * Bwd90Smem::DS_BUF, 16, 1024, WGMMA_SWIZZLE_128B);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BWD90_ROWS / 16; ++kk) {
            const u64 aoff = (u64)(((kk / 4) * Bwd90Smem::TILE_BLOCK + (kk % 4) * 32) >> 4);
            BWD90_MMA_DQ::mma(acc_dq, a + aoff, dq_b_desc + (u64)((kk * 16 * 128) >> 4), kk != 0);
        }
        wgmma_commit();
    };
#if BWD90_DQ_WRITER
    // Hands acc_dq (the dQ job of tile t, completed) to this warpgroup's writer: waits until the
    // writer has read the previous job out of DQ[mw], stores this one (row r = 16 warp + g + 8 ri,
    // 8-column group n8 at (n8 ^ (r % 8)) * 8: a half-warp's 16 8-byte stores cover 32 banks),
    // makes the stores visible to the async proxy and arrives.
    float* const s_dq = reinterpret_cast<float*>(smem + Bwd90Smem::DQ + mw * Bwd90Smem::DQ_BUF);
    auto stash_dq = [&](int t) {
        const int j = DQ_SPLIT == 2 ? t : t >> 1;  // this warpgroup's jobs before tile t
        mbar_wait(&dq_empty[mw], (j & 1) ^ 1);
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
            const int row = warp * 16 + g + 8 * ri;
#pragma unroll
            for (int n8 = 0; n8 < 8; ++n8)
                *reinterpret_cast<float2*>(s_dq + row * 64 + ((n8 ^ g) * 8) + 2 * tq) =
                    make_float2(acc_dq[n8 * 4 + 2 * ri], acc_dq[n8 * 4 + 2 * ri + 1]);
        }
        fence_proxy_async_smem();
        mbar_arrive(&dq_full[mw]);
    };
#else
    // Adds acc_dq (the dQ job of tile t, completed) into dq_accum rows < tokens. Deterministic:
    // first waits until the key blocks before this one in mask row (tile's block) have added.
    float* const dq_acc_head = dq_accum + ((i64)b * heads + h) * tokens * D + dq_col0;
    auto flush_dq = [&](int t) {
        const int q0 = walk.row0(t);
#if BWD90_DQ_DETERMINISTIC
        const int qtiles = (tokens + BWD90_TILE - 1) / BWD90_TILE;
        u32* const turn = dq_turns + (((i64)b * heads + h) * qtiles + q0 / BWD90_TILE) * DQ_SPLIT + dq_col0 / 64;
        if (t128 == 0) {
            // Polls from L2 without invalidating L1 each time (what ld.acquire does), then one
            // acquire load: it reads the same count (only this CTA increments it next), written
            // by the previous key block's release, and synchronizes with it.
            const u32 rank = t_rank[walk.first + t / 2];
            while (ld_relaxed_gpu(turn) != rank) {
            }
            (void)ld_acquire_gpu(turn);
        }
        named_barrier_sync(4 + mw, 128);
#endif
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
            const int row = q0 + warp * 16 + g + 8 * ri;
            if (row >= tokens) continue;
            float* const dst = dq_acc_head + (i64)row * D + 2 * tq;
#pragma unroll
            for (int n8 = 0; n8 < 8; ++n8) red_add_f32x2(dst + n8 * 8, acc_dq[n8 * 4 + 2 * ri], acc_dq[n8 * 4 + 2 * ri + 1]);
        }
#if BWD90_DQ_DETERMINISTIC
        named_barrier_sync(4 + mw, 128);
        if (t128 == 0) red_release_gpu_add(turn, 1);
#endif
    };
#endif  // BWD90_DQ_WRITER
#endif

#if !BWD90_OVERLAP
    // Within a warpgroup: the exp of P^T under dP^T, dS^T under dV; the other warpgroup fills
    // the rest (the registers of an overlap across tiles exceed the budget at HEAD_DIM 128).
    for (int t = 0; t < ntiles; ++t) {
#if BWD90_FUSED_DQ
        bwd90_undefine(sacc);  // overwritten by S and dP: not live across iterations
        bwd90_undefine(dpacc);
#endif
        issue_s_dp(t);
        wgmma_wait<1>();  // S of tile t
        reg_fence_all(sacc);
        probabilities(t);
        bwd90_pack<BF16>(p_frag, sacc);
        bwd90_fence_frags(p_frag);
        wgmma_fence();
        bwd90_weights_times_tile(acc_dv, p_frag, stage_desc_mn(s_stage_b, t));
        wgmma_commit();
        wgmma_wait<1>();  // dP of tile t
        reg_fence_all(dpacc);
        score_grads(t);
        bwd90_pack<BF16>(ds_frag, dpacc);
        bwd90_fence_frags(ds_frag);
        wgmma_fence();
        bwd90_weights_times_tile(acc_dk, ds_frag, stage_desc_mn(s_stage_a, t));
        wgmma_commit();
#if BWD90_FUSED_DQ
        // Under dV and dK: this tile's dS to shared memory and its dQ product.
        store_ds(t);
        if (dq_mine(t)) {
            bwd90_undefine(acc_dq);  // not live from the previous tile's adds to this product
            issue_dq(t);
        }
        wgmma_wait<0>();  // dV, dK (and dQ) of tile t
        reg_fence_all(acc_dq);
        fence_products();
        release(t);
        // The adds, once the products are done: S, dP and P of the next tile leave no
        // registers for acc_dq (dV + dK + S + dP = 192 of the 240).
#if BWD90_DQ_WRITER
        if (dq_mine(t)) stash_dq(t);
#else
        if (dq_mine(t)) flush_dq(t);
#endif
#else
        wgmma_wait<0>();  // dV, dK of tile t
        fence_products();
        release(t);
#endif
    }
#endif
#else
    float acc_dq[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; ++i) acc_dq[i] = 0.0f;
    reg_fence_all(acc_dq);  // initialized before the first wgmma, not sunk below it
    // This thread's query rows g and g + 8 of its warp: lse in the log2 domain (+inf past
    // `tokens`, so that P = 0) and delta.
    float lse2[2], dl[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const int t = r0 + 64 * mw + warp * 16 + g + 8 * ri;
        lse2[ri] = t < tokens ? lse_row[t] * LOG2E : TESSERA_INF;
        dl[ri] = t < tokens ? delta_row[t] : 0.0f;
    }
    // Only the last key block can be partial, and only as the row's last tile.
    const int last_key0 = ntiles > 0 ? walk.row0(ntiles - 1) : 0;
    const bool last_partial = ntiles > 0 && last_key0 + BWD90_TILE > tokens;

    // P = exp2(S scale log2 e - lse log2 e) into sacc, 0 for keys past `tokens`.
    auto probabilities = [&](int t) {
#pragma unroll
        for (int i = 0; i < BWD90_TILE / 2; ++i) sacc[i] = bwd90_exp2(fmaf(sacc[i], scale_log2, -lse2[(i / 2) & 1]));
        if (last_partial && t == ntiles - 1) {
#pragma unroll
            for (int n8 = 0; n8 < BWD90_TILE / 8; ++n8)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (last_key0 + n8 * 8 + 2 * tq + (e & 1) >= tokens) sacc[n8 * 4 + e] = 0.0f;
        }
    };
    // dS = P (dP - delta) into dpacc (delta is per query row: the same for every tile).
    auto score_grads = [&](int) {
#pragma unroll
        for (int i = 0; i < BWD90_TILE / 2; ++i) dpacc[i] = sacc[i] * (dpacc[i] - dl[(i / 2) & 1]);
    };
    auto pack = [&]() {
        bwd90_pack<BF16>(ds_frag, dpacc);
        bwd90_fence_frags(ds_frag);  // computed before the wgmma that reads them, not sunk into it
    };
    // The register-A product of tile t: dQ += dS K, issued and committed.
    auto issue_products = [&](int t) {
        wgmma_fence();
        bwd90_weights_times_tile(acc_dq, ds_frag, stage_desc_mn(s_stage_a, t));
        wgmma_commit();
    };
    auto fence_products = [&]() { bwd90_fence_frags(ds_frag); };  // live until dQ completes
#endif

#if PASS == 2 || BWD90_OVERLAP
    // The elementwise work of tile t runs while the tensor cores do the products of tile t - 1
    // (dV and dK in PASS 1, dQ in PASS 2).
    if (ntiles > 0) {
        issue_s_dp(0);
        wgmma_wait<0>();
        reg_fence_all(sacc);
        reg_fence_all(dpacc);
        probabilities(0);
        score_grads(0);
        pack();
        for (int t = 1; t < ntiles; ++t) {
            issue_s_dp(t);
            issue_products(t - 1);
            wgmma_wait<2>();  // S of tile t
            reg_fence_all(sacc);
            probabilities(t);
            wgmma_wait<1>();  // dP of tile t
            reg_fence_all(dpacc);
            score_grads(t);
            wgmma_wait<0>();  // the products of tile t - 1
            fence_products();
            release(t - 1);
            pack();
        }
        issue_products(ntiles - 1);
        wgmma_wait<0>();
        fence_products();
    }
#endif
#if PASS == 1
    reg_fence_all(acc_dv);
    reg_fence_all(acc_dk);
    bwd90_store<BF16>(dk + base, acc_dk, scale, r0 + 64 * mw, tokens, tok_stride, warp, g, tq);
    bwd90_store<BF16>(dv + base, acc_dv, 1.0f, r0 + 64 * mw, tokens, tok_stride, warp, g, tq);
#else
    reg_fence_all(acc_dq);
    bwd90_store<BF16>(dq + base, acc_dq, scale, r0 + 64 * mw, tokens, tok_stride, warp, g, tq);
#endif
}
#endif  // PASS 1 or 2

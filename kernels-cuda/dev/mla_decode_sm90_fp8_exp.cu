// EXPERIMENTS on the Hopper FP8 MLA decode (harness only: dev/mla_decode_sm90.sh builds it with
// HK=3; the library's kernel is kernels/sm90/mla_decode_fp8.cu, which this file reproduces with
// every switch below at 0, same SASS). Measured on the H200 in dev/NOTES-mla-decode-sm90.md
// ("The f16 route"); none of them was faster than the library kernel at every shape.
//   M8_F16        MMAs on the unscaled e4m3 codes as f16: the dequantizers only convert
//                 (cvt.rn.f16x2.e4m3x2) and store; S^T per 128-dim scale group, combined with the
//                 keys' scales in f32; P^T in 4 f16 copies scaled by scale_g(key) x 2^15 / m_g
//                 (m_g a running power of two >= the group's scales, carried in O^T's rows).
//   M8_STAGED     (with M8_F16) S^T group by group through two accumulators (needed at 32 rows).
//   M8_COALESCED  whole-record loads (lane L: latent chunk L of one key).
//   M8_WAIT_HINT  mbarrier waits with a suspend-time hint.
//   M8_DIAG       1 = no math (tiles taken and returned), 2 = no loads (zero records): timing only.
//
// MLA absorbed decode over the paged FP8 latent cache for sm_90a, for few query rows per request
// (h_q * s_q <= 32 per CTA: the memory-bound decode of tensor-parallel shards). Prepended:
// common.cuh, mla_work.cuh (the CTA's queries and keys), sm90/hopper.cuh, sm90/wgmma.cuh.
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/mla.rs):
//   FMT         1 = FP8 records [latent e4m3 | latent/128 f32 scales | rope bf16] (656 bytes)
//   LATENT      512 and ROPE 64 (DeepSeek-V3's dims)
//   ROWS        16 or 32: query rows per CTA (heads x s_q folded, as every MLA decode kernel)
//   VARLEN      0 = s_q queries per request, 1 = cu_seqlens_q offsets (as kernels/mla_decode.cu)
//   TESSERA_SMEM_BYTES  MlaSm90Fp8Smem::END below
//   TESSERA_THREADS     384 (a math warpgroup and two dequantizing warpgroups)
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
// Shared memory (1024-byte aligned, 128-byte swizzle: 16-byte chunk c of row r of a 128-byte-wide
// block at r * 128 + ((c ^ (r % 8)) * 16)):
//   Q   9 column blocks of [ROWS rows][64 dims]
//   K   2 tiles x 9 column blocks of [64 keys][64 dims] bf16; V = the first 8 blocks
//   P   [ROWS rows][64 keys] bf16
//   column maxima and sums [4 warps][ROWS] f32 each, the barriers, the bad-page flag.
// After the last tile the first K tile is the output's staging buffer ([ROWS][516] f32).

#ifndef FMT
#error "FMT is required (1 = FP8 records)"
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
#if FMT != 1 || LATENT != 512 || ROPE != 64
#error "the sm90 FP8 MLA decode kernel is built for FP8 records of latent 512 + rope 64"
#endif
#if ROWS != 16 && ROWS != 32
#error "ROWS must be 16 or 32"
#endif
#if VARLEN != 0 && VARLEN != 1
#error "VARLEN must be 0 or 1"
#endif

// M8_F16 (harness variants fp8f16*-rR): 1 = the MMAs run on the unscaled e4m3
// codes as f16 (the header above), 0 = the dequantizers write scaled bf16 tiles.
#ifndef M8_F16
#define M8_F16 0
#endif
// M8_DIAG (harness diagnostics only, wrong results): 1 = the math warpgroup only takes and
// returns the tiles (no MMA, no softmax), 2 = the dequantizers load nothing (zero records).
#ifndef M8_DIAG
#define M8_DIAG 0
#endif
// M8_COALESCED: a dequantizing warp loads whole records (lane L: latent chunk L of
// one key per load) instead of a quarter of 8 records per load.
#ifndef M8_COALESCED
#define M8_COALESCED 0
#endif
// M8_WAIT_HINT: the mbarrier waits pass a suspend-time hint (the thread sleeps in try_wait
// instead of polling shared memory).
#ifndef M8_WAIT_HINT
#define M8_WAIT_HINT 0
#endif
// M8_STAGED (with M8_F16): S^T one latent group at a time through two accumulators.
#ifndef M8_STAGED
#define M8_STAGED 0
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
// Registers per thread of the two dequantizing warpgroups and of the math warpgroup:
// 2 x DEQUANT + MATH = 3 x 168, the launch allocation (else setmaxnreg.inc waits forever). The
// math warpgroup needs 232 at 32 rows (O^T alone is 128).
#if ROWS == 16 && M8_COALESCED
#define M8_DEQUANT_REGS 152
#else
#define M8_DEQUANT_REGS 136
#endif
#define M8_MATH_REGS (3 * 168 - 2 * M8_DEQUANT_REGS)

// Byte offsets of the shared-memory regions; the host's size (kernels-cuda/src/plan/mla.rs) is
// checked against END at compile time.
struct MlaSm90Fp8Smem {
    static constexpr int KEY_BLOCK = M8_KEYS * 128;  // one [64 keys][64 dims] bf16 block
    static constexpr int Q_BLOCK = ROWS * 128;       // one [ROWS][64 dims] bf16 block
    static constexpr int Q = 0;
    static constexpr int K = Q + M8_BLOCKS * Q_BLOCK;
    static constexpr int TILE = M8_BLOCKS * KEY_BLOCK;
    static constexpr int P = K + 2 * TILE;
#if M8_F16
    static constexpr int P_COPY = ROWS * 128;                 // one [ROWS][64 keys] f16 copy of P^T
    static constexpr int SCALES = P + 4 * P_COPY;             // [2 tiles][64 keys][4] f32
    static constexpr int GROUP_MAX = SCALES + 2 * M8_KEYS * 16;  // [2 tiles][4 groups] u32
    static constexpr int Q_FACTOR = GROUP_MAX + 2 * 4 * 4;       // [ROWS] f32
    static constexpr int LIMITS = Q_FACTOR + ROWS * 4;           // [ROWS] i32
    static constexpr int COL_MAX = LIMITS + ROWS * 4;
#else
    static constexpr int COL_MAX = P + ROWS * 128;
#endif
    static constexpr int COL_SUM = COL_MAX + 4 * ROWS * 4;
    static constexpr int FULL = COL_SUM + 4 * ROWS * 4;
    static constexpr int EMPTY = FULL + 2 * 8;
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

// 16 bytes from global memory through the non-coherent path (the cache is read-only here).
__device__ __forceinline__ uint4 m8_ldg16(const u8* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Waits (acquire) until the phase of parity `parity` of `bar` has completed.
__device__ __forceinline__ void m8_wait(u64* bar, u32 parity) {
#if M8_WAIT_HINT
    u32 done;
    do {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2, %3;\n selp.u32 %0, 1, 0, p;\n}"
            : "=r"(done)
            : "r"(smem_u32(bar)), "r"(parity), "r"(0x989680u)
            : "memory");
    } while (!done);
#else
    mbar_wait(bar, parity);
#endif
}

// The bits of the smallest power of two >= |x| (2^-126 for 0 and subnormals).
__device__ __forceinline__ u32 m8_pow2_ceil_bits(float x) {
    const u32 b = __float_as_uint(x) & 0x7fffffffu;
    return (b & 0x7fffffu) != 0 || b < 0x800000u ? (b & 0x7f800000u) + 0x800000u : b;
}

// The largest of v over the warp (all 32 lanes take part).
__device__ __forceinline__ u32 m8_warp_max_u32(u32 v) {
    u32 r;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
    return r;
}

// Four e4m3 codes (the low byte first) times the scale s, as two packed bf16 pairs (exact for a
// power-of-two scale: e4m3 has 3 mantissa bits).
__device__ __forceinline__ uint2 m8_e4m3x4_scaled(u32 w, float s) {
    u32 h0, h1;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h0) : "h"((u16)(w & 0xffffu)));
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h1) : "h"((u16)(w >> 16)));
    uint2 r;
    r.x = pack2<true>(f16_to_f32((u16)(h0 & 0xffffu)) * s, f16_to_f32((u16)(h0 >> 16)) * s);
    r.y = pack2<true>(f16_to_f32((u16)(h1 & 0xffffu)) * s, f16_to_f32((u16)(h1 >> 16)) * s);
    return r;
}

// Four e4m3 codes (the low byte first) as two packed f16 pairs (exact).
__device__ __forceinline__ uint2 m8_e4m3x4_f16(u32 w) {
    uint2 h;
    asm("{\n.reg .b16 lo, hi;\nmov.b32 {lo, hi}, %2;\ncvt.rn.f16x2.e4m3x2 %0, lo;\ncvt.rn.f16x2.e4m3x2 %1, hi;\n}"
        : "=r"(h.x), "=r"(h.y)
        : "r"(w));
    return h;
}

// The larger magnitude of a packed bf16 pair, as bf16 bits (sign cleared; NaN above inf above
// every finite value, as unsigned integers).
__device__ __forceinline__ u32 m8_bf16x2_abs_max(u32 w) { return max(w & 0x7fffu, (w >> 16) & 0x7fffu); }

// 2^e as f32, e in -126..127.
__device__ __forceinline__ float m8_exp2i(int e) { return __int_as_float((e + 127) << 23); }

// A packed bf16 pair times `up` (a power of two), as a packed f16 pair.
__device__ __forceinline__ u32 m8_bf16x2_to_f16x2(u32 w, float up) {
    return pack2<false>(__uint_as_float(w << 16) * up, __uint_as_float(w & 0xffff0000u) * up);
}

// D(64 x ROWS, f32) (+)= A(64 x 16) * B(ROWS x 16)^T on f16 operands in shared memory; A K-major
// (TRANS_A 0) or MN-major (TRANS_A 1), B K-major.
template <int TRANS_A>
__device__ __forceinline__ void m8_wgmma_f16(float* d, u64 a, u64 b, u32 accumulate) {
#if ROWS == 16
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, %11, "
        "0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "l"(a), "l"(b), "r"(accumulate), "n"(TRANS_A));
#else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, "
        "%13, %14, %15}, %16, %17, p, 1, 1, %19, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
          "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(a), "l"(b), "r"(accumulate), "n"(TRANS_A));
#endif
}

// Stores four 8x8 b16 matrices transposed: lane i gives the address of row i % 8 of stored matrix
// i / 8, which is column i % 8 of the fragment (row lane / 4, columns 2 (lane % 4) + {0, 1}).
__device__ __forceinline__ void m8_stmatrix_x4_trans(u32 addr, u32 r0, u32 r1, u32 r2, u32 r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

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

// The raw bytes of one key of a tile that one dequantizing thread converts.
struct M8Raw {
    uint4 codes[8];  // latent chunks q + 4m (m = 0..7) of 16 codes
    uint4 rope[2];   // rope chunks q and q + 4 (8 bf16 each)
    uint4 scales;    // the 4 f32 scales
};

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
#if M8_F16
    float4* sScale = reinterpret_cast<float4*>(smem + MlaSm90Fp8Smem::SCALES);      // [2][64 keys]
    // [2 tiles][4 groups]: the bits of the smallest power of two >= every |scale| of the group in
    // the tile (shared atomicMax by the dequantizers; reset by the math warpgroup once read).
    u32* sGroupMax = reinterpret_cast<u32*>(smem + MlaSm90Fp8Smem::GROUP_MAX);
    float* sQf = reinterpret_cast<float*>(smem + MlaSm90Fp8Smem::Q_FACTOR);         // [ROWS]
    int* sLim = reinterpret_cast<int*>(smem + MlaSm90Fp8Smem::LIMITS);              // [ROWS]
#endif

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
    const int q_begin = work.q_begin, n_q = work.n_q, rows_total = work.rows_total, rows_pad = work.rows_pad;
    const int len = work.len, k_begin = work.k_begin, k_end = work.k_end, ntiles = work.ntiles;

    if (tid == 0) {
        for (int s = 0; s < 2; ++s) {
            mbar_init(&full[s], 256);
#if M8_F16
            mbar_init(&empty[s], 128);  // every math thread (they read the tile's scales with plain loads)
#else
            mbar_init(&empty[s], 4);  // lane 0 of each math warp, after its wgmmas of the tile
#endif
        }
        *bad_page_flag = 0;
#if M8_F16
        for (int i = 0; i < 8; ++i) sGroupMax[i] = 0;
#endif
        mbar_fence_init();
    }
    __syncthreads();

    if (wg != 0) {
        // ---- dequantizers: FP8 records -> the bf16 key tiles ----
        setmaxnreg_dec<M8_DEQUANT_REGS>();
        const int dtid = tid - 128;           // 0..255
        const i64 bt_row = (i64)b * max_pages;
        int bad_page = 0;
#if M8_COALESCED
        // Warp dw takes keys 8 dw .. 8 dw + 7 of each tile. Lane L loads latent chunk L (16 codes)
        // of each of them (codes[kk] for key 8 dw + kk: one load is 512 contiguous bytes), and the
        // extra chunks x = L + 32 i (i = 0..2, x < 72) of the 9 x 8 after the latent: key x / 9,
        // record chunk 32 + x % 9 (the 4 scales, then rope chunk x % 9 - 1), in rope[0], rope[1],
        // scales (M8Raw's fields, by position).
        const int dw = dtid / 32, lane_d = dtid % 32;
        // Extra chunk i of this lane: its key (of the warp's 8) and record chunk - 32 (-1: none).
        auto x_key = [&](int i) { return lane_d + 32 * i < 72 ? (lane_d + 32 * i) / 9 : 7; };
        auto x_chunk = [&](int i) { return lane_d + 32 * i < 72 ? (lane_d + 32 * i) % 9 : -1; };
        // The record index of key 8 dw + lane % 8 of tile t, or -1 (past the split's keys, or a
        // bad page).
        auto record_index = [&](int t) -> int {
            const int j = k_begin + t * M8_KEYS + 8 * dw + lane_d % 8;
            if (t >= ntiles || j >= k_end || M8_DIAG == 2) return -1;
            const int p = j / page_size;
            const int page = __ldg(block_table + bt_row + p);
            if (page < 0 || page >= num_pages) {
                bad_page = 1;
                return -1;
            }
            return page * page_size + (j - p * page_size);
        };
        auto load = [&](int t, M8Raw& r) {
            const int mine = record_index(t);
#pragma unroll
            for (int kk = 0; kk < 8; ++kk) {
                const int ix = __shfl_sync(0xffffffffu, mine, kk);
                r.codes[kk] = make_uint4(0, 0, 0, 0);
                if (ix >= 0) r.codes[kk] = m8_ldg16(cache + (i64)ix * token_bytes + 16 * lane_d);
            }
#pragma unroll
            for (int i = 0; i < 3; ++i) {
                const int ix = __shfl_sync(0xffffffffu, mine, x_key(i));
                uint4 v = make_uint4(0, 0, 0, 0);
                if (ix >= 0 && x_chunk(i) >= 0) v = m8_ldg16(cache + (i64)ix * token_bytes + M8_SCALES_AT + 16 * x_chunk(i));
                if (i == 0) r.rope[0] = v;
                if (i == 1) r.rope[1] = v;
                if (i == 2) r.scales = v;
            }
        };
        // Latent chunk L = dims 16 L.. = f16 chunks 2 (L % 4) (codes 0..7) and 2 (L % 4) + 1 (codes
        // 8..15) of block L / 4; lanes of odd blocks store the second first, so that the 8 lanes of
        // a store phase (blocks 2h, 2h + 1 of one row) hit 8 different chunks.
        const int blk_off = (lane_d / 4) * MlaSm90Fp8Smem::KEY_BLOCK;
        const bool odd_blk = (lane_d / 4) & 1;
        const int chunk_a = 2 * (lane_d % 4) + (odd_blk ? 1 : 0), chunk_b = chunk_a ^ 1;
        auto store = [&](int t, const M8Raw& r) {
            const int s = t % 2;
            m8_wait(&empty[s], ((t / 2) & 1) ^ 1);
            u8* tile = sK + s * MlaSm90Fp8Smem::TILE;
#pragma unroll
            for (int kk = 0; kk < 8; ++kk) {
                const int key = 8 * dw + kk;
                const uint4 c = r.codes[kk];
#if M8_F16
                const uint2 a = m8_e4m3x4_f16(odd_blk ? c.z : c.x), b = m8_e4m3x4_f16(odd_blk ? c.w : c.y);
                const uint2 d = m8_e4m3x4_f16(odd_blk ? c.x : c.z), e = m8_e4m3x4_f16(odd_blk ? c.y : c.w);
#else
                // The key's scale of this lane's group (L / 8), from the lane that loaded them
                // (extra chunk 9 kk: round 9 kk / 32, lane 9 kk % 32).
                const uint4 sv = (9 * kk) / 32 == 0 ? r.rope[0] : (9 * kk) / 32 == 1 ? r.rope[1] : r.scales;
                const u32 s0 = __shfl_sync(0xffffffffu, sv.x, (9 * kk) % 32), s1 = __shfl_sync(0xffffffffu, sv.y, (9 * kk) % 32);
                const u32 s2 = __shfl_sync(0xffffffffu, sv.z, (9 * kk) % 32), s3 = __shfl_sync(0xffffffffu, sv.w, (9 * kk) % 32);
                const int grp = lane_d / 8;
                const float sg = __uint_as_float(grp == 0 ? s0 : grp == 1 ? s1 : grp == 2 ? s2 : s3);
                const uint2 a = m8_e4m3x4_scaled(odd_blk ? c.z : c.x, sg), b = m8_e4m3x4_scaled(odd_blk ? c.w : c.y, sg);
                const uint2 d = m8_e4m3x4_scaled(odd_blk ? c.x : c.z, sg), e = m8_e4m3x4_scaled(odd_blk ? c.y : c.w, sg);
#endif
                *reinterpret_cast<uint4*>(tile + blk_off + swizzle128(key, chunk_a)) = make_uint4(a.x, a.y, b.x, b.y);
                *reinterpret_cast<uint4*>(tile + blk_off + swizzle128(key, chunk_b)) = make_uint4(d.x, d.y, e.x, e.y);
            }
            u8* rope_blk = tile + M8_V_BLOCKS * MlaSm90Fp8Smem::KEY_BLOCK;
#if M8_F16
            u32 gmax[4] = {0, 0, 0, 0};
#endif
#pragma unroll
            for (int i = 0; i < 3; ++i) {
                const uint4 v = i == 0 ? r.rope[0] : i == 1 ? r.rope[1] : r.scales;
                const int key = 8 * dw + x_key(i);
                if (x_chunk(i) == 0) {
#if M8_F16
                    sScale[s * M8_KEYS + key] = make_float4(__uint_as_float(v.x), __uint_as_float(v.y),
                                                            __uint_as_float(v.z), __uint_as_float(v.w));
                    gmax[0] = max(gmax[0], m8_pow2_ceil_bits(__uint_as_float(v.x)));
                    gmax[1] = max(gmax[1], m8_pow2_ceil_bits(__uint_as_float(v.y)));
                    gmax[2] = max(gmax[2], m8_pow2_ceil_bits(__uint_as_float(v.z)));
                    gmax[3] = max(gmax[3], m8_pow2_ceil_bits(__uint_as_float(v.w)));
#endif
                } else if (x_chunk(i) > 0) {
                    *reinterpret_cast<uint4*>(rope_blk + swizzle128(key, x_chunk(i) - 1)) = v;
                }
            }
#if M8_F16
#pragma unroll
            for (int gg = 0; gg < 4; ++gg) gmax[gg] = m8_warp_max_u32(gmax[gg]);
            if (lane_d < 4) atomicMax(&sGroupMax[s * 4 + lane_d], lane_d == 0 ? gmax[0] : lane_d == 1 ? gmax[1] : lane_d == 2 ? gmax[2] : gmax[3]);
#endif
            fence_proxy_async_smem();
            mbar_arrive(&full[s]);
        };
#else
        const int key = (dtid / 32) * 8 + dtid % 8;  // key of the tile
        const int qr = (dtid % 32) / 8;       // quarter: latent chunks qr + 4m, rope chunks qr, qr + 4
        // The record of key `key` of tile t, or null (past the split's keys, or a bad page).
        auto record = [&](int t) -> const u8* {
            const int j = k_begin + t * M8_KEYS + key;
            if (t >= ntiles || j >= k_end) return nullptr;
            const int p = j / page_size;
            const int page = __ldg(block_table + bt_row + p);
            if (page < 0 || page >= num_pages) {
                bad_page = 1;
                return nullptr;
            }
            return cache + ((i64)page * page_size + (j - p * page_size)) * token_bytes;
        };
        auto load = [&](int t, M8Raw& r) {
            const u8* rec = M8_DIAG == 2 ? nullptr : record(t);
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
            m8_wait(&empty[s], ((t / 2) & 1) ^ 1);
            u8* tile = sK + s * MlaSm90Fp8Smem::TILE;
#if M8_F16
            // The latent as f16 codes (chunk qr + 4m = f16 chunks 2qr, 2qr + 1 of block m), the
            // key's scales beside the tile, and the tile's largest |scale| of group qr over this
            // warp's 8 keys (lanes 8qr..8qr + 7).
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                const uint4 c = r.codes[m];
                u8* blk = tile + m * MlaSm90Fp8Smem::KEY_BLOCK;
                const uint2 a = m8_e4m3x4_f16(c.x), b = m8_e4m3x4_f16(c.y), d = m8_e4m3x4_f16(c.z),
                            e = m8_e4m3x4_f16(c.w);
                *reinterpret_cast<uint4*>(blk + swizzle128(key, 2 * qr)) = make_uint4(a.x, a.y, b.x, b.y);
                *reinterpret_cast<uint4*>(blk + swizzle128(key, 2 * qr + 1)) = make_uint4(d.x, d.y, e.x, e.y);
            }
            if (qr == 0) sScale[s * M8_KEYS + key] = make_float4(__uint_as_float(r.scales.x), __uint_as_float(r.scales.y),
                                                                 __uint_as_float(r.scales.z), __uint_as_float(r.scales.w));
            const u32 mine = qr == 0 ? r.scales.x : qr == 1 ? r.scales.y : qr == 2 ? r.scales.z : r.scales.w;
            u32 gmax = m8_pow2_ceil_bits(__uint_as_float(mine));
            gmax = max(gmax, __shfl_xor_sync(0xffffffffu, gmax, 1));
            gmax = max(gmax, __shfl_xor_sync(0xffffffffu, gmax, 2));
            gmax = max(gmax, __shfl_xor_sync(0xffffffffu, gmax, 4));
            if (dtid % 8 == 0) atomicMax(&sGroupMax[s * 4 + qr], gmax);
#else
            const float sc[4] = {__uint_as_float(r.scales.x), __uint_as_float(r.scales.y),
                                 __uint_as_float(r.scales.z), __uint_as_float(r.scales.w)};
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                // Latent chunk qr + 4m (dims 16(qr + 4m)..) is bf16 chunks 2qr, 2qr + 1 of block m.
                const float s_m = sc[m / 2];
                const uint2 a = m8_e4m3x4_scaled(r.codes[m].x, s_m);
                const uint2 c = m8_e4m3x4_scaled(r.codes[m].y, s_m);
                const uint2 d = m8_e4m3x4_scaled(r.codes[m].z, s_m);
                const uint2 e = m8_e4m3x4_scaled(r.codes[m].w, s_m);
                u8* blk = tile + m * MlaSm90Fp8Smem::KEY_BLOCK;
                *reinterpret_cast<uint4*>(blk + swizzle128(key, 2 * qr)) = make_uint4(a.x, a.y, c.x, c.y);
                *reinterpret_cast<uint4*>(blk + swizzle128(key, 2 * qr + 1)) = make_uint4(d.x, d.y, e.x, e.y);
            }
#endif
            u8* rope_blk = tile + M8_V_BLOCKS * MlaSm90Fp8Smem::KEY_BLOCK;
            *reinterpret_cast<uint4*>(rope_blk + swizzle128(key, qr)) = r.rope[0];
            *reinterpret_cast<uint4*>(rope_blk + swizzle128(key, qr + 4)) = r.rope[1];
            fence_proxy_async_smem();
            mbar_arrive(&full[s]);
        };
#endif
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
        if (bad_page) atomicOr(bad_page_flag, 1);
        named_barrier_sync(M8_BAR_END, M8_THREADS);
        return;
    }

    // ---- math warpgroup ----
    setmaxnreg_inc<M8_MATH_REGS>();
    const int warp = t128 / 32, lane = t128 % 32;
    const int g = lane / 4, tq = lane % 4;
    constexpr int NC = ROWS / 4;

#if M8_F16
    // Q rows r0.. of this request into the swizzled Q blocks (zero rows past the request's): a
    // warp per row, the latent as f16 times 2^e_row (e_row puts the row's largest |value| in
    // [2^14, 2^15): exact, no overflow), the rope as bf16; sQf[row] = 2^-e_row x scale_log2.
    for (int row = warp; row < ROWS; row += 4) {
        uint4 a = make_uint4(0, 0, 0, 0), c = a, rp = a;
        if (r0 + row < rows_total) {
            const u16* qrow = q + ((i64)q_begin * heads + r0 + row) * M8_QK;
            a = *reinterpret_cast<const uint4*>(qrow + lane * 8);
            c = *reinterpret_cast<const uint4*>(qrow + (lane + 32) * 8);
            if (lane < 8) rp = *reinterpret_cast<const uint4*>(qrow + LATENT + lane * 8);
        }
        u32 mx = max(max(max(m8_bf16x2_abs_max(a.x), m8_bf16x2_abs_max(a.y)),
                         max(m8_bf16x2_abs_max(a.z), m8_bf16x2_abs_max(a.w))),
                     max(max(m8_bf16x2_abs_max(c.x), m8_bf16x2_abs_max(c.y)),
                         max(m8_bf16x2_abs_max(c.z), m8_bf16x2_abs_max(c.w))));
#pragma unroll
        for (int o = 16; o > 0; o /= 2) mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        // bf16 exponent field E: |max| in [2^(E-127), 2^(E-126)); E = 0 (subnormal) clamps.
        const int e = mx == 0 ? 0 : min(141 - (int)(mx >> 7), 125);
        const float up = m8_exp2i(e);
        *reinterpret_cast<uint4*>(sQ + (lane / 8) * MlaSm90Fp8Smem::Q_BLOCK + swizzle128(row, lane % 8)) =
            make_uint4(m8_bf16x2_to_f16x2(a.x, up), m8_bf16x2_to_f16x2(a.y, up), m8_bf16x2_to_f16x2(a.z, up),
                       m8_bf16x2_to_f16x2(a.w, up));
        *reinterpret_cast<uint4*>(sQ + (4 + lane / 8) * MlaSm90Fp8Smem::Q_BLOCK + swizzle128(row, lane % 8)) =
            make_uint4(m8_bf16x2_to_f16x2(c.x, up), m8_bf16x2_to_f16x2(c.y, up), m8_bf16x2_to_f16x2(c.z, up),
                       m8_bf16x2_to_f16x2(c.w, up));
        if (lane < 8) *reinterpret_cast<uint4*>(sQ + M8_V_BLOCKS * MlaSm90Fp8Smem::Q_BLOCK + swizzle128(row, lane)) = rp;
        if (lane == 0) sQf[row] = m8_exp2i(-e) * scale_log2;
    }
#else
    // Q rows r0.. of this request into the swizzled Q blocks (zero rows past the request's).
    for (int idx = t128; idx < ROWS * (M8_QK / 8); idx += 128) {
        const int row = idx / (M8_QK / 8), c = idx % (M8_QK / 8);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r0 + row < rows_total)
            v = *reinterpret_cast<const uint4*>(q + ((i64)q_begin * heads + r0 + row) * M8_QK + c * 8);
        *reinterpret_cast<uint4*>(sQ + (c / 8) * MlaSm90Fp8Smem::Q_BLOCK + swizzle128(row, c % 8)) = v;
    }
#endif
#if M8_F16
    // The keys row c sees (causal over the s_q positions), in shared memory: read only for the
    // tiles that reach past lim_lo, the fewest keys a row of this CTA sees (its first row's).
    if (t128 < ROWS) {
        const int r = r0 + t128;
        sLim[t128] = r < rows_total ? min(len - (n_q - 1 - r / heads), k_end) : -1;
    }
    const int lim_lo = min(len - (n_q - 1 - r0 / heads), k_end);
#endif
    fence_proxy_async_smem();
    named_barrier_sync(M8_BAR_P, 128);

#if !M8_F16
    // This thread's columns (query rows) c = n8 * 8 + 2 tq + e1, index ci = 2 n8 + e1, and the
    // keys each sees (causal over the s_q positions).
    int lim[NC];
#pragma unroll
    for (int ci = 0; ci < NC; ++ci) {
        const int r = r0 + (ci / 2) * 8 + 2 * tq + (ci & 1);
        lim[ci] = r < rows_total ? min(len - (n_q - 1 - r / heads), k_end) : -1;
    }
#endif
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
#if M8_F16
#if M8_STAGED
    // S^T group by group through two accumulators (one group's wgmmas run while the previous
    // group is folded into sx): latent groups 0..3 (f16 codes x f16 Q), then the rope (bf16).
    float sa[M8_NACC], sb[M8_NACC], sx[M8_NACC];
#else
    // S^T in 5 accumulators: latent groups 0..3 (f16 codes x f16 Q) and the rope (bf16).
    float sacc[5 * M8_NACC];
#endif
    // Per latent group: m_g, a power of two >= every |scale| of the group seen so far (never
    // below M8_SCALE_FLOOR), and 2^15 / m_g. O^T rows (channels) of group g hold O x 2^15 / m_g.
    float m_grp[4], p_grp[4];
#pragma unroll
    for (int gg = 0; gg < 4; ++gg) {
        m_grp[gg] = 0x1p-100f;
        p_grp[gg] = 0x1p115f;
    }
    // stmatrix addresses of this lane in P copy 0: matrix i / 8 of a group of 4 is (n8 pair
    // half (i / 8) / 2, key half (i / 8) % 2), its row i % 8 is query row n8 * 8 + i % 8.
    u32 p_st[ROWS / 16];
#pragma unroll
    for (int x = 0; x < ROWS / 16; ++x)
        p_st[x] = smem_u32(sP) + swizzle128((2 * x + lane / 16) * 8 + lane % 8, 2 * warp + (lane / 8) % 2);
#else
    float sacc[M8_NACC];
#endif

#if !(M8_F16 && M8_STAGED)
    // S^T of tile t (issued and committed).
    auto issue_s = [&](int t) {
        const int s = t % 2;
        m8_wait(&full[s], (t / 2) & 1);
        const u64 k_desc = wgmma_desc(sK + s * MlaSm90Fp8Smem::TILE, 16, 1024, WGMMA_SWIZZLE_128B);
        wgmma_fence();
#if M8_F16
#pragma unroll
        for (int cb = 0; cb < M8_V_BLOCKS; ++cb)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const u64 ko = (u64)((cb * MlaSm90Fp8Smem::KEY_BLOCK + kk * 32) >> 4);
                const u64 qo = (u64)((cb * MlaSm90Fp8Smem::Q_BLOCK + kk * 32) >> 4);
                m8_wgmma_f16<0>(sacc + (cb / 2) * M8_NACC, k_desc + ko, q_desc + qo, ((cb & 1) | kk) != 0);
            }
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const u64 ko = (u64)((M8_V_BLOCKS * MlaSm90Fp8Smem::KEY_BLOCK + kk * 32) >> 4);
            const u64 qo = (u64)((M8_V_BLOCKS * MlaSm90Fp8Smem::Q_BLOCK + kk * 32) >> 4);
            WgmmaBf16<ROWS, 0>::mma(sacc + 4 * M8_NACC, k_desc + ko, q_desc + qo, kk != 0);
        }
#else
#pragma unroll
        for (int cb = 0; cb < M8_BLOCKS; ++cb)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const u64 ko = (u64)((cb * MlaSm90Fp8Smem::KEY_BLOCK + kk * 32) >> 4);
                const u64 qo = (u64)((cb * MlaSm90Fp8Smem::Q_BLOCK + kk * 32) >> 4);
                WgmmaBf16<ROWS, 0>::mma(sacc, k_desc + ko, q_desc + qo, (cb | kk) != 0);
            }
#endif
        wgmma_commit();
    };
#endif

#if M8_F16 && M8_STAGED
    // The wgmmas of latent group gg of the tile at k_desc into d (issued, not committed).
    auto latent_group = [&](float* d, u64 k_desc, int gg) {
#pragma unroll
        for (int cb = 2 * gg; cb < 2 * gg + 2; ++cb)
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const u64 ko = (u64)((cb * MlaSm90Fp8Smem::KEY_BLOCK + kk * 32) >> 4);
                const u64 qo = (u64)((cb * MlaSm90Fp8Smem::Q_BLOCK + kk * 32) >> 4);
                m8_wgmma_f16<0>(d, k_desc + ko, q_desc + qo, ((cb & 1) | kk) != 0);
            }
    };
#endif

    for (int t = 0; t < ntiles; ++t) {
        const int s = t % 2;
#if M8_DIAG == 1
        m8_wait(&full[s], (t / 2) & 1);
#if M8_F16
        mbar_arrive(&empty[s]);
#else
        if (lane == 0) mbar_arrive(&empty[s]);
#endif
        continue;
#endif
#if M8_F16 && M8_STAGED
        m8_wait(&full[s], (t / 2) & 1);
        const u64 k_desc = wgmma_desc(sK + s * MlaSm90Fp8Smem::TILE, 16, 1024, WGMMA_SWIZZLE_128B);
        wgmma_fence();
        latent_group(sa, k_desc, 0);
        wgmma_commit();
        latent_group(sb, k_desc, 1);
        wgmma_commit();
#else
        issue_s(t);
#endif
#if M8_F16
        // While the wgmmas run: the scales of this thread's keys (warp * 16 + g, + 8) and each
        // group's new m_g from the dequantizers' per-warp maxima.
        const float4 sk0 = sScale[s * M8_KEYS + warp * 16 + g];
        const float4 sk1 = sScale[s * M8_KEYS + warp * 16 + g + 8];
        float ratio[4];
        bool grp_moved = false;
        const uint4 gm4 = *reinterpret_cast<const uint4*>(sGroupMax + s * 4);
#pragma unroll
        for (int gg = 0; gg < 4; ++gg) {
            const float m_tile = __uint_as_float(gg == 0 ? gm4.x : gg == 1 ? gm4.y : gg == 2 ? gm4.z : gm4.w);
            ratio[gg] = 1.0f;
            if (m_tile > m_grp[gg]) {
                // Powers of two: m_old / m_new and 2^15 / m_new from the exponent fields (no
                // division while the wgmmas are in flight).
                const int e_old = (int)(__float_as_uint(m_grp[gg]) >> 23), e_new = (int)(__float_as_uint(m_tile) >> 23);
                ratio[gg] = e_new - e_old > 126 ? 0.0f : __int_as_float((127 + e_old - e_new) << 23);
                m_grp[gg] = m_tile;
                p_grp[gg] = __int_as_float((269 - e_new) << 23);
                grp_moved = true;
            }
        }
#if M8_STAGED
        // sx = sum_g scale_g(key) x acc_g as the groups complete; the rope lands in sa.
        wgmma_wait<1>();
        reg_fence_all(sa);
#pragma unroll
        for (int i = 0; i < M8_NACC; ++i) sx[i] = ((i % 4) / 2 ? sk1.x : sk0.x) * sa[i];
        wgmma_fence();
        latent_group(sa, k_desc, 2);
        wgmma_commit();
        wgmma_wait<1>();
        reg_fence_all(sb);
#pragma unroll
        for (int i = 0; i < M8_NACC; ++i) sx[i] = fmaf((i % 4) / 2 ? sk1.y : sk0.y, sb[i], sx[i]);
        wgmma_fence();
        latent_group(sb, k_desc, 3);
        wgmma_commit();
        wgmma_wait<1>();
        reg_fence_all(sa);
#pragma unroll
        for (int i = 0; i < M8_NACC; ++i) sx[i] = fmaf((i % 4) / 2 ? sk1.z : sk0.z, sa[i], sx[i]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const u64 ko = (u64)((M8_V_BLOCKS * MlaSm90Fp8Smem::KEY_BLOCK + kk * 32) >> 4);
            const u64 qo = (u64)((M8_V_BLOCKS * MlaSm90Fp8Smem::Q_BLOCK + kk * 32) >> 4);
            WgmmaBf16<ROWS, 0>::mma(sa, k_desc + ko, q_desc + qo, kk != 0);
        }
        wgmma_commit();
        wgmma_wait<1>();
        reg_fence_all(sb);
#pragma unroll
        for (int i = 0; i < M8_NACC; ++i) sx[i] = fmaf((i % 4) / 2 ? sk1.w : sk0.w, sb[i], sx[i]);
        wgmma_wait<0>();
        reg_fence_all(sa);
#else
        wgmma_wait<0>();
        reg_fence_all(sacc);
#endif
#else
        wgmma_wait<0>();
        reg_fence_all(sacc);
#endif

        // Mask, scale, this thread's column maxima over its 2 keys, then over the warp's 16 keys.
        const int jbase = k_begin + t * M8_KEYS + warp * 16 + g;
#if M8_F16
        // Columns (query rows) c = n8 * 8 + 2 tq + e1, index ci = 2 n8 + e1: their Q factors and,
        // where the tile reaches past lim_lo, their key limits (padding rows are not masked on the
        // other tiles: their S is 0, finite, and never written).
        const bool masked = k_begin + (t + 1) * M8_KEYS > lim_lo;
        float qf[NC];
        int lim[NC];
#pragma unroll
        for (int n8 = 0; n8 < ROWS / 8; ++n8) {
            const float2 f = *reinterpret_cast<const float2*>(sQf + n8 * 8 + 2 * tq);
            qf[2 * n8] = f.x;
            qf[2 * n8 + 1] = f.y;
            lim[2 * n8] = lim[2 * n8 + 1] = 0x7fffffff;
            if (masked) {
                const int2 l = *reinterpret_cast<const int2*>(sLim + n8 * 8 + 2 * tq);
                lim[2 * n8] = l.x;
                lim[2 * n8 + 1] = l.y;
            }
        }
#endif
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
                const int i = n8 * 4 + e;
#if M8_F16 && M8_STAGED
                const float sc = fmaf(sx[i], qf[ci], sa[i] * scale_log2);
#elif M8_F16
                const float4 sk = e / 2 ? sk1 : sk0;
                const float x = sk.x * sacc[i] + sk.y * sacc[M8_NACC + i] + sk.z * sacc[2 * M8_NACC + i] +
                                sk.w * sacc[3 * M8_NACC + i];
                const float sc = fmaf(x, qf[ci], sacc[4 * M8_NACC + i] * scale_log2);
#else
                const float sc = sacc[i] * scale_log2;
#endif
                const float v = j < lim[ci] ? sc : TESSERA_NEG_INF;
                sv[i] = v;
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
#if M8_F16
        if (t128 < 4) sGroupMax[s * 4 + t128] = 0;  // read by every math thread before the barrier
#endif
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
#pragma unroll
        for (int ci = 0; ci < NC; ++ci) l_run[ci] *= alpha[ci];
#if M8_F16
        // P^T = exp2(S^T - m) (column sums in f32 per thread), then per latent group g the f16
        // copy P_g^T[key, q] = P^T x scale_g(key) x 2^15 / m_g (<= 2^15) into P copy g
        // ([ROWS rows][64 keys], K-major), through stmatrix.trans.
        float pv[M8_NACC];
#pragma unroll
        for (int n8 = 0; n8 < ROWS / 8; ++n8)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int ci = 2 * n8 + (e & 1);
                pv[n8 * 4 + e] = exp2f(sv[n8 * 4 + e] - m_use[ci]);
                l_run[ci] += pv[n8 * 4 + e];
            }
#pragma unroll
        for (int gg = 0; gg < 4; ++gg) {
            const float f0 = (gg == 0 ? sk0.x : gg == 1 ? sk0.y : gg == 2 ? sk0.z : sk0.w) * p_grp[gg];
            const float f1 = (gg == 0 ? sk1.x : gg == 1 ? sk1.y : gg == 2 ? sk1.z : sk1.w) * p_grp[gg];
#pragma unroll
            for (int x = 0; x < ROWS / 16; ++x) {
                const float* pp = pv + 8 * x;
                m8_stmatrix_x4_trans(p_st[x] + gg * MlaSm90Fp8Smem::P_COPY, pack2<false>(pp[0] * f0, pp[1] * f0),
                                     pack2<false>(pp[2] * f1, pp[3] * f1), pack2<false>(pp[4] * f0, pp[5] * f0),
                                     pack2<false>(pp[6] * f1, pp[7] * f1));
            }
        }
        // Rescale O^T where a maximum or a group's m_g moved.
        if (__any_sync(0xffffffffu, moved) || grp_moved) {
#pragma unroll
            for (int i = 0; i < M8_V_BLOCKS * M8_NACC; ++i)
                o_acc[i] *= alpha[2 * ((i % M8_NACC) / 4) + (i & 1)] * ratio[i / (2 * M8_NACC)];
        }
#else
        // P^T = exp2(S^T - m) as bf16 into the P tile ([ROWS rows][64 keys], K-major for the
        // P V wgmma); column sums in f32 per thread.
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
#endif
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
#if M8_F16
                m8_wgmma_f16<1>(o_acc + i * M8_NACC, v_desc + (u64)((kk * 16 * 128) >> 4),
                                p_desc + (u64)(((i / 2) * MlaSm90Fp8Smem::P_COPY + kk * 32) >> 4), 1);
#else
                m8_wgmma_vt(o_acc + i * M8_NACC, v_desc + (u64)((kk * 16 * 128) >> 4), p_desc + (u64)((kk * 32) >> 4));
#endif
        }
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence_all(o_acc);
#if M8_F16
        mbar_arrive(&empty[s]);  // the tile (and its scales) go back to the dequantizers
#else
        if (lane == 0) mbar_arrive(&empty[s]);  // the tile goes back to the dequantizers
#endif
    }

    // ---- epilogue: column sums over the warps, normalize, stage O (rows x latent), write ----
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
            if (work.splits == 1)
                lse[mla_lse_index(b, r0 + c, q_begin, heads, s_q, total_q)] = lse_v;
            else
                ws[(i64)ws_slots * rows_pad * latent + (i64)work.ws_slot * rows_pad + r0 + c] = lse_v;
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
#if M8_F16
                stage[c * M8_OUT_PITCH + d] =
                    o_acc[i * M8_NACC + n8 * 4 + e] * inv[2 * n8 + (e & 1)] * (m_grp[i / 2] * 0x1p-15f);
#else
                stage[c * M8_OUT_PITCH + d] = o_acc[i * M8_NACC + n8 * 4 + e] * inv[2 * n8 + (e & 1)];
#endif
            }
    named_barrier_sync(M8_BAR_OUT, 128);
    const int rows_here = min(ROWS, rows_total - r0);
    for (int idx = t128; idx < rows_here * (LATENT / 4); idx += 128) {
        const int c = idx / (LATENT / 4), d = (idx % (LATENT / 4)) * 4;
        const float4 v = *reinterpret_cast<const float4*>(stage + c * M8_OUT_PITCH + d);
        if (work.splits == 1) {
            u16* orow = o + ((i64)q_begin * heads + r0 + c) * latent + d;
            *reinterpret_cast<uint2*>(orow) = make_uint2(pack2<true>(v.x, v.y), pack2<true>(v.z, v.w));
        } else {
            float* orow = ws + ((i64)work.ws_slot * rows_pad + r0 + c) * latent + d;
            *reinterpret_cast<float4*>(orow) = v;
        }
    }
}

// Block-scaled FP8 GEMM (DeepSeek-V3 recipe) on the tensor cores with mma.sync.
//
//   D[m][n] = sum_kb sA[m][kb] * sB[n/128][kb] * (sum_{k in block kb} A[m][k] * B[n][k])
//
// Layouts (row-major): A e4m3 [m, k] (K contiguous), sA f32 [m, KB], B e4m3 [n, k] (K
// contiguous), sB f32 [ceil(n/128), KB], D bf16 [m, n], with KB = ceil(k / 128). Requirements
// (checked by the host): m >= 1, n a positive multiple of 8, k a positive multiple of 16, A and B
// 16-byte aligned, D 4-byte aligned.
//
// One CTA computes a BM x 128 tile of D (BN = 128 = one scale block of B, so one sB value per CTA
// and K block). The K loop walks one scale block (128 of K) per iteration: A and B tiles
// (BM x 128 and 128 x 128 bytes) go to shared memory with cp.async, STAGES deep. Each iteration's
// four k32 steps accumulate into temporary f32 registers (mma.sync.m16n8k32 e4m3 on sm_89+), which
// are then promoted into the f32 accumulators: acc += tmp * (sA[row][kb] * sB[n/128][kb]). So the
// tensor cores never accumulate more than 128 of K.
//
// On sm_80 (no FP8 mma), and by default on sm_90 (see E4M3_MMA below), each e4m3 fragment
// register is decoded to two 16-bit pairs (exactly: every e4m3 value is an f16 and a bf16 value)
// and fed to mma.m16n8k16 with f32 accumulation.
//
// Shared memory: per stage BM x 128 bytes of A then 128 x 128 bytes of B; each 128-byte row is
// eight 16-byte chunks, chunk c of row r stored at chunk (c ^ (r & 7)) so that ldmatrix and the
// cp.async stores are free of bank conflicts. Rows >= m, columns >= n and K >= k are zero-filled by
// cp.async (src-size 0), so every mma reads defined data; out-of-range rows and columns are never
// stored.
//
// Measured on the H200 (sm_90a, m 4096, n 7168, k 2048; cuBLAS block-scaled: 715 TFLOPS):
// 225 TFLOPS with 2 x 4 warps and the native e4m3 mma (which ptxas lowers to F2FP + 2 HMMA +
// 4 FADD per mma), 225 after decoding once per fragment (FADDs gone, no change: not issue-bound),
// 252 with 4 x 2 warps (the library's large tile); 16 warps or a 4th stage did not help. The
// next step on Hopper is wgmma (QGMMA in SASS), not more mma.sync tuning.
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/gemm.rs):
//   BM       CTA tile rows: 32, 64 or 128
//   WARPS_M  warps along M (the CTA has WARPS_M x WARPS_N warps)
//   WARPS_N  warps along N
//   STAGES   shared-memory pipeline depth, 2..8
//   E4M3_MMA 1 = mma.m16n8k32 e4m3 (sm_89+ only), 0 = decode to 16-bit + mma.m16n8k16 (the plan
//            picks 1 on sm_89 only)
//   TESSERA_SMEM_BYTES must be STAGES * (BM + 128) * 128; TESSERA_THREADS WARPS_M * WARPS_N * 32

#ifndef BM
#error "BM is required (rows of D per CTA: 32, 64 or 128)"
#endif
#ifndef WARPS_M
#error "WARPS_M is required (warps along M)"
#endif
#ifndef WARPS_N
#error "WARPS_N is required (warps along N)"
#endif
#ifndef STAGES
#error "STAGES is required (shared-memory pipeline depth)"
#endif
#ifndef E4M3_MMA
#error "E4M3_MMA is required (1 = e4m3 mma, 0 = decode to 16-bit)"
#endif
#if BM != 32 && BM != 64 && BM != 128
#error "BM must be 32, 64 or 128"
#endif
#if WARPS_M < 1 || WARPS_M > 8 || WARPS_N < 1 || WARPS_N > 8
#error "WARPS_M and WARPS_N must be in 1..8"
#endif
#if STAGES < 2 || STAGES > 8
#error "STAGES must be in 2..8"
#endif
#if E4M3_MMA != 0 && E4M3_MMA != 1
#error "E4M3_MMA must be 0 or 1"
#endif
#if E4M3_MMA == 1 && __CUDA_ARCH__ < 890
#error "E4M3_MMA=1 needs sm_89 or newer (mma.m16n8k32 e4m3)"
#endif

#define BN 128
#define BK 128
#define THREADS (WARPS_M * WARPS_N * 32)
#define WM (BM / WARPS_M)   // warp tile rows
#define WN (BN / WARPS_N)   // warp tile columns
#define MT (WM / 16)        // m16 tiles per warp
#define NT (WN / 8)         // n8 tiles per warp
#define A_STAGE_BYTES (BM * BK)
#define B_STAGE_BYTES (BN * BK)
#define STAGE_BYTES (A_STAGE_BYTES + B_STAGE_BYTES)

static_assert(BM % (16 * WARPS_M) == 0, "BM must split into m16 tiles per warp");
static_assert(BN % (16 * WARPS_N) == 0, "each warp needs an even number of n8 tiles");
static_assert((BM * BK / 16) % THREADS == 0, "A tile chunks must split evenly over threads");
static_assert((BN * BK / 16) % THREADS == 0, "B tile chunks must split evenly over threads");
static_assert(STAGES >= 2, "at least double buffering");
static_assert(STAGES * STAGE_BYTES == TESSERA_SMEM_BYTES, "the host's shared-memory size must be STAGES * (BM + BN) * BK");
static_assert(THREADS == TESSERA_THREADS, "the host's threads per CTA must be WARPS_M * WARPS_N * 32");

// Byte offset of 16-byte chunk `c` (0..7) of row `r` in a swizzled 128-byte-row tile.
__device__ __forceinline__ u32 swz(int r, int c) { return (u32)(r * BK + ((c ^ (r & 7)) << 4)); }

// How a k32 step runs on the tensor cores. E4M3_MMA = 1: mma.m16n8k32 e4m3 (native on sm_89).
// E4M3_MMA = 0: each e4m3 fragment register is decoded once into two 16-bit pairs (f16 with
// cvt.rn.f16x2.e4m3x2 on sm_89+, bf16 in software on sm_80; both exact) and fed to two
// mma.m16n8k16 per output tile. On sm_90 ptxas itself lowers the e4m3 mma to that decode plus two
// HMMA into zero and four FADDs per mma, so decoding here once per fragment and accumulating in
// the HMMA saves the FADDs. The plan layer picks 1 on sm_89 only.

#if __CUDA_ARCH__ >= 890
// Two e4m3 values (the low 16 bits of w) -> f16x2 (low byte to the low half), exact.
__device__ __forceinline__ u32 decode_pair(u32 w) {
    u32 r;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"((u16)(w & 0xffffu)));
    return r;
}
#define HALF_IS_BF16 false
#else
// One e4m3 byte -> f32, exact: the magnitude bits placed at f32 bit 20 give 2^(e-127)(1+m/8) (or
// the denormal m/8 * 2^-126 for e = 0); times 2^120 that is the e4m3 value. 0x7f / 0xff are NaN.
__device__ __forceinline__ float e4m3_byte_to_f32(u32 byte) {
    const u32 mag = byte & 0x7fu;
    float v = __uint_as_float(mag << 20) * __uint_as_float(0x7b800000u);  // 2^120
    if (mag == 0x7fu) v = TESSERA_NAN;
    return (byte & 0x80u) ? -v : v;
}

// Two e4m3 values (the low 16 bits of w) -> bf16x2 (low byte to the low half), exact.
__device__ __forceinline__ u32 decode_pair(u32 w) {
    return pack2<true>(e4m3_byte_to_f32(w & 0xffu), e4m3_byte_to_f32((w >> 8) & 0xffu));
}
#define HALF_IS_BF16 true
#endif

// tmp[MT][NT] += A(k32 step) * B(k32 step) from the raw e4m3 fragments (ldmatrix layout, which is
// the m16n8k32 e4m3 fragment layout: register j of A holds 4 consecutive K of one row).
// In the decoded path register j's low pair becomes the k16 fragment's k-pair (2t, 2t+1) and its
// high pair the k-pair (8+2t, 9+2t), for A and B alike, so the K order inside a step is permuted
// identically on both sides and the sum is unchanged. A registers 0, 1 and B register 0 hold
// K 0-15 of the step, A registers 2, 3 and B register 1 hold K 16-31.
__device__ __forceinline__ void mma_step(float (&tmp)[MT][NT][4], const u32 (&af)[MT][4], const u32 (&bfr)[NT][2]) {
#if E4M3_MMA
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) mma_16832_e4m3(tmp[i][j], af[i], bfr[j]);
#else
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        u32 a16[MT][4], b16[NT][2];
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            a16[i][0] = decode_pair(af[i][2 * h]);
            a16[i][1] = decode_pair(af[i][2 * h + 1]);
            a16[i][2] = decode_pair(af[i][2 * h] >> 16);
            a16[i][3] = decode_pair(af[i][2 * h + 1] >> 16);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            b16[j][0] = decode_pair(bfr[j][h]);
            b16[j][1] = decode_pair(bfr[j][h] >> 16);
        }
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j) mma_16816<HALF_IS_BF16>(tmp[i][j], a16[i], b16[j]);
    }
#endif
}

// Issues the cp.async copies of K block `kb` into stage buffer `smem` (A tile then B tile).
__device__ __forceinline__ void load_stage(u8* smem, const u8* __restrict__ A, const u8* __restrict__ B, int m,
                                           int n, int k, int m0, int n0, int kb, int tid) {
    const int k0 = kb * BK;
#pragma unroll
    for (int i = 0; i < A_STAGE_BYTES / 16 / THREADS; ++i) {
        const int idx = tid + i * THREADS;
        const int r = idx >> 3, c = idx & 7;
        const int row = m0 + r, kk = k0 + c * 16;
        const bool valid = row < m && kk < k;
        const u8* src = valid ? A + (i64)row * k + kk : A;
        cp_async_16(smem + swz(r, c), src, valid);
    }
    u8* sb = smem + A_STAGE_BYTES;
#pragma unroll
    for (int i = 0; i < B_STAGE_BYTES / 16 / THREADS; ++i) {
        const int idx = tid + i * THREADS;
        const int r = idx >> 3, c = idx & 7;
        const int col = n0 + r, kk = k0 + c * 16;
        const bool valid = col < n && kk < k;
        const u8* src = valid ? B + (i64)col * k + kk : B;
        cp_async_16(sb + swz(r, c), src, valid);
    }
}

// Grid: one CTA per (128-column, BM-row) tile, column tiles fastest: blockIdx.x = mt * n_tiles + nt.
// Dynamic shared memory: STAGES * STAGE_BYTES.
extern "C" __global__ void __launch_bounds__(THREADS, 1)
    fp8_gemm(const u8* __restrict__ A, const float* __restrict__ SA, const u8* __restrict__ B,
             const float* __restrict__ SB, u16* __restrict__ D, int m, int n, int k) {
    extern __shared__ __align__(128) u8 smem[];
    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int n_tiles = (n + BN - 1) / BN;
    const int nt = blockIdx.x % n_tiles, mt = blockIdx.x / n_tiles;
    const int m0 = mt * BM, n0 = nt * BN;
    const int kblocks = (k + BK - 1) / BK;
    const int g = lane >> 2, t4 = lane & 3;

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // This thread's rows (for the A scales) and whether its warp's n8 tiles are inside n.
    int rows[MT][2];
#pragma unroll
    for (int i = 0; i < MT; ++i) {
        rows[i][0] = m0 + wm * WM + i * 16 + g;
        rows[i][1] = rows[i][0] + 8;
    }
    const float* sb_row = SB + (i64)nt * kblocks;

    // ldmatrix lane offsets inside a stage (before the k32 step's chunk is added).
    // A: lanes 0-15 give rows 0-15 of an m16 tile at chunk 2s, lanes 16-31 the same rows at 2s+1.
    const int a_r = wm * WM + (lane & 15);
    const int a_c = lane >> 4;
    // B: matrix q = lane / 8: n rows (q >> 1) * 8 + (lane & 7) of an n16 pair, chunk 2s + (q & 1).
    const int b_r = wn * WN + ((lane >> 4) << 3) + (lane & 7);
    const int b_c = (lane >> 3) & 1;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < kblocks) load_stage(smem + s * STAGE_BYTES, A, B, m, n, k, m0, n0, s, tid);
        cp_async_commit();
    }

    for (int kb = 0; kb < kblocks; ++kb) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage kb is visible to all; stage kb - 1 is no longer read by anyone
        {
            const int next = kb + STAGES - 1;
            if (next < kblocks) load_stage(smem + (next % STAGES) * STAGE_BYTES, A, B, m, n, k, m0, n0, next, tid);
            cp_async_commit();
        }

        // Scales of this K block (issued early, used after the mma steps).
        const float sbv = __ldg(sb_row + kb);
        float sa[MT][2];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                sa[i][h] = rows[i][h] < m ? __ldg(SA + (i64)rows[i][h] * kblocks + kb) : 0.0f;

        const u8* sa_tile = smem + (kb % STAGES) * STAGE_BYTES;
        const u8* sb_tile = sa_tile + A_STAGE_BYTES;
        const int k_left = k - kb * BK;  // > 0; K beyond it is zero-filled

        float tmp[MT][NT][4];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) tmp[i][j][e] = 0.0f;

#pragma unroll
        for (int s = 0; s < BK / 32; ++s) {
            if (s * 32 < k_left) {
                u32 af[MT][4];
                u32 bfr[NT][2];
#pragma unroll
                for (int i = 0; i < MT; ++i) ldmatrix_x4(af[i], sa_tile + swz(a_r + i * 16, 2 * s + a_c));
#pragma unroll
                for (int j = 0; j < NT / 2; ++j) {
                    u32 r[4];
                    ldmatrix_x4(r, sb_tile + swz(b_r + j * 16, 2 * s + b_c));
                    bfr[2 * j][0] = r[0];
                    bfr[2 * j][1] = r[1];
                    bfr[2 * j + 1][0] = r[2];
                    bfr[2 * j + 1][1] = r[3];
                }
                mma_step(tmp, af, bfr);
            }
        }

        // Promotion: the block's partial products, scaled, into the f32 accumulators.
#pragma unroll
        for (int i = 0; i < MT; ++i) {
            const float s0 = sa[i][0] * sbv, s1 = sa[i][1] * sbv;
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                acc[i][j][0] = fmaf(tmp[i][j][0], s0, acc[i][j][0]);
                acc[i][j][1] = fmaf(tmp[i][j][1], s0, acc[i][j][1]);
                acc[i][j][2] = fmaf(tmp[i][j][2], s1, acc[i][j][2]);
                acc[i][j][3] = fmaf(tmp[i][j][3], s1, acc[i][j][3]);
            }
        }
    }
    cp_async_wait<0>();

    // Epilogue: bf16 pairs straight to D. n is a multiple of 8, so an n8 tile is wholly in or out.
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const int col = n0 + wn * WN + j * 8 + 2 * t4;
        if (n0 + wn * WN + j * 8 >= n) continue;
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = rows[i][h];
                if (row < m) {
                    const u32 v = pack2<true>(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                    *reinterpret_cast<u32*>(D + (i64)row * n + col) = v;
                }
            }
    }
}

// Tessera CUDA kernels: the parts of the Hopper FP8 MLA decode with the cache operand in registers
// that its two kernels share (sm90/mla_decode_fp8_rs.cu: 16 rows, the two math warpgroups on
// alternating tiles; sm90/mla_decode_fp8_rs_pairs.cu: 32 rows, tiles in pairs): constants, the
// index permutations of the register fragments, the conversions, the wgmma wrappers, the
// producer warpgroup and the staging of Q. The layouts are described in mla_decode_fp8_rs.cu.
// Prepended after mla_work.cuh and sm90/hopper.cuh; needs LATENT, ROPE and ROWS (16 or 32).

#define R8_KEYS 64                       // keys per tile (the wgmma M of S^T)
#define R8_REC 656                       // bytes per FP8 record
#define R8_THREADS 384                   // 2 math warpgroups + a producer warpgroup (one warp works)
#define R8_SCALES_AT LATENT              // byte offset of the 4 f32 scales in a record
#define R8_ROPE_AT (LATENT + LATENT / 32)  // 528: the bf16 rope
#define R8_QK (LATENT + ROPE)            // 576
#define R8_OUT_PITCH (LATENT + 4)        // f32 per row of the output staging (bank spread)
#define R8_NACC (ROWS / 2)               // accumulator floats per thread of one m64nROWS wgmma
#define R8_NC (ROWS / 4)                 // columns (query rows) a thread holds
#define R8_TILE_BYTES (R8_KEYS * R8_REC)  // a stage: 64 records as in the cache (41 984 bytes)
#define R8_Q_BLOCK (ROWS * 128)          // one [ROWS][64 logical dims] 16-bit block of Q'^T

// Named barriers of both kernels' epilogues (the producer warpgroup takes part).
#define R8_BAR_END 6   // all: the producer's bad-page flag is final, RAW free
#define R8_BAR_OUT 7   // all: the output staged (and the 16-row kernel's merge factors written)

// ---- the permutations (one source for the fragments, Q'^T, P'^T and the output) -------------

// S^T row 16w + 8h + g is this key of the tile: rows g and g + 8 are keys 2b and 2b + 1 (one
// 32-bit store of P' for both), and the keys of lanes g and g + 1 differ by 4 modulo 8 in 16-byte
// units (a record being 41 of them), so that a quarter-warp's LDS.128 of the records is conflict free.
__device__ __forceinline__ int r8_s_key(int w, int h, int g) {
    return 2 * ((g & 1) * 2 + (g >> 1) * 4 + (w & 1) + 16 * (w >> 1)) + h;
}
// S^T's contraction, latent: thread quarter tq reads bytes 64 J + 16 tq .. + 15 of a record and
// k-step kk = 4 J + s uses bytes 4 s .. 4 s + 3 of them, as its logical columns 2 tq, 2 tq + 1 (the
// first two) and 2 tq + 8, 2 tq + 9. So dim d = 64 J + 16 tq + 4 s + 2 hi + e is logical column
// 16 kk + 2 tq + e + 8 hi of Q'^T (this function; the fragment loads are its inverse).
__device__ __forceinline__ int r8_latent_column(int d) {
    const int kk = 4 * (d / 64) + (d % 16) / 4, c = 2 * ((d % 64) / 16) + (d % 2) + 8 * ((d % 4) / 2);
    return 16 * kk + c;
}
// The rope: thread quarter tq reads 16 bytes (8 bf16) at R8_ROPE_AT + 64 J + 16 tq and rope k-step
// kk = 2 J + s uses 4 of them: rope dim r = 32 J + 8 tq + 4 s + 2 hi + e is rope column
// 16 kk + 2 tq + e + 8 hi.
__device__ __forceinline__ int r8_rope_column(int r) {
    const int kk = 2 * (r / 32) + (r % 8) / 4, c = 2 * ((r % 32) / 8) + (r % 2) + 8 * ((r % 4) / 2);
    return 16 * kk + c;
}
// O^T row (tile i, row 16w + 8h + g) is this latent dim.
__device__ __forceinline__ int r8_out_dim(int i, int w, int h, int g) {
    return 128 * (i / 2) + 4 * (8 * w + g) + 2 * (i % 2) + h;
}

// ---- register-operand wgmma: D(64 x ROWS) (+)= A(64 x 16, registers) * B(ROWS x 16, K-major smem) --

// TY: f16 or bf16 (A and B); the accumulate flag as a predicate.
#if ROWS == 16
#define R8_WGMMA_RS(TY)                                                                                     \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"                                              \
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32." TY "." TY                                    \
                 " {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"              \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]) \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate))
#else
#define R8_WGMMA_RS(TY)                                                                                     \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"                                              \
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32." TY "." TY                                    \
                 " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, " \
                 "%20, p, 1, 1, 0;\n}\n"                                                                    \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),       \
                   "+f"(d[15])                                                                               \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate))
#endif
__device__ __forceinline__ void r8_wgmma_f16(float* d, const u32 (&a)[4], u64 b, u32 accumulate) { R8_WGMMA_RS("f16"); }
__device__ __forceinline__ void r8_wgmma_bf16(float* d, const u32 (&a)[4], u64 b, u32 accumulate) { R8_WGMMA_RS("bf16"); }
__device__ __forceinline__ void r8_reg_fence(u32 (&r)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) reg_fence(r[i]);
}

// The four e4m3 codes of w (the low byte first) as two f16x2 (exact): lo = bytes 0, 1; hi = 2, 3
// (one conversion each, the high half read in place).
__device__ __forceinline__ void r8_e4m3x4_f16(u32 w, u32& lo, u32& hi) {
    asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}"
        : "=r"(lo), "=r"(hi)
        : "r"(w));
}
// An f16x2 of e4m3 values as bf16x2 (exact).
__device__ __forceinline__ u32 r8_f16x2_bf16(u32 h) {
    return pack2<true>(f16_to_f32((u16)(h & 0xffffu)), f16_to_f32((u16)(h >> 16)));
}
// 2^x (MUFU, subnormal results flushed to 0; 0 for -inf).
__device__ __forceinline__ float r8_ex2(float x) {
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
// a * b per bf16 half (exact when b is a power of two).
__device__ __forceinline__ u32 r8_mul_bf16x2(u32 a, u32 b) {
    u32 r;
    asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ u32 r8_prmt(u32 a, u32 b, u32 sel) {
    u32 r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
    return r;
}

// One bulk copy global -> shared of `bytes` (a multiple of 16), completing on `bar`.
__device__ __forceinline__ void r8_bulk_copy(void* dst, const void* src, u32 bytes, u64* bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(smem_u32(dst)),
        "l"(src), "r"(bytes), "r"(smem_u32(bar))
        : "memory");
}


// ---- the math warpgroups' columns ----------------------------------------------------------

// Column (query row of the CTA) ci of this thread's wgmma accumulator fragment (lane quarter tq).
__device__ __forceinline__ int r8_column(int ci, int tq) { return (ci / 2) * 8 + 2 * tq + (ci & 1); }

// This thread's columns (query rows r0 + r8_column(ci, tq)): the keys each sees (causal over the
// s_q positions; -1 for a row at or past rows_total) and its softmax multiplier
// scale_log2 * 2^-e_row.
__device__ __forceinline__ void r8_columns(int (&lim)[R8_NC], float (&cmul)[R8_NC], const int* row_exp, int tq,
                                           int r0, int rows_total, int len, int n_q, int heads, int k_end,
                                           float scale_log2) {
#pragma unroll
    for (int ci = 0; ci < R8_NC; ++ci) {
        const int c = r8_column(ci, tq);
        const int r = r0 + c;
        lim[ci] = r < rows_total ? min(len - (n_q - 1 - r / heads), k_end) : -1;
        cmul[ci] = scale_log2 * ldexpf(1.0f, -row_exp[c]);
    }
}

// Q rows r0.. of a request into Q'^T (9 swizzled blocks of R8_Q_BLOCK): each row's exponent e_row
// (2^e_row times its largest |latent| in [2^14, 2^15), 0 for a zero row, within +-120) into
// row_exp, the latent as f16 * 2^e_row and the rope as bf16 * 2^e_row at their logical columns
// (r8_latent_column, LATENT + r8_rope_column); rows past `rows` are zeros. Thread t of
// `nthreads` (a multiple of 32): rows t / 16, + nthreads / 16, .., latent dims 32 (t % 16).., rope
// dims 4 (t % 16)... The caller fences and synchronizes.
__device__ __forceinline__ void r8_stage_q(u8* sQ, int* row_exp, const u16* __restrict__ q, int rows, int t,
                                           int nthreads) {
    const int part = t % 16;
    for (int row = t / 16; row < ROWS; row += nthreads / 16) {
        const bool real = row < rows;
        const u16* qrow = q + (i64)row * R8_QK;
        float amax = 0.0f;
        if (real)
            for (int d = 32 * part; d < 32 * part + 32; ++d) amax = fmaxf(amax, fabsf(bf16_to_f32(qrow[d])));
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const int e_row =
            amax > 0.0f ? max(-120, min(120, 14 - ((int)((__float_as_uint(amax) >> 23) & 0xff) - 127))) : 0;
        if (part == 0) row_exp[row] = e_row;
        const float mul = ldexpf(1.0f, e_row);
        for (int d = 32 * part; d < 32 * part + 32; ++d) {
            const float x = real ? bf16_to_f32(qrow[d]) * mul : 0.0f;
            const int L = r8_latent_column(d);
            *reinterpret_cast<u16*>(sQ + (L / 64) * R8_Q_BLOCK + swizzle128(row, (L % 64) / 8) + (L % 8) * 2) =
                f32_to_f16(x);
        }
        for (int r = 4 * part; r < 4 * part + 4; ++r) {
            const float x = real ? bf16_to_f32(qrow[LATENT + r]) * mul : 0.0f;
            const int L = LATENT + r8_rope_column(r);
            *reinterpret_cast<u16*>(sQ + (L / 64) * R8_Q_BLOCK + swizzle128(row, (L % 64) / 8) + (L % 8) * 2) =
                f32_to_bf16(x);
        }
    }
}

// The producer warpgroup (threads 256..383): its first warp copies tile t's raw records into stage
// t % STAGES of sRaw for every tile of the CTA (block-table entries read before the wait for the
// stage; keys past the split's end and on bad pages zero-filled, bad pages flagged; one bulk copy
// per run of keys on a page; every lane arrives on the stage's full barrier, lane 0 first with the
// expected bytes); its other warps idle. All take part in the epilogue's two barriers.
template <int STAGES>
__device__ __forceinline__ void r8_producer_warpgroup(const u8* __restrict__ cache, const int* __restrict__ block_table,
                                                      i64 bt_row, int k_begin, int k_end, int ntiles, int page_size,
                                                      int num_pages, u8* sRaw, u64* full, u64* empty,
                                                      int* bad_page_flag) {
    setmaxnreg_dec<56>();  // 128 x 56 + 256 x 224 = 384 x 168, the launch allocation
    if (threadIdx.x >= 288) {
        // Idle: at the two barriers of the epilogue, so that no warp leaves before them.
        named_barrier_sync(R8_BAR_END, R8_THREADS);
        named_barrier_sync(R8_BAR_OUT, R8_THREADS);
        return;
    }
    const int lane = threadIdx.x % 32;
    int bad_page = 0;
    // Tile t's keys k0 + lane + 32k: at the start of a run of keys on one page, the run's
    // source and bytes; keys past the split's end or on a bad page (flagged) go in `zero`.
    auto plan = [&](int t, const u8* (&src)[2], u32 (&run_bytes)[2], u32& zero) {
        const int k0 = k_begin + t * R8_KEYS;
        zero = 0;
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const int kt = lane + 32 * k, j = k0 + kt;
            src[k] = nullptr;
            run_bytes[k] = 0;
            if (j >= k_end) {
                zero |= 1u << k;
                continue;
            }
            const int p = j / page_size, slot = j - p * page_size;
            const int page = __ldg(block_table + bt_row + p);
            if (page < 0 || page >= num_pages) {
                bad_page = 1;
                zero |= 1u << k;
            } else if (slot == 0 || kt == 0) {
                const int run = min(min(page_size - slot, k_end - j), R8_KEYS - kt);
                src[k] = cache + ((i64)page * page_size + slot) * R8_REC;
                run_bytes[k] = (u32)run * R8_REC;
            }
        }
    };
    for (int t = 0; t < ntiles; ++t) {
        const int s = t % STAGES;
        u8* stage = sRaw + s * R8_TILE_BYTES;
        // The block table first, then the wait for the stage.
        const u8* src[2];
        u32 run_bytes[2], zero;
        plan(t, src, run_bytes, zero);
        u32 bytes = run_bytes[0] + run_bytes[1];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) bytes += __shfl_xor_sync(0xffffffffu, bytes, o);
        mbar_wait(&empty[s], ((t / STAGES) & 1) ^ 1);
#pragma unroll
        for (int k = 0; k < 2; ++k)
            if (zero & (1u << k)) {
                uint4* z = reinterpret_cast<uint4*>(stage + (lane + 32 * k) * R8_REC);
#pragma unroll 1
                for (int c = 0; c < R8_REC / 16; ++c) z[c] = make_uint4(0, 0, 0, 0);
            }
        // Zeros written through the generic proxy, where copies (async proxy) write next round.
        if (__any_sync(0xffffffffu, zero != 0)) fence_proxy_async_smem();
        // Every lane arrives (releasing its own zeros); lane 0 first sets the bytes to wait for.
        if (lane == 0)
            mbar_arrive_expect_tx(&full[s], bytes);
        else
            mbar_arrive(&full[s]);
        __syncwarp();
#pragma unroll
        for (int k = 0; k < 2; ++k)
            if (src[k] != nullptr) r8_bulk_copy(stage + (lane + 32 * k) * R8_REC, src[k], run_bytes[k], &full[s]);
    }
    // One flag write per warp, and the warp converged at the barriers (a warp arriving in pieces
    // would count more than once).
    if (__any_sync(0xffffffffu, bad_page) && lane == 0) atomicOr(bad_page_flag, 1);
    __syncwarp();
    named_barrier_sync(R8_BAR_END, R8_THREADS);
    named_barrier_sync(R8_BAR_OUT, R8_THREADS);
}

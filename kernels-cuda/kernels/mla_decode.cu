// MLA absorbed decode over the paged latent cache, with split-KV, on the tensor cores
// (mma.sync m16n8k16 bf16, f32 accumulation). Prepended: common.cuh, mla_work.cuh (the CTA's
// queries and keys, shared with the Hopper kernel sm90/mla_decode.cu).
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/mla.rs):
//   FMT         0 = bf16 cache records [latent bf16 | rope bf16]
//               1 = FP8 records [latent e4m3 | latent/128 f32 scales | rope bf16]
//   LATENT      latent_dim, or 0 = taken from the run-time argument (then ROPE is 0 too)
//   ROPE        rope_dim when LATENT != 0
//   DV_CHUNK    output (latent) columns per CTA, a multiple of 128; latent_dim > DV_CHUNK gives
//               several column chunks, each recomputing the scores
//   ROW_SLICES  16-row slices of queries per CTA: 1, 2 or 4 (M = 16 * ROW_SLICES rows)
//   KEY_TILE    keys per shared-memory tile (N): 32 or 64
//   STAGES      key tiles in the cp.async pipeline: 2, 3 or 4
//   VARLEN      0 = s_q queries per request (q, o, lse as below)
//               1 = a variable number per request: request b owns the packed query tokens
//               cu_seqlens_q[b] .. cu_seqlens_q[b + 1] (at most s_q = max_s_q of them), q bf16
//               [total_q, heads, qk], o bf16 [total_q, heads, latent], lse f32 [heads, total_q];
//               the grid and the workspace are those of s_q = max_s_q, CTAs past a request's
//               rows exit at once
//   TESSERA_SMEM_BYTES  mla_smem_layout(...).end below: checked at compile time when the dims are
//               compile-time (LATENT != 0); 0 when they are run-time, and then the kernel checks
//               its layout against the launch's dynamic shared memory (and traps if it is short)
//   TESSERA_THREADS     256 (8 warps)
//
// Problem (one KV head, multi-query): for request b, the rows are its n * heads queries (n = s_q,
// or its count with VARLEN), row r = i * heads + h (the order of q); query i sees keys
// j < len - (n - 1 - i).
//   q       bf16 [batch, s_q * heads, qk]          qk = latent + rope
//   cache   u8   [num_pages, page_size, token_bytes]
//   block_table i32 [batch, max_pages]; seq_lens i32 [batch]
//   o       bf16 [batch, s_q * heads, latent]      (direct mode: a request of one split)
//   lse     f32  [batch, heads, s_q], natural log  (direct mode)
//   ws      f32  split mode: [ws_slots, s_q * heads, latent] (each split's normalized o, at its
//                request's first slot + split), then [ws_slots, s_q * heads] (each split's lse),
//                then the split-KV schedule (i32, mla_work.cuh; ws_slots 0: no schedule, every
//                request one split, unit b = request b)
//
// Grid: units x column chunks x row groups, a unit being a (request, split) of the schedule that
// mla_schedule.cu wrote before this launch (CTAs past the schedule's units exit at once).
// CTA: 8 warps, M = 16 * RS rows (RS row slices of 16) of one request, one split of its keys,
// one chunk of DV_CHUNK output columns; key tiles of N keys.
//   S = Q K^T   warp (rs, cw), rs < RS, cw < CW = 8 / RS: rows rs*16..+16 and keys cw*KW..+KW
//               of the tile, over all qk dims, for the first SCW = min(CW, N / 8) warps of a
//               slice (KW = N / SCW, 8 or 16 keys); two accumulator sets (even / odd k-steps)
//               for instruction-level parallelism. With RS = 1 and compile-time dims, the Q
//               fragments stay in registers for the whole kernel.
//   softmax     online, f32, in the log2 domain; the row max is exchanged between the warps of a
//               row slice through shared memory (every warp then knows the running max of every
//               row), the row sums stay per warp until the end;
//   O += P V    warp w: all M rows, latent columns w*WC..+WC of the chunk (WC = DV_CHUNK / 8), so
//               that each V element is read from shared memory once; P (bf16) is read back from
//               shared memory, V is the latent part of the same key tile.
// Key tiles are read through the block table: each warp copies N / 8 keys of a tile; their
// block-table entries are fetched one tile ahead into registers (lane i holds key i's) so that
// the copies of a tile never wait for a table lookup.
// Shared memory: Q [M][qk+8] bf16 (none when Q lives in registers: it is staged in a key
// buffer), key tiles [N][qk+8] bf16 (STAGES of them, a cp.async pipeline, for bf16 records; one
// for FP8, which pipelines raw records in STAGES buffers [N][token_bytes rounded up to 16] and
// dequantizes each tile: e4m3 times a power-of-two scale is exact in bf16), P [M][N+8] bf16, the
// row-max / row-sum exchange [CW][M] f32.
// The +8 padding makes every ldmatrix conflict-free (the row pitch is an odd number of 16 bytes).
//
// Error signal: a block-table entry read for a key (only those of keys < len) outside
// 0..num_pages, or a length outside 0..=max_pages*page_size, is never dereferenced; the outputs
// of the rows of that CTA (and so of their request in split mode) become NaN. With VARLEN, a
// request whose offsets are out of range (start < 0, count outside 0..=s_q, end > total_q) has
// no rows: nothing of it is read or written.

#ifndef FMT
#error "FMT is required (0 = bf16 records, 1 = FP8 records)"
#endif
#ifndef LATENT
#error "LATENT is required (latent_dim, or 0 for run-time dims)"
#endif
#ifndef ROPE
#error "ROPE is required (rope_dim, 0 with run-time dims)"
#endif
#ifndef DV_CHUNK
#error "DV_CHUNK is required (output columns per CTA, a multiple of 128)"
#endif
#ifndef ROW_SLICES
#error "ROW_SLICES is required (16-row query slices per CTA: 1, 2 or 4)"
#endif
#ifndef KEY_TILE
#error "KEY_TILE is required (keys per tile: 32 or 64)"
#endif
#ifndef STAGES
#error "STAGES is required (key tiles in flight: 2, 3 or 4)"
#endif
#ifndef VARLEN
#error "VARLEN is required (0 = s_q queries per request, 1 = cu_seqlens_q offsets)"
#endif
#if FMT != 0 && FMT != 1
#error "FMT must be 0 or 1"
#endif
#if LATENT < 0 || LATENT > 1024 || LATENT % 64 != 0 || (FMT == 1 && LATENT % 128 != 0)
#error "LATENT must be 0 or a multiple of 64 (128 for FP8) up to 1024"
#endif
#if ROPE < 0 || ROPE > 256 || ROPE % 16 != 0 || (LATENT == 0 && ROPE != 0)
#error "ROPE must be a multiple of 16 up to 256, and 0 when LATENT is 0"
#endif
#if DV_CHUNK < 128 || DV_CHUNK > 1024 || DV_CHUNK % 128 != 0
#error "DV_CHUNK must be a multiple of 128 in 128..1024"
#endif
#if ROW_SLICES != 1 && ROW_SLICES != 2 && ROW_SLICES != 4
#error "ROW_SLICES must be 1, 2 or 4"
#endif
#if KEY_TILE != 32 && KEY_TILE != 64
#error "KEY_TILE must be 32 or 64"
#endif
#if STAGES < 2 || STAGES > 4
#error "STAGES must be 2, 3 or 4"
#endif
#if VARLEN != 0 && VARLEN != 1
#error "VARLEN must be 0 or 1"
#endif

#define MLA_WARPS 8
#define MLA_THREADS 256
static_assert(MLA_THREADS == TESSERA_THREADS, "the host's threads per CTA must be 8 warps");

// ---- local helpers ---------------------------------------------------------------------------

// ldmatrix: two 8x8 b16 matrices (lanes 0-15 give the row addresses).
__device__ __forceinline__ void mla_ldmatrix_x2(u32 r[2], const void* smem_row) {
    u32 addr = (u32)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(addr));
}

// Copies 4 bytes global -> shared; when !valid, writes 4 zero bytes instead (src not read).
__device__ __forceinline__ void mla_cp_async_4(void* smem, const void* gmem, bool valid) {
    u32 addr = (u32)__cvta_generic_to_shared(smem);
    int src_size = valid ? 4 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(addr), "l"(gmem), "r"(src_size));
}

// Two e4m3 codes (the low byte first) times the power-of-two scale s, as packed bf16 (exact).
__device__ __forceinline__ u32 mla_e4m3x2_scaled(u32 pair, float s) {
    float lo, hi;
#if __CUDA_ARCH__ >= 890
    u32 h;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"((u16)pair));
    lo = f16_to_f32((u16)(h & 0xffffu));
    hi = f16_to_f32((u16)(h >> 16));
#else
    lo = e4m3_to_f32((u8)(pair & 0xffu));
    hi = e4m3_to_f32((u8)((pair >> 8) & 0xffu));
#endif
    return pack2<true>(lo * s, hi * s);
}

// Bytes of a raw FP8 record in shared memory.
__host__ __device__ constexpr int mla_raw_pitch(int token_bytes) { return (token_bytes + 15) / 16 * 16; }

// Byte offsets of the shared-memory regions of a CTA of M = 16 * RS rows and N-key tiles, for
// rows of qk values and records of token_bytes (see the layout above). The kernel places its
// regions with it, and TESSERA_SMEM_BYTES is checked against `end` (the host computes the same
// size in kernels-cuda/src/plan/mla.rs).
struct MlaSmemLayout {
    int q, keys, raw, p, red, end;
};

template <int RS, int N>
__host__ __device__ constexpr MlaSmemLayout mla_smem_layout(int qk, int token_bytes) {
    const int M = 16 * RS;
    const int CW = MLA_WARPS / RS;
    const bool qreg = LATENT != 0 && RS == 1;  // Q fragments in registers, staged in a key buffer
    const int kbuf = FMT == 0 ? STAGES : 1;
    const int pitch = 2 * (qk + 8);            // bytes per Q / key row
    MlaSmemLayout l{0, 0, 0, 0, 0, 0};
    l.q = 0;
    l.keys = l.q + (qreg ? 0 : M * pitch);
    l.raw = l.keys + kbuf * N * pitch;
    l.p = l.raw + (FMT == 1 ? STAGES * N * mla_raw_pitch(token_bytes) : 0);
    l.red = l.p + M * (N + 8) * 2;
    l.end = l.red + CW * M * 4;
    return l;
}

#if LATENT != 0
#define MLA_TOKEN_BYTES (FMT == 0 ? 2 * (LATENT + ROPE) : LATENT + LATENT / 32 + 2 * ROPE)
static_assert(mla_smem_layout<ROW_SLICES, KEY_TILE>(LATENT + ROPE, MLA_TOKEN_BYTES).end == TESSERA_SMEM_BYTES,
              "the host's shared-memory size must match the decode kernel's layout");
#else
static_assert(TESSERA_SMEM_BYTES == 0, "run-time dims: the shared memory is sized at run time (checked on the device)");
#endif

// ---- the decode kernel -------------------------------------------------------------------------

template <int RS, int N>
__device__ __forceinline__ void mla_decode_impl(
    MLA_DECODE_PROBLEM_PARAMS) {
    constexpr int M = 16 * RS;
    constexpr int CW = MLA_WARPS / RS;            // S-phase warps per row slice
    constexpr int SCW = CW < N / 8 ? CW : N / 8;  // of which compute scores
    constexpr int KW = N / SCW;                   // keys per score warp
    constexpr int KNT = KW / 8;                   // S n-tiles per score warp
    constexpr int WC = DV_CHUNK / MLA_WARPS;      // output columns per warp (all M rows)
    constexpr int NT = WC / 8;                    // O n-tiles per warp and row slice
    constexpr int KPW = N / MLA_WARPS;            // keys each warp copies per tile
    constexpr bool QREG = LATENT != 0 && RS == 1; // Q fragments in registers
    constexpr int QKS = QREG ? (LATENT + ROPE) / 16 : 1;  // their k-steps
    static_assert(KW == 8 || KW == 16, "keys per score warp must be 8 or 16");
    static_assert(NT % 2 == 0, "output columns per warp must be a multiple of 16");
    static_assert(N % 16 == 0 && KPW >= 1 && KPW <= 32, "bad key tile");
    static_assert(STAGES >= 2, "at least double buffering");

    const int latent = LATENT ? LATENT : latent_rt;
    const int rope = LATENT ? ROPE : rope_rt;
    const int qk = latent + rope;
    const int QS = qk + 8;  // row pitch of Q and K tiles, elements

    extern __shared__ __align__(16) u8 smem[];
    // With Q in registers, Q has no region of its own: it is staged in a key buffer that the
    // pipeline fills only after the fragments are read (the last bf16 stage, or the FP8 format's
    // bf16 tile).
    const MlaSmemLayout layout = mla_smem_layout<RS, N>(qk, token_bytes);
#if LATENT == 0
    // Run-time dims: the host sized the launch from the same layout; a mismatch is a bug, and
    // stops the kernel rather than overrun shared memory.
    if ((u32)layout.end > dynamic_smem_size()) __trap();
#endif
    u16* sQ = reinterpret_cast<u16*>(smem + layout.q);
    u16* sK = reinterpret_cast<u16*>(smem + layout.keys);
    u8* sRaw = smem + layout.raw;
    const int raw_pitch = mla_raw_pitch(token_bytes);
    u16* sP = reinterpret_cast<u16*>(smem + layout.p);
    u16* sQload = QREG && FMT == 0 ? sK + (STAGES - 1) * N * QS : sQ;
    constexpr int PS = N + 8;  // pitch of P, elements
    float* sRed = reinterpret_cast<float*>(smem + layout.red);

    // Block -> (unit, column chunk, row group); row groups of one unit run together. A unit is a
    // (request, split) of the schedule (mla_work.cuh).
    i64 bid = blockIdx.x;
    const int rg = (int)(bid % row_groups);
    bid /= row_groups;
    const int chunk = (int)(bid % col_chunks);
    const int unit = (int)(bid / col_chunks);

    const int tid = threadIdx.x;
    const int warp = tid / 32, lane = tid % 32;
    const int rs = warp / CW, cw = warp % CW;
    const int g = lane / 4, tq = lane % 4;
    const bool s_warp = cw < SCW;  // this warp computes scores

    // This unit's request and split, its queries and keys (mla_work.cuh). CTAs past the schedule's
    // units, or past the request's rows (VARLEN), have nothing to do; the whole CTA leaves before
    // any barrier.
    const int r0 = rg * M;
    MlaCtaWork work;
    if (!mla_cta_work(seq_lens, cu_seqlens_q, schedule, unit, r0, M, N, batch, s_q, total_q, heads, max_pages,
                      page_size, ws_slots, work))
        return;
    const int b = work.b;
    const int q_begin = work.q_begin, n_q = work.n_q, rows_total = work.rows_total, rows_pad = work.rows_pad;
    const int rows_here = work.rows_here;
    const bool bad_len = work.bad_len;
    const int len = work.len, k_begin = work.k_begin, k_end = work.k_end, ntiles = work.ntiles;

    // Keys each of this thread's two score rows may see (exclusive bound); padding rows none.
    int lim[2];
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        const int r = r0 + rs * 16 + g + 8 * ri;
        if (r < rows_total) {
            const int i = r / heads;
            lim[ri] = min(len - (n_q - 1 - i), k_end);
        } else {
            lim[ri] = -1;
        }
    }

    int bad_page = 0;  // set when a block-table entry in use is out of range
    const i64 bt_row = (i64)b * max_pages;

    const bool page_pow2 = (page_size & (page_size - 1)) == 0;
    const int page_shift = __ffs(page_size) - 1;
    // Lane i < KPW of each warp fetches the block-table entry of the warp's key i of tile t
    // (returned) and that key's row in its page (`in_page`).
    auto fetch_pages = [&](int t, int& in_page) -> int {
        int page = 0;
        in_page = 0;
        if (lane < KPW && t < ntiles) {
            const int j = k_begin + t * N + warp + MLA_WARPS * lane;
            if (j < k_end) {
                const int p = page_pow2 ? j >> page_shift : (int)((u32)j / (u32)page_size);
                in_page = j - p * page_size;
                page = __ldg(block_table + bt_row + p);
            }
        }
        return page;
    };
    // Issues the copies of key tile t (lane i holding key i's page and row) into buffer `buf`.
    auto load_tile = [&](int t, int buf, int page, int in_page) {
        // Lane i < KPW: byte offset of key i's record, or -1 to zero-fill (past the range, or a
        // bad page, which is flagged and never read).
        i64 off = -1;
        {
            const int j = k_begin + t * N + warp + MLA_WARPS * lane;
            if (lane < KPW && j < k_end) {
                if (page < 0 || page >= num_pages) {
                    bad_page = 1;
                } else {
                    off = ((i64)page * page_size + in_page) * token_bytes;
                }
            }
        }
        const u32 off_lo = (u32)(u64)off, off_hi = (u32)((u64)off >> 32);
#pragma unroll
        for (int i = 0; i < KPW; ++i) {
            const int kk = warp + MLA_WARPS * i;
            const i64 o = (i64)(((u64)__shfl_sync(0xffffffffu, off_hi, i) << 32) | __shfl_sync(0xffffffffu, off_lo, i));
            const bool valid = o >= 0;
            const u8* src = valid ? cache + o : cache;
            // Lane l copies chunks l, l + 32, ... (a compile-time number of rounds: the bound is
            // the largest record of the variant).
#if FMT == 0
            constexpr int CR = LATENT ? ((LATENT + ROPE) / 8 + 31) / 32 : (1024 + 256) / 8 / 32;
            u16* dst = sK + (buf * N + kk) * QS;
#pragma unroll
            for (int r = 0; r < CR; ++r) {
                const int c = lane + 32 * r;
                if (c < qk / 8) cp_async_16(dst + c * 8, src + c * 16, valid);
            }
#else
            u8* dst = sRaw + (buf * N + kk) * raw_pitch;
            // Compile-time dims fix the record size, and so the copy width.
            constexpr int TB_C = LATENT + LATENT / 32 + 2 * ROPE;
            if (LATENT ? TB_C % 16 == 0 : (token_bytes & 15) == 0) {
                constexpr int CR = LATENT ? ((LATENT + LATENT / 32 + 2 * ROPE) / 16 + 31) / 32 : (1568 / 16 + 31) / 32;
#pragma unroll
                for (int r = 0; r < CR; ++r) {
                    const int c = lane + 32 * r;
                    if (c < token_bytes / 16) cp_async_16(dst + c * 16, src + c * 16, valid);
                }
            } else if (LATENT == 0 || TB_C % 16 != 0) {
                constexpr int CR = LATENT ? (TB_C / 4 + 31) / 32 : (1568 / 4 + 31) / 32;
#pragma unroll
                for (int r = 0; r < CR; ++r) {
                    const int c = lane + 32 * r;
                    if (c < token_bytes / 4) mla_cp_async_4(dst + c * 4, src + c * 4, valid);
                }
            }
#endif
        }
    };

    // Prologue: Q (its own commit group), the first STAGES - 1 key tiles (one group each), the
    // table entries of the next tile.
    {
        const u16* qb = q + ((i64)q_begin * heads + r0) * qk;
        const int cpr = qk / 8;  // 16-byte chunks per row
        for (int idx = tid; idx < M * cpr; idx += MLA_THREADS) {
            const int row = idx / cpr, c = idx % cpr;
            const bool valid = row < rows_here;
            cp_async_16(sQload + row * QS + c * 8, valid ? (const void*)(qb + (i64)row * qk + c * 8) : (const void*)q, valid);
        }
    }
    cp_async_commit();
    int in_page_next;
#pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) {
        if (t < ntiles) {
            const int page = fetch_pages(t, in_page_next);
            load_tile(t, t, page, in_page_next);
        }
        cp_async_commit();
    }
    int pages_next = fetch_pages(STAGES - 1, in_page_next);

    const u16* qa = sQload + (rs * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * QS + (lane / 16) * 8;
    u32 qf[QKS][4];
    if constexpr (QREG) {
        cp_async_wait<STAGES - 1>();
        __syncthreads();
#pragma unroll
        for (int k = 0; k < QKS; ++k) ldmatrix_x4(qf[k], qa + 16 * k);
    }

    float m_o[RS][2];  // running max (log2 domain) of rows mt*16 + g + 8h
    float l_s[2] = {0.0f, 0.0f};  // this warp's share of the row sums of its score rows
    float acc[RS][NT][4];
#pragma unroll
    for (int mt = 0; mt < RS; ++mt) {
        m_o[mt][0] = m_o[mt][1] = TESSERA_NEG_INF;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;
    }

    const int col0 = chunk * DV_CHUNK + warp * WC;  // first output column of this warp

    for (int t = 0; t < ntiles; ++t) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile t is in; every warp is done with tile t-1 (and with Q)
        {
            const int tn = t + STAGES - 1;  // into the buffer of tile t-1
            if (tn < ntiles) load_tile(tn, tn % STAGES, pages_next, in_page_next);
            cp_async_commit();
            pages_next = fetch_pages(tn + 1, in_page_next);
        }
        const int cur = t % STAGES;
#if FMT == 1
        {
            // Dequantize the raw records of tile t into the bf16 key tile, 16 codes at a time.
            const u8* rawb = sRaw + cur * N * raw_pitch;
            const int cpk = latent / 16;
            for (int idx = tid; idx < N * cpk; idx += MLA_THREADS) {
                const int kk = idx / cpk, c = idx - kk * cpk;
                const u8* rec = rawb + kk * raw_pitch;
                const uint4 codes = *reinterpret_cast<const uint4*>(rec + 16 * c);
                const float s = reinterpret_cast<const float*>(rec + latent)[c / 8];
                uint4 lo, hi;
                lo.x = mla_e4m3x2_scaled(codes.x, s);
                lo.y = mla_e4m3x2_scaled(codes.x >> 16, s);
                lo.z = mla_e4m3x2_scaled(codes.y, s);
                lo.w = mla_e4m3x2_scaled(codes.y >> 16, s);
                hi.x = mla_e4m3x2_scaled(codes.z, s);
                hi.y = mla_e4m3x2_scaled(codes.z >> 16, s);
                hi.z = mla_e4m3x2_scaled(codes.w, s);
                hi.w = mla_e4m3x2_scaled(codes.w >> 16, s);
                uint4* dst = reinterpret_cast<uint4*>(sK + kk * QS + 16 * c);
                dst[0] = lo;
                dst[1] = hi;
            }
            const int rope_words = rope / 2;
            const int rope_off = latent + 4 * (latent / 128);
            for (int idx = tid; idx < N * rope_words; idx += MLA_THREADS) {
                const int kk = idx / rope_words, w = idx - kk * rope_words;
                reinterpret_cast<u32*>(sK + kk * QS + latent)[w] =
                    reinterpret_cast<const u32*>(rawb + kk * raw_pitch + rope_off)[w];
            }
        }
        __syncthreads();
        const u16* sKt = sK;
#else
        const u16* sKt = sK + cur * N * QS;
#endif
        const int j0 = k_begin + t * N;

        // ---- S = Q K^T for rows rs*16.., keys cw*KW.. ----
        float s[KNT][4], s2[KNT][4];
#pragma unroll
        for (int nt = 0; nt < KNT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = s2[nt][e] = 0.0f;
        if (s_warp) {
            const u16* kb = KW == 16
                ? sKt + (cw * KW + (lane % 8) + (lane / 16) * 8) * QS + ((lane / 8) % 2) * 8
                : sKt + (cw * KW + (lane % 8)) * QS + ((lane / 8) % 2) * 8;
            // One k-step of 16 dims into the accumulator set sa.
            auto step = [&](const u32* a, int k0, float (&sa)[KNT][4]) {
                if constexpr (KW == 16) {
                    u32 bb[4];
                    ldmatrix_x4(bb, kb + k0);
                    const u32 b0[2] = {bb[0], bb[1]};
                    const u32 b1[2] = {bb[2], bb[3]};
                    mma_16816<true>(sa[0], a, b0);
                    mma_16816<true>(sa[KNT - 1], a, b1);
                } else {
                    u32 bb[2];
                    mla_ldmatrix_x2(bb, kb + k0);
                    mma_16816<true>(sa[0], a, bb);
                }
            };
            if constexpr (QREG) {
#pragma unroll
                for (int k = 0; k + 1 < QKS; k += 2) {
                    step(qf[k], 16 * k, s);
                    step(qf[k + 1], 16 * (k + 1), s2);
                }
                if constexpr (QKS % 2 == 1) step(qf[QKS - 1], 16 * (QKS - 1), s);
            } else {
                int k0 = 0;
#pragma unroll 2
                for (; k0 + 32 <= qk; k0 += 32) {
                    u32 a0[4], a1[4];
                    ldmatrix_x4(a0, qa + k0);
                    ldmatrix_x4(a1, qa + k0 + 16);
                    step(a0, k0, s);
                    step(a1, k0 + 16, s2);
                }
                if (k0 < qk) {
                    u32 a0[4];
                    ldmatrix_x4(a0, qa + k0);
                    step(a0, k0, s);
                }
            }
#pragma unroll
            for (int nt = 0; nt < KNT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[nt][e] += s2[nt][e];
        }

        // ---- scale, mask, row max of the score rows ----
        // (Warps that compute no scores see only -inf, and write no P.)
        float mx[2] = {TESSERA_NEG_INF, TESSERA_NEG_INF};
#pragma unroll
        for (int nt = 0; nt < KNT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = j0 + cw * KW + nt * 8 + 2 * tq + (e & 1);
                const int ri = e >> 1;
                const float v = s_warp && key < lim[ri] ? s[nt][e] * scale_log2 : TESSERA_NEG_INF;
                s[nt][e] = v;
                mx[ri] = fmaxf(mx[ri], v);
            }
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) {
            mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 1));
            mx[ri] = fmaxf(mx[ri], __shfl_xor_sync(0xffffffffu, mx[ri], 2));
            if (tq == 0) sRed[cw * M + rs * 16 + g + 8 * ri] = mx[ri];
        }
        __syncthreads();

        // ---- new running max of every row this thread holds in O (its score rows among them) ----
        float alpha[RS][2], off_s[2] = {0.0f, 0.0f}, alpha_s[2] = {1.0f, 1.0f};
#pragma unroll
        for (int mt = 0; mt < RS; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = mt * 16 + g + 8 * h;
                float mt_max = TESSERA_NEG_INF;
#pragma unroll
                for (int c = 0; c < CW; ++c) mt_max = fmaxf(mt_max, sRed[c * M + row]);
                const float m_new = fmaxf(m_o[mt][h], mt_max);
                const float off = m_new == TESSERA_NEG_INF ? 0.0f : m_new;
                alpha[mt][h] = exp2f(m_o[mt][h] - off);
                m_o[mt][h] = m_new;
                if (mt == rs) {
                    off_s[h] = off;
                    alpha_s[h] = alpha[mt][h];
                }
            }

        // ---- P = exp2(S - m), row sums, P to shared memory as bf16 ----
        float ps[2] = {0.0f, 0.0f};
        if (s_warp) {
#pragma unroll
            for (int nt = 0; nt < KNT; ++nt) {
                const float p0 = exp2f(s[nt][0] - off_s[0]);
                const float p1 = exp2f(s[nt][1] - off_s[0]);
                const float p2 = exp2f(s[nt][2] - off_s[1]);
                const float p3 = exp2f(s[nt][3] - off_s[1]);
                const u32 lo = pack2<true>(p0, p1);
                const u32 hi = pack2<true>(p2, p3);
                // Sum the probabilities in f32, before rounding, so that lse is exact to f32
                // (summing the bf16-rounded values biased lse by up to 2^-9).
                ps[0] += p0 + p1;
                ps[1] += p2 + p3;
                const int key = cw * KW + nt * 8 + 2 * tq;
                *reinterpret_cast<u32*>(sP + (rs * 16 + g) * PS + key) = lo;
                *reinterpret_cast<u32*>(sP + (rs * 16 + g + 8) * PS + key) = hi;
            }
        }
#pragma unroll
        for (int ri = 0; ri < 2; ++ri) l_s[ri] = l_s[ri] * alpha_s[ri] + ps[ri];
#pragma unroll
        for (int mt = 0; mt < RS; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                acc[mt][nt][0] *= alpha[mt][0];
                acc[mt][nt][1] *= alpha[mt][0];
                acc[mt][nt][2] *= alpha[mt][1];
                acc[mt][nt][3] *= alpha[mt][1];
            }
        __syncthreads();

        // ---- O += P V for all rows, columns col0.. ----
        {
            const u16* pa = sP + ((lane % 8) + ((lane / 8) % 2) * 8) * PS + (lane / 16) * 8;
            const u16* vb = sKt + ((lane % 8) + ((lane / 8) % 2) * 8) * QS + col0 + (lane / 16) * 8;
#pragma unroll
            for (int k0 = 0; k0 < N; k0 += 16) {
                u32 a[RS][4];
#pragma unroll
                for (int mt = 0; mt < RS; ++mt) ldmatrix_x4(a[mt], pa + mt * 16 * PS + k0);
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    if (LATENT == 0 && col0 + np * 16 >= latent) break;
                    u32 bb[4];
                    ldmatrix_x4_trans(bb, vb + k0 * QS + np * 16);
                    const u32 b0[2] = {bb[0], bb[1]};
                    const u32 b1[2] = {bb[2], bb[3]};
#pragma unroll
                    for (int mt = 0; mt < RS; ++mt) {
                        mma_16816<true>(acc[mt][2 * np], a[mt], b0);
                        mma_16816<true>(acc[mt][2 * np + 1], a[mt], b1);
                    }
                }
            }
        }
    }

    // ---- epilogue: total row sums, normalize, write ----
    mla_decode_epilogue_begins();
#pragma unroll
    for (int ri = 0; ri < 2; ++ri) {
        l_s[ri] += __shfl_xor_sync(0xffffffffu, l_s[ri], 1);
        l_s[ri] += __shfl_xor_sync(0xffffffffu, l_s[ri], 2);
    }
    cp_async_wait<0>();
    // Also a barrier: every warp is past its last read of sRed.
    const bool bad = __syncthreads_or(bad_len || bad_page) != 0;
#pragma unroll
    for (int ri = 0; ri < 2; ++ri)
        if (tq == 0) sRed[cw * M + rs * 16 + g + 8 * ri] = l_s[ri];
    __syncthreads();
    float* ws_lse = ws + (i64)ws_slots * rows_pad * latent;
#pragma unroll
    for (int mt = 0; mt < RS; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = mt * 16 + g + 8 * h;
            const int r = r0 + row;
            if (r >= rows_total) continue;
            float lt = 0.0f;
#pragma unroll
            for (int c = 0; c < CW; ++c) lt += sRed[c * M + row];
            float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
            float lse_v = lt > 0.0f ? (m_o[mt][h] + log2f(lt)) * 0.69314718055994531f : TESSERA_NEG_INF;
            if (bad) {
                inv = TESSERA_NAN;
                lse_v = TESSERA_NAN;
            }
            const bool write_lse = chunk == 0 && warp == 0 && tq == 0;
            if (work.splits == 1) {
                u16* orow = o + ((i64)q_begin * heads + r) * latent;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int col = col0 + nt * 8 + 2 * tq;
                    if (LATENT == 0 && col >= latent) break;
                    *reinterpret_cast<u32*>(orow + col) = pack2<true>(acc[mt][nt][2 * h] * inv, acc[mt][nt][2 * h + 1] * inv);
                }
                if (write_lse) lse[mla_lse_index(b, r, q_begin, heads, s_q, total_q)] = lse_v;
            } else {
                const i64 wrow = (i64)work.ws_slot * rows_pad + r;
                float* orow = ws + wrow * latent;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const int col = col0 + nt * 8 + 2 * tq;
                    if (LATENT == 0 && col >= latent) break;
                    *reinterpret_cast<float2*>(orow + col) = make_float2(acc[mt][nt][2 * h] * inv, acc[mt][nt][2 * h + 1] * inv);
                }
                if (write_lse) ws_lse[wrow] = lse_v;
            }
        }
}

// The entry point: one tiling (ROW_SLICES, KEY_TILE, STAGES) per compiled variant.
extern "C" __global__ void __launch_bounds__(MLA_THREADS, 1) mla_decode(
    MLA_DECODE_PARAMS) {
    mla_decode_impl<ROW_SLICES, KEY_TILE>(q, cache, block_table, seq_lens, cu_seqlens_q, schedule, o, lse, ws, batch,
                                          s_q, total_q, heads, max_pages, page_size, num_pages, latent_rt, rope_rt,
                                          token_bytes, ws_slots, row_groups, col_chunks, scale_log2);
    (void)cache_map;  // the Hopper seesaw's; unused here
    (void)scale_map;
}

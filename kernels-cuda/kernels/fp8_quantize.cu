// FP8 quantizers (DeepSeek-V3 recipe): E4M3 values with one f32 scale per 1x128 group of a row
// (activations) or per 128x128 block (weights).
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/quantize.rs):
//   IN_KIND          0 = f32 input, 1 = f16, 2 = bf16
//   POW2             1 = scales rounded up to a power of two, 0 = not
//   GROUP_THREADS    threads per 1x128 group on fp8_quantize_1x128's vector path: 16 (8 columns
//                    each) or 8 (16 columns each, as two 8-column chunks 64 columns apart, so that
//                    every load instruction of a warp is contiguous)
//   GROUP_BATCH      units each warp of fp8_quantize_1x128 loads before it reduces any, 1..8 (a
//                    unit: the 32 / GROUP_THREADS consecutive groups of one warp-wide step)
//   MIN_CTAS_PER_SM  CTAs per SM the registers are capped for (__launch_bounds__);
//                    fp8_quantize_1x128's grid is at most this many CTAs per SM
//   UNIT_ORDER       the units each warp of fp8_quantize_1x128 takes (W warps in the grid, U
//                    units): 0 = a balanced contiguous range [w U / W, (w + 1) U / W);
//                    1 = interleaved, warp w takes units w, w + W, w + 2 W, ... (the grid reads
//                    one window of about W units at a time, not W separate streams; the warps'
//                    counts differ by at most one unit)
//   TESSERA_SMEM_BYTES 0 (no dynamic shared memory); TESSERA_THREADS 256 (8 warps)
//
// Grids: fp8_quantize_1x128 is persistent: each warp takes its units (UNIT_ORDER) and walks
// them batch after batch, the next batch's loads issued before the current batch is reduced.
// fp8_quantize_128x128 is one CTA per 128x128 tile (x: column tiles, y: row tiles).
// (Other grids measured on the H200: kernels-cuda/dev/NOTES-fp8-quantize.md.)
//
// Vector path (columns a multiple of 8, x and q 16- and 8-byte aligned): a thread loads 8
// consecutive inputs with one or two 16-byte loads (streamed past L1) and stores their 8 bytes
// at once (streaming). Otherwise the scalar path, one element at a time. Both give the same bits.
//
// Scale rule (bit-exact with tessera_core::ops::fp8::fp8_scale): s = max(amax, 1e-4f) / 448
// (IEEE division), optionally rounded up to a power of two; q = e4m3(x / s) (IEEE division,
// round to nearest even, saturating). How x / s is computed: see GroupScale.

#ifndef IN_KIND
#error "IN_KIND is required (0 = f32, 1 = f16, 2 = bf16)"
#endif
#ifndef POW2
#error "POW2 is required (1 = power-of-two scales, 0 = not)"
#endif
#if IN_KIND != 0 && IN_KIND != 1 && IN_KIND != 2
#error "IN_KIND must be 0, 1 or 2"
#endif
#if POW2 != 0 && POW2 != 1
#error "POW2 must be 0 or 1"
#endif
#ifndef GROUP_THREADS
#error "GROUP_THREADS is required (threads per 1x128 group: 16 or 8)"
#endif
#if GROUP_THREADS != 16 && GROUP_THREADS != 8
#error "GROUP_THREADS must be 16 or 8"
#endif
#ifndef GROUP_BATCH
#error "GROUP_BATCH is required (units per batch of fp8_quantize_1x128, 1..8)"
#endif
#if GROUP_BATCH < 1 || GROUP_BATCH > 8
#error "GROUP_BATCH must be in 1..8"
#endif
#ifndef MIN_CTAS_PER_SM
#error "MIN_CTAS_PER_SM is required (the register cap's CTAs per SM, 1..8)"
#endif
#if MIN_CTAS_PER_SM < 1 || MIN_CTAS_PER_SM > 8
#error "MIN_CTAS_PER_SM must be in 1..8"
#endif
#ifndef UNIT_ORDER
#error "UNIT_ORDER is required (the units of fp8_quantize_1x128's warps: 0 = contiguous ranges, 1 = interleaved)"
#endif
#if UNIT_ORDER != 0 && UNIT_ORDER != 1
#error "UNIT_ORDER must be 0 (contiguous) or 1 (interleaved)"
#endif
static_assert(TESSERA_SMEM_BYTES == 0, "the quantizers use no dynamic shared memory");
static_assert(TESSERA_THREADS == 256, "the quantizers run 8 warps per CTA");

#if IN_KIND == 0
typedef float in_t;
__device__ __forceinline__ float load_in(const in_t* p, i64 i) { return p[i]; }
#elif IN_KIND == 1
typedef u16 in_t;
__device__ __forceinline__ float load_in(const in_t* p, i64 i) { return f16_to_f32(p[i]); }
#else
typedef u16 in_t;
__device__ __forceinline__ float load_in(const in_t* p, i64 i) { return bf16_to_f32(p[i]); }
#endif

// 8 consecutive inputs, kept as loaded (16-bit inputs: two per word) to spare registers.
struct In8 {
    static constexpr int WORDS = IN_KIND == 0 ? 8 : 4;
    u32 w[WORDS];
    __device__ __forceinline__ float at(int e) const {
#if IN_KIND == 0
        return __uint_as_float(w[e]);
#elif IN_KIND == 1
        return f16_to_f32((u16)(e % 2 == 0 ? (w[e / 2] & 0xffffu) : (w[e / 2] >> 16)));
#else
        // The low half of a word is the lower address.
        return __uint_as_float(e % 2 == 0 ? w[e / 2] << 16 : w[e / 2] & 0xffff0000u);
#endif
    }
};

// The 8 inputs at element index i (16-byte aligned): streamed past L1 (ld.global.cs), or with
// plain loads (PLAIN: the interleaved order's, 2-3 % faster there on the H200; see
// dev/NOTES-fp8-quantize.md, set 4).
template <bool PLAIN = false>
__device__ __forceinline__ In8 load8(const in_t* p, i64 i) {
    In8 r;
#pragma unroll
    for (int h = 0; h < In8::WORDS / 4; ++h) {
        uint4 a;
        if constexpr (PLAIN)
            asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                         : "=r"(a.x), "=r"(a.y), "=r"(a.z), "=r"(a.w)
                         : "l"((const uint4*)(p + i) + h));
        else
            a = __ldcs((const uint4*)(p + i) + h);
        r.w[4 * h] = a.x;
        r.w[4 * h + 1] = a.y;
        r.w[4 * h + 2] = a.z;
        r.w[4 * h + 3] = a.w;
    }
    return r;
}

__device__ __forceinline__ In8 zero8() {
    In8 r;
#pragma unroll
    for (int k = 0; k < In8::WORDS; ++k) r.w[k] = 0;
    return r;
}

__device__ __forceinline__ float amax8(const In8& x) {
    float a = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) a = fmaxf(a, fabsf(x.at(e)));
    return a;
}

__device__ __forceinline__ float fp8_scale(float amax) {
    float s = fmaxf(amax, 1e-4f) / 448.0f;
#if POW2
    u32 b = __float_as_uint(s);
    if (b & 0x007fffffu) b = (b & 0x7f800000u) + 0x00800000u;
    s = __uint_as_float(b);
#endif
    return s;
}

// A group's scale s and what its quotients x / s need.
//   Power-of-two scales: x * (1 / s), exact.
//   Otherwise, 16-bit inputs: y = RN(1 / s) and one correction: q0 = RN(x y), r = RN(s q0 - x)
//   (exact, by the FMA), q = RN(q0 - r y). Its e4m3 equals that of the IEEE quotient for every
//   (x, amax) pair of 16-bit values with |x| <= amax, and the f32 quotient itself wherever
//   |x / s| >= 2^-12 (checked exhaustively, bf16 and f16, by dev/fp8_quantize_sm90_harness.cu),
//   in three instructions for the division's dozen. The residual is s q0 - x rather than
//   x - s q0 so that x = -0 gives -0; s = inf (an infinite input) takes 0 in the residual, so
//   that q = q0 = x * 0, which is x / inf.
//   f32 inputs: the IEEE division (no exhaustive check is possible there).
struct GroupScale {
    float s, s_res, neg_y;
};

__device__ __forceinline__ GroupScale group_scale(float amax) {
    GroupScale g;
    g.s = fp8_scale(amax);
    g.s_res = g.s == __int_as_float(0x7f800000) ? 0.0f : g.s;
    g.neg_y = -__frcp_rn(g.s);
    return g;
}

__device__ __forceinline__ float quotient(float x, const GroupScale& g) {
#if POW2
    return __fmul_rn(x, -g.neg_y);
#elif IN_KIND == 0
    return __fdiv_rn(x, g.s);
#else
    const float q0 = __fmul_rn(x, -g.neg_y);
    return __fmaf_rn(__fmaf_rn(g.s_res, q0, -x), g.neg_y, q0);
#endif
}

// The 8 e4m3 bytes of x / s as two words, in memory order (element 0 in the low byte of .x).
__device__ __forceinline__ uint2 pack8(const In8& x, const GroupScale& g) {
    u32 w[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int e = 4 * h;
        w[h] = (u32)f32x2_to_e4m3x2(quotient(x.at(e), g), quotient(x.at(e + 1), g)) |
               ((u32)f32x2_to_e4m3x2(quotient(x.at(e + 2), g), quotient(x.at(e + 3), g)) << 16);
    }
    return make_uint2(w[0], w[1]);
}

// The 8 e4m3 bytes of x / s, stored at q + i (8-byte aligned), streaming.
__device__ __forceinline__ void store8(u8* q, i64 i, const In8& x, const GroupScale& g) {
    __stcs((uint2*)(q + i), pack8(x, g));
}

__device__ __forceinline__ bool vector_path(const in_t* x, const u8* q, int cols) {
    return cols % 8 == 0 && ((u64)x % 16) == 0 && ((u64)q % 8) == 0;
}

// ---- 1x128 ------------------------------------------------------------------------------------

// Groups per unit, 8-column chunks per thread and group, and the columns between a thread's chunks.
constexpr int UNIT_GROUPS = 32 / GROUP_THREADS;
constexpr int GROUP_CHUNKS = 16 / GROUP_THREADS;
constexpr int CHUNK_STRIDE = 8 * GROUP_THREADS;

// A number of groups split into whole rows and the rest (< groups): what UNIT_ORDER 1 moves a
// cursor by from one of a warp's units to its next (W units), without a division.
struct UnitStep {
    int rows, rest;
};

// (row, g) of the group of a thread's team in the current unit. One cursor walks the loads,
// another the reductions and stores, so that a batch holds only the loaded inputs.
struct RowCursor {
    i64 row;
    int g;
    __device__ __forceinline__ void advance(int groups) {
        g += UNIT_GROUPS;
        while (g >= groups) g -= groups, ++row;
    }
    // Moves by `step` (UNIT_ORDER 1: to the warp's next unit).
    __device__ __forceinline__ void advance_by(UnitStep step, int groups) {
        row += step.rows;
        g += step.rest;
        if (g >= groups) g -= groups, ++row;
    }
};

typedef In8 RowBatch[GROUP_BATCH][GROUP_CHUNKS];

// Units u .. u + GROUP_BATCH - 1 (those below uend): team `team`'s group of each, lane `sub`'s
// chunks (zeros where nothing is loaded).
__device__ __forceinline__ void load_batch(RowBatch& v, RowCursor& c, i64 u, i64 uend, const in_t* x, int groups,
                                           int cols, i64 total, int team, int sub) {
#pragma unroll
    for (int j = 0; j < GROUP_BATCH; ++j) {
        const bool in = u + j < uend && (u + j) * UNIT_GROUPS + team < total;
        const int left = in ? cols - c.g * 128 - sub * 8 : 0;
        const i64 at = c.row * cols + c.g * 128 + sub * 8;
#pragma unroll
        for (int k = 0; k < GROUP_CHUNKS; ++k)
            v[j][k] = k * CHUNK_STRIDE < left ? load8(x, at + k * CHUNK_STRIDE) : zero8();
        c.advance(groups);
    }
}

// Reduces, scales and stores the batch load_batch loaded for units u ...
__device__ __forceinline__ void quantize_batch(const RowBatch& v, RowCursor& c, i64 u, i64 uend, u8* q,
                                               float* scales, int groups, int cols, i64 total, int team,
                                               int sub) {
#pragma unroll
    for (int j = 0; j < GROUP_BATCH; ++j) {
        if (u + j >= uend) break;  // the same for the whole warp
        float amax = 0.0f;
#pragma unroll
        for (int k = 0; k < GROUP_CHUNKS; ++k) amax = fmaxf(amax, amax8(v[j][k]));
#pragma unroll
        for (int o = GROUP_THREADS / 2; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const GroupScale g = group_scale(amax);
        const i64 grp = (u + j) * UNIT_GROUPS + team;
        const int left = grp < total ? cols - c.g * 128 - sub * 8 : 0;
        const i64 at = c.row * cols + c.g * 128 + sub * 8;
#pragma unroll
        for (int k = 0; k < GROUP_CHUNKS; ++k)
            if (k * CHUNK_STRIDE < left) store8(q, at + k * CHUNK_STRIDE, v[j][k], g);
        if (sub == 0 && grp < total) scales[grp] = g.s;
        c.advance(groups);
    }
}

#if UNIT_ORDER == 1
// The scalar path's group grp: 4 columns per lane.
__device__ __forceinline__ void quantize_group_scalar(const in_t* x, u8* q, float* scales, i64 grp, int groups,
                                                      int cols, int lane) {
    const i64 row = grp / groups;
    const int g = (int)(grp - row * groups);
    float v[4];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int c = g * 128 + lane * 4 + i;
        v[i] = c < cols ? load_in(x, row * cols + c) : 0.0f;
        amax = fmaxf(amax, fabsf(v[i]));
    }
    amax = warp_max(amax);
    const GroupScale s = group_scale(amax);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int c = g * 128 + lane * 4 + i;
        if (c < cols) q[row * cols + c] = f32_to_e4m3(quotient(v[i], s));
    }
    if (lane == 0) scales[grp] = s.s;
}

// Interleaved order: the warp's j-th unit (j < count) is unit warp + j W. A cursor moves from one
// to the next by `step`; the last unit of the matrix may end past its last row (c.row == rows).

// The warp's units j0 .. j0 + GROUP_BATCH - 1: team `team`'s group of each, lane `sub`'s chunks
// (zeros where nothing is loaded).
__device__ __forceinline__ void load_strided_batch(RowBatch& v, RowCursor& c, i64 j0, i64 count, UnitStep step,
                                                   const in_t* x, int rows, int groups, int cols, int sub) {
#pragma unroll
    for (int j = 0; j < GROUP_BATCH; ++j) {
        const bool in = j0 + j < count && c.row < rows;
        const int left = in ? cols - c.g * 128 - sub * 8 : 0;
        const i64 at = c.row * cols + c.g * 128 + sub * 8;
#pragma unroll
        for (int k = 0; k < GROUP_CHUNKS; ++k)
            v[j][k] = k * CHUNK_STRIDE < left ? load8<true>(x, at + k * CHUNK_STRIDE) : zero8();
        c.advance_by(step, groups);
    }
}

// Reduces, scales and stores the batch load_strided_batch loaded for the warp's units j0 ...
__device__ __forceinline__ void quantize_strided_batch(const RowBatch& v, RowCursor& c, i64 j0, i64 count,
                                                       UnitStep step, u8* q, float* scales, int rows, int groups,
                                                       int cols, int sub) {
#pragma unroll
    for (int j = 0; j < GROUP_BATCH; ++j) {
        if (j0 + j >= count) break;  // the same for the whole warp
        float amax = 0.0f;
#pragma unroll
        for (int k = 0; k < GROUP_CHUNKS; ++k) amax = fmaxf(amax, amax8(v[j][k]));
#pragma unroll
        for (int o = GROUP_THREADS / 2; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const GroupScale g = group_scale(amax);
        const bool in = c.row < rows;
        const int left = in ? cols - c.g * 128 - sub * 8 : 0;
        const i64 at = c.row * cols + c.g * 128 + sub * 8;
#pragma unroll
        for (int k = 0; k < GROUP_CHUNKS; ++k)
            if (k * CHUNK_STRIDE < left) store8(q, at + k * CHUNK_STRIDE, v[j][k], g);
        if (sub == 0 && in) scales[c.row * groups + c.g] = g.s;
        c.advance_by(step, groups);
    }
}

// Warp `warp` of `warps`: units warp, warp + W, warp + 2 W, ...
__device__ __forceinline__ void quantize_interleaved(const in_t* x, u8* q, float* scales, int rows, int cols,
                                                     i64 warp, i64 warps, int lane) {
    const int groups = (cols + 127) / 128;
    const i64 total = (i64)rows * groups;
    const i64 units = (total + UNIT_GROUPS - 1) / UNIT_GROUPS;
    const i64 count = units > warp ? (units - warp + warps - 1) / warps : 0;
    if (count <= 0) return;
    if (vector_path(x, q, cols)) {
        const int team = lane / GROUP_THREADS, sub = lane % GROUP_THREADS;
        const i64 ahead = warps * UNIT_GROUPS;
        const UnitStep step{(int)(ahead / groups), (int)(ahead % groups)};
        RowCursor lc;
        const i64 first = warp * UNIT_GROUPS + team;
        lc.row = first / groups;
        lc.g = (int)(first - lc.row * groups);
        RowCursor qc = lc;
        // Two batches in registers: the next one's loads are in flight while this one is reduced.
        RowBatch a, b;
        load_strided_batch(a, lc, 0, count, step, x, rows, groups, cols, sub);
        for (i64 j = 0;;) {
            load_strided_batch(b, lc, j + GROUP_BATCH, count, step, x, rows, groups, cols, sub);
            quantize_strided_batch(a, qc, j, count, step, q, scales, rows, groups, cols, sub);
            j += GROUP_BATCH;
            if (j >= count) break;
            load_strided_batch(a, lc, j + GROUP_BATCH, count, step, x, rows, groups, cols, sub);
            quantize_strided_batch(b, qc, j, count, step, q, scales, rows, groups, cols, sub);
            j += GROUP_BATCH;
            if (j >= count) break;
        }
        return;
    }
    // Scalar path: the groups of the warp's units one at a time.
    for (i64 u = warp; u < units; u += warps) {
        const i64 gend = min((u + 1) * UNIT_GROUPS, total);
        for (i64 grp = u * UNIT_GROUPS; grp < gend; ++grp) quantize_group_scalar(x, q, scales, grp, groups, cols, lane);
    }
}
#endif

// x, q: [rows, cols]; scales: [rows, ceil(cols / 128)]. Each warp takes its units (of UNIT_GROUPS
// consecutive groups in row-major order) in UNIT_ORDER.
extern "C" __global__ void __launch_bounds__(TESSERA_THREADS, MIN_CTAS_PER_SM)
    fp8_quantize_1x128(const in_t* __restrict__ x, u8* __restrict__ q, float* __restrict__ scales, int rows,
                       int cols) {
#if UNIT_ORDER == 1
    const i64 warp = (i64)blockIdx.x * (TESSERA_THREADS / 32) + threadIdx.x / 32;
    const i64 warps = (i64)gridDim.x * (TESSERA_THREADS / 32);
    quantize_interleaved(x, q, scales, rows, cols, warp, warps, threadIdx.x % 32);
#else
    // UNIT_ORDER 0: warp w of W takes the balanced contiguous range [w U / W, (w + 1) U / W).
    // (Written out here, not through quantize_group_scalar and a helper of its own: either moves
    // ptxas's allocation of the vector path, 4 -> 16 bytes of spill for bf16 at 4 CTAs per SM.)
    const int groups = (cols + 127) / 128;
    const i64 total = (i64)rows * groups;
    const i64 units = (total + UNIT_GROUPS - 1) / UNIT_GROUPS;
    const i64 warp = (i64)blockIdx.x * (TESSERA_THREADS / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const i64 warps = (i64)gridDim.x * (TESSERA_THREADS / 32);
    const i64 ubeg = warp * units / warps, uend = (warp + 1) * units / warps;
    if (ubeg >= uend) return;
    if (vector_path(x, q, cols)) {
        const int team = lane / GROUP_THREADS, sub = lane % GROUP_THREADS;
        RowCursor lc;
        const i64 first = ubeg * UNIT_GROUPS + team;
        lc.row = first / groups;
        lc.g = (int)(first - lc.row * groups);
        RowCursor qc = lc;
        // Two batches in registers: the next one's loads are in flight while this one is reduced.
        RowBatch a, b;
        load_batch(a, lc, ubeg, uend, x, groups, cols, total, team, sub);
        for (i64 u = ubeg;;) {
            load_batch(b, lc, u + GROUP_BATCH, uend, x, groups, cols, total, team, sub);
            quantize_batch(a, qc, u, uend, q, scales, groups, cols, total, team, sub);
            u += GROUP_BATCH;
            if (u >= uend) break;
            load_batch(a, lc, u + GROUP_BATCH, uend, x, groups, cols, total, team, sub);
            quantize_batch(b, qc, u, uend, q, scales, groups, cols, total, team, sub);
            u += GROUP_BATCH;
            if (u >= uend) break;
        }
        return;
    }
    // Scalar path: the warp's groups one at a time, 4 columns per lane.
    const i64 gend = min(uend * UNIT_GROUPS, total);
    for (i64 grp = ubeg * UNIT_GROUPS; grp < gend; ++grp) {
        const i64 row = grp / groups;
        const int g = (int)(grp - row * groups);
        float v[4];
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int c = g * 128 + lane * 4 + i;
            v[i] = c < cols ? load_in(x, row * cols + c) : 0.0f;
            amax = fmaxf(amax, fabsf(v[i]));
        }
        amax = warp_max(amax);
        const GroupScale s = group_scale(amax);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int c = g * 128 + lane * 4 + i;
            if (c < cols) q[row * cols + c] = f32_to_e4m3(quotient(v[i], s));
        }
        if (lane == 0) scales[grp] = s.s;
    }
#endif
}

// ---- 128x128 ----------------------------------------------------------------------------------

// Vector path: thread t holds rows t / 16 + 16 j (j < 8), columns 8 (t % 16) .. + 7 of a tile, in
// registers from the one read of the tile.
constexpr int TILE_ROWS_PER_THREAD = 128 * 16 / TESSERA_THREADS;
typedef In8 TileRegs[TILE_ROWS_PER_THREAD];

__device__ __forceinline__ void load_tile(TileRegs& v, const in_t* x, int tile, int tiles_c, int rows, int cols) {
    const int r0 = tile / tiles_c * 128 + threadIdx.x / 16, c = tile % tiles_c * 128 + threadIdx.x % 16 * 8;
#pragma unroll
    for (int j = 0; j < TILE_ROWS_PER_THREAD; ++j) {
        const int r = r0 + 16 * j;
        v[j] = r < rows && c < cols ? load8(x, (i64)r * cols + c) : zero8();
    }
}

// The tile's amax over the CTA, through red (one slot per warp).
__device__ __forceinline__ float tile_amax(float amax, float* red) {
    amax = warp_max(amax);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = amax;
    __syncthreads();
    amax = 0.0f;
#pragma unroll
    for (int w = 0; w < TESSERA_THREADS / 32; ++w) amax = fmaxf(amax, red[w]);
    return amax;
}

__device__ __forceinline__ void quantize_tile(const TileRegs& v, float* red, u8* q, float* scales, int tile,
                                              int tiles_c, int rows, int cols) {
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < TILE_ROWS_PER_THREAD; ++j) amax = fmaxf(amax, amax8(v[j]));
    const GroupScale g = group_scale(tile_amax(amax, red));
    const int r0 = tile / tiles_c * 128 + threadIdx.x / 16, c = tile % tiles_c * 128 + threadIdx.x % 16 * 8;
#pragma unroll
    for (int j = 0; j < TILE_ROWS_PER_THREAD; ++j) {
        const int r = r0 + 16 * j;
        if (r < rows && c < cols) store8(q, (i64)r * cols + c, v[j], g);
    }
    if (threadIdx.x == 0) scales[tile] = g.s;
}

// Scalar path: one tile, read twice.
__device__ __forceinline__ void quantize_tile_scalar(const in_t* x, float* red, u8* q, float* scales, int tile,
                                                     int tiles_c, int rows, int cols) {
    const int r0 = tile / tiles_c * 128, c0 = tile % tiles_c * 128;
    const int nr = min(128, rows - r0), nc = min(128, cols - c0);
    float amax = 0.0f;
    for (int i = threadIdx.x; i < 128 * 128; i += TESSERA_THREADS) {
        const int r = i / 128, c = i % 128;
        if (r < nr && c < nc) amax = fmaxf(amax, fabsf(load_in(x, (i64)(r0 + r) * cols + c0 + c)));
    }
    const GroupScale g = group_scale(tile_amax(amax, red));
    for (int i = threadIdx.x; i < 128 * 128; i += TESSERA_THREADS) {
        const int r = i / 128, c = i % 128;
        if (r < nr && c < nc) {
            const i64 idx = (i64)(r0 + r) * cols + c0 + c;
            q[idx] = f32_to_e4m3(quotient(load_in(x, idx), g));
        }
    }
    if (threadIdx.x == 0) scales[tile] = g.s;
}

// x, q: [rows, cols]; scales: [ceil(rows / 128), ceil(cols / 128)] (tile index = its scale's).
// One CTA per tile: x column tiles, y row tiles.
extern "C" __global__ void __launch_bounds__(TESSERA_THREADS, MIN_CTAS_PER_SM)
    fp8_quantize_128x128(const in_t* __restrict__ x, u8* __restrict__ q, float* __restrict__ scales, int rows,
                         int cols) {
    __shared__ float red[TESSERA_THREADS / 32];
    const int tiles_c = (cols + 127) / 128;
    const int tile = blockIdx.y * tiles_c + blockIdx.x;
    if (vector_path(x, q, cols)) {
        TileRegs v;
        load_tile(v, x, tile, tiles_c, rows, cols);
        quantize_tile(v, red, q, scales, tile, tiles_c, rows, cols);
    } else {
        quantize_tile_scalar(x, red, q, scales, tile, tiles_c, rows, cols);
    }
}

// The 1x128 sweep of dev/fp8_quantize_1x128_sweep.sh (issue 9: the 1x128 quantizer at >= 80% of
// the copy ceiling on 4096x7168 bf16). Included by dev/fp8_quantize_sm90_harness.cu when
// WITH_SWEEP=1 (bf16 only), after the library kernel, whose scale and quotient math
// (group_scale, quotient, f32x2_to_e4m3x2) the variants reuse, so that only the memory side
// differs. Also the ceilings timed next to them: a copy kernel that moves the quantizer's bytes
// (reads 2 bytes and writes 1 per element, plus the scales) and an empty kernel.
#pragma once

namespace sweep {

// ---- loads and stores -----------------------------------------------------------------------

// 16 bytes at p. LD 0: ld.global.cs (__ldcs, the library); 1: ld.global.nc.L1::no_allocate;
// 2: plain ld.global; 3: ld.global.nc.L1::no_allocate.L2::256B (the L2 fetches the whole 256-byte
// block: a group's inputs are 256 bytes); 4: as 3 with an L2 evict_first cache policy.
template <int LD>
__device__ __forceinline__ uint4 ld16(const void* p) {
    uint4 r;
    if constexpr (LD == 0) {
        r = __ldcs((const uint4*)p);
    } else if constexpr (LD == 1) {
        asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                     : "l"(p));
    } else if constexpr (LD == 2) {
        asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    } else if constexpr (LD == 3) {
        asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                     : "l"(p));
    } else {
        u64 policy;
        asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
        asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                     : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                     : "l"(p), "l"(policy));
    }
    return r;
}

// 8 bytes (a, b) at p. ST 0: plain; 1: st.global.cs (the library).
template <int ST>
__device__ __forceinline__ void st8(u8* p, u32 a, u32 b) {
    if constexpr (ST == 0)
        *(uint2*)p = make_uint2(a, b);
    else
        __stcs((uint2*)p, make_uint2(a, b));
}

__device__ __forceinline__ float amax8(const uint4& v) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
    float a = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        a = fmaxf(a, fabsf(__uint_as_float(w[k] << 16)));
        a = fmaxf(a, fabsf(__uint_as_float(w[k] & 0xffff0000u)));
    }
    return a;
}

// The e4m3 bytes of the 8 bf16 inputs v / s at p (the library's quotient).
template <int ST>
__device__ __forceinline__ void quant8(u8* p, const uint4& v, const GroupScale& g) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
    u32 o[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float a = quotient(__uint_as_float(w[2 * h] << 16), g);
        const float b = quotient(__uint_as_float(w[2 * h] & 0xffff0000u), g);
        const float c = quotient(__uint_as_float(w[2 * h + 1] << 16), g);
        const float d = quotient(__uint_as_float(w[2 * h + 1] & 0xffff0000u), g);
        o[h] = (u32)f32x2_to_e4m3x2(a, b) | ((u32)f32x2_to_e4m3x2(c, d) << 16);
    }
    st8<ST>(p, o[0], o[1]);
}

// ---- the order in which warps take units ------------------------------------------------------
// A unit: the TEAMS = 32 / TPG consecutive groups (row-major) of one warp-wide step; TPG threads
// per group, each with CH = 16 / TPG 16-byte chunks TPG * 8 columns apart (every load instruction
// of the warp reads whole 128-byte lines). W warps in the grid, U units.
//   ORDER 0: warp w takes the balanced contiguous range [w U / W, (w + 1) U / W) (the library);
//   ORDER 1: warp w takes units w, w + W, w + 2 W, ...: at any time the grid reads a window of
//            about W units (4224 warps x 1 KB = 4.3 MB at 4096x7168) instead of W separate
//            streams; counts differ by at most one unit, so the last round is balanced;
//   ORDER 2: warp w takes batches (BATCH consecutive units) w, w + W, ... while whole rounds of W
//            batches remain, then the rest unit by unit as ORDER 1 (balanced last round).
// A warp's units form runs of `count` units: base + (j / BATCH) * between + (j % BATCH) * within.

// (row, g) of a thread's team's group; advanced by a fixed number of groups without a division:
// a Step is that number split into whole rows and the rest (rest < groups).
struct Step {
    int rows, rest;
};

__device__ __forceinline__ Step step_of(i64 groups_ahead, int groups) {
    return Step{(int)(groups_ahead / groups), (int)(groups_ahead % groups)};
}

struct Cursor {
    i64 row;
    int g;
    __device__ __forceinline__ void at(i64 grp, int groups) {
        row = grp / groups;
        g = (int)(grp - row * groups);
    }
    __device__ __forceinline__ void advance(Step s, int groups) {
        row += s.rows;
        g += s.rest;
        if (g >= groups) g -= groups, ++row;
    }
};

// One run of units: `count` units from unit `base`, BATCH per batch, `within` units apart inside a
// batch and `between` apart from batch to batch.
struct Run {
    i64 base, count;
    Step in_batch, to_next;  // within; between - (BATCH - 1) within (in groups)
};

template <int TPG>
struct Shape {
    static constexpr int TEAMS = 32 / TPG, CH = 16 / TPG;
};

template <int TPG>
struct Slot {
    uint4 v[Shape<TPG>::CH];
};

struct Ctx {
    const u16* x;
    u8* q;
    float* scales;
    int rows, cols, groups, team, sub;
};

template <int TPG, int BATCH, int LD>
__device__ __forceinline__ void load_batch(Slot<TPG> (&s)[BATCH], Cursor& c, i64 j0, const Run& r, const Ctx& k) {
    constexpr int CH = Shape<TPG>::CH;
#pragma unroll
    for (int j = 0; j < BATCH; ++j) {
        const bool in = j0 + j < r.count && c.row < k.rows;
        const int left = in ? k.cols - c.g * 128 - k.sub * 8 : 0;
        const i64 at = c.row * k.cols + c.g * 128 + k.sub * 8;
#pragma unroll
        for (int h = 0; h < CH; ++h)
            s[j].v[h] = h * TPG * 8 < left ? ld16<LD>(k.x + at + h * TPG * 8) : make_uint4(0, 0, 0, 0);
        c.advance(j + 1 < BATCH ? r.in_batch : r.to_next, k.groups);
    }
}

// SC 0: lane 0 of each team stores its group's scale (the library: one 4-lane store per unit);
// SC 1: lane 0 stores the unit's TEAMS scales with one vector store (whole units; else as SC 0).
template <int TPG, int BATCH, int ST, int SC>
__device__ __forceinline__ void quant_batch(const Slot<TPG> (&s)[BATCH], Cursor& c, i64 j0, const Run& r,
                                            const Ctx& k) {
    constexpr int TEAMS = Shape<TPG>::TEAMS, CH = Shape<TPG>::CH;
#pragma unroll
    for (int j = 0; j < BATCH; ++j) {
        if (j0 + j >= r.count) break;  // uniform over the warp
        float a = 0.0f;
#pragma unroll
        for (int h = 0; h < CH; ++h) a = fmaxf(a, amax8(s[j].v[h]));
#pragma unroll
        for (int o = TPG / 2; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        const GroupScale g = group_scale(a);
        const bool in = c.row < k.rows;
        const int left = in ? k.cols - c.g * 128 - k.sub * 8 : 0;
        const i64 at = c.row * k.cols + c.g * 128 + k.sub * 8;
#pragma unroll
        for (int h = 0; h < CH; ++h)
            if (h * TPG * 8 < left) quant8<ST>(k.q + at + h * TPG * 8, s[j].v[h], g);
        const i64 grp = c.row * k.groups + c.g;
        if constexpr (SC == 0) {
            if (k.sub == 0 && in) k.scales[grp] = g.s;
        } else {
            float t[TEAMS];
#pragma unroll
            for (int e = 0; e < TEAMS; ++e) t[e] = __shfl_sync(0xffffffffu, g.s, e * TPG);
            // Team 0's group starts the unit (a multiple of TEAMS: the store is aligned); the unit
            // is whole when the last team's group is in the matrix.
            const bool whole = __shfl_sync(0xffffffffu, (int)in, 31) != 0;
            if (whole) {
                if ((threadIdx.x & 31) == 0) {
                    if constexpr (TEAMS == 4)
                        *(float4*)(k.scales + grp) = make_float4(t[0], t[1], t[2], t[3]);
                    else
                        *(float2*)(k.scales + grp) = make_float2(t[0], t[1]);
                }
            } else if (k.sub == 0 && in) {
                k.scales[grp] = g.s;
            }
        }
        c.advance(j + 1 < BATCH ? r.in_batch : r.to_next, k.groups);
    }
}

// A run, two batches in registers: the next batch's loads are issued before this one is reduced.
template <int TPG, int BATCH, int LD, int ST, int SC>
__device__ __forceinline__ void walk(const Run& r, const Ctx& k) {
    if (r.count <= 0) return;
    constexpr int TEAMS = Shape<TPG>::TEAMS;
    Cursor lc;
    lc.at(r.base * TEAMS + k.team, k.groups);
    Cursor qc = lc;
    Slot<TPG> a[BATCH], b[BATCH];
    load_batch<TPG, BATCH, LD>(a, lc, 0, r, k);
    for (i64 j = 0;;) {
        load_batch<TPG, BATCH, LD>(b, lc, j + BATCH, r, k);
        quant_batch<TPG, BATCH, ST, SC>(a, qc, j, r, k);
        j += BATCH;
        if (j >= r.count) break;
        load_batch<TPG, BATCH, LD>(a, lc, j + BATCH, r, k);
        quant_batch<TPG, BATCH, ST, SC>(b, qc, j, r, k);
        j += BATCH;
        if (j >= r.count) break;
    }
}

template <int BATCH>
__device__ __forceinline__ Run make_run(i64 base, i64 count, i64 within, i64 between, int teams, int groups) {
    return Run{base, count, step_of(within * teams, groups), step_of((between - (BATCH - 1) * within) * teams, groups)};
}

// x, q: [rows, cols] (cols a multiple of 8; x 16-byte and q 8-byte aligned: no scalar path);
// scales: [rows, ceil(cols / 128)]. Grid: persistent, as the harness's grid_of computes.
template <int TPG, int BATCH, int ORDER, int LD, int ST, int SC, int THREADS, int MINB>
__global__ void __launch_bounds__(THREADS, MINB)
    q1x128(const u16* __restrict__ x, u8* __restrict__ q, float* __restrict__ scales, int rows, int cols) {
    constexpr int TEAMS = Shape<TPG>::TEAMS;
    const int groups = (cols + 127) / 128;
    const i64 total = (i64)rows * groups;
    const i64 units = (total + TEAMS - 1) / TEAMS;
    const int lane = threadIdx.x % 32;
    const Ctx k{x, q, scales, rows, cols, groups, lane / TPG, lane % TPG};
    const i64 w = (i64)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
    const i64 nw = (i64)gridDim.x * (THREADS / 32);
    if constexpr (ORDER == 0) {
        const i64 ubeg = w * units / nw, uend = (w + 1) * units / nw;
        walk<TPG, BATCH, LD, ST, SC>(make_run<BATCH>(ubeg, uend - ubeg, 1, BATCH, TEAMS, groups), k);
    } else if constexpr (ORDER == 1) {
        const i64 count = units > w ? (units - w + nw - 1) / nw : 0;
        walk<TPG, BATCH, LD, ST, SC>(make_run<BATCH>(w, count, nw, BATCH * nw, TEAMS, groups), k);
    } else {
        const i64 rounds = units / (nw * BATCH), rest = units - rounds * nw * BATCH;
        const i64 count = rest > w ? (rest - w + nw - 1) / nw : 0;
        // One copy of the walk for both runs (two inlined copies spill at 64 registers).
#pragma unroll 1
        for (int part = 0; part < 2; ++part)
            walk<TPG, BATCH, LD, ST, SC>(
                part == 0 ? make_run<BATCH>(w * BATCH, rounds * BATCH, 1, nw * BATCH, TEAMS, groups)
                          : make_run<BATCH>(rounds * nw * BATCH + w, count, nw, BATCH * nw, TEAMS, groups),
                k);
    }
}

// ---- the ceilings ---------------------------------------------------------------------------

// Moves the quantizer's bytes: reads the rows x cols 16-bit inputs (32 bytes per step, two 16-byte
// loads), writes their high bytes (one 16-byte store) to q and rows x ceil(cols / 128) floats to
// scales (16-byte stores). Needs rows * cols % 16 == 0. ORDER 0: grid-stride (the grid sweeps the
// buffer together); ORDER 1: each warp a contiguous range (as the library's order). UNROLL steps
// loaded before any is stored.
template <int ORDER, int UNROLL, int THREADS>
__global__ void __launch_bounds__(THREADS)
    copy_bytes(const u16* __restrict__ x, u8* __restrict__ q, float* __restrict__ scales, int rows, int cols) {
    const i64 steps = (i64)rows * cols / 16;
    const i64 nsc = (i64)rows * ((cols + 127) / 128) / 4;
    const i64 tid = (i64)blockIdx.x * THREADS + threadIdx.x, nt = (i64)gridDim.x * THREADS;
    for (i64 i = tid; i < nsc; i += nt) ((float4*)scales)[i] = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    const uint4* src = (const uint4*)x;
    uint4* dst = (uint4*)q;
    i64 beg, end, stride;
    if constexpr (ORDER == 0) {
        beg = tid, end = steps, stride = nt;
    } else {
        const i64 w = tid / 32, nw = nt / 32, lane = tid % 32;
        const i64 chunks = steps / 32;  // whole warp-steps; the remainder below
        beg = (w * chunks / nw) * 32 + lane, end = ((w + 1) * chunks / nw) * 32, stride = 32;
    }
    for (i64 i = beg; i < end; i += UNROLL * stride) {
        uint4 a[UNROLL], b[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
            if (i + u * stride < end) {
                a[u] = __ldcs(src + 2 * (i + u * stride));
                b[u] = __ldcs(src + 2 * (i + u * stride) + 1);
            }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
            if (i + u * stride < end)
                __stcs(dst + i + u * stride,
                       make_uint4(__byte_perm(a[u].x, a[u].y, 0x7531), __byte_perm(a[u].z, a[u].w, 0x7531),
                                  __byte_perm(b[u].x, b[u].y, 0x7531), __byte_perm(b[u].z, b[u].w, 0x7531)));
    }
    if constexpr (ORDER == 1) {
        for (i64 i = steps / 32 * 32 + tid; i < steps; i += nt) {
            const uint4 a = __ldcs(src + 2 * i), b = __ldcs(src + 2 * i + 1);
            __stcs(dst + i, make_uint4(__byte_perm(a.x, a.y, 0x7531), __byte_perm(a.z, a.w, 0x7531),
                                       __byte_perm(b.x, b.y, 0x7531), __byte_perm(b.z, b.w, 0x7531)));
        }
    }
}

__global__ void empty(const u16*, u8*, float*, int, int) {}

}  // namespace sweep

// Development harness for kernels/fp8_quantize.cu on the GPU machine (nvcc, no Rust there). Built
// by dev/fp8_quantize_sm90.sh once per configuration of the library kernel (its defines on the
// nvcc line, as the plan renders them) and scale rule; LIBRARY_FILE names another kernel file
// (e.g. an older version, with its own defines). Every kernel is checked bit for bit against a
// plain reference (one thread per scale group, IEEE division) on varied data (zeros of both
// signs, subnormals, any finite value, groups of zeros; and again with inf and NaN), and timed as
// the bench times it: CUDA events around each launch, queued behind a GPU busy-wait, median;
// input sets rotated over 200 MB as the bench rotates them, so that L2 is not what is measured
// (L2 is not flushed); also the mean of back-to-back launches. Ceilings: the bench's 1 GiB
// device-to-device copy (read + write bytes) and a copy of the quantizer's byte count.
// WITH_VARIANTS=1 (bf16 only) adds the exploratory variants of namespace var (load and store
// flavours, division vs reciprocal, grids, CTA sizes) and an exhaustive check of the reciprocal
// form of x / s over every (bf16 or f16 x, amax) pair. WITH_SWEEP=1 (bf16 only) adds instead the
// 1x128 sweep of dev/fp8_quantize_1x128_sweep.cuh (set SWEEP_SET 1, 2, 3 or 4; sets 1 and 4 also
// time the ceilings: copy kernels of the quantizer's byte count, a cudaMemcpy of its total bytes;
// set 1 empty kernels too), run by dev/fp8_quantize_1x128_sweep.sh.
//   harness [--check]     (--check: checks only)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define TESSERA_SMEM_BYTES 0
#define TESSERA_THREADS 256
#include "../kernels/common.cuh"
#ifdef LIBRARY_FILE
#include LIBRARY_FILE
#else
#include "../kernels/fp8_quantize.cu"
#endif
#include "harness.cuh"

#ifndef WITH_VARIANTS
#define WITH_VARIANTS 0
#endif
#ifndef WITH_SWEEP
#define WITH_SWEEP 0
#endif
#ifndef SWEEP_SET
#define SWEEP_SET 0
#endif
#if WITH_SWEEP && (IN_KIND != 2 || WITH_VARIANTS)
#error "the sweep is bf16 only, without WITH_VARIANTS"
#endif
#if WITH_SWEEP
#include "fp8_quantize_1x128_sweep.cuh"
#endif
#ifndef WITH_BULK
#define WITH_BULK 0
#endif
#if WITH_BULK
#include "../kernels/sm90/hopper.cuh"
#include "fp8_quantize_bulk.cuh"
#endif
#ifndef LIBRARY_NAME
#define LIBRARY_NAME "library"
#endif
#if WITH_VARIANTS && IN_KIND != 2
#error "the variants are bf16 only"
#endif

#if WITH_VARIANTS
namespace var {

// ---- loads, stores, the quotient -----------------------------------------------------------

// 16 bytes at p: LD 0 = ld.global.cs (__ldcs), 1 = ld.global.nc.L1::no_allocate, 2 = __ldg.
template <int LD>
__device__ __forceinline__ uint4 ld16(const void* p) {
    if constexpr (LD == 0) {
        return __ldcs((const uint4*)p);
    } else if constexpr (LD == 1) {
        uint4 r;
        asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
            : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
            : "l"(p));
        return r;
    } else {
        return __ldg((const uint4*)p);
    }
}

// 8 bytes at p: ST 0 = plain, 1 = st.global.cs.
template <int ST>
__device__ __forceinline__ void st8(u8* p, u32 a, u32 b) {
    if constexpr (ST == 0)
        *(uint2*)p = make_uint2(a, b);
    else
        __stcs((uint2*)p, make_uint2(a, b));
}

// A group's scale and what the quotient needs: DIV 0 = x / s (IEEE division); DIV 1 = the
// reciprocal y = RN(1 / s) with one correction (Markstein): q0 = RN(x y), r = RN(s q0 - x)
// (exact), q = RN(q0 - r y). Written as -(x - s q0) so that x = -0 gives -0. s = inf (an
// infinite input) takes s 0 in the residual: then q = q0 = x * 0, which is x / inf.
struct GroupScale {
    float s, s_res, neg_y;
};

__device__ __forceinline__ GroupScale group_scale(float amax) {
    GroupScale g;
    g.s = fp8_scale(amax);
    g.s_res = g.s == INFINITY ? 0.0f : g.s;
    g.neg_y = -__frcp_rn(g.s);
    return g;
}

template <int DIV>
__device__ __forceinline__ float quotient(float x, const GroupScale& g) {
    if constexpr (DIV == 0) {
        return x / g.s;
    } else {
#if POW2
        return __fmul_rn(x, -g.neg_y);  // s is a power of two: x * (1 / s) is x / s
#else
        const float q0 = __fmul_rn(x, -g.neg_y);
        const float r = __fmaf_rn(g.s_res, q0, -x);
        return __fmaf_rn(r, g.neg_y, q0);
#endif
    }
}

__device__ __forceinline__ u32 bf16_lo(u32 w) { return w << 16; }
__device__ __forceinline__ u32 bf16_hi(u32 w) { return w & 0xffff0000u; }

__device__ __forceinline__ float amax8(uint4 v) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
    float a = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        a = fmaxf(a, fabsf(__uint_as_float(bf16_lo(w[k]))));
        a = fmaxf(a, fabsf(__uint_as_float(bf16_hi(w[k]))));
    }
    return a;
}

// KIND 0: the e4m3 bytes of v / s; KIND 1 (memory only): the high bytes of the bf16 inputs.
template <int DIV, int ST, int KIND>
__device__ __forceinline__ void store8(u8* p, uint4 v, const GroupScale& g) {
    const u32 w[4] = {v.x, v.y, v.z, v.w};
    u32 o[2];
    if constexpr (KIND == 1) {
        o[0] = __byte_perm(w[0], w[1], 0x7531);
        o[1] = __byte_perm(w[2], w[3], 0x7531);
    } else {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const float a = quotient<DIV>(__uint_as_float(bf16_lo(w[2 * h])), g);
            const float b = quotient<DIV>(__uint_as_float(bf16_hi(w[2 * h])), g);
            const float c = quotient<DIV>(__uint_as_float(bf16_lo(w[2 * h + 1])), g);
            const float d = quotient<DIV>(__uint_as_float(bf16_hi(w[2 * h + 1])), g);
            o[h] = (u32)f32x2_to_e4m3x2(a, b) | ((u32)f32x2_to_e4m3x2(c, d) << 16);
        }
    }
    st8<ST>(p, o[0], o[1]);
}

// ---- 1x128 --------------------------------------------------------------------------------
// A team of TPG threads per group (16: 8 elements each; 8: 16 elements each, as two 8-element
// chunks 64 columns apart so that every load instruction is coalesced); a warp-step covers
// TEAMS = 32 / TPG consecutive groups (a unit); a batch is STEPS units, all loaded before any is
// reduced. MODE 0: one batch per warp (the library's structure); MODE 1: persistent, each warp a
// balanced contiguous range of units, batch after batch; MODE 2: as 1, with the next batch's
// loads issued before the current batch is reduced (two batches in registers).
template <int TPG>
struct Team {
    static constexpr int TEAMS = 32 / TPG, CH = 128 / (8 * TPG);
};

// The loads of one unit (zeros where nothing is loaded).
template <int TPG>
struct Slot {
    uint4 v[Team<TPG>::CH];
};

// Where the thread's team is: (row, g) of its group in the current unit; one cursor walks the
// loads, another the reductions and stores (so that the slots hold only the loaded bytes).
struct Cursor {
    i64 row;
    int g;
    template <int TEAMS>
    __device__ __forceinline__ void advance(int groups) {
        g += TEAMS;
        while (g >= groups) g -= groups, ++row;
    }
};

template <int TPG, int STEPS, int LD>
__device__ __forceinline__ void load_batch(Slot<TPG> (&s)[STEPS], Cursor& cur, i64 u, i64 uend, const u16* x,
                                           int groups, int cols, i64 total, int team, int sub) {
    constexpr int TEAMS = Team<TPG>::TEAMS, CH = Team<TPG>::CH;
#pragma unroll
    for (int j = 0; j < STEPS; ++j) {
        const bool in = u + j < uend && (u + j) * TEAMS + team < total;
        const int cl = in ? cols - cur.g * 128 - sub * 8 : 0;
        const i64 at = cur.row * cols + cur.g * 128 + sub * 8;
#pragma unroll
        for (int k = 0; k < CH; ++k)
            s[j].v[k] = k * TPG * 8 < cl ? ld16<LD>(x + at + k * TPG * 8) : make_uint4(0, 0, 0, 0);
        cur.advance<TEAMS>(groups);
    }
}

template <int TPG, int STEPS, int DIV, int ST, int KIND>
__device__ __forceinline__ void process_batch(const Slot<TPG> (&s)[STEPS], Cursor& cur, i64 u, i64 uend, u8* q,
                                              float* scales, int groups, int cols, i64 total, int team, int sub) {
    constexpr int TEAMS = Team<TPG>::TEAMS, CH = Team<TPG>::CH;
#pragma unroll
    for (int j = 0; j < STEPS; ++j) {
        if (u + j >= uend) break;  // uniform over the warp
        float a = 0.0f;
#pragma unroll
        for (int k = 0; k < CH; ++k) a = fmaxf(a, amax8(s[j].v[k]));
#pragma unroll
        for (int o = TPG / 2; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
        const GroupScale g = group_scale(a);
        const i64 grp = (u + j) * TEAMS + team;
        const int cl = grp < total ? cols - cur.g * 128 - sub * 8 : 0;
        const i64 at = cur.row * cols + cur.g * 128 + sub * 8;
#pragma unroll
        for (int k = 0; k < CH; ++k)
            if (k * TPG * 8 < cl) store8<DIV, ST, KIND>(q + at + k * TPG * 8, s[j].v[k], g);
        if (sub == 0 && grp < total) scales[grp] = g.s;
        cur.advance<TEAMS>(groups);
    }
}

template <int TPG, int STEPS, int DIV, int LD, int ST, int MODE, int THREADS, int MINB, int KIND>
__global__ void __launch_bounds__(THREADS, MINB)
    q1x128(const u16* __restrict__ x, u8* __restrict__ q, float* __restrict__ scales, int rows, int cols) {
    constexpr int TEAMS = Team<TPG>::TEAMS;
    const int groups = (cols + 127) / 128;
    const i64 total = (i64)rows * groups;
    const i64 units = (total + TEAMS - 1) / TEAMS;
    const int lane = threadIdx.x % 32, team = lane / TPG, sub = lane % TPG;
    const i64 gw = (i64)blockIdx.x * (THREADS / 32) + threadIdx.x / 32;
    i64 ubeg, uend;
    if constexpr (MODE == 0) {
        ubeg = gw * STEPS;
        uend = min(ubeg + STEPS, units);
    } else {
        const i64 w = (i64)gridDim.x * (THREADS / 32);
        ubeg = gw * units / w;
        uend = (gw + 1) * units / w;
    }
    if (ubeg >= uend) return;
    Cursor lc, pc;
    {
        const i64 grp0 = ubeg * TEAMS + team;
        lc.row = grp0 / groups;
        lc.g = (int)(grp0 - lc.row * groups);
        pc = lc;
    }
    Slot<TPG> a[STEPS];
    if constexpr (MODE != 2) {
        for (i64 u = ubeg; u < uend; u += STEPS) {
            load_batch<TPG, STEPS, LD>(a, lc, u, uend, x, groups, cols, total, team, sub);
            process_batch<TPG, STEPS, DIV, ST, KIND>(a, pc, u, uend, q, scales, groups, cols, total, team, sub);
        }
    } else {
        Slot<TPG> b[STEPS];
        load_batch<TPG, STEPS, LD>(a, lc, ubeg, uend, x, groups, cols, total, team, sub);
        for (i64 u = ubeg;;) {
            load_batch<TPG, STEPS, LD>(b, lc, u + STEPS, uend, x, groups, cols, total, team, sub);
            process_batch<TPG, STEPS, DIV, ST, KIND>(a, pc, u, uend, q, scales, groups, cols, total, team, sub);
            u += STEPS;
            if (u >= uend) break;
            load_batch<TPG, STEPS, LD>(a, lc, u + STEPS, uend, x, groups, cols, total, team, sub);
            process_batch<TPG, STEPS, DIV, ST, KIND>(b, pc, u, uend, q, scales, groups, cols, total, team, sub);
            u += STEPS;
            if (u >= uend) break;
        }
    }
}

// ---- 128x128 ------------------------------------------------------------------------------
// Thread t: rows t / 16 + (THREADS / 16) j, columns 8 (t % 16) .. + 7 of the tile. MODE 0: one
// CTA per tile (2D grid, as the library); MODE 2: persistent (tile = blockIdx.x + k gridDim.x),
// the next tile's loads issued before the current tile's reduction.
template <int THREADS>
struct Tile {
    static constexpr int RPT = 128 * 16 / THREADS, WARPS = THREADS / 32;
};

template <int THREADS, int LD>
__device__ __forceinline__ void load_tile(uint4 (&v)[Tile<THREADS>::RPT], const u16* x, int tile, int tiles_c,
                                          int rows, int cols) {
    const int r0 = tile / tiles_c * 128, c0 = tile % tiles_c * 128;
    const int vr = threadIdx.x / 16, vc = threadIdx.x % 16 * 8;
#pragma unroll
    for (int j = 0; j < Tile<THREADS>::RPT; ++j) {
        const int r = r0 + vr + THREADS / 16 * j, c = c0 + vc;
        v[j] = r < rows && c < cols ? ld16<LD>(x + (i64)r * cols + c) : make_uint4(0, 0, 0, 0);
    }
}

template <int THREADS, int DIV, int ST>
__device__ __forceinline__ void finish_tile(const uint4 (&v)[Tile<THREADS>::RPT], float* red, u8* q, float* scales,
                                            int tile, int tiles_c, int rows, int cols) {
    float a = 0.0f;
#pragma unroll
    for (int j = 0; j < Tile<THREADS>::RPT; ++j) a = fmaxf(a, amax8(v[j]));
    a = warp_max(a);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = a;
    __syncthreads();
    a = 0.0f;
#pragma unroll
    for (int w = 0; w < Tile<THREADS>::WARPS; ++w) a = fmaxf(a, red[w]);
    const GroupScale g = group_scale(a);
    const int r0 = tile / tiles_c * 128, c0 = tile % tiles_c * 128;
    const int vr = threadIdx.x / 16, vc = threadIdx.x % 16 * 8;
#pragma unroll
    for (int j = 0; j < Tile<THREADS>::RPT; ++j) {
        const int r = r0 + vr + THREADS / 16 * j, c = c0 + vc;
        if (r < rows && c < cols) store8<DIV, ST, 0>(q + (i64)r * cols + c, v[j], g);
    }
    if (threadIdx.x == 0) scales[tile] = g.s;
}

template <int THREADS, int DIV, int LD, int ST, int MODE, int MINB>
__global__ void __launch_bounds__(THREADS, MINB)
    q128(const u16* __restrict__ x, u8* __restrict__ q, float* __restrict__ scales, int rows, int cols) {
    __shared__ float red[2][Tile<THREADS>::WARPS];
    const int tiles_c = (cols + 127) / 128, tiles = (rows + 127) / 128 * tiles_c;
    uint4 v[Tile<THREADS>::RPT];
    if constexpr (MODE == 0) {
        const int tile = blockIdx.y * tiles_c + blockIdx.x;
        load_tile<THREADS, LD>(v, x, tile, tiles_c, rows, cols);
        finish_tile<THREADS, DIV, ST>(v, red[0], q, scales, tile, tiles_c, rows, cols);
    } else {
        int tile = blockIdx.x, buf = 0;
        if (tile >= tiles) return;
        load_tile<THREADS, LD>(v, x, tile, tiles_c, rows, cols);
        for (;;) {
            const int next = tile + gridDim.x;
            uint4 w[Tile<THREADS>::RPT];
            if (next < tiles) load_tile<THREADS, LD>(w, x, next, tiles_c, rows, cols);
            finish_tile<THREADS, DIV, ST>(v, red[buf], q, scales, tile, tiles_c, rows, cols);
            if (next >= tiles) break;
            buf ^= 1;
            tile = next;
#pragma unroll
            for (int j = 0; j < Tile<THREADS>::RPT; ++j) v[j] = w[j];
        }
    }
}

}  // namespace var
#endif  // WITH_VARIANTS

// ---- the reference --------------------------------------------------------------------------

// One thread per 1x128 group (block = 0) or 128x128 tile (block = 1): amax, the library's
// fp8_scale, then e4m3(x / s) with the IEEE division.
__global__ void reference(const in_t* x, u8* q, float* scales, int rows, int cols, int block) {
    const int gc = (cols + 127) / 128;
    const i64 n = block ? (i64)((rows + 127) / 128) * gc : (i64)rows * gc;
    const i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int r0 = block ? (int)(i / gc) * 128 : (int)(i / gc), c0 = (int)(i % gc) * 128;
    const int r1 = block ? min(rows, r0 + 128) : r0 + 1, c1 = min(cols, c0 + 128);
    float amax = 0.0f;
    for (int r = r0; r < r1; ++r)
        for (int c = c0; c < c1; ++c) amax = fmaxf(amax, fabsf(load_in(x, (i64)r * cols + c)));
    const float s = fp8_scale(amax);
    for (int r = r0; r < r1; ++r)
        for (int c = c0; c < c1; ++c)
            q[(i64)r * cols + c] = (u8)(f32x2_to_e4m3x2(load_in(x, (i64)r * cols + c) / s, 0.0f) & 0xff);
    scales[i] = s;
}

#if WITH_VARIANTS
// Block a: amax = |pattern a|; every x with |x| <= amax, both signs: e4m3(x / s) against
// e4m3(var::quotient<1>(x)), and the f32 quotients where |x / s| >= 2^-12. Counts mismatches.
__device__ float half_bits_to_f32(u32 b, int f16) { return f16 ? f16_to_f32((u16)b) : bf16_to_f32((u16)b); }

__global__ void exhaustive(int f16, unsigned long long* bad) {
    const u32 a = blockIdx.x;
    const float amax = half_bits_to_f32(a, f16);
    const var::GroupScale g = var::group_scale(amax);
    unsigned long long n = 0;
    for (u32 b = threadIdx.x; b <= a; b += blockDim.x) {
#pragma unroll
        for (int neg = 0; neg < 2; ++neg) {
            const float x = half_bits_to_f32(b | (neg ? 0x8000u : 0u), f16);
            const float want = x / g.s, got = var::quotient<1>(x, g);
            if (f32x2_to_e4m3x2(want, 0.0f) != f32x2_to_e4m3x2(got, 0.0f)) ++n;
            if (fabsf(want) >= 0x1p-12f && __float_as_uint(want) != __float_as_uint(got)) ++n;
        }
    }
    if (n) atomicAdd(bad, n);
}

// The non-finite cases: amax inf (s inf), 448 and 0 with the finite, zero, inf and NaN x that a
// group of that amax can hold (|x| <= amax, or NaN, which fmaxf leaves out of amax).
__global__ void nonfinite(unsigned long long* bad) {
    const float xs[] = {0.0f, -0.0f, 1.0f, -3.5f, 1e30f, -1e-30f, INFINITY, -INFINITY, NAN};
    unsigned long long n = 0;
    for (float amax : {INFINITY, 448.0f, 0.0f}) {
        const var::GroupScale g = var::group_scale(amax);
        for (float x : xs)
            if (!(fabsf(x) > amax) &&
                f32x2_to_e4m3x2(x / g.s, 0.0f) != f32x2_to_e4m3x2(var::quotient<1>(x, g), 0.0f))
                ++n;
    }
    *bad = n;
}
#endif

// ---- data -----------------------------------------------------------------------------------

__device__ u64 mix(u64 x) {
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return x;
}

// Varied inputs: zeros of both signs, tiny values (bf16 and f16 subnormals), values of any
// exponent, and plain values whose magnitude changes per 128-column group, now and then a group of
// zeros; `specials` adds inf and NaN.
__global__ void fill_varied(in_t* p, size_t n, u64 seed, int specials) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const u64 x = mix((i + 1) * 0x9E3779B97F4A7C15ull ^ seed), gx = mix((i / 128 + 3) * 0xD1B54A32D192ED03ull ^ seed);
        const u32 sign = (u32)(x >> 40) & 0x80000000u;
        u32 f;
        switch ((x >> 8) % 16) {
            case 0: f = sign; break;
            case 1: f = __float_as_uint(ldexpf((float)((x >> 20) & 0x7ff), -((int)(x >> 32) % 40) - 120)) | sign; break;
            case 2: f = sign | ((u32)((x >> 20) % 255) << 23) | (u32)((x >> 30) & 0x7fffff); break;
            case 3:
                if (specials && (x >> 12) % 64 == 0) {
                    f = (x >> 18) & 1 ? sign | 0x7f800000u : 0x7fc00001u;
                    break;
                }
                [[fallthrough]];
            default: f = __float_as_uint(ldexpf(dev_uniform(i, seed) * 3.0f, (int)(gx % 40) - 20));
        }
        if (gx % 97 == 0) f = sign;
#if IN_KIND == 0
        p[i] = __uint_as_float(f);
#elif IN_KIND == 1
        p[i] = f32_to_f16(__uint_as_float(f));
#else
        p[i] = (u16)(f >> 16);
#endif
    }
}

__global__ void fill_plain(in_t* p, size_t n, u64 seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float f = 3.0f * dev_uniform(i, seed);
#if IN_KIND == 0
        p[i] = f;
#elif IN_KIND == 1
        p[i] = f32_to_f16(f);
#else
        p[i] = (u16)(__float_as_uint(f) >> 16);
#endif
    }
}

// ---- timing ---------------------------------------------------------------------------------

// The bench's timing: `reps` launches, each between two events, queued behind a busy-wait so
// that the host runs ahead; the median ms. And the mean of `reps` back-to-back launches.
template <class L>
static void time_it(L&& launch, int reps, float* median, float* b2b) {
    for (int i = 0; i < 3; ++i) launch(i);
    CK(cudaDeviceSynchronize());
    const unsigned long long queue_ns = (unsigned long long)std::min(reps * 200, 20000) * 1000ull;
    *median = median_event_ms(launch, reps, queue_ns);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    harness_spin<<<1, 1>>>(queue_ns);
    CK(cudaEventRecord(e0));
    for (int i = 0; i < reps; ++i) launch(i);
    CK(cudaEventRecord(e1));
    CK(cudaDeviceSynchronize());
    float t;
    CK(cudaEventElapsedTime(&t, e0, e1));
    *b2b = t / reps;
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
}

// ---- what is run ----------------------------------------------------------------------------

typedef void (*QuantKernel)(const in_t*, u8*, float*, int, int);

struct Variant {
    const char* name;
    QuantKernel k;
    int threads, mode, minb, units_per_warp, teams;  // mode -1: the library kernel
};

// Modes of the variants: -1 the library kernel (its plan's grid); 0 one batch per warp; 1, 2, 3
// (the sweep) persistent: min(minb CTAs per SM, one unit per warp); 4: minb CTAs per SM (the
// ceilings' copy kernels); 5: one CTA. Kernels that do not quantize (timed only):
static bool quantizes(const Variant& v) {
    return strncmp(v.name, "memonly", 7) && strncmp(v.name, "copy", 4) && strncmp(v.name, "empty", 5);
}

static int g_sms = 132;

// The library kernels' grids (as kernels-cuda/src/plan/quantize.rs computes them).
static dim3 library_grid(bool block, int rows, int cols) {
    const long long gc = (cols + 127) / 128, gr = (rows + 127) / 128;
#ifdef GROUPS_PER_WARP  // the kernel before GROUP_BATCH
    if (block) return dim3((unsigned)gc, (unsigned)gr);
    return dim3((unsigned)((rows * gc + 8 * GROUPS_PER_WARP - 1) / (8 * GROUPS_PER_WARP)));
#else
    if (block) return dim3((unsigned)gc, (unsigned)gr);
    const long long units = (rows * gc + UNIT_GROUPS - 1) / UNIT_GROUPS;
    const long long ctas = std::max(1ll, std::min<long long>((long long)g_sms * MIN_CTAS_PER_SM, (units + 7) / 8));
    // The fewest CTAs that keep the same rounds (units per warp), as the library; CAPPED_GRID=1:
    // the capped grid itself (the library before session 20).
    const char* capped = getenv("CAPPED_GRID");
    if (capped && atoi(capped) == 1) return dim3((unsigned)ctas);
    const long long rounds = std::max(1ll, (units + 8 * ctas - 1) / (8 * ctas));
    return dim3((unsigned)((units + 8 * rounds - 1) / (8 * rounds)));
#endif
}

#if WITH_VARIANTS
#define V1(name, TPG, STEPS, DIV, LD, ST, MODE, THREADS, MINB, KIND)                                      \
    Variant {                                                                                             \
        name, var::q1x128<TPG, STEPS, DIV, LD, ST, MODE, THREADS, MINB, KIND>, THREADS, MODE, MINB, STEPS, \
            32 / TPG                                                                                      \
    }
#define V128(name, THREADS, DIV, LD, ST, MODE, MINB) \
    Variant { name, var::q128<THREADS, DIV, LD, ST, MODE, MINB>, THREADS, MODE, MINB, 0, 0 }
#endif
#if WITH_SWEEP
// name: oORDER tTPG bBATCH lLD cST vSC xTHREADS mMINB (see dev/fp8_quantize_1x128_sweep.cuh)
#define VS(TPG, BATCH, ORDER, LD, ST, SC, THREADS, MINB)                                                 \
    Variant {                                                                                            \
        "o" #ORDER "t" #TPG "b" #BATCH "l" #LD "c" #ST "v" #SC "x" #THREADS "m" #MINB,                   \
            sweep::q1x128<TPG, BATCH, ORDER, LD, ST, SC, THREADS, MINB>, THREADS, 3, MINB, BATCH, 32 / TPG \
    }
#define VCOPY(ORDER, UNROLL, THREADS, CTAS_PER_SM)                                                   \
    Variant {                                                                                        \
        "copy-o" #ORDER "u" #UNROLL "x" #THREADS "m" #CTAS_PER_SM, sweep::copy_bytes<ORDER, UNROLL, THREADS>, \
            THREADS, 4, CTAS_PER_SM, 0, 0                                                            \
    }
#endif

// name: tTPG sSTEPS dDIV lLD cST mMODE xTHREADS bMINB (see namespace var)
static const Variant kRow[] = {
    {LIBRARY_NAME, fp8_quantize_1x128, 256, -1, 0, 0, 0},
#if WITH_VARIANTS
    V1("t16s4d0l0c0m0x256", 16, 4, 0, 0, 0, 0, 256, 1, 0),
    V1("t16s4d1l0c0m0x256", 16, 4, 1, 0, 0, 0, 256, 1, 0),
    V1("t16s2d1l0c0m0x256", 16, 2, 1, 0, 0, 0, 256, 1, 0),
    V1("t16s8d1l0c0m0x256", 16, 8, 1, 0, 0, 0, 256, 1, 0),
    V1("t16s4d1l0c1m0x256", 16, 4, 1, 0, 1, 0, 256, 1, 0),
    V1("t16s4d1l1c1m0x256", 16, 4, 1, 1, 1, 0, 256, 1, 0),
    V1("t16s4d1l2c1m0x256", 16, 4, 1, 2, 1, 0, 256, 1, 0),
    V1("t16s4d1l0c1m0x128", 16, 4, 1, 0, 1, 0, 128, 1, 0),
    V1("t16s4d1l0c1m0x512", 16, 4, 1, 0, 1, 0, 512, 1, 0),
    V1("t8s2d1l0c1m0x256", 8, 2, 1, 0, 1, 0, 256, 1, 0),
    V1("t8s4d1l0c1m0x256", 8, 4, 1, 0, 1, 0, 256, 1, 0),
    V1("t16s4d1l0c1m0x256b6", 16, 4, 1, 0, 1, 0, 256, 6, 0),
    V1("t16s2d1l0c1m0x256b8", 16, 2, 1, 0, 1, 0, 256, 8, 0),
    V1("t16s4d1l0c1m1x256b4", 16, 4, 1, 0, 1, 1, 256, 4, 0),
    V1("t16s4d1l0c1m1x256b6", 16, 4, 1, 0, 1, 1, 256, 6, 0),
    V1("t16s2d1l0c1m1x256b8", 16, 2, 1, 0, 1, 1, 256, 8, 0),
    V1("t16s8d1l0c1m1x256b4", 16, 8, 1, 0, 1, 1, 256, 4, 0),
    V1("t16s2d1l0c1m2x256b4", 16, 2, 1, 0, 1, 2, 256, 4, 0),
    V1("t16s2d1l0c1m2x256b8", 16, 2, 1, 0, 1, 2, 256, 8, 0),
    V1("t16s4d1l0c1m2x256b2", 16, 4, 1, 0, 1, 2, 256, 2, 0),
    V1("t16s4d1l0c1m2x256b3", 16, 4, 1, 0, 1, 2, 256, 3, 0),
    V1("t16s4d1l0c1m2x256b4", 16, 4, 1, 0, 1, 2, 256, 4, 0),
    V1("t16s4d1l1c1m2x256b4", 16, 4, 1, 1, 1, 2, 256, 4, 0),
    V1("t16s4d0l0c1m2x256b4", 16, 4, 0, 0, 1, 2, 256, 4, 0),
    V1("t16s4d1l0c1m2x512b2", 16, 4, 1, 0, 1, 2, 512, 2, 0),
    V1("t8s2d1l0c1m2x256b4", 8, 2, 1, 0, 1, 2, 256, 4, 0),
    V1("t16s8d1l0c1m2x256b2", 16, 8, 1, 0, 1, 2, 256, 2, 0),
    V1("memonly-t16s4m2x256b4", 16, 4, 1, 0, 1, 2, 256, 4, 1),
    V1("memonly-t16s4m0x256", 16, 4, 1, 0, 1, 0, 256, 1, 1),
#endif
#if WITH_SWEEP && SWEEP_SET == 1  // the ceilings, the library's order reproduced, the orders
    VCOPY(0, 1, 256, 2), VCOPY(0, 1, 256, 8), VCOPY(0, 2, 256, 1), VCOPY(0, 2, 256, 2), VCOPY(0, 2, 256, 4),
    VCOPY(0, 4, 256, 1), VCOPY(0, 4, 256, 2), VCOPY(0, 2, 512, 2), VCOPY(1, 2, 256, 4),
    {"empty-528x256", sweep::empty, 256, 4, 4, 0, 0}, {"empty-1x32", sweep::empty, 32, 5, 1, 0, 0},
    VS(8, 2, 0, 0, 1, 0, 256, 4), VS(8, 2, 1, 0, 1, 0, 256, 4), VS(8, 2, 2, 0, 1, 0, 256, 4),
    VS(8, 1, 1, 0, 1, 0, 256, 4), VS(16, 2, 1, 0, 1, 0, 256, 4), VS(16, 4, 1, 0, 1, 0, 256, 4),
    VS(8, 4, 1, 0, 1, 0, 256, 2), VS(8, 4, 1, 0, 1, 0, 256, 3), VS(8, 4, 2, 0, 1, 0, 256, 2),
#elif WITH_SWEEP && SWEEP_SET == 2  // load, store and scale-store flavours
    VS(8, 2, 1, 1, 1, 0, 256, 4), VS(8, 2, 1, 2, 1, 0, 256, 4), VS(8, 2, 1, 3, 1, 0, 256, 4),
    VS(8, 2, 1, 4, 1, 0, 256, 4), VS(8, 2, 1, 0, 0, 0, 256, 4), VS(8, 2, 1, 0, 1, 1, 256, 4),
    VS(8, 2, 0, 3, 1, 0, 256, 4), VS(8, 2, 0, 1, 1, 0, 256, 4), VS(8, 2, 2, 3, 1, 0, 256, 4),
    VS(16, 2, 1, 3, 1, 0, 256, 4),
#elif WITH_SWEEP && SWEEP_SET == 3  // CTA sizes, CTAs per SM, batches
    VS(8, 2, 1, 0, 1, 0, 128, 8), VS(8, 2, 1, 0, 1, 0, 512, 2), VS(8, 8, 1, 0, 1, 0, 256, 1),
    VS(8, 4, 1, 0, 1, 0, 512, 1), VS(8, 2, 1, 0, 1, 0, 256, 3), VS(8, 2, 1, 0, 1, 0, 256, 2),
    VS(8, 4, 0, 0, 1, 0, 256, 2), VS(8, 4, 1, 0, 1, 0, 128, 4), VS(16, 8, 1, 0, 1, 0, 256, 2),
    VS(8, 8, 2, 0, 1, 0, 256, 1),
#elif WITH_SWEEP && SWEEP_SET == 4  // around set 1's winner o1t8b1l0c1v0x256m4 (the library's
                                    // default since): loads, stores, CTAs per SM, CTA sizes, t16
    VCOPY(0, 1, 256, 8), VCOPY(0, 4, 256, 2),
    VS(8, 1, 1, 0, 1, 0, 256, 4), VS(8, 1, 1, 2, 1, 0, 256, 4), VS(8, 1, 1, 1, 1, 0, 256, 4),
    VS(8, 1, 1, 0, 0, 0, 256, 4), VS(8, 1, 1, 2, 0, 0, 256, 4), VS(8, 1, 1, 0, 1, 0, 256, 3),
    VS(8, 1, 1, 0, 1, 0, 256, 6), VS(8, 1, 1, 0, 1, 0, 256, 8), VS(8, 1, 1, 0, 1, 0, 128, 8),
    VS(8, 1, 1, 0, 1, 0, 128, 12), VS(8, 1, 1, 0, 1, 0, 512, 2), VS(16, 1, 1, 0, 1, 0, 256, 4),
    VS(16, 1, 1, 2, 1, 0, 256, 4), VS(8, 1, 1, 2, 1, 0, 256, 3),
#elif WITH_SWEEP
#error "SWEEP_SET must be 1, 2, 3 or 4"
#endif
#if WITH_BULK  // mode 6: bulk copies (minb CTAs per SM; units_per_warp holds STAGES)
#define VB(ST, TH, MB) Variant { "bulk-s" #ST "x" #TH "m" #MB, bulk::q1x128<ST, TH, MB>, TH, 6, MB, ST, 0 }
    VB(2, 256, 2), VB(3, 256, 2), VB(4, 256, 2), VB(2, 256, 3), VB(3, 256, 3), VB(2, 256, 4),
    VB(3, 128, 4), VB(2, 512, 2), VB(4, 256, 3), VB(6, 256, 2),
#endif
};

static const Variant kBlock[] = {
    {LIBRARY_NAME, fp8_quantize_128x128, 256, -1, 0, 0, 0},
#if WITH_VARIANTS
    V128("x256d0l0c0m0", 256, 0, 0, 0, 0, 1),
    V128("x256d1l0c0m0", 256, 1, 0, 0, 0, 1),
    V128("x256d1l0c1m0", 256, 1, 0, 1, 0, 1),
    V128("x256d1l1c1m0", 256, 1, 1, 1, 0, 1),
    V128("x256d1l0c1m0b6", 256, 1, 0, 1, 0, 6),
    V128("x512d1l0c1m0", 512, 1, 0, 1, 0, 1),
    V128("x512d1l0c1m0b3", 512, 1, 0, 1, 0, 3),
    V128("x128d1l0c1m0", 128, 1, 0, 1, 0, 1),
    V128("x256d1l0c1m2b2", 256, 1, 0, 1, 2, 2),
    V128("x256d1l0c1m2b3", 256, 1, 0, 1, 2, 3),
    V128("x512d1l0c1m2b2", 512, 1, 0, 1, 2, 2),
    V128("x512d1l0c1m2b1", 512, 1, 0, 1, 2, 1),
#endif
};

static dim3 grid_of(const Variant& v, bool block, int rows, int cols) {
    if (v.mode == -1) return library_grid(block, rows, cols);
    if (v.mode == 4) return dim3(g_sms * v.minb);
    if (v.mode == 6) return dim3((unsigned)std::min<long long>((long long)g_sms * v.minb, rows));
    if (v.mode == 5) return dim3(1);
    const int groups = (cols + 127) / 128;
    if (block) {
        if (v.mode == 2) return dim3(std::min(g_sms * v.minb, groups * ((rows + 127) / 128)));
        return dim3(groups, (rows + 127) / 128);
    }
    const long long total = (long long)rows * groups;
    const long long units = (total + v.teams - 1) / v.teams;
    const int warps = v.threads / 32;
    if (v.mode == 0)
        return dim3((unsigned)((units + (long long)v.units_per_warp * warps - 1) / ((long long)v.units_per_warp * warps)));
    return dim3((unsigned)std::min<long long>((long long)g_sms * v.minb, (units + warps - 1) / warps));
}

struct Set {
    in_t* x;
    u8* q;
    float* s;
};

static void launch(const Variant& v, bool block, const Set& s, int rows, int cols) {
#if WITH_BULK
    if (v.mode == 6) {
        // Host work only: timed launches wait behind a GPU busy-wait.
        const size_t smem = bulk::smem_bytes(v.units_per_warp, cols);
        CK(cudaFuncSetAttribute(v.k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        v.k<<<grid_of(v, block, rows, cols), v.threads, smem>>>(s.x, s.q, s.s, rows, cols);
        return;
    }
#endif
    v.k<<<grid_of(v, block, rows, cols), v.threads>>>(s.x, s.q, s.s, rows, cols);
}

static size_t scales_len(bool block, int rows, int cols) {
    return block ? (size_t)((rows + 127) / 128) * ((cols + 127) / 128) : (size_t)rows * ((cols + 127) / 128);
}

// Every kernel against the reference on varied data (x at offset `shift` elements from an aligned
// allocation, so that shift 1 takes the scalar path): q and scales bit for bit.
static int check_all(const Variant* vs, int nv, bool block, int rows, int cols, int specials, int shift) {
    const size_t n = (size_t)rows * cols, ns = scales_len(block, rows, cols);
    Set s;
    in_t* xa;
    CK(cudaMalloc(&xa, (n + 8) * sizeof(in_t)));
    s.x = xa + shift;
    CK(cudaMalloc(&s.q, n));
    CK(cudaMalloc(&s.s, ns * 4));
    fill_varied<<<1024, 256>>>(s.x, n, 0x5eed + rows + cols, specials);
    std::vector<u8> q0(n), q1(n);
    std::vector<float> s0(ns), s1(ns);
    CK(cudaMemset(s.q, 0xa5, n));
    reference<<<(unsigned)((ns + 127) / 128), 128>>>(s.x, s.q, s.s, rows, cols, block);
    CK(cudaDeviceSynchronize());
    CK(cudaGetLastError());
    CK(cudaMemcpy(q0.data(), s.q, n, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(s0.data(), s.s, ns * 4, cudaMemcpyDeviceToHost));
    int fails = 0;
    for (int i = 0; i < nv; ++i) {
        // The variants of namespace var have no scalar path.
        if (!quantizes(vs[i]) || (vs[i].mode != -1 && (shift || cols % 8))) continue;
        if (vs[i].mode == 6 && cols % 16) continue;  // bulk: 16-byte rows of codes
        CK(cudaMemset(s.q, 0xa5, n));
        CK(cudaMemset(s.s, 0xff, ns * 4));
        launch(vs[i], block, s, rows, cols);
        CK(cudaDeviceSynchronize());
        CK(cudaGetLastError());
        CK(cudaMemcpy(q1.data(), s.q, n, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(s1.data(), s.s, ns * 4, cudaMemcpyDeviceToHost));
        if (memcmp(q0.data(), q1.data(), n) || memcmp(s0.data(), s1.data(), ns * 4)) {
            size_t bad = 0, bads = 0;
            for (size_t e = 0; e < n; ++e) bad += q0[e] != q1[e];
            for (size_t e = 0; e < ns; ++e) bads += memcmp(&s0[e], &s1[e], 4) != 0;
            printf("CHECK FAIL %s %s %dx%d specials=%d shift=%d: %zu values, %zu scales differ\n",
                   block ? "128x128" : "1x128", vs[i].name, rows, cols, specials, shift, bad, bads);
            ++fails;
        }
    }
    CK(cudaFree(xa));
    CK(cudaFree(s.q));
    CK(cudaFree(s.s));
    return fails;
}

static void time_all(const Variant* vs, int nv, bool block, int rows, int cols, double copy_gbps, int reps) {
    const size_t n = (size_t)rows * cols, ns = scales_len(block, rows, cols);
    const double bytes = (double)(sizeof(in_t) + 1) * n + 4.0 * ns;
    const size_t set_bytes = (sizeof(in_t) + 1) * n;
    const int sets = (int)std::min<size_t>(16, std::max<size_t>(1, ((200u << 20) + set_bytes - 1) / set_bytes));
    std::vector<Set> s(sets);
    std::vector<u8*> cdst(sets);
    for (auto& t : s) {
        CK(cudaMalloc(&t.x, n * sizeof(in_t)));
        CK(cudaMalloc(&t.q, n));
        CK(cudaMalloc(&t.s, ns * 4));
        fill_plain<<<1024, 256>>>(t.x, n, 7 + (&t - s.data()));
    }
    const char* what = block ? "128x128" : "1x128";
    float med, b2b;
    if (WITH_VARIANTS || (WITH_SWEEP && (SWEEP_SET == 1 || SWEEP_SET == 4) && !block)) {
        const size_t half_bytes = (size_t)(bytes / 2);
        for (auto& d : cdst) CK(cudaMalloc(&d, half_bytes));
        time_it([&](int i) { CK(cudaMemcpyAsync(cdst[i % sets], s[i % sets].x, half_bytes, cudaMemcpyDeviceToDevice)); },
                reps, &med, &b2b);
        printf("ROW %-7s %dx%d %-26s %8.4f ms %8.4f ms(b2b) %5.0f GB/s %5.1f%% of copy  (%d sets)\n", what, rows, cols,
               "memcpy-same-total", med, b2b, bytes / (med * 1e6), 100.0 * bytes / (med * 1e6) / copy_gbps, sets);
        for (auto& d : cdst) CK(cudaFree(d));
    }
    for (int i = 0; i < nv; ++i) {
        const Variant& v = vs[i];
        time_it([&](int r) { launch(v, block, s[r % sets], rows, cols); }, reps, &med, &b2b);
        cudaFuncAttributes at;
        CK(cudaFuncGetAttributes(&at, v.k));
        int occ = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, v.k, v.threads, 0));
        const dim3 g = grid_of(v, block, rows, cols);
        printf("ROW %-7s %dx%d %-26s %8.4f ms %8.4f ms(b2b) %5.0f GB/s %5.1f%% of copy  regs %d local %zu occ %d grid %u\n",
               what, rows, cols, v.name, med, b2b, bytes / (med * 1e6), 100.0 * bytes / (med * 1e6) / copy_gbps,
               at.numRegs, at.localSizeBytes, occ, g.x * g.y);
    }
    for (auto& t : s) {
        CK(cudaFree(t.x));
        CK(cudaFree(t.q));
        CK(cudaFree(t.s));
    }
}

int main(int argc, char** argv) {
    const bool check_only = argc > 1 && !strcmp(argv[1], "--check");
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    g_sms = p.multiProcessorCount;
    printf("%s: device %s, %d SMs, L2 %d MB, IN_KIND=%d POW2=%d\n", LIBRARY_NAME, p.name, g_sms, p.l2CacheSize >> 20,
           IN_KIND, POW2);
#if WITH_VARIANTS
    // The reciprocal form of x / s, exhaustively.
    unsigned long long* bad;
    CK(cudaMalloc(&bad, 8));
    for (int f16 = 0; f16 < 2; ++f16) {
        CK(cudaMemset(bad, 0, 8));
        exhaustive<<<f16 ? 0x7c00 : 0x7f80, 256>>>(f16, bad);
        unsigned long long h;
        CK(cudaMemcpy(&h, bad, 8, cudaMemcpyDeviceToHost));
        printf("EXHAUSTIVE POW2=%d %s x / s vs the reciprocal form: %llu mismatches\n", POW2, f16 ? "f16" : "bf16", h);
    }
    nonfinite<<<1, 1>>>(bad);
    {
        unsigned long long h;
        CK(cudaMemcpy(&h, bad, 8, cudaMemcpyDeviceToHost));
        printf("NONFINITE POW2=%d mismatches: %llu\n", POW2, h);
    }
#endif
    const int nrow = sizeof(kRow) / sizeof(kRow[0]), nblock = sizeof(kBlock) / sizeof(kBlock[0]);
    int fails = 0;
    const int shapes[][2] = {{4096, 7168}, {131, 296}, {3, 1024}, {257, 7168}, {1, 128}, {300, 200}, {7, 8}, {131, 300}, {5, 1000}};
    for (auto& sh : shapes)
        for (int specials = 0; specials < 2; ++specials)
            for (int shift = 0; shift < 2; ++shift) {
                if (shift && sh[0] * sh[1] > 1 << 22) continue;
                fails += check_all(kRow, nrow, false, sh[0], sh[1], specials, shift);
                fails += check_all(kBlock, nblock, true, sh[0], sh[1], specials, shift);
            }
    printf("CHECKS %s IN_KIND=%d POW2=%d %s (%d failures)\n", LIBRARY_NAME, IN_KIND, POW2, fails ? "FAILED" : "PASSED", fails);
    if (check_only) return fails ? 1 : 0;
    // The 1 GiB copy ceiling (read + write bytes), timed as the bench times it.
    const size_t gib = 1ull << 30;
    u8 *a, *b;
    CK(cudaMalloc(&a, gib));
    CK(cudaMalloc(&b, gib));
    CK(cudaMemset(a, 1, gib));
    float med, b2b;
    time_it([&](int) { CK(cudaMemcpyAsync(b, a, gib, cudaMemcpyDeviceToDevice)); }, 20, &med, &b2b);
    const double copy = 2.0 * gib / (med * 1e6);
    printf("COPY %s 1 GiB: %.4f ms, %.0f GB/s (read + write)\n", LIBRARY_NAME, med, copy);
    CK(cudaFree(a));
    CK(cudaFree(b));
    time_all(kRow, nrow, false, 4096, 7168, copy, 100);
    time_all(kBlock, nblock, true, 7168, 7168, copy, 100);
    return fails ? 1 : 0;
}

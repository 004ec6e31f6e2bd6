// FP8 quantizers (DeepSeek-V3 recipe): E4M3 values with one f32 scale per 1x128 group of a row
// (activations) or per 128x128 block (weights).
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/quantize.rs):
//   IN_KIND   0 = f32 input, 1 = f16, 2 = bf16
//   POW2      1 = scales rounded up to a power of two, 0 = not
//   GROUPS_PER_WARP  1x128 groups each warp of fp8_quantize_1x128 handles (even)
//   TESSERA_SMEM_BYTES 0 (no dynamic shared memory); TESSERA_THREADS 256 (8 warps)
//
// Vector path (columns a multiple of 8, x and q 16- and 8-byte aligned): each thread loads 8
// consecutive inputs with one or two 16-byte loads and stores their 8 bytes at once; a 1x128
// group is 16 threads, and a warp issues the loads of all its groups before reducing any (bytes
// in flight to reach copy speed). Otherwise the scalar path, one element at a time. Both give
// the same bits.
//
// Scale rule (bit-exact with tessera_core::ops::fp8::fp8_scale): s = max(amax, 1e-4f) / 448
// (IEEE division), optionally rounded up to a power of two; q = e4m3(x / s) (IEEE division,
// round to nearest even, saturating).

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
#ifndef GROUPS_PER_WARP
#error "GROUPS_PER_WARP is required (1x128 groups per warp, even)"
#endif
#if GROUPS_PER_WARP < 2 || GROUPS_PER_WARP % 2 != 0
#error "GROUPS_PER_WARP must be even and at least 2"
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
#if IN_KIND != 0
// A 16-bit input's value (the low half of a 32-bit word is the lower address).
__device__ __forceinline__ float half_to_f32(u16 h) { return IN_KIND == 1 ? f16_to_f32(h) : bf16_to_f32(h); }
#endif

// 8 consecutive inputs, kept as loaded (16-bit inputs: two per word) to spare registers.
struct In8 {
    static constexpr int WORDS = IN_KIND == 0 ? 8 : 4;
    u32 w[WORDS];
    __device__ __forceinline__ float at(int e) const {
#if IN_KIND == 0
        return __uint_as_float(w[e]);
#else
        return half_to_f32((u16)(e % 2 == 0 ? (w[e / 2] & 0xffffu) : (w[e / 2] >> 16)));
#endif
    }
};

// The 8 inputs at element index i (16-byte aligned), streamed past L1.
__device__ __forceinline__ In8 load8(const in_t* p, i64 i) {
    In8 r;
#pragma unroll
    for (int h = 0; h < In8::WORDS / 4; ++h) {
        const uint4 a = __ldcs((const uint4*)(p + i) + h);
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

// The 8 e4m3 bytes of x / s, stored at q + i (8-byte aligned).
__device__ __forceinline__ void store8(u8* q, i64 i, const In8& x, float s) {
    u32 w[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int e = 4 * h;
        w[h] = (u32)f32x2_to_e4m3x2(x.at(e) / s, x.at(e + 1) / s) |
               ((u32)f32x2_to_e4m3x2(x.at(e + 2) / s, x.at(e + 3) / s) << 16);
    }
    *(uint2*)(q + i) = make_uint2(w[0], w[1]);
}

__device__ __forceinline__ bool vector_path(const in_t* x, const u8* q, int cols) {
    return cols % 8 == 0 && ((u64)x % 16) == 0 && ((u64)q % 8) == 0;
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

// GROUPS_PER_WARP (row, 128-column group) pairs per warp, in row-major order of the groups.
// x, q: [rows, cols]; scales: [rows, ceil(cols / 128)].
extern "C" __global__ void fp8_quantize_1x128(const in_t* __restrict__ x, u8* __restrict__ q,
                                              float* __restrict__ scales, int rows, int cols) {
    const int groups = (cols + 127) / 128;
    const i64 total = (i64)rows * groups;
    const i64 first = ((i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * GROUPS_PER_WARP;
    const int lane = threadIdx.x % 32;
    if (first >= total) return;
    if (vector_path(x, q, cols)) {
        // Half-warp h takes groups first + 2 j + h; lane l % 16 owns 8 columns of its group.
        // (row, g) of the group advance without divisions.
        const int half = lane / 16, sub = lane % 16;
        constexpr int STEPS = GROUPS_PER_WARP / 2;
        In8 v[STEPS];
        i64 at[STEPS];
        bool in[STEPS];
        i64 row = first / groups;
        int g = (int)(first - row * groups) + half;
        while (g >= groups) g -= groups, ++row;
#pragma unroll
        for (int j = 0; j < STEPS; ++j) {
            if (j > 0) {
                g += 2;
                while (g >= groups) g -= groups, ++row;
            }
            const i64 grp = first + 2 * j + half;
            const int c = g * 128 + sub * 8;
            in[j] = grp < total && c < cols;
            at[j] = (i64)row * cols + c;
            v[j] = in[j] ? load8(x, at[j]) : zero8();
        }
#pragma unroll
        for (int j = 0; j < STEPS; ++j) {
            float amax = amax8(v[j]);
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            const float s = fp8_scale(amax);
            if (in[j]) store8(q, at[j], v[j], s);
            const i64 grp = first + 2 * j + half;
            if (sub == 0 && grp < total) scales[grp] = s;
        }
        return;
    }
    for (int j = 0; j < GROUPS_PER_WARP; ++j) {
        const i64 grp = first + j;
        if (grp >= total) return;
        const int row = (int)(grp / groups);
        const int g = (int)(grp % groups);
        float v[4];
        float amax = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int c = g * 128 + lane * 4 + i;
            v[i] = c < cols ? load_in(x, (i64)row * cols + c) : 0.0f;
            amax = fmaxf(amax, fabsf(v[i]));
        }
        amax = warp_max(amax);
        const float s = fp8_scale(amax);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int c = g * 128 + lane * 4 + i;
            if (c < cols) q[(i64)row * cols + c] = f32_to_e4m3(v[i] / s);
        }
        if (lane == 0) scales[grp] = s;
    }
}

// One block of 256 threads per 128x128 tile.
// x, q: [rows, cols]; scales: [ceil(rows / 128), ceil(cols / 128)].
extern "C" __global__ void fp8_quantize_128x128(const in_t* __restrict__ x, u8* __restrict__ q,
                                                float* __restrict__ scales, int rows, int cols) {
    __shared__ float warp_amax[8];
    const int groups = (cols + 127) / 128;
    const int tile_r = blockIdx.y, tile_c = blockIdx.x;
    const int r0 = tile_r * 128, c0 = tile_c * 128;
    const int nr = min(128, rows - r0), nc = min(128, cols - c0);
    float amax = 0.0f;
    const bool vec = vector_path(x, q, cols);
    // Vector path: thread t holds rows t / 16 + 16 j (j < 8), columns 8 (t % 16) .. + 7, in
    // registers from the one read of the tile.
    constexpr int ROWS_PER_THREAD = 128 * 16 / 256;
    In8 v[ROWS_PER_THREAD];
    const int vr = threadIdx.x / 16, vc = (threadIdx.x % 16) * 8;
    if (vec) {
#pragma unroll
        for (int j = 0; j < ROWS_PER_THREAD; ++j) {
            const int r = vr + 16 * j;
            v[j] = r < nr && vc < nc ? load8(x, (i64)(r0 + r) * cols + c0 + vc) : zero8();
            amax = fmaxf(amax, amax8(v[j]));
        }
    } else {
        for (int i = threadIdx.x; i < 128 * 128; i += blockDim.x) {
            int r = i / 128, c = i % 128;
            if (r < nr && c < nc) amax = fmaxf(amax, fabsf(load_in(x, (i64)(r0 + r) * cols + c0 + c)));
        }
    }
    amax = warp_max(amax);
    if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
    __syncthreads();
    amax = 0.0f;
    for (int w = 0; w < (int)(blockDim.x / 32); ++w) amax = fmaxf(amax, warp_amax[w]);
    const float s = fp8_scale(amax);
    if (vec) {
#pragma unroll
        for (int j = 0; j < ROWS_PER_THREAD; ++j) {
            const int r = vr + 16 * j;
            if (r < nr && vc < nc) store8(q, (i64)(r0 + r) * cols + c0 + vc, v[j], s);
        }
    } else {
        for (int i = threadIdx.x; i < 128 * 128; i += blockDim.x) {
            int r = i / 128, c = i % 128;
            if (r < nr && c < nc) {
                i64 idx = (i64)(r0 + r) * cols + c0 + c;
                q[idx] = f32_to_e4m3(load_in(x, idx) / s);
            }
        }
    }
    if (threadIdx.x == 0) scales[(i64)tile_r * groups + tile_c] = s;
}

// FP8 quantizers (DeepSeek-V3 recipe): E4M3 values with one f32 scale per 1x128 group of a row
// (activations) or per 128x128 block (weights).
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/quantize.rs):
//   IN_KIND   0 = f32 input, 1 = f16, 2 = bf16
//   POW2      1 = scales rounded up to a power of two, 0 = not
//   TESSERA_SMEM_BYTES 0 (no dynamic shared memory); TESSERA_THREADS 256 (8 warps)
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

__device__ __forceinline__ float fp8_scale(float amax) {
    float s = fmaxf(amax, 1e-4f) / 448.0f;
#if POW2
    u32 b = __float_as_uint(s);
    if (b & 0x007fffffu) b = (b & 0x7f800000u) + 0x00800000u;
    s = __uint_as_float(b);
#endif
    return s;
}

// One warp per (row, 128-column group); each lane owns 4 columns.
// x, q: [rows, cols]; scales: [rows, ceil(cols / 128)].
extern "C" __global__ void fp8_quantize_1x128(const in_t* __restrict__ x, u8* __restrict__ q,
                                              float* __restrict__ scales, int rows, int cols) {
    const int groups = (cols + 127) / 128;
    const i64 warp = (i64)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (warp >= (i64)rows * groups) return;
    const int row = (int)(warp / groups);
    const int g = (int)(warp % groups);
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
    if (lane == 0) scales[(i64)row * groups + g] = s;
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
    for (int i = threadIdx.x; i < 128 * 128; i += blockDim.x) {
        int r = i / 128, c = i % 128;
        if (r < nr && c < nc) amax = fmaxf(amax, fabsf(load_in(x, (i64)(r0 + r) * cols + c0 + c)));
    }
    amax = warp_max(amax);
    if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
    __syncthreads();
    amax = 0.0f;
    for (int w = 0; w < (int)(blockDim.x / 32); ++w) amax = fmaxf(amax, warp_amax[w]);
    const float s = fp8_scale(amax);
    for (int i = threadIdx.x; i < 128 * 128; i += blockDim.x) {
        int r = i / 128, c = i % 128;
        if (r < nr && c < nc) {
            i64 idx = (i64)(r0 + r) * cols + c0 + c;
            q[idx] = f32_to_e4m3(load_in(x, idx) / s);
        }
    }
    if (threadIdx.x == 0) scales[(i64)tile_r * groups + tile_c] = s;
}

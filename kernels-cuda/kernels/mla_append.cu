// MLA paged latent cache: append tokens (vLLM's slot mapping), bf16 or FP8 records.
//
// Run-time parameters only (one variant serves every layout). TESSERA_SMEM_BYTES 0,
// TESSERA_THREADS 256 (8 tokens per CTA).
//
// Record of token slot s: cache + s * token_bytes.
//   bf16 format (fmt 0): [latent bf16 | rope bf16]                      (2 * (latent + rope) bytes)
//   FP8 format  (fmt 1): [latent e4m3 | latent/128 f32 scales | rope bf16]
// FP8 scale rule (bit-exact with tessera_core::ops::mla::mla_fp8_scale): per group of 128 latent
// values, s = amax / 448 (IEEE division), at least 2^-126, rounded up to a power of two;
// code = e4m3(x / s) (IEEE division, round to nearest even, saturating).
//
// Alignment (checked by the host): latent, rope and cache start on 16 bytes. Every record then
// starts on 4 bytes (token_bytes is a multiple of 4 in both formats), and on 16 bytes in the bf16
// format (token_bytes a multiple of 32 there).

static_assert(TESSERA_SMEM_BYTES == 0, "the append kernel uses no dynamic shared memory");
static_assert(TESSERA_THREADS == 256, "the append kernel runs one warp per token, 8 tokens per CTA");

__device__ __forceinline__ float mla_cache_scale(float amax) {
    float s = fmaxf(amax / 448.0f, 1.17549435e-38f);  // f32::MIN_POSITIVE = 2^-126
    u32 b = __float_as_uint(s);
    if (b & 0x007fffffu) b = (b & 0x7f800000u) + 0x00800000u;
    return __uint_as_float(b);
}

// One warp per token, 8 tokens per block of 256 threads.
//   latent: bf16 [tokens, latent_dim]; rope: bf16 [tokens, rope_dim]; slots: i32 [tokens]
//   cache:  u8 [num_slots, token_bytes]
// A token whose slot is negative or >= num_slots is skipped (never written).
extern "C" __global__ void __launch_bounds__(256) mla_append(
    const u16* __restrict__ latent, const u16* __restrict__ rope, const int* __restrict__ slots,
    u8* __restrict__ cache, int tokens, int latent_dim, int rope_dim, int fmt, int num_slots,
    int token_bytes) {
    const int t = blockIdx.x * 8 + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (t >= tokens) return;
    const int slot = slots[t];
    if (slot < 0 || slot >= num_slots) return;
    u8* rec = cache + (i64)slot * token_bytes;
    const u16* lat = latent + (i64)t * latent_dim;
    const u16* rp = rope + (i64)t * rope_dim;
    if (fmt == 0) {
        // 16-byte copies: 8 bf16 each.
        const uint4* src = reinterpret_cast<const uint4*>(lat);
        uint4* dst = reinterpret_cast<uint4*>(rec);
        for (int i = lane; i < latent_dim / 8; i += 32) dst[i] = src[i];
        const uint4* srcr = reinterpret_cast<const uint4*>(rp);
        uint4* dstr = reinterpret_cast<uint4*>(rec + 2 * latent_dim);
        for (int i = lane; i < rope_dim / 8; i += 32) dstr[i] = srcr[i];
    } else {
        const int groups = latent_dim / 128;
        float* scales = reinterpret_cast<float*>(rec + latent_dim);
        for (int g = 0; g < groups; ++g) {
            // Lane owns values 4*lane .. 4*lane+3 of the group.
            const uint2 w = reinterpret_cast<const uint2*>(lat + g * 128)[lane];
            float v[4] = {bf16_to_f32((u16)(w.x & 0xffffu)), bf16_to_f32((u16)(w.x >> 16)),
                          bf16_to_f32((u16)(w.y & 0xffffu)), bf16_to_f32((u16)(w.y >> 16))};
            float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
            amax = warp_max(amax);
            const float s = mla_cache_scale(amax);
            u32 packed = 0;
#pragma unroll
            for (int i = 0; i < 4; ++i) packed |= (u32)f32_to_e4m3(v[i] / s) << (8 * i);
            reinterpret_cast<u32*>(rec + g * 128)[lane] = packed;
            if (lane == 0) scales[g] = s;
        }
        // Rope: bf16 pairs as 4-byte words.
        const u32* srcr = reinterpret_cast<const u32*>(rp);
        u32* dstr = reinterpret_cast<u32*>(rec + latent_dim + 4 * groups);
        for (int i = lane; i < rope_dim / 2; i += 32) dstr[i] = srcr[i];
    }
}

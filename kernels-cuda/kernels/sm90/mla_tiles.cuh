// Tessera CUDA kernels: filling a Hopper decode kernel's bf16 key tiles from MLA cache records,
// shared by sm90/mla_decode.cu and sm90/mla_decode_fp8.cu: bf16 records copied by cp.async
// (sm90/mla_decode.cu's producer, sm90/mla_decode_fp8.cu's FMT 0 loaders), FP8 codes converted
// (both kernels' FMT 1). Prepended after sm90/hopper.cuh.
//
// A key tile is 9 column blocks of [64 keys][64 dims] bf16, each 128-byte swizzled (swizzle128);
// a record is 72 chunks of 16 bytes, chunk c of column block cb at byte (cb * 8 + c) * 16.

// Copies chunk `chunk` of column block `cb` of N records into `block` (that column block of a
// tile) with 16-byte cp.async: record k (byte offset rec[k] in the cache, or -1: zeros, nothing
// read) goes to key row key0 + key_stride * k.
template <int N>
__device__ __forceinline__ void mla_copy_record_chunks(u8* block, const u8* __restrict__ cache, const i64 (&rec)[N],
                                                       int cb, int key0, int key_stride, int chunk) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
        const bool valid = rec[k] >= 0;
        cp_async_16(block + swizzle128(key_stride * k + key0, chunk),
                    valid ? cache + rec[k] + (cb * 8 + chunk) * 16 : cache, valid);
    }
}

// Four e4m3 codes (the low byte first) times the scale s, as two packed bf16 pairs (exact for a
// power-of-two scale: e4m3 has 3 mantissa bits).
__device__ __forceinline__ uint2 mla_e4m3x4_scaled(u32 w, float s) {
    u32 h0, h1;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h0) : "h"((u16)(w & 0xffffu)));
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h1) : "h"((u16)(w >> 16)));
    uint2 r;
    r.x = pack2<true>(f16_to_f32((u16)(h0 & 0xffffu)) * s, f16_to_f32((u16)(h0 >> 16)) * s);
    r.y = pack2<true>(f16_to_f32((u16)(h1 & 0xffffu)) * s, f16_to_f32((u16)(h1 >> 16)) * s);
    return r;
}

// Four e4m3 codes (the low byte first) times the scale s, as two packed bf16 pairs, the f32
// products truncated to bf16 (their high halves, one byte permute per pair): exact for a
// power-of-two scale (the product has at most 4 significant bits), NaN codes stay NaN; other
// scales lose up to 2^-7 of each value (toward zero). Half the conversion-pipe instructions of
// mla_e4m3x4_scaled (whose f32 -> bf16 pack runs at a quarter of the FMA rate): for kernels whose
// conversion is the bottleneck.
__device__ __forceinline__ uint2 mla_e4m3x4_scaled_truncated(u32 w, float s) {
    u32 h0, h1;
    asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}"
        : "=r"(h0), "=r"(h1)
        : "r"(w));
    const float a = f16_to_f32((u16)(h0 & 0xffffu)) * s, b = f16_to_f32((u16)(h0 >> 16)) * s;
    const float c = f16_to_f32((u16)(h1 & 0xffffu)) * s, d = f16_to_f32((u16)(h1 >> 16)) * s;
    uint2 r;
    asm("prmt.b32 %0, %1, %2, 0x7632;" : "=r"(r.x) : "r"(__float_as_uint(a)), "r"(__float_as_uint(b)));
    asm("prmt.b32 %0, %1, %2, 0x7632;" : "=r"(r.y) : "r"(__float_as_uint(c)), "r"(__float_as_uint(d)));
    return r;
}

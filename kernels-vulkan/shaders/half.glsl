// Tessera Vulkan shaders: branch-free f16 conversions for kernels that convert in their inner
// loops (checked exhaustively / on adversarial inputs by check_arith.comp). Include after
// common.glsl.

#ifndef TESSERA_HALF_GLSL
#define TESSERA_HALF_GLSL

// IEEE binary16 bits (low 16 bits of h) -> f32 bits, exact, without branches and with few
// operations (decoding runs in the inner loops): normal values are rebased bits, subnormals
// m · 2^-24 are computed as float(m) · 2^-24 (both factors and the product are exact normal
// f32 values, so no rounding or flushing is involved), infinities and NaNs keep their payload.
uint f16_bits_to_f32_bits_fast(uint h) {
    uint sign = (h & 0x8000u) << 16;
    uint e = h & 0x7c00u;
    uint m = h & 0x3ffu;
    uint normal = ((h & 0x7fffu) << 13) + (112u << 23);
    uint special = 0x7f800000u | (m << 13);
    uint sub = floatBitsToUint(float(m) * 5.9604644775390625e-8);
    uint finite = e == 0u ? sub : normal;
    uint bits = e == 0x7c00u ? special : finite;
    return sign | bits;
}

// f32 -> IEEE binary16 bits, round to nearest even, with integer operations and no branches:
// overflow to infinity, subnormal results rounded correctly, NaN to a quiet NaN.
uint f32_to_f16_bits(float x) {
    uint u = floatBitsToUint(x);
    uint sign = (u >> 16) & 0x8000u;
    uint a = u & 0x7fffffffu;
    int e = int(a >> 23) - 127;
    // Normal range (e >= -14): rebase the exponent, round off 13 bits; a carry moves into the
    // exponent, up to infinity (0x7c00) from 65520 on.
    uint r = a - (112u << 23);
    uint normal = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
    // Subnormal (e <= -15, units of 2^-24): |x| / 2^-24 = m24 · 2^(e + 1), rounded; a result of
    // 0x400 is the smallest normal, encoded correctly as it is. Below 2^-25 (f32 subnormals
    // included) it rounds to zero.
    uint shift = uint(clamp(-1 - e, 1, 31));
    uint m = (a & 0x7fffffu) | 0x800000u;
    uint q = m >> shift;
    uint rem = m & ((1u << shift) - 1u);
    uint half_ulp = 1u << (shift - 1u);
    uint up = uint(rem > half_ulp) | (uint(rem == half_ulp) & q & 1u);
    uint rounded = q + up;
    uint sub = shift > 25u ? 0u : rounded;
    uint finite = e >= -14 ? normal : sub;
    uint big = a > 0x7f800000u ? 0x7e00u : 0x7c00u;  // NaN, or beyond every f16
    uint bits = a >= 0x47800000u ? big : finite;
    return sign | bits;
}

#endif

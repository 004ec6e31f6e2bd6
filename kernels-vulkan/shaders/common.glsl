// Tessera Vulkan shaders: shared helpers, included by the .comp files.
//
// Everything here works on the bits of f32 values with 32-bit integer operations only, so the
// results are exact and identical on every Vulkan device: SPIR-V OpFDiv may be off by 2.5 ULP,
// fma() may be unfused, and denormals may be flushed, but none of that touches integer code.
// No 8- or 16-bit arithmetic or storage is needed (FP8, f16 and bf16 live in 32-bit words).

#ifndef TESSERA_COMMON_GLSL
#define TESSERA_COMMON_GLSL

// The correctly rounded (to nearest, ties to even) quotient x / s, as f32 bits.
// x: the bits of any finite f32 (subnormals included); s: the bits of a positive, normal, finite
// f32. Long division of the 24-bit significands, with the remainder deciding the rounding; an
// overflowing quotient gives infinity and a tiny one a correctly rounded subnormal or zero.
uint div_rn_bits(uint x, uint s) {
    uint sign = x & 0x80000000u;
    uint ax = x & 0x7fffffffu;
    if (ax == 0u) {
        return sign;
    }
    int ex = int(ax >> 23);
    uint mx = ax & 0x7fffffu;
    if (ex == 0) {
        // Subnormal x: normalize so that bit 23 is set.
        int lz = 23 - findMSB(mx);
        mx <<= uint(lz);
        ex = 1 - lz;
    } else {
        mx |= 0x800000u;
    }
    int es = int(s >> 23);
    uint ms = (s & 0x7fffffu) | 0x800000u;
    // x / s = (mx / ms) * 2^(ex - es); make mx / ms lie in [1, 2).
    int e = ex - es;
    if (mx < ms) {
        mx <<= 1;
        e -= 1;
    }
    // q = floor(mx * 2^23 / ms) in [2^23, 2^24); r = 2 * remainder, so r < 2 * ms < 2^25.
    uint q = 0u;
    uint r = mx;
    for (int i = 0; i < 24; ++i) {
        q <<= 1;
        if (r >= ms) {
            r -= ms;
            q |= 1u;
        }
        r <<= 1;
    }
    int biased = e + 127;
    if (biased >= 255) {
        return sign | 0x7f800000u;
    }
    if (biased >= 1) {
        // A carry out of the significand bumps the exponent (up to infinity), as it must.
        uint bits = (uint(biased) << 23) + (q - 0x800000u);
        if (r > ms || (r == ms && (q & 1u) != 0u)) {
            bits += 1u;
        }
        return sign | bits;
    }
    // Subnormal quotient: (q + r / (2 ms)) / 2^shift units of 2^-149.
    uint shift = uint(1 - biased);
    if (shift > 25u) {
        return sign;
    }
    uint qs = q >> shift;
    uint dropped = q & ((1u << shift) - 1u);
    uint half_ulp = 1u << (shift - 1u);
    if (dropped > half_ulp || (dropped == half_ulp && (r != 0u || (qs & 1u) != 0u))) {
        qs += 1u;
    }
    return sign | qs;
}

// Rounds the magnitude bits of a positive f32 with a 24-bit significand m right by `shift`
// (1..31) bits, to nearest, ties to even.
uint shift_rne(uint m, uint shift) {
    uint q = m >> shift;
    uint rem = m & ((1u << shift) - 1u);
    uint half_ulp = 1u << (shift - 1u);
    if (rem > half_ulp || (rem == half_ulp && (q & 1u) != 0u)) {
        q += 1u;
    }
    return q;
}

// f32 bits -> OCP E4M3FN code (low 8 bits), as PTX cvt.rn.satfinite and tessera_core's
// E4M3::from_f32: round to nearest even, |x| >= 448 (infinities included) to +-448 (0x7e),
// NaN to 0x7f.
uint f32_bits_to_e4m3(uint u) {
    uint a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {
        return 0x7fu;
    }
    uint sign = (u >> 24) & 0x80u;
    if (a >= 0x43e00000u) {  // 448.0
        return sign | 0x7eu;
    }
    int e = int(a >> 23) - 127;
    if (e < -10) {
        // Below 2^-10 (half the smallest subnormal code): zero. f32 subnormals land here too.
        return sign;
    }
    uint m = (a & 0x7fffffu) | 0x800000u;
    if (e < -6) {
        // Subnormal codes: round(a * 2^9) = round(m * 2^(e - 14)); 8 is the smallest normal.
        return sign | shift_rne(m, uint(14 - e));
    }
    // Normal codes: round(a * 2^(3 - e)) = round(m * 2^-20) in [8, 16]; 16 carries into the
    // exponent through the addition.
    uint r = shift_rne(m, 20u);
    return sign | (uint((e + 7) << 3) + r - 8u);
}

// OCP E4M3FN code (low 8 bits) -> f32, exact (0x7f and 0xff are NaN).
float e4m3_to_f32(uint c) {
    uint sign = (c & 0x80u) << 24;
    uint mag = c & 0x7fu;
    if (mag == 0x7fu) {
        return uintBitsToFloat(0x7fc00000u);
    }
    uint bits;
    if (mag >= 8u) {
        bits = (((mag >> 3) + 120u) << 23) | ((mag & 7u) << 20);
    } else if (mag == 0u) {
        bits = 0u;
    } else {
        // Subnormal code: mag * 2^-9, normalized.
        int msb = findMSB(mag);
        bits = (uint(msb + 118) << 23) | ((mag << uint(23 - msb)) & 0x7fffffu);
    }
    return uintBitsToFloat(sign | bits);
}

// IEEE binary16 bits (low 16 bits) -> f32 bits, exact (subnormals normalized, no flushing).
uint f16_bits_to_f32_bits(uint h) {
    uint sign = (h & 0x8000u) << 16;
    uint e = (h >> 10) & 0x1fu;
    uint m = h & 0x3ffu;
    if (e == 0x1fu) {
        return sign | 0x7f800000u | (m << 13);
    }
    if (e == 0u) {
        if (m == 0u) {
            return sign;
        }
        int msb = findMSB(m);  // m * 2^-24 = 1.f * 2^(msb - 24)
        return sign | (uint(msb + 103) << 23) | ((m << uint(23 - msb)) & 0x7fffffu);
    }
    return sign | ((e + 112u) << 23) | (m << 13);
}

// f32 -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
uint f32_to_bf16_bits(float x) {
    uint u = floatBitsToUint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return 0x7fc0u;
    }
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// The index of this workgroup in a linear grid dispatched as (x, y) with x * y >= the count
// (see the Rust side's `linear_groups`): dispatch limits are 65535 per dimension on some devices.
uint linear_workgroup_id() {
    return gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
}

#endif

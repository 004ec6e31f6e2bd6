// The FP8 MLA cache's codes (DeepSeek-V3.2's layout, see mla_append.comp), decoded by the MLA
// decode shaders.

// Four E4M3 codes (the low byte first) -> f32, exact: each code becomes the f16 bit pattern of
// its value times 2^-8 (sign to bit 15, the other 7 bits to bits 7..13; subnormal codes become
// subnormal f16), two codes per integer operation; the NaN codes (0x7f, 0xff) give NaN.
vec4 e4m3x4(uint w) {
    uint even = w & 0x00ff00ffu;
    uint odd = (w >> 8) & 0x00ff00ffu;
    vec2 a = unpackHalf2x16(((even << 8) & 0x80008000u) | ((even << 7) & 0x3f803f80u));
    vec2 c = unpackHalf2x16(((odd << 8) & 0x80008000u) | ((odd << 7) & 0x3f803f80u));
    vec4 v = vec4(a.x, c.x, a.y, c.y) * 256.0;
    uint nan_bytes = ((w & 0x7f7f7f7fu) + 0x01010101u) & 0x80808080u;
    if (nan_bytes != 0u) {
        [[unroll]] for (uint i = 0u; i < 4u; ++i) {
            if ((nan_bytes & (0x80u << (8u * i))) != 0u) {
                v[i] = uintBitsToFloat(0x7fc00000u);
            }
        }
    }
    return v;
}

// Tessera Vulkan shaders: the 16-bit elements of the attention tensors (f16 or bf16, IS_BF16,
// two per 32-bit word, the even element in the low half), decoded exactly to f32 and encoded
// with round to nearest even. Include after common.glsl and half.glsl, with the specialization
// constant IS_BF16 declared.

#ifndef TESSERA_ATTENTION_ELEMENTS_GLSL
#define TESSERA_ATTENTION_ELEMENTS_GLSL

// A 16-bit value (low 16 bits of h) of the tensors' type -> f32, exact.
float decode16(uint h) {
    if (IS_BF16 != 0u) {
        return uintBitsToFloat(h << 16);
    }
    return uintBitsToFloat(f16_bits_to_f32_bits_fast(h));
}

// Two words (four consecutive elements) -> vec4.
vec4 decode4(uint w0, uint w1) {
    return vec4(decode16(w0 & 0xffffu), decode16(w0 >> 16), decode16(w1 & 0xffffu),
                decode16(w1 >> 16));
}

// f32 -> a 16-bit value of the tensors' type (low 16 bits), round to nearest even.
uint encode16(float x) {
    if (IS_BF16 != 0u) {
        return f32_to_bf16_bits(x);
    }
    return f32_to_f16_bits(x);
}

#endif

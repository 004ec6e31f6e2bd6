// Tessera Vulkan shaders: reading the FP8 quantizers' input (f32, f16 or bf16) from 32-bit
// words. Included by fp8_quantize_*.comp after they declare `x_words` and IN_KIND.

#ifndef TESSERA_FP8_INPUT_GLSL
#define TESSERA_FP8_INPUT_GLSL

// The f32 bits of input element i (f16 and bf16 are widened exactly; two per word, the element
// with the even index in the low half).
uint load_x_bits(uint i) {
    if (IN_KIND == 0u) {
        return x_words[i];
    }
    uint w = x_words[i >> 1];
    uint h = (i & 1u) != 0u ? (w >> 16) : (w & 0xffffu);
    if (IN_KIND == 1u) {
        return f16_bits_to_f32_bits(h);
    }
    return h << 16;
}

#endif

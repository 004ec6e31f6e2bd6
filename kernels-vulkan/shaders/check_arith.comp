// Checks the integer-exact helpers of common.glsl one by one, element-wise over 32-bit inputs,
// so that the tests can compare each with the reference on many (and adversarial) inputs:
//   func 0: div_rn_bits(a, b)     1: f32_bits_to_e4m3(a)     2: e4m3_to_f32(a) as bits
//        3: f16_bits_to_f32_bits(a)   4: f32_to_bf16_bits(a as f32)
//        5: f16_bits_to_f32_bits_fast(a)   6: f32_to_f16_bits(a as f32)   (half.glsl)
// Used only by tests; it is small, so it is embedded like the others.
#version 450
#extension GL_GOOGLE_include_directive : require

layout(local_size_x = 64) in;

layout(set = 0, binding = 0, std430) readonly buffer InA { uint in_a[]; };
layout(set = 0, binding = 1, std430) readonly buffer InB { uint in_b[]; };
layout(set = 0, binding = 2, std430) writeonly buffer Out { uint result[]; };

layout(push_constant, std430) uniform Params {
    uint count;
    uint func;
} p;

#include "common.glsl"
#include "half.glsl"

void main() {
    uint i = linear_workgroup_id() * 64u + gl_LocalInvocationID.x;
    if (i >= p.count) {
        return;
    }
    uint a = in_a[i];
    uint r;
    if (p.func == 0u) {
        r = div_rn_bits(a, in_b[i]);
    } else if (p.func == 1u) {
        r = f32_bits_to_e4m3(a);
    } else if (p.func == 2u) {
        r = floatBitsToUint(e4m3_to_f32(a));
    } else if (p.func == 3u) {
        r = f16_bits_to_f32_bits(a);
    } else if (p.func == 4u) {
        r = f32_to_bf16_bits(uintBitsToFloat(a));
    } else if (p.func == 5u) {
        r = f16_bits_to_f32_bits_fast(a);
    } else {
        r = f32_to_f16_bits(uintBitsToFloat(a));
    }
    result[i] = r;
}

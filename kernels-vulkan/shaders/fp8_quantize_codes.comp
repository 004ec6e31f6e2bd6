// FP8 quantizer, pass 2 of 2: the E4M3 codes, once every scale is written (pass 1).
//
// One invocation per 32-bit output word (4 codes, element 4w + j in byte j); a word may span
// rows and groups, which is why the scales come from a separate pass. Bytes past rows * cols in
// the last word are written as 0.
//   x       [rows, cols] f32, f16 or bf16 (IN_KIND), packed in 32-bit words
//   scales  as pass 1 (read)
//   values  [rows, cols] E4M3 bytes, packed 4 per word
// code = e4m3(x / scale): the quotient correctly rounded to f32 (integer long division), then
// rounded to nearest even with saturation. Bit-exact with the reference.
//
// Specialization constants: 0 = workgroup size, 1 = IN_KIND (0 f32, 1 f16, 2 bf16).
#version 450
#extension GL_GOOGLE_include_directive : require

layout(local_size_x = 128, local_size_x_id = 0) in;
layout(constant_id = 1) const uint IN_KIND = 0u;

layout(set = 0, binding = 0, std430) readonly buffer X { uint x_words[]; };
layout(set = 0, binding = 1, std430) readonly buffer Scales { uint scales[]; };
layout(set = 0, binding = 2, std430) writeonly buffer Values { uint values[]; };

layout(push_constant, std430) uniform Params {
    uint rows;
    uint cols;
    uint group_rows;  // 1 or 128
    uint words;       // ceil(rows * cols / 4)
} p;

#include "common.glsl"
#include "fp8_input.glsl"

void main() {
    uint w = linear_workgroup_id() * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
    if (w >= p.words) {
        return;
    }
    uint n = p.rows * p.cols;
    uint scale_cols = (p.cols + 127u) / 128u;
    uint word = 0u;
    for (uint j = 0u; j < 4u; ++j) {
        uint i = 4u * w + j;
        if (i < n) {
            uint row = i / p.cols;
            uint col = i - row * p.cols;
            uint s = scales[(row / p.group_rows) * scale_cols + col / 128u];
            word |= f32_bits_to_e4m3(div_rn_bits(load_x_bits(i), s)) << (8u * j);
        }
    }
    values[w] = word;
}

// FP8 quantizer, pass 1 of 2: the scale of every group (DeepSeek-V3 recipe).
//
// One workgroup per group: a 1x128 run of a row (group_rows = 1) or a 128x128 block
// (group_rows = 128); groups at the right and bottom edges may be partial.
//   x       [rows, cols] f32, f16 or bf16 (IN_KIND), packed in 32-bit words
//   scales  [ceil(rows / group_rows), ceil(cols / 128)] f32 (written as bits)
// scale = max(amax, amax_floor) / e4m3_max, correctly rounded (integer long division), then
// optionally rounded up to a power of two (POW2). Bit-exact with tessera_core's fp8_scale.
//
// Specialization constants: 0 = workgroup size, 1 = IN_KIND (0 f32, 1 f16, 2 bf16), 2 = POW2,
// 3 = MAX_SUBGROUPS (workgroup size / the device's smallest subgroup size: the reduction array).
// Needs subgroup arithmetic in compute shaders (checked when the device is opened).
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x = 128, local_size_x_id = 0) in;
layout(constant_id = 1) const uint IN_KIND = 0u;
layout(constant_id = 2) const uint POW2 = 0u;
layout(constant_id = 3) const uint MAX_SUBGROUPS = 32u;

layout(set = 0, binding = 0, std430) readonly buffer X { uint x_words[]; };
layout(set = 0, binding = 1, std430) writeonly buffer Scales { uint scales[]; };

layout(push_constant, std430) uniform Params {
    uint rows;
    uint cols;
    uint group_rows;       // 1 or 128
    uint groups;           // number of scales = workgroups that do work
    uint amax_floor_bits;  // f32 bits of FP8_AMAX_FLOOR (1e-4)
    uint e4m3_max_bits;    // f32 bits of 448
} p;

#include "common.glsl"
#include "fp8_input.glsl"

shared uint partial[MAX_SUBGROUPS];

void main() {
    uint g = linear_workgroup_id();
    if (g >= p.groups) {
        return;  // uniform for the whole workgroup
    }
    uint scale_cols = (p.cols + 127u) / 128u;
    uint r0 = (g / scale_cols) * p.group_rows;
    uint c0 = (g % scale_cols) * 128u;
    uint nr = min(p.group_rows, p.rows - r0);
    uint nc = min(128u, p.cols - c0);
    // |x| as bits: for non-negative floats the integer order is the numeric order.
    uint amax = 0u;
    for (uint i = gl_LocalInvocationID.x; i < nr * 128u; i += gl_WorkGroupSize.x) {
        uint r = i / 128u;
        uint c = i % 128u;
        if (c < nc) {
            amax = max(amax, load_x_bits((r0 + r) * p.cols + c0 + c) & 0x7fffffffu);
        }
    }
    amax = subgroupMax(amax);
    if (subgroupElect()) {
        partial[gl_SubgroupID] = amax;
    }
    barrier();
    if (gl_LocalInvocationID.x == 0u) {
        for (uint s = 1u; s < gl_NumSubgroups; ++s) {
            amax = max(amax, partial[s]);
        }
        uint s = div_rn_bits(max(amax, p.amax_floor_bits), p.e4m3_max_bits);
        if (POW2 != 0u && (s & 0x7fffffu) != 0u) {
            s = (s & 0x7f800000u) + 0x800000u;
        }
        scales[g] = s;
    }
}

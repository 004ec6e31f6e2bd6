// DEVELOPMENT PROBE (not in the build): the tensor throughput a Vulkan shader can reach with
// VK_KHR_cooperative_matrix, 16x16x16 products from registers only (no memory traffic in the
// loop). Each subgroup keeps 2 A and 4 B matrices and 8 accumulators and runs ITERS rounds of
// 8 products; the accumulators are summed into out[] so that nothing is optimised away.
// Built twice: -DTYPE=float16_t and -DTYPE=bfloat16_t (with GL_EXT_bfloat16).
// FLOPs per dispatch = groups * subgroups * ITERS * 8 * 2 * 16^3.
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_bfloat16 : enable

layout(local_size_x = 128, local_size_x_id = 0) in;
layout(constant_id = 1) const uint ITERS = 4096u;

layout(set = 0, binding = 0, std430) buffer Out { float outv[]; };
layout(push_constant, std430) uniform Params { uint seed; } p;

#ifndef TYPE
#define TYPE float16_t
#endif

void main() {
    const uint sg = gl_LocalInvocationID.x / 32u;
    coopmat<TYPE, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> a0 =
        coopmat<TYPE, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA>(TYPE(float(p.seed & 3u) * 0.001));
    coopmat<TYPE, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> a1 =
        coopmat<TYPE, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA>(TYPE(float(sg) * 0.001));
    coopmat<TYPE, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> b[4];
    coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> c[8];
    [[unroll]] for (uint j = 0u; j < 4u; ++j) {
        b[j] = coopmat<TYPE, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB>(TYPE(float(j) * 0.01));
    }
    [[unroll]] for (uint j = 0u; j < 8u; ++j) {
        c[j] = coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
    }
    for (uint it = 0u; it < ITERS; ++it) {
        [[unroll]] for (uint j = 0u; j < 4u; ++j) {
            c[j] = coopMatMulAdd(a0, b[j], c[j]);
            c[j + 4u] = coopMatMulAdd(a1, b[j], c[j + 4u]);
        }
    }
    float sum = 0.0;
    [[unroll]] for (uint j = 0u; j < 8u; ++j) {
        [[unroll]] for (uint k = 0u; k < c[j].length(); ++k) {
            sum += c[j][k];
        }
    }
    outv[gl_WorkGroupID.x * gl_WorkGroupSize.x + gl_LocalInvocationID.x] = sum;
}

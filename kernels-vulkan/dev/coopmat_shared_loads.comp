// DEVELOPMENT PROBE (not in the build): how fast 16x16 bf16 cooperative-matrix loads from
// shared memory feed 16x16x16 products, by layout and row stride. The shared array holds 32
// rows of SROW 16-byte words (the MLA decode's tile pads each 72-word bf16 record to 73); each
// of the 4 subgroups runs ITERS rounds of 8 loads (B matrices, or A with -DLOAD_A) and 8
// products into 4 accumulators. Built with -DLAYOUT=gl_CooperativeMatrixLayoutRowMajor or
// ColumnMajor and -DSROW=73u or 72u; run by examples/spirv_run with --local 128 --shared 37376
// --push 1 --out (groups x 4096):FILE --groups G --repeat 20.
// FLOPs per dispatch = G * 4 * ITERS * 8 * 2 * 16^3. H200 (session 23): 434-445 TFLOPS for
// every layout at SROW 73, 60 TFLOPS at SROW 72.
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_EXT_bfloat16 : require
layout(local_size_x = 128) in;
layout(constant_id = 1) const uint ITERS = 2048u;
layout(set = 0, binding = 0, std430) buffer Out { float outv[]; };
layout(push_constant, std430) uniform Params { uint seed; } p;
#ifndef LAYOUT
#define LAYOUT gl_CooperativeMatrixLayoutRowMajor
#endif
#ifndef SROW
#define SROW 73u
#endif
#define ACC coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>
#define MAT_A coopmat<bfloat16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA>
#define MAT_B coopmat<bfloat16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB>
shared uvec4 sh[32u * SROW];
void main() {
    uint tid = gl_LocalInvocationIndex;
    for (uint i = tid; i < 32u * SROW; i += 128u) {
        uint v = (i * 2654435761u + p.seed) & 0x3f803f80u;  // small bf16 values
        sh[i] = uvec4(v, v ^ 0x00010000u, v, v);
    }
    barrier();
    uint sg = tid / 32u;
    MAT_A a = MAT_A(bfloat16_t(0.001));
    MAT_B bb = MAT_B(bfloat16_t(0.001));
    ACC acc[4];
    [[unroll]] for (uint j = 0u; j < 4u; ++j) acc[j] = ACC(0.0);
    for (uint it = 0u; it < ITERS; ++it) {
        uint base = (it & 7u) * 2u + sg * 16u;
        [[unroll]] for (uint i = 0u; i < 8u; ++i) {
#ifdef LOAD_A
            MAT_A m;
            coopMatLoad(m, sh, base + (i & 1u) * 16u * SROW + (i >> 1) * 2u, SROW, LAYOUT);
            acc[i & 3u] = coopMatMulAdd(m, bb, acc[i & 3u]);
#else
            MAT_B m;
            coopMatLoad(m, sh, base + (i & 1u) * 16u * SROW + (i >> 1) * 2u, SROW, LAYOUT);
            acc[i & 3u] = coopMatMulAdd(a, m, acc[i & 3u]);
#endif
        }
    }
    ACC s = acc[0] + acc[1] + acc[2] + acc[3];
    coopMatStore(s, outv, (gl_WorkGroupID.x * 4u + sg) * 256u, 16u, gl_CooperativeMatrixLayoutRowMajor);
}

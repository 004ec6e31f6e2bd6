// DEVELOPMENT PROBE (not in the build): one VK_NV_cooperative_matrix2 primitive per MODE, run by
// kernels-vulkan/dev/cm2_probe.py through the spirv_run example, to find which primitive a
// workgroup-scope shader gets wrong on a driver.
//
// Bindings: 0 a (bf16 [M, K] row-major), 1 b (bf16 [K, N] row-major, starting at element
// OFF), 2 bt (bf16 [N, K] row-major), 3 out (f32, [M, max(N, K)] row-major).
// Push constants: off (elements of b before the matrix), rows (valid rows of a, <= M).
// MODE 0: out[M, K] = a (loaded as a bf16 accumulator, converted to f32, stored)
// MODE 1: out[M, N] = a . b                 (b from the buffer at offset OFF)
// MODE 2: out[M, N] = a . btᵀ               (bt loaded through a transposing view)
// MODE 3: out[M, N] = rowmax(a . btᵀ) smeared across the row
// MODE 4: out[M, N] = (a . btᵀ) * 2 + 1000 r + c   (per-element operation with arguments)
// MODE 5: out[M, N] = rowsum(bf16(a . btᵀ)) via a matrix of ones
// MODE 6: out[M, 1] (column 0 of a row-smeared matrix, stride 1, rows clamped to `rows`)
// MODE 7: out[M, K] = a, loaded with the row dimension clamped to `rows` (zeros beyond)
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_NV_cooperative_matrix2 : require
#extension GL_EXT_bfloat16 : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_int32 : require

layout(local_size_x = 128, local_size_x_id = 0) in;
layout(constant_id = 1) const uint M = 16u;
layout(constant_id = 2) const uint N = 32u;
layout(constant_id = 3) const uint K = 64u;
layout(constant_id = 4) const uint MODE = 0u;

layout(set = 0, binding = 0, std430) readonly buffer A { bfloat16_t a[]; };
layout(set = 0, binding = 1, std430) readonly buffer B { bfloat16_t b[]; };
layout(set = 0, binding = 2, std430) readonly buffer BT { bfloat16_t bt[]; };
layout(set = 0, binding = 3, std430) buffer Out { float outv[]; };

layout(push_constant, std430) uniform Params {
    uint off;
    uint rows;
} p;

#define ACC coopmat<float, gl_ScopeWorkgroup, M, N, gl_MatrixUseAccumulator>

float maxReduce(const in float x, const in float y) { return max(x, y); }
float smearReduce(const in float x, const in float y) { return x; }
float perElem(const in uint32_t r, const in uint32_t c, const in float e, const in float two,
              const in uint32_t big) {
    return e * two + float(big * r + c);
}

void main() {
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_a =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    tl_a = setTensorLayoutDimensionNV(tl_a, MODE == 7u ? p.rows : M, K);
    tl_a = setTensorLayoutStrideNV(tl_a, K, 1);
    coopmat<bfloat16_t, gl_ScopeWorkgroup, M, K, gl_MatrixUseA> am;
    coopMatLoadTensorNV(am, a, 0, sliceTensorLayoutNV(tl_a, 0, M, 0, K));

    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_out =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);

    if (MODE == 0u || MODE == 7u) {
        coopmat<bfloat16_t, gl_ScopeWorkgroup, M, K, gl_MatrixUseAccumulator> ab;
        coopMatLoadTensorNV(ab, a, 0, sliceTensorLayoutNV(tl_a, 0, M, 0, K));
        coopmat<float, gl_ScopeWorkgroup, M, K, gl_MatrixUseAccumulator> af =
            coopmat<float, gl_ScopeWorkgroup, M, K, gl_MatrixUseAccumulator>(ab);
        tl_out = setTensorLayoutDimensionNV(tl_out, M, K);
        tl_out = setTensorLayoutStrideNV(tl_out, K, 1);
        coopMatStoreTensorNV(af, outv, 0, sliceTensorLayoutNV(tl_out, 0, M, 0, K));
        return;
    }

    ACC s = ACC(0.0);
    if (MODE == 1u) {
        tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_b =
            createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
        tl_b = setTensorLayoutDimensionNV(tl_b, K, N);
        tl_b = setTensorLayoutStrideNV(tl_b, N, 1);
        coopmat<bfloat16_t, gl_ScopeWorkgroup, K, N, gl_MatrixUseB> bm;
        coopMatLoadTensorNV(bm, b, p.off, sliceTensorLayoutNV(tl_b, 0, K, 0, N));
        s = coopMatMulAdd(am, bm, s);
    } else {
        tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_bt =
            createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
        tl_bt = setTensorLayoutDimensionNV(tl_bt, N, K);
        tl_bt = setTensorLayoutStrideNV(tl_bt, K, 1);
        tensorViewNV<2, false, 1, 0> transposed = createTensorViewNV(2, false, 1, 0);
        coopmat<bfloat16_t, gl_ScopeWorkgroup, K, N, gl_MatrixUseB> bm;
        coopMatLoadTensorNV(bm, bt, 0, sliceTensorLayoutNV(tl_bt, 0, N, 0, K), transposed);
        s = coopMatMulAdd(am, bm, s);
    }
    if (MODE == 3u) {
        ACC mx;
        coopMatReduceNV(mx, s, gl_CooperativeMatrixReduceRowNV, maxReduce);
        s = mx;
    } else if (MODE == 4u) {
        coopMatPerElementNV(s, s, perElem, 2.0, 1000u);
    } else if (MODE == 5u) {
        coopmat<bfloat16_t, gl_ScopeWorkgroup, M, N, gl_MatrixUseA> pa =
            coopmat<bfloat16_t, gl_ScopeWorkgroup, M, N, gl_MatrixUseA>(s);
        coopmat<bfloat16_t, gl_ScopeWorkgroup, N, N, gl_MatrixUseB> ones =
            coopmat<bfloat16_t, gl_ScopeWorkgroup, N, N, gl_MatrixUseB>(1.0);
        s = coopMatMulAdd(pa, ones, ACC(0.0));
    } else if (MODE == 6u) {
        ACC mx;
        coopMatReduceNV(mx, s, gl_CooperativeMatrixReduceRowNV, smearReduce);
        tl_out = setTensorLayoutDimensionNV(tl_out, p.rows, 1);
        tl_out = setTensorLayoutStrideNV(tl_out, 1, 1);
        coopMatStoreTensorNV(mx, outv, 0, sliceTensorLayoutNV(tl_out, 0, M, 0, N));
        return;
    }
    tl_out = setTensorLayoutDimensionNV(tl_out, M, N);
    tl_out = setTensorLayoutStrideNV(tl_out, N, 1);
    coopMatStoreTensorNV(s, outv, 0, sliceTensorLayoutNV(tl_out, 0, M, 0, N));
}

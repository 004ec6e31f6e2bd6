// EXPERIMENT, NOT WORKING YET (session 15): the MLA decode's pass 1 on VK_NV_cooperative_matrix2
// (workgroup-scope bf16 matrices, tensor loads straight from the paged cache with clamping in
// place of zero-filled tiles, row reductions and per-element operations instead of trips
// through shared memory). Same interface as shaders/mla_decode_coopmat.comp (bindings, push
// constants, specialization ids), bf16 records only, KT dividing the page size. Not part of the
// build (ci/build-shaders.sh compiles shaders/ only).
//
// Status on the H200 (driver 580.159.04): compiles for SPIR-V 1.6 only (glslang rejects
// GL_NV_cooperative_matrix2 for vulkan1.1), the pipeline is created and runs, but every lse
// comes out non-finite (the decode's output is zero), also with the visibility mask and the
// probability threshold taken out. Not yet checked, in this order: the flexible dimensions the
// driver lists (vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV: M/N/K
// granularity and workgroup size for bf16), the element units of tensor-layout offsets and
// strides on a bfloat16_t buffer, the column-0 tensor store of lse. The next step is the
// smallest shader per primitive (load Q and store it back; one product; one reduction).
//
// To run it: glslangValidator -V --target-env vulkan1.3 (from kernels-vulkan/shaders/, for
// common.glsl) into DIR/mla_decode_coopmat.spv, then TESSERA_VULKAN_SPIRV_DIR=DIR with
// TESSERA_VULKAN_MLA_DECODE=coopmat:32,0 (the backend enables the extension's features where
// the driver offers them).
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_NV_cooperative_matrix2 : require
#extension GL_EXT_bfloat16 : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_int32 : require

// Workgroup-scope matrices of 16 rows need a workgroup of 32 or 64 invocations on the H200
// (its flexible-dimension configurations: M granularity 16 up to 64 invocations, 32 at 128 and
// 256); at 128 invocations a 16-row product silently gives zeros (cm2_probe.comp).
#ifndef WG
#define WG 64
#endif
layout(local_size_x = WG) in;
layout(constant_id = 1) const uint KT = 32u;
layout(constant_id = 2) const uint LATENT = 512u;
layout(constant_id = 3) const uint ROPE = 64u;
layout(constant_id = 4) const uint PREFETCH = 1u;  // not used
layout(constant_id = 5) const uint FP8 = 0u;       // bf16 records only

const uint ROWS = 16u;
const uint D = LATENT + ROPE;

layout(set = 0, binding = 0, std430) readonly buffer Cache { bfloat16_t cache[]; };
layout(set = 0, binding = 1, std430) readonly buffer Q { bfloat16_t q[]; };
layout(set = 0, binding = 2, std430) readonly buffer BlockTable { int block_table[]; };
layout(set = 0, binding = 3, std430) readonly buffer SeqLens { int seq_lens[]; };
layout(set = 0, binding = 4, std430) buffer Work { float work[]; };

layout(push_constant, std430) uniform Params {
    uint batch;
    uint s_q;
    uint heads;
    uint max_pages;
    uint page_size;
    uint page_shift;
    uint num_pages;
    uint row_groups;
    uint rows_per_group;
    uint splits;
    uint scale_bits;
} p;

#include "common.glsl"

#define NEG_BIG uintBitsToFloat(0xfeffffffu)
#define NEG_INF uintBitsToFloat(0xff800000u)
#define NAN uintBitsToFloat(0x7fc00000u)
#define LN2 0.69314718055994531

#define ACC_S coopmat<float, gl_ScopeWorkgroup, ROWS, KT, gl_MatrixUseAccumulator>
#define ACC_O coopmat<float, gl_ScopeWorkgroup, ROWS, LATENT, gl_MatrixUseAccumulator>

// Keys of this split row r (of the group) sees: k_begin .. seen - 1 (0 past the group's rows).
uint seen_keys(uint r, uint row0, uint row_end, uint len, uint k_end) {
    uint row = row0 + r;
    if (row >= row_end) {
        return 0u;
    }
    uint i = row / p.heads;
    return min(uint(max(int(len) - int(p.s_q - 1u - i), 0)), k_end);
}

float maskScore(const in uint32_t r, const in uint32_t c, const in float e, const in uint32_t k0,
                const in uint32_t row0, const in uint32_t row_end, const in uint32_t len,
                const in uint32_t k_end) {
    return k0 + c < seen_keys(r, row0, row_end, len, k_end)
        ? e * uintBitsToFloat(p.scale_bits) : NEG_BIG;
}

float maxReduce(const in float x, const in float y) {
    return max(x, y);
}

float smearReduce(const in float x, const in float y) {
    return x;
}

float maxOf(const in uint32_t r, const in uint32_t c, const in float a, const in float b) {
    return max(a, b);
}

float probOf(const in uint32_t r, const in uint32_t c, const in float s, const in float m) {
    return s <= -1.0e38 ? 0.0 : exp2(s - m);
}

float rescaleOf(const in uint32_t r, const in uint32_t c, const in float m_old,
                const in float m_new) {
    return exp2(m_old - m_new);
}

// o / l, NaN for a row that sees a key on a bad page.
float finishO(const in uint32_t r, const in uint32_t c, const in float o, const in float inv,
              const in uint32_t kbad, const in uint32_t row0, const in uint32_t row_end,
              const in uint32_t len, const in uint32_t k_end) {
    return seen_keys(r, row0, row_end, len, k_end) > kbad ? NAN : o * inv;
}

// The natural-log lse of the row, -inf where it saw nothing, NaN where it saw a bad page.
float finishLse(const in uint32_t r, const in uint32_t c, const in float l, const in float m,
                const in uint32_t kbad, const in uint32_t row0, const in uint32_t row_end,
                const in uint32_t len, const in uint32_t k_end) {
    float lse = l > 0.0 ? (m + log2(l)) * LN2 : NEG_INF;
    return seen_keys(r, row0, row_end, len, k_end) > kbad ? NAN : lse;
}

void main() {
    uint wg = linear_workgroup_id();
    if (wg >= p.batch * p.row_groups * p.splits) {
        return;
    }
    uint g = wg % p.row_groups;
    uint split = (wg / p.row_groups) % p.splits;
    uint b = wg / (p.row_groups * p.splits);
    uint rows = p.s_q * p.heads;
    uint row0 = g * ROWS;
    uint row_end = min(row0 + ROWS, rows);

    uint capacity = p.max_pages * p.page_size;
    uint len = min(uint(max(seq_lens[b], 0)), capacity);
    uint split_keys = ((len + p.splits - 1u) / p.splits + KT - 1u) / KT * KT;
    uint k_begin = split * split_keys;
    uint i_last = (row_end - 1u) / p.heads;
    uint kv_end = uint(max(int(len) - int(p.s_q - 1u - i_last), 0));
    uint k_end = min(k_begin + split_keys, kv_end);
    uint kbad = 0xffffffffu;  // the first key of this split on a page outside the cache
    uint prow_base = (b * p.splits + split) * rows;
    uint part_rows = p.batch * p.splits * rows;

    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_q =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    tl_q = setTensorLayoutDimensionNV(tl_q, b * rows + row_end, D);
    tl_q = setTensorLayoutStrideNV(tl_q, D, 1);
    coopmat<bfloat16_t, gl_ScopeWorkgroup, ROWS, D, gl_MatrixUseA> q_mat;
    coopMatLoadTensorNV(q_mat, q, 0, sliceTensorLayoutNV(tl_q, b * rows + row0, ROWS, 0, D));

    ACC_O o = ACC_O(0.0);
    ACC_S m = ACC_S(NEG_BIG);
    ACC_S l = ACC_S(0.0);
    coopmat<bfloat16_t, gl_ScopeWorkgroup, KT, KT, gl_MatrixUseB> ones =
        coopmat<bfloat16_t, gl_ScopeWorkgroup, KT, KT, gl_MatrixUseB>(1.0);
    tensorViewNV<2, false, 1, 0> transposed = createTensorViewNV(2, false, 1, 0);

    for (uint k0 = k_begin; k0 < k_end; k0 += KT) {
        uint page_index = p.page_shift < 32u ? k0 >> p.page_shift : k0 / p.page_size;
        int page = block_table[b * p.max_pages + page_index];
        if (page < 0 || uint(page) >= p.num_pages) {
            kbad = min(kbad, k0);
            continue;
        }
        uint base = (uint(page) * p.page_size + k0 - page_index * p.page_size) * D;
        tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_k =
            createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
        tl_k = setTensorLayoutDimensionNV(tl_k, min(KT, k_end - k0), D);
        tl_k = setTensorLayoutStrideNV(tl_k, D, 1);

        coopmat<bfloat16_t, gl_ScopeWorkgroup, D, KT, gl_MatrixUseB> k_t;
        coopMatLoadTensorNV(k_t, cache, base, sliceTensorLayoutNV(tl_k, 0, KT, 0, D), transposed);
        ACC_S s = ACC_S(0.0);
        s = coopMatMulAdd(q_mat, k_t, s);
        coopMatPerElementNV(s, s, maskScore, k0, row0, row_end, len, k_end);

        ACC_S row_max;
        coopMatReduceNV(row_max, s, gl_CooperativeMatrixReduceRowNV, maxReduce);
        ACC_S m_new;
        coopMatPerElementNV(m_new, row_max, maxOf, m);
        ACC_S prob;
        coopMatPerElementNV(prob, s, probOf, m_new);
        ACC_S alpha;
        coopMatPerElementNV(alpha, m, rescaleOf, m_new);
        coopmat<bfloat16_t, gl_ScopeWorkgroup, ROWS, KT, gl_MatrixUseA> p_a =
            coopmat<bfloat16_t, gl_ScopeWorkgroup, ROWS, KT, gl_MatrixUseA>(prob);
        ACC_S row_sum = ACC_S(0.0);
        row_sum = coopMatMulAdd(p_a, ones, row_sum);
        l = alpha * l + row_sum;
        m = m_new;

        coopmat<bfloat16_t, gl_ScopeWorkgroup, KT, LATENT, gl_MatrixUseB> v;
        coopMatLoadTensorNV(v, cache, base, sliceTensorLayoutNV(tl_k, 0, KT, 0, LATENT));
        ACC_O alpha_wide;
        coopMatReduceNV(alpha_wide, alpha, gl_CooperativeMatrixReduceRowNV, smearReduce);
        o *= alpha_wide;
        o = coopMatMulAdd(p_a, v, o);
    }

    ACC_O inv_wide;
    coopMatReduceNV(inv_wide, l, gl_CooperativeMatrixReduceRowNV, smearReduce);
    [[unroll]] for (int k = 0; k < inv_wide.length(); ++k) {
        inv_wide[k] = inv_wide[k] > 0.0 ? 1.0 / inv_wide[k] : 0.0;
    }
    coopMatPerElementNV(o, o, finishO, inv_wide, kbad, row0, row_end, len, k_end);
    ACC_S lse;
    coopMatPerElementNV(lse, l, finishLse, m, kbad, row0, row_end, len, k_end);
    // Rows past the group's end are clamped away.
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_o =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    tl_o = setTensorLayoutDimensionNV(tl_o, prow_base + row_end, LATENT);
    tl_o = setTensorLayoutStrideNV(tl_o, LATENT, 1);
    coopMatStoreTensorNV(o, work, 0, sliceTensorLayoutNV(tl_o, prow_base + row0, ROWS, 0, LATENT));
    // lse: column 0 of the row-smeared matrix, into lse_part[prow].
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_l =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    tl_l = setTensorLayoutDimensionNV(tl_l, prow_base + row_end, 1);
    tl_l = setTensorLayoutStrideNV(tl_l, 1, 1);
    coopMatStoreTensorNV(lse, work, part_rows * LATENT,
                         sliceTensorLayoutNV(tl_l, prow_base + row0, ROWS, 0, KT));
}

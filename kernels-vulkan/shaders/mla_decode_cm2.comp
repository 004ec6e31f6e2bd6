// MLA absorbed decode, pass 1 of 2 (split-KV), on VK_NV_cooperative_matrix2: bf16 x bf16 -> f32
// products of workgroup-scope matrices loaded straight from the paged cache by tensor
// addressing, row reductions and per-element operations (no shared memory of its own; the
// driver stages what it needs). Same contract and workspace as mla_decode_coopmat.comp (merged
// by mla_combine.comp), bf16 records only:
//   cache        bf16 [num_pages, page_size, D] (D = LATENT + ROPE: [latent | rope])
//   q            bf16 [batch, s_q, heads, D]
//   block_table  i32 [batch, max_pages]
//   seq_lens     i32 [batch] (clamped to 0 .. max_pages * page_size)
//   work         f32: o_part [batch, splits, s_q * heads, LATENT] (normalized), then
//                lse_part [batch, splits, s_q * heads] (natural log, -inf when empty)
// Workgroups: linear index = (b * splits + split) * row_groups + g; group g holds the rows
// ROWS g .. ROWS g + ROWS - 1 (r = i * heads + h; rows past s_q * heads are clamped away: read
// as zeros, never written). Query i sees keys 0 .. len - (s_q - 1 - i); split `split` covers the
// keys split * S .. (split + 1) * S - 1 with S = ceil(ceil(len / splits) / KT) * KT.
//
// Per tile of KT keys (KT divides the page size, so a tile lies in one page):
//   S = Q · Kᵀ in D / CD steps (q's and the records' columns c CD .. c CD + CD - 1, the records
//   loaded transposed, rows past the split's end clamped to zero); the scale · log2(e) and each
//   row's visibility by a per-element operation; the online softmax in base 2 (row max by a row
//   reduction, P = exp2(S - m) and alpha = exp2(m_old - m) per element, l += row sum of P in
//   f32); the accumulators (LATENT / CV of ROWS x CV) times alpha smeared across the row, plus
//   bf16(P) · V (the records' first LATENT columns, CV at a time). A tile on a page outside
//   0 .. num_pages is skipped and remembered: every row that sees it gets NaN.
//
// Specialization constants (kernels-vulkan/src/ops/mla/cm2.rs, MlaDecodeCm2Spec): 0 = workgroup
// size, 1 = KT, 2 = LATENT, 3 = ROPE, 4 = ROWS, 5 = CD (divides D), 6 = CV (divides LATENT).
// Every matrix dimension must be a multiple of the granularity the driver lists for that
// workgroup size (vkGetPhysicalDeviceCooperativeMatrixFlexibleDimensionsPropertiesNV; on the
// H200 the rows are a multiple of 32 at 128 and 256 invocations, and a product of 16 rows at
// 128 invocations silently gives zeros): the host checks it before it picks this shader.
// tessera-target: vulkan1.3
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_NV_cooperative_matrix2 : require
#extension GL_EXT_bfloat16 : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_shader_explicit_arithmetic_types_int32 : require

layout(local_size_x = 128, local_size_x_id = 0) in;
layout(constant_id = 1) const uint KT = 32u;
layout(constant_id = 2) const uint LATENT = 512u;
layout(constant_id = 3) const uint ROPE = 64u;
layout(constant_id = 4) const uint ROWS = 32u;
layout(constant_id = 5) const uint CD = 64u;
layout(constant_id = 6) const uint CV = 256u;
const uint D = LATENT + ROPE;
const uint NO = LATENT / CV;  // output accumulators

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
#define ACC_O coopmat<float, gl_ScopeWorkgroup, ROWS, CV, gl_MatrixUseAccumulator>

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

float addReduce(const in float x, const in float y) {
    return x + y;
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
    ACC_O o[NO];
    [[unroll]] for (uint c = 0u; c < NO; ++c) {
        o[c] = ACC_O(0.0);
    }
    ACC_S m = ACC_S(NEG_BIG);
    ACC_S l = ACC_S(0.0);
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

        ACC_S s = ACC_S(0.0);
        [[unroll]] for (uint c = 0u; c < D / CD; ++c) {
            coopmat<bfloat16_t, gl_ScopeWorkgroup, ROWS, CD, gl_MatrixUseA> q_c;
            coopMatLoadTensorNV(q_c, q, 0,
                                sliceTensorLayoutNV(tl_q, b * rows + row0, ROWS, c * CD, CD));
            coopmat<bfloat16_t, gl_ScopeWorkgroup, CD, KT, gl_MatrixUseB> k_c;
            coopMatLoadTensorNV(k_c, cache, base, sliceTensorLayoutNV(tl_k, 0, KT, c * CD, CD),
                                transposed);
            s = coopMatMulAdd(q_c, k_c, s);
        }
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
        ACC_S row_sum;
        coopMatReduceNV(row_sum, prob, gl_CooperativeMatrixReduceRowNV, addReduce);
        l = alpha * l + row_sum;
        m = m_new;

        ACC_O alpha_wide;
        coopMatReduceNV(alpha_wide, alpha, gl_CooperativeMatrixReduceRowNV, smearReduce);
        [[unroll]] for (uint c = 0u; c < NO; ++c) {
            coopmat<bfloat16_t, gl_ScopeWorkgroup, KT, CV, gl_MatrixUseB> v;
            coopMatLoadTensorNV(v, cache, base, sliceTensorLayoutNV(tl_k, 0, KT, c * CV, CV));
            o[c] *= alpha_wide;
            o[c] = coopMatMulAdd(p_a, v, o[c]);
        }
    }

    ACC_O inv_wide;
    coopMatReduceNV(inv_wide, l, gl_CooperativeMatrixReduceRowNV, smearReduce);
    [[unroll]] for (int k = 0; k < inv_wide.length(); ++k) {
        inv_wide[k] = inv_wide[k] > 0.0 ? 1.0 / inv_wide[k] : 0.0;
    }
    [[unroll]] for (uint c = 0u; c < NO; ++c) {
        coopMatPerElementNV(o[c], o[c], finishO, inv_wide, kbad, row0, row_end, len, k_end);
    }
    ACC_S lse;
    coopMatPerElementNV(lse, l, finishLse, m, kbad, row0, row_end, len, k_end);
    // Rows past the group's end are clamped away.
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_o =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    tl_o = setTensorLayoutDimensionNV(tl_o, prow_base + row_end, LATENT);
    tl_o = setTensorLayoutStrideNV(tl_o, LATENT, 1);
    [[unroll]] for (uint c = 0u; c < NO; ++c) {
        coopMatStoreTensorNV(o[c], work, 0,
                             sliceTensorLayoutNV(tl_o, prow_base + row0, ROWS, c * CV, CV));
    }
    // lse: column 0 of the row-smeared matrix, into lse_part[prow].
    tensorLayoutNV<2, gl_CooperativeMatrixClampModeConstantNV> tl_l =
        createTensorLayoutNV(2, gl_CooperativeMatrixClampModeConstantNV);
    tl_l = setTensorLayoutDimensionNV(tl_l, prow_base + row_end, 1);
    tl_l = setTensorLayoutStrideNV(tl_l, 1, 1);
    coopMatStoreTensorNV(lse, work, part_rows * LATENT,
                         sliceTensorLayoutNV(tl_l, prow_base + row0, ROWS, 0, KT));
}

// Block-scaled FP8 GEMM, cooperative-matrix path (VK_KHR_cooperative_matrix, f16 x f16 -> f32,
// 16x16x16 in subgroup scope): the same contract and rounding as fp8_gemm.comp,
//   D[m][n] = Σ_kb sA[m][kb] · sB[n / 128][kb] · Σ_{k in block kb} A[m][k] · B[n][k],
// with A, B decoded from E4M3 to f16 (exact: every E4M3 value is an f16 value), products summed
// in f32 matrix accumulators per 128-wide K block, then scaled and added to an f32 total.
//
//   A   [m, k] E4M3 bytes (K-major), 4 per 32-bit word     sA  [m, ceil(k/128)] f32
//   B   [n, k] E4M3 bytes (K-major), 4 per 32-bit word     sB  [ceil(n/128), ceil(k/128)] f32
//   D   [m, n] bf16, 2 per 32-bit word
// Any m; n a multiple of 8; k a multiple of 16.
//
// Tiling: one workgroup of 4 subgroups of 32 invocations (the Rust side uses this shader only
// where the subgroup size is 32) per 64x64 tile of D; each subgroup owns a 32x32 quadrant as 2x2
// accumulator matrices. K goes in steps of 32 through shared memory (A and B tiles as f16,
// 2 * 64 * 32 * 2 = 8 KiB). At the end of each 128-wide K block the accumulators are stored to a
// 64x64 f32 scratch tile (16 KiB) and every invocation scales its 32 elements of it into its
// registers: the per-row scale sA cannot be applied inside a cooperative matrix.
// Dispatch: (ceil(n / 64), ceil(m / 64), 1).
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require

#define BM 64
#define BN 64
#define BK 32
#define PAIRS 16  // (BM * BN / 2) / 128 pairs of adjacent columns per invocation

layout(local_size_x = 128, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0, std430) readonly buffer A { uint a_words[]; };
layout(set = 0, binding = 1, std430) readonly buffer SA { float a_scales[]; };
layout(set = 0, binding = 2, std430) readonly buffer B { uint b_words[]; };
layout(set = 0, binding = 3, std430) readonly buffer SB { float b_scales[]; };
layout(set = 0, binding = 4, std430) writeonly buffer D { uint d_words[]; };

layout(push_constant, std430) uniform Params {
    uint m;
    uint n;
    uint k;
} p;

#include "common.glsl"

shared float16_t a_sh[BM * BK];  // [row][k], row-major, stride BK
shared float16_t b_sh[BN * BK];  // [col][k]: read as a K x N column-major matrix, stride BK
shared float c_sh[BM * BN];      // one finished 128-K block, [row][col], stride BN

// Loads rows row0 .. row0 + 63, columns k0 .. k0 + 31 of a [rows, k] E4M3 matrix into
// sh[row * BK + k] as f16, zero outside the matrix: 512 words, 4 per invocation.
#define LOAD_TILE(words, sh, row0, rows)                                         \
    for (uint idx = tid; idx < BM * (BK / 4); idx += 128u) {                    \
        uint r = idx / (BK / 4);                                                \
        uint kw = idx % (BK / 4);                                               \
        uint row = (row0) + r;                                                  \
        uint kk = k0 + 4u * kw;                                                 \
        bool inside = row < (rows) && kk < p.k;                                 \
        uint w = inside ? words[(row * p.k + kk) >> 2] : 0u;                    \
        for (uint j = 0u; j < 4u; ++j) {                                        \
            sh[r * BK + 4u * kw + j] = float16_t(e4m3_to_f32((w >> (8u * j)) & 0xffu)); \
        }                                                                       \
    }

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint sg = gl_SubgroupID;          // 0..3
    uint wm = (sg / 2u) * 32u;        // this subgroup's quadrant
    uint wn = (sg % 2u) * 32u;
    uint m0 = gl_WorkGroupID.y * BM;
    uint n0 = gl_WorkGroupID.x * BN;
    uint k_blocks = (p.k + 127u) / 128u;

    float total[2 * PAIRS];
    for (uint j = 0u; j < 2u * PAIRS; ++j) {
        total[j] = 0.0;
    }
    coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> acc[2][2];
    for (uint i = 0u; i < 2u; ++i) {
        for (uint j = 0u; j < 2u; ++j) {
            acc[i][j] = coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
        }
    }

    for (uint k0 = 0u; k0 < p.k; k0 += BK) {
        LOAD_TILE(a_words, a_sh, m0, p.m)
        LOAD_TILE(b_words, b_sh, n0, p.n)
        barrier();
        for (uint kk = 0u; kk < BK; kk += 16u) {
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> ma[2];
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> mb[2];
            for (uint i = 0u; i < 2u; ++i) {
                coopMatLoad(ma[i], a_sh, (wm + 16u * i) * BK + kk, BK,
                            gl_CooperativeMatrixLayoutRowMajor);
                coopMatLoad(mb[i], b_sh, (wn + 16u * i) * BK + kk, BK,
                            gl_CooperativeMatrixLayoutColumnMajor);
            }
            for (uint i = 0u; i < 2u; ++i) {
                for (uint j = 0u; j < 2u; ++j) {
                    acc[i][j] = coopMatMulAdd(ma[i], mb[j], acc[i][j]);
                }
            }
        }
        barrier();
        // End of a 128-wide K block (or of K): scale the block's sums into the total.
        if ((k0 + BK) % 128u == 0u || k0 + BK >= p.k) {
            for (uint i = 0u; i < 2u; ++i) {
                for (uint j = 0u; j < 2u; ++j) {
                    coopMatStore(acc[i][j], c_sh, (wm + 16u * i) * BN + wn + 16u * j, BN,
                                 gl_CooperativeMatrixLayoutRowMajor);
                    acc[i][j] =
                        coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
                }
            }
            barrier();
            uint kb = k0 / 128u;
            for (uint j = 0u; j < PAIRS; ++j) {
                uint pair = tid + 128u * j;
                uint r = pair / (BN / 2u);
                uint c = 2u * (pair % (BN / 2u));
                uint row = m0 + r;
                uint col = n0 + c;  // col and col + 1 share a 128-column scale block
                float sa = row < p.m ? a_scales[row * k_blocks + kb] : 0.0;
                float sb = col < p.n ? b_scales[(col / 128u) * k_blocks + kb] : 0.0;
                total[2u * j] += (sa * sb) * c_sh[r * BN + c];
                total[2u * j + 1u] += (sa * sb) * c_sh[r * BN + c + 1u];
            }
            barrier();
        }
    }

    // n is a multiple of 8 and c is even, so both columns of a pair are inside or outside.
    for (uint j = 0u; j < PAIRS; ++j) {
        uint pair = tid + 128u * j;
        uint row = m0 + pair / (BN / 2u);
        uint col = n0 + 2u * (pair % (BN / 2u));
        if (row < p.m && col < p.n) {
            d_words[(row * p.n + col) >> 1] =
                f32_to_bf16_bits(total[2u * j]) | (f32_to_bf16_bits(total[2u * j + 1u]) << 16);
        }
    }
}

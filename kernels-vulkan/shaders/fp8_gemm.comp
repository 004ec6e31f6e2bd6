// Block-scaled FP8 GEMM, portable path (DeepSeek-V3 recipe): D = A · Bᵀ with
//   D[m][n] = Σ_kb sA[m][kb] · sB[n / 128][kb] · Σ_{k in block kb} A[m][k] · B[n][k]
// accumulated in f32: each 128-wide K block is summed on its own, then scaled and added to the
// total (the promotion DeepSeek-V3 asks for), and the result is rounded to bf16 (nearest even).
//
//   A   [m, k] E4M3 bytes (K-major), 4 per 32-bit word     sA  [m, ceil(k/128)] f32
//   B   [n, k] E4M3 bytes (K-major), 4 per 32-bit word     sB  [ceil(n/128), ceil(k/128)] f32
//   D   [m, n] bf16, 2 per 32-bit word
// Any m; n a multiple of 8; k a multiple of 16 (so rows of A and B start on word boundaries and
// rows of D on even elements).
//
// Tiling: one workgroup of 16x16 invocations per 64x64 tile of D, K in steps of 32 through
// shared memory (decoded to f32 once per element: 2 * 32 * 64 * 4 = 16 KiB, within the 32 KiB
// of lavapipe and 48 KiB of NVIDIA); each invocation owns a 4x4 block of D. FP8 is decoded with
// integer operations (no float8 types needed). Dispatch: (ceil(n / 64), ceil(m / 64), 1).
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_GOOGLE_include_directive : require

#define BM 64
#define BN 64
#define BK 32
#define TM 4
#define TN 4

layout(local_size_x = 16, local_size_y = 16, local_size_z = 1) in;

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

shared float a_tile[BK][BM];
shared float b_tile[BK][BN];

// Loads rows row0 .. row0 + 63, columns k0 .. k0 + 31 of a [rows, k] E4M3 matrix into
// tile[k][row], zero outside the matrix.
#define LOAD_TILE(words, tile, row0, rows)                                              \
    for (uint idx = tid; idx < BM * (BK / 4); idx += 256u) {                           \
        uint r = idx / (BK / 4);                                                       \
        uint kw = idx % (BK / 4);                                                      \
        uint row = (row0) + r;                                                         \
        uint kk = k0 + 4u * kw;                                                        \
        uint w = 0u;                                                                   \
        bool inside = row < (rows) && kk < p.k;                                        \
        if (inside) {                                                                  \
            w = words[(row * p.k + kk) >> 2];                                          \
        }                                                                              \
        [[unroll]] for (uint j = 0u; j < 4u; ++j) {                                    \
            tile[4u * kw + j][r] = inside ? e4m3_to_f32((w >> (8u * j)) & 0xffu) : 0.0; \
        }                                                                              \
    }

void main() {
    uint tx = gl_LocalInvocationID.x;  // column block of this invocation
    uint ty = gl_LocalInvocationID.y;  // row block
    uint tid = ty * 16u + tx;
    uint m0 = gl_WorkGroupID.y * BM;
    uint n0 = gl_WorkGroupID.x * BN;
    uint k_blocks = (p.k + 127u) / 128u;

    float total[TM][TN];
    float block_sum[TM][TN];
    [[unroll]] for (uint i = 0u; i < TM; ++i) {
        [[unroll]] for (uint j = 0u; j < TN; ++j) {
            total[i][j] = 0.0;
            block_sum[i][j] = 0.0;
        }
    }

    for (uint k0 = 0u; k0 < p.k; k0 += BK) {
        LOAD_TILE(a_words, a_tile, m0, p.m)
        LOAD_TILE(b_words, b_tile, n0, p.n)
        barrier();
        for (uint kk = 0u; kk < BK; ++kk) {
            float av[TM];
            float bv[TN];
            [[unroll]] for (uint i = 0u; i < TM; ++i) {
                av[i] = a_tile[kk][ty * TM + i];
            }
            [[unroll]] for (uint j = 0u; j < TN; ++j) {
                bv[j] = b_tile[kk][tx * TN + j];
            }
            [[unroll]] for (uint i = 0u; i < TM; ++i) {
                [[unroll]] for (uint j = 0u; j < TN; ++j) {
                    block_sum[i][j] += av[i] * bv[j];
                }
            }
        }
        barrier();
        // End of a 128-wide K block (or of K): scale the block's sums into the total.
        if ((k0 + BK) % 128u == 0u || k0 + BK >= p.k) {
            uint kb = k0 / 128u;
            [[unroll]] for (uint i = 0u; i < TM; ++i) {
                uint row = m0 + ty * TM + i;
                float sa = row < p.m ? a_scales[row * k_blocks + kb] : 0.0;
                [[unroll]] for (uint j = 0u; j < TN; ++j) {
                    uint col = n0 + tx * TN + j;
                    float sb = col < p.n ? b_scales[(col / 128u) * k_blocks + kb] : 0.0;
                    total[i][j] += (sa * sb) * block_sum[i][j];
                    block_sum[i][j] = 0.0;
                }
            }
        }
    }

    // n is a multiple of 8 and the first column of this invocation a multiple of 4, so its
    // four columns are all inside or all outside, and they make two whole words.
    uint col0 = n0 + tx * TN;
    if (col0 >= p.n) {
        return;
    }
    [[unroll]] for (uint i = 0u; i < TM; ++i) {
        uint row = m0 + ty * TM + i;
        if (row < p.m) {
            uint base = (row * p.n + col0) >> 1;
            d_words[base] = f32_to_bf16_bits(total[i][0]) | (f32_to_bf16_bits(total[i][1]) << 16);
            d_words[base + 1u] =
                f32_to_bf16_bits(total[i][2]) | (f32_to_bf16_bits(total[i][3]) << 16);
        }
    }
}

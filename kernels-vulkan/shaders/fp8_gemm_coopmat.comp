// Block-scaled FP8 GEMM, cooperative-matrix path (VK_KHR_cooperative_matrix, f16 x f16 -> f32,
// 16x16x16 in subgroup scope): the same contract and rounding as fp8_gemm.comp,
//   D[m][n] = Σ_kb sA[m][kb] · sB[n / 128][kb] · Σ_{k in block kb} A[m][k] · B[n][k],
// products summed in f32 matrix accumulators per 128-wide K block, then scaled and added to an
// f32 total per element.
//
//   A   [m, k] E4M3 bytes (K-major)        sA  [m, ceil(k/128)] f32
//   B   [n, k] E4M3 bytes (K-major)        sB  [ceil(n/128), ceil(k/128)] f32
//   D   [m, n] bf16, 2 per 32-bit word
// Any m; n a multiple of 8; k a multiple of 16 (so every 16-byte load of a row is wholly inside
// or outside the matrix).
//
// Decoding: an E4M3 byte s.eeee.mmm becomes the f16 with bits s.0eeee.mmm0000000, which is the
// E4M3 value times 2^-8 exactly (normals and subnormals alike, the exponent biases differ by
// 8); the two factors 2^8 go back in with the scales (sB · 2^16, exact). E4M3's NaN (s.1111.111)
// would become a finite f16 that way, so words holding one take a slower path that writes f16
// NaN. Two bytes are decoded per 32-bit operation.
//
// Tiling (macros; the variants below): a workgroup of SG_M x SG_N subgroups of 32 invocations
// (the Rust side uses this shader only where the subgroup size is 32) computes a BM x BN tile of
// D; each subgroup owns (BM / SG_M) x (BN / SG_N) of it as FM x FN accumulator matrices. K goes
// through shared memory in steps of BK (A and B tiles as f16, rows padded by 8 halves against
// bank conflicts, written 8 values per vector store), the next step's global loads (16 bytes
// each) in flight while the current one is multiplied. At the end of each 128-wide K block the
// block's sums are scaled into f32 total matrices element by element: sA varies per row, so each
// invocation needs the row of each of its elements, which a probe matrix loaded once from
// row * 16 + column tells (the element-to-invocation mapping is the implementation's, but the
// same for every matrix of a type); sB is one value per tile. The totals leave through a 16x16
// f32 scratch per subgroup.
// Dispatch: (ceil(n / BN), ceil(m / BM), 1).
//
// tessera-variant: fp8_gemm_coopmat_large -DBM=128 -DBN=128 -DBK=64 -DSG_M=2 -DSG_N=4
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require

#ifndef BM
#define BM 64
#define BN 64
#define BK 128
#define SG_M 2
#define SG_N 2
#endif

#define SUBGROUPS (SG_M * SG_N)
#define THREADS (32 * SUBGROUPS)
#define WM (BM / SG_M)          // rows of D per subgroup
#define WN (BN / SG_N)          // columns of D per subgroup
#define FM (WM / 16)            // accumulator matrices per subgroup, down
#define FN (WN / 16)            // and across
#define STRIDE (BK + 8)         // halves per row of a shared tile
#define VSTRIDE (STRIDE / 8)    // the same in 16-byte words
#define A_LOADS (BM * BK / 16 / THREADS)  // 16-byte loads per invocation per K step
#define B_LOADS (BN * BK / 16 / THREADS)

layout(local_size_x = THREADS, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0, std430) readonly buffer A { uvec4 a_vec[]; };
layout(set = 0, binding = 1, std430) readonly buffer SA { float a_scales[]; };
layout(set = 0, binding = 2, std430) readonly buffer B { uvec4 b_vec[]; };
layout(set = 0, binding = 3, std430) readonly buffer SB { float b_scales[]; };
layout(set = 0, binding = 4, std430) writeonly buffer D { uint d_words[]; };

layout(push_constant, std430) uniform Params {
    uint m;
    uint n;
    uint k;
} p;

#include "common.glsl"

// The tiles hold f16 values, 8 per 16-byte word (cooperative-matrix loads take offsets and
// strides in words): stored with one vector store per 8 values.
shared uvec4 a_sh[BM * VSTRIDE];  // [row][k]
shared uvec4 b_sh[BN * VSTRIDE];  // [col][k]: read as a K x N column-major matrix
shared float c_sh[SUBGROUPS * 256];  // one 16x16 f32 scratch per subgroup
shared float sa_sh[BM];              // sA of the tile's rows for the current K block

#define ACC coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>

// The f16 bits of E4M3 bytes 0 and 1 of `w` (value · 2^-8), as one packed pair.
uint e4m3_pair_to_f16_bits(uint w) {
    uint bits = ((w & 0x7fu) << 7) | ((w & 0x80u) << 8) | ((w & 0x7f00u) << 15)
        | ((w & 0x8000u) << 16);
    if ((((w & 0x7f7fu) + 0x0101u) & 0x8080u) != 0u) {  // a NaN byte (low 7 bits all ones)
        if ((w & 0x7fu) == 0x7fu) {
            bits = (bits & 0xffff0000u) | 0x7e00u | ((w & 0x80u) << 8);
        }
        if ((w & 0x7f00u) == 0x7f00u) {
            bits = (bits & 0x0000ffffu) | 0x7e000000u | ((w & 0x8000u) << 16);
        }
    }
    return bits;
}

void main() {
    uint tid = gl_LocalInvocationID.x;
    uint sg = gl_SubgroupID;
    uint lane = gl_SubgroupInvocationID;
    uint wm = (sg / SG_N) * WM;
    uint wn = (sg % SG_N) * WN;
    uint m0 = gl_WorkGroupID.y * BM;
    uint n0 = gl_WorkGroupID.x * BN;
    uint k_blocks = (p.k + 127u) / 128u;
    uint row_vecs = p.k / 16u;  // 16-byte words per row of A and B

    // Which elements of a 16x16 accumulator this invocation holds (implementation-defined, the
    // same for every matrix of the type): a probe matrix loaded from row * 16 + column.
    for (uint e = lane; e < 256u; e += 32u) {
        c_sh[sg * 256u + e] = float(e);
    }
    subgroupMemoryBarrierShared();
    subgroupBarrier();
    ACC probe;
    coopMatLoad(probe, c_sh, sg * 256u, 16u, gl_CooperativeMatrixLayoutRowMajor);

    // Per accumulator matrix: the current 128-wide K block's sums and the scaled total.
    ACC acc[FM][FN];
    ACC total[FM][FN];
    [[unroll]] for (uint i = 0u; i < FM; ++i) {
        [[unroll]] for (uint j = 0u; j < FN; ++j) {
            acc[i][j] = ACC(0.0);
            total[i][j] = ACC(0.0);
        }
    }

    // Global loads of one K step: load t of this invocation covers row idx / (BK / 16), bytes
    // 16 * (idx % (BK / 16)) of the step, with idx = tid + THREADS * t.
    uvec4 ra[A_LOADS];
    uvec4 rb[B_LOADS];
#define LOAD_STEP(k0)                                                              \
    [[unroll]] for (uint t = 0u; t < A_LOADS; ++t) {                                          \
        uint idx = tid + THREADS * t;                                              \
        uint row = m0 + idx / (BK / 16u);                                          \
        uint kv = (k0) / 16u + idx % (BK / 16u);                                   \
        ra[t] = (row < p.m && kv < row_vecs) ? a_vec[row * row_vecs + kv] : uvec4(0u); \
    }                                                                              \
    [[unroll]] for (uint t = 0u; t < B_LOADS; ++t) {                                          \
        uint idx = tid + THREADS * t;                                              \
        uint col = n0 + idx / (BK / 16u);                                          \
        uint kv = (k0) / 16u + idx % (BK / 16u);                                   \
        rb[t] = (col < p.n && kv < row_vecs) ? b_vec[col * row_vecs + kv] : uvec4(0u); \
    }
// 16 E4M3 values (one 16-byte load) into two words of 8 f16 at sh[base], sh[base + 1].
#define STORE_VEC(sh, base, v)                                                     \
    {                                                                              \
        sh[(base)] = uvec4(e4m3_pair_to_f16_bits(v.x), e4m3_pair_to_f16_bits(v.x >> 16), \
                           e4m3_pair_to_f16_bits(v.y), e4m3_pair_to_f16_bits(v.y >> 16)); \
        sh[(base) + 1u] = uvec4(e4m3_pair_to_f16_bits(v.z), e4m3_pair_to_f16_bits(v.z >> 16), \
                                e4m3_pair_to_f16_bits(v.w), e4m3_pair_to_f16_bits(v.w >> 16)); \
    }

    LOAD_STEP(0u)
    for (uint k0 = 0u; k0 < p.k; k0 += BK) {
        barrier();  // the previous step's multiplications are done with the tiles
        [[unroll]] for (uint t = 0u; t < A_LOADS; ++t) {
            uint idx = tid + THREADS * t;
            STORE_VEC(a_sh, (idx / (BK / 16u)) * VSTRIDE + 2u * (idx % (BK / 16u)), ra[t])
        }
        [[unroll]] for (uint t = 0u; t < B_LOADS; ++t) {
            uint idx = tid + THREADS * t;
            STORE_VEC(b_sh, (idx / (BK / 16u)) * VSTRIDE + 2u * (idx % (BK / 16u)), rb[t])
        }
        if (k0 % 128u == 0u) {  // a K block starts: its row scales (used at its end)
            for (uint r = tid; r < BM; r += THREADS) {
                uint row = m0 + r;
                sa_sh[r] = row < p.m ? a_scales[row * k_blocks + k0 / 128u] : 0.0;
            }
        }
        barrier();
        if (k0 + BK < p.k) {
            LOAD_STEP(k0 + BK)
        }
        // K steps past k multiply the zeros loaded there.
        [[unroll]] for (uint s = 0u; s < BK / 16u; ++s) {
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> ma[FM];
            coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> mb[FN];
            [[unroll]] for (uint i = 0u; i < FM; ++i) {
                coopMatLoad(ma[i], a_sh, (wm + 16u * i) * VSTRIDE + 2u * s, VSTRIDE,
                            gl_CooperativeMatrixLayoutRowMajor);
            }
            [[unroll]] for (uint j = 0u; j < FN; ++j) {
                coopMatLoad(mb[j], b_sh, (wn + 16u * j) * VSTRIDE + 2u * s, VSTRIDE,
                            gl_CooperativeMatrixLayoutColumnMajor);
            }
            [[unroll]] for (uint i = 0u; i < FM; ++i) {
                [[unroll]] for (uint j = 0u; j < FN; ++j) {
                    acc[i][j] = coopMatMulAdd(ma[i], mb[j], acc[i][j]);
                }
            }
        }
        // End of a 128-wide K block (or of K): scale the block's sums into the totals, element
        // by element (the row of each element from the probe; sB is one value per tile).
        if ((k0 + BK) % 128u == 0u || k0 + BK >= p.k) {
            uint kb = k0 / 128u;
            float sb = n0 < p.n ? b_scales[(n0 / 128u) * k_blocks + kb] * 65536.0 : 0.0;
            [[unroll]] for (uint i = 0u; i < FM; ++i) {
                [[unroll]] for (uint j = 0u; j < FN; ++j) {
                    [[unroll]] for (int e = 0; e < probe.length(); ++e) {
                        uint r = wm + 16u * i + (uint(probe[e]) >> 4);
                        total[i][j][e] += acc[i][j][e] * (sa_sh[r] * sb);
                    }
                    acc[i][j] = ACC(0.0);
                }
            }
        }
    }

    // The totals through this subgroup's scratch, 8 adjacent columns per invocation: n is a
    // multiple of 8 and they start at a multiple of 8, so they are all inside or all outside.
    uint r = lane / 2u;
    uint c = (lane % 2u) * 8u;
    [[unroll]] for (uint i = 0u; i < FM; ++i) {
        uint row = m0 + wm + 16u * i + r;
        [[unroll]] for (uint j = 0u; j < FN; ++j) {
            subgroupBarrier();
            coopMatStore(total[i][j], c_sh, sg * 256u, 16u, gl_CooperativeMatrixLayoutRowMajor);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            uint col = n0 + wn + 16u * j + c;
            if (row < p.m && col < p.n) {
                [[unroll]] for (uint e = 0u; e < 8u; e += 2u) {
                    uint t = sg * 256u + r * 16u + c + e;
                    d_words[(row * p.n + col + e) >> 1] =
                        f32_to_bf16_bits(c_sh[t]) | (f32_to_bf16_bits(c_sh[t + 1u]) << 16);
                }
            }
        }
    }
}

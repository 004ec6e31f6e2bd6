// Block-sparse (radial) attention forward, cooperative-matrix path (VK_KHR_cooperative_matrix,
// f16 x f16 -> f32, 16x16x16 in subgroup scope): the same contract as sparse_attention.comp,
//   o = softmax(scale · q kᵀ + M) v,   lse = log Σ exp(scale · q kᵀ + M)   (natural log),
// M from the BSR mask, keys past `tokens` never contributing.
//
//   q, k, v     [batch, tokens, heads, HEAD_DIM] f16 or bf16 (IS_BF16), read as uvec4 (8 values)
//   o           same layout, written as 32-bit words (two values, the even one in the low half)
//   mask        u32 words: indptr [num_blocks + 1], then indices [nnz]
//   lse         [batch, heads, tokens] f32
//
// Tiling: one workgroup of 4 subgroups of 32 invocations (the host uses this shader only where
// the subgroup size is fixed at 32) per (64-row query tile, head, batch); subgroup s owns query
// rows 16s .. 16s + 15 of the tile. The block size is a multiple of 64, so a tile's rows share
// one block row. Per tile of BKV keys of a listed block:
//   1. all invocations load K and V (f16 in shared memory, rows padded to HEAD_DIM + 8 values so
//      that the matrix loads do not hit one bank), then a barrier;
//   2. each subgroup computes its 16 x BKV scores S = Q Kᵀ with f32 accumulators (Q stays in
//      registers as HEAD_DIM / 16 matrices, loaded once) and stores them to its own region of
//      shared memory;
//   3. two invocations per row run the online softmax in base 2 and f32 over the row's scores
//      (max and sum combined with one subgroupShuffleXor), write the probabilities P rounded to
//      f16 and the row's rescale factor alpha;
//   4. P · V per 16 output columns with a fresh f32 accumulator, stored to one of two 16 x 16
//      scratches (in the score region, used alternately so that one subgroup barrier per chunk
//      suffices) from which each invocation adds its 4 rows x 2 columns into its f32 output
//      registers: o = alpha · o + 2^h · (P V') (cooperative matrices give neither row
//      reductions nor per-row or per-column scaling, hence the trips through shared memory);
//   5. a barrier before the next tile overwrites K and V.
// The next tile's K and V are loaded into registers (LOAD_TILE) between steps 1 and 2, so that
// the global loads overlap the matrix work.
// Shared memory (bytes): 2 · max(2 · BKV, 64) · (HEAD_DIM + 8) for K and V (Q staging at the
// start), 4 · max(16 · (BKV + 4), 640) · 4 for scores and scratches, 4 · 16 · (BKV + 8) · 2
// probabilities, and 4 · (3 · 64 + BKV + 2 · HEAD_DIM) of row and column factors: at HEAD_DIM
// 128, BKV 32, 33.9 KiB; at HEAD_DIM 64, BKV 64, 45.5 KiB (the host picks BKV from the device's
// limit; coopmat_shared_bytes in ops/attention.rs mirrors this sum).
//
// bf16 (IS_BF16 = 1): there are no bf16 matrices here, so bf16 values are converted to f16
// exactly with power-of-two scales: a query row i is scaled by 2^-e_i, a key row j by 2^-f_j
// (each exponent from the row's largest |value|, which lands in [2^14, 2^15)), and the scores
// are scaled back by 2^(e_i + f_j) on their way through shared memory; V is scaled per column d
// of the key tile by 2^-h_d and each partial P · V' column by 2^h_d as it is added to the
// output. bf16's 8 significant bits fit f16's 11, so a scaled value is exact unless it falls
// below f16's normal range: only elements under 2^-17 of their row's (column's) largest lose
// bits, with an error of at most 2^-25 of it (values under 2^-126, f32 subnormals, may be
// flushed). For f16 (IS_BF16 = 0) every exponent is 0 and those steps compile away.
//
// Rows past `tokens` load zeros and write nothing; keys past it are zero in shared memory and
// get probability 0.
//
// Specialization constants: 0 = HEAD_DIM (64 or 128), 1 = BKV (16, 32 or 64), 2 = IS_BF16.
// Dispatch: a linear grid of `groups` = tiles · heads · batch workgroups (linear_workgroup_id).
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require

layout(local_size_x = 128, local_size_y = 1, local_size_z = 1) in;
layout(constant_id = 0) const uint HEAD_DIM = 128u;
layout(constant_id = 1) const uint BKV = 32u;
layout(constant_id = 2) const uint IS_BF16 = 1u;

const uint BQ = 64u;                  // query rows per workgroup
const uint D8 = HEAD_DIM / 8u;        // uvec4s per row
const uint DP = HEAD_DIM + 8u;        // padded row stride of K, V and Q in shared memory (f16)
const uint SP = BKV + 4u;             // row stride of the scores (f32)
const uint XP = 20u;                  // row stride of a 16 x 16 P·V scratch (f32)
// Per subgroup: 16 rows of scores, or two P·V scratches (used alternately).
const uint S_REGION = 16u * SP > 2u * 16u * XP ? 16u * SP : 2u * 16u * XP;
const uint PP = BKV + 8u;             // row stride of the probabilities (f16)
const uint KV_ROWS = 2u * BKV > BQ ? 2u * BKV : BQ;
const uint LOADS = BKV * D8 / 128u;   // uvec4s of K (and of V) per invocation and tile
const uint HALF = BKV / 2u;           // keys per softmax invocation

layout(set = 0, binding = 0, std430) readonly buffer Q { uvec4 q4[]; };
layout(set = 0, binding = 1, std430) readonly buffer K { uvec4 k4[]; };
layout(set = 0, binding = 2, std430) readonly buffer V { uvec4 v4[]; };
layout(set = 0, binding = 3, std430) readonly buffer Mask { uint mask_words[]; };
layout(set = 0, binding = 4, std430) writeonly buffer O { uint o_words[]; };
layout(set = 0, binding = 5, std430) writeonly buffer Lse { float lse[]; };

layout(push_constant, std430) uniform Params {
    uint groups;       // tiles * heads * batch
    uint tiles;        // ceil(tokens / 64)
    uint tokens;
    uint heads;
    uint block_size;   // a multiple of 64
    uint num_blocks;   // ceil(tokens / block_size)
    uint nnz;          // entries of indices
    float scale_log2;  // softmax scale * log2(e)
} p;

#include "common.glsl"
#include "half.glsl"

shared float16_t kv_sh[KV_ROWS * DP];  // K rows 0 .. BKV-1, V rows BKV .. 2 BKV-1 (Q at first)
shared float s_sh[4u * S_REGION];      // per subgroup: 16 x BKV scores, then P·V scratches
shared float16_t p_sh[4u * 16u * PP];  // per subgroup: 16 x BKV probabilities
shared float q_factor[BQ];             // 2^e_i · scale · log2(e)
shared float alpha_sh[BQ];             // this tile's rescale factor of each row, 1/l at the end
shared float inv_l_sh[BQ];
shared float k_factor[BKV];            // 2^f_j
shared uint v_max[HEAD_DIM];           // bf16: largest |V| bits of each column of the tile
shared float v_factor[HEAD_DIM];       // 2^h_d

#define NEG_INF uintBitsToFloat(0xff800000u)

// 2^k as f32, exact, for -126 <= k <= 127.
float pow2(int k) {
    return uintBitsToFloat(uint(k + 127) << 23);
}

// The exponent e of the power-of-two scale 2^-e for a row (column) whose largest |value| has
// bf16 magnitude bits `amax`: the scaled maximum lies in [2^14, 2^15) (clamped so that every
// factor stays a normal f32).
int scale_exponent(uint amax) {
    return clamp(int(amax >> 7) - 141, -126, 113);
}

// Largest bf16 magnitude bits among the 8 values of w.
uint max_bits(uvec4 w) {
    uvec4 lo = w & 0x7fffu;
    uvec4 hi = (w >> 16) & 0x7fffu;
    uvec4 m = max(lo, hi);
    return max(max(m.x, m.y), max(m.z, m.w));
}

// Stores the 8 values of w at sh[at ..], as f16: f16 bits as they are, bf16 times `factor` (a
// power of two, see the header for exactness).
void store8(uint at, uvec4 w, float factor) {
    [[unroll]] for (uint i = 0u; i < 4u; ++i) {
        if (IS_BF16 != 0u) {
            kv_sh[at + 2u * i] = float16_t(uintBitsToFloat(w[i] << 16) * factor);
            kv_sh[at + 2u * i + 1u] = float16_t(uintBitsToFloat(w[i] & 0xffff0000u) * factor);
        } else {
            f16vec2 h = unpackFloat2x16(w[i]);
            kv_sh[at + 2u * i] = h.x;
            kv_sh[at + 2u * i + 1u] = h.y;
        }
    }
}

// The largest bits over the D8 invocations (consecutive lanes) that hold one row.
uint row_max(uint bits) {
    [[unroll]] for (uint off = 1u; off < D8; off <<= 1) {
        bits = max(bits, subgroupShuffleXor(bits, off));
    }
    return bits;
}

uint encode16(float x) {
    if (IS_BF16 != 0u) {
        return f32_to_bf16_bits(x);
    }
    return f32_to_f16_bits(x);
}

// Moves (e, k0, k_end) to the next tile of BKV keys of the query tile's block row: the next
// keys of block e, else the first of the next listed block (entries naming no block are
// skipped). Returns false past the last entry (`end`). Uniform over the workgroup.
bool next_tile(inout uint e, inout uint k0, inout uint k_end, uint end) {
    k0 += BKV;
    if (k0 < k_end) {
        return true;
    }
    for (e += 1u; e < end; e += 1u) {
        uint cb = mask_words[p.num_blocks + 1u + e];
        if (cb < p.num_blocks) {
            k0 = cb * p.block_size;
            k_end = min(k0 + p.block_size, p.tokens);
            return true;
        }
    }
    return false;
}

// K and V of the tile at k0 into k_regs and v_regs: this invocation's uvec4s (key j, part),
// zero for keys j >= NK (never read: past the block's end or past tokens).
#define LOAD_TILE(NK)                                                   \
    [[unroll]] for (uint it = 0u; it < LOADS; ++it) {                   \
        uint idx = tid + 128u * it;                                     \
        uint j = idx / D8;                                              \
        k_regs[it] = uvec4(0u);                                         \
        v_regs[it] = uvec4(0u);                                         \
        if (j < (NK)) {                                                 \
            uint at = base4 + (k0 + j) * token4 + idx % D8;             \
            k_regs[it] = k4[at];                                        \
            v_regs[it] = v4[at];                                        \
        }                                                               \
    }

void main() {
    uint g = linear_workgroup_id();
    if (g >= p.groups) {
        return;  // uniform for the whole workgroup
    }
    uint sg = gl_SubgroupID;  // 0..3
    uint lane = gl_SubgroupInvocationID;
    // The invocation's index, numbered so that lane neighbours are index neighbours (the row
    // reductions shuffle between the D8 invocations that load one row).
    uint tid = sg * 32u + lane;
    uint tile = g % p.tiles;
    uint bh = g / p.tiles;
    uint h = bh % p.heads;
    uint b = bh / p.heads;
    uint q0 = tile * BQ;
    uint r = q0 / p.block_size;

    // uvec4 offsets: a row is D8 uvec4s; tokens are heads rows apart.
    uint token4 = p.heads * D8;
    uint base4 = b * p.tokens * token4 + h * D8;  // token 0 of (b, h)

    // Q tile -> shared memory (f16), with each row's factor.
    [[unroll]] for (uint it = 0u; it < BQ * D8 / 128u; ++it) {
        uint idx = tid + 128u * it;
        uint i = idx / D8;
        uint part = idx % D8;
        uint row = q0 + i;
        uvec4 w = uvec4(0u);
        if (row < p.tokens) {
            w = q4[base4 + row * token4 + part];
        }
        float factor = 1.0;
        if (IS_BF16 != 0u) {
            int e = scale_exponent(row_max(max_bits(w)));
            factor = pow2(-e);
            if (part == 0u) {
                q_factor[i] = pow2(e) * p.scale_log2;
            }
        } else if (part == 0u) {
            q_factor[i] = p.scale_log2;
        }
        store8(i * DP + 8u * part, w, factor);
    }
    if (tid < HEAD_DIM) {
        v_max[tid] = 0u;
        v_factor[tid] = 1.0;
    }
    if (tid < BKV) {
        k_factor[tid] = 1.0;
    }
    barrier();
    coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> q_mat[HEAD_DIM / 16u];
    [[unroll]] for (uint db = 0u; db < HEAD_DIM / 16u; ++db) {
        coopMatLoad(q_mat[db], kv_sh, (16u * sg) * DP + 16u * db, DP,
                    gl_CooperativeMatrixLayoutRowMajor);
    }
    barrier();

    // Output registers: for each 16-column chunk c, rows 4t + lane / 8 (t = 0..3) of the
    // subgroup's 16, columns 16c + 2 (lane % 8) and the next.
    vec2 acc[HEAD_DIM / 16u][4];
    [[unroll]] for (uint c = 0u; c < HEAD_DIM / 16u; ++c) {
        [[unroll]] for (uint t = 0u; t < 4u; ++t) {
            acc[c][t] = vec2(0.0);
        }
    }
    uint own_row = lane / 8u;          // + 4t
    uint own_col = 2u * (lane % 8u);   // + 16c
    // Softmax state of row `soft_row` (both invocations of a row keep the same copy).
    uint soft_row = lane % 16u;
    uint soft_half = lane / 16u;
    float m_run = NEG_INF;
    float l_run = 0.0;
    uint s_base = sg * S_REGION;
    uint p_base = sg * 16u * PP;

    uint start = min(mask_words[r], p.nnz);
    uint end = min(mask_words[r + 1u], p.nnz);
    // The first tile (e wraps below 0 when start is 0: next_tile increments it first), loaded
    // into registers; each iteration stores its tile to shared memory and loads the next one
    // into registers before computing, so that the loads overlap the matrix work.
    uint e = start - 1u;
    uint k0 = 0u;
    uint k_end = 0u;
    bool have = next_tile(e, k0, k_end, end);
    uvec4 k_regs[LOADS];
    uvec4 v_regs[LOADS];
    LOAD_TILE(have ? min(BKV, k_end - k0) : 0u)
    while (have) {  // uniform
        uint nk = min(BKV, k_end - k0);
        // 1. K (with its row factors) and V into shared memory.
        // bf16: largest |V| bits of this invocation's 8 columns (even ones, odd ones).
        uvec4 v_col_bits = uvec4(0u);
        uvec4 v_col_bits2 = uvec4(0u);
        [[unroll]] for (uint it = 0u; it < LOADS; ++it) {
            uint idx = tid + 128u * it;
            uint j = idx / D8;
            uint part = idx % D8;
            uvec4 kw = k_regs[it];
            uvec4 vw = v_regs[it];
            float factor = 1.0;
            if (IS_BF16 != 0u) {
                int f = scale_exponent(row_max(max_bits(kw)));
                factor = pow2(-f);
                if (part == 0u) {
                    k_factor[j] = pow2(f);
                }
                v_col_bits = max(v_col_bits, vw & 0x7fffu);
                v_col_bits2 = max(v_col_bits2, (vw >> 16) & 0x7fffu);
            } else {
                store8((BKV + j) * DP + 8u * part, vw, 1.0);
            }
            store8(j * DP + 8u * part, kw, factor);
        }
        if (IS_BF16 != 0u) {
            // Column maxima: over the invocations of this subgroup with the same columns
            // (lanes D8 apart), then across subgroups through shared memory.
            [[unroll]] for (uint off = D8; off < 32u; off <<= 1) {
                v_col_bits = max(v_col_bits, subgroupShuffleXor(v_col_bits, off));
                v_col_bits2 = max(v_col_bits2, subgroupShuffleXor(v_col_bits2, off));
            }
            uint part = tid % D8;
            if (lane < D8) {
                [[unroll]] for (uint i = 0u; i < 4u; ++i) {
                    atomicMax(v_max[8u * part + 2u * i], v_col_bits[i]);
                    atomicMax(v_max[8u * part + 2u * i + 1u], v_col_bits2[i]);
                }
            }
            barrier();
            [[unroll]] for (uint it = 0u; it < LOADS; ++it) {
                uint idx = tid + 128u * it;
                uint j = idx / D8;
                uvec4 vw = v_regs[it];
                [[unroll]] for (uint i = 0u; i < 4u; ++i) {
                    uint d = 8u * part + 2u * i;
                    float f0 = pow2(-scale_exponent(v_max[d]));
                    float f1 = pow2(-scale_exponent(v_max[d + 1u]));
                    uint at = (BKV + j) * DP + d;
                    kv_sh[at] = float16_t(uintBitsToFloat(vw[i] << 16) * f0);
                    kv_sh[at + 1u] = float16_t(uintBitsToFloat(vw[i] & 0xffff0000u) * f1);
                }
            }
            if (tid < HEAD_DIM) {
                v_factor[tid] = pow2(scale_exponent(v_max[tid]));
            }
        }
        barrier();
        if (IS_BF16 != 0u && tid < HEAD_DIM) {
            v_max[tid] = 0u;  // for the next tile: every read of it is before the barrier
        }
        // The next tile's K and V into registers (this tile's nk is kept).
        have = next_tile(e, k0, k_end, end);
        LOAD_TILE(have ? min(BKV, k_end - k0) : 0u)

        // 2. Scores of the subgroup's 16 rows.
        [[unroll]] for (uint jb = 0u; jb < BKV / 16u; ++jb) {
            coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> s_acc =
                coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
            [[unroll]] for (uint db = 0u; db < HEAD_DIM / 16u; ++db) {
                coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> k_mat;
                coopMatLoad(k_mat, kv_sh, (16u * jb) * DP + 16u * db, DP,
                            gl_CooperativeMatrixLayoutColumnMajor);
                s_acc = coopMatMulAdd(q_mat[db], k_mat, s_acc);
            }
            coopMatStore(s_acc, s_sh, s_base + 16u * jb, SP,
                         gl_CooperativeMatrixLayoutRowMajor);
        }
        subgroupMemoryBarrierShared();
        subgroupBarrier();

        // 3. Online softmax: invocations l and l + 16 share row l % 16, half the keys each.
        float row_factor = q_factor[16u * sg + soft_row];
        float s[HALF];
        float m_tile = NEG_INF;
        [[unroll]] for (uint jj = 0u; jj < HALF; ++jj) {
            uint j = soft_half * HALF + jj;
            float x = s_sh[s_base + soft_row * SP + j] * row_factor;
            if (IS_BF16 != 0u) {
                x *= k_factor[j];
            }
            s[jj] = j < nk ? x : NEG_INF;
            m_tile = max(m_tile, s[jj]);
        }
        m_tile = max(m_tile, subgroupShuffleXor(m_tile, 16u));
        float m_new = max(m_run, m_tile);
        // m_run is -inf before the first tile: alpha = 0 then (m_new is finite, nk >= 1).
        float alpha = exp2(m_run - m_new);
        float sum = 0.0;
        [[unroll]] for (uint jj = 0u; jj < HALF; ++jj) {
            float pj = exp2(s[jj] - m_new);
            sum += pj;
            p_sh[p_base + soft_row * PP + soft_half * HALF + jj] = float16_t(pj);
        }
        sum += subgroupShuffleXor(sum, 16u);
        l_run = l_run * alpha + sum;
        m_run = m_new;
        if (soft_half == 0u) {
            alpha_sh[16u * sg + soft_row] = alpha;
        }
        subgroupMemoryBarrierShared();
        subgroupBarrier();

        // 4. o = alpha · o + 2^h · (P · V'), 16 columns at a time.
        coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> p_mat[BKV / 16u];
        [[unroll]] for (uint kb = 0u; kb < BKV / 16u; ++kb) {
            coopMatLoad(p_mat[kb], p_sh, p_base + 16u * kb, PP,
                        gl_CooperativeMatrixLayoutRowMajor);
        }
        float row_alpha[4];
        [[unroll]] for (uint t = 0u; t < 4u; ++t) {
            row_alpha[t] = alpha_sh[16u * sg + own_row + 4u * t];
        }
        [[unroll]] for (uint c = 0u; c < HEAD_DIM / 16u; ++c) {
            coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator> pv =
                coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>(0.0);
            [[unroll]] for (uint kb = 0u; kb < BKV / 16u; ++kb) {
                coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> v_mat;
                coopMatLoad(v_mat, kv_sh, (BKV + 16u * kb) * DP + 16u * c, DP,
                            gl_CooperativeMatrixLayoutRowMajor);
                pv = coopMatMulAdd(p_mat[kb], v_mat, pv);
            }
            // Scratch c % 2: the reads of chunk c - 2 from it came before the last barrier.
            uint scratch = s_base + (c % 2u) * 16u * XP;
            coopMatStore(pv, s_sh, scratch, XP, gl_CooperativeMatrixLayoutRowMajor);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            vec2 col_factor = vec2(1.0);
            if (IS_BF16 != 0u) {
                col_factor = vec2(v_factor[16u * c + own_col],
                                  v_factor[16u * c + own_col + 1u]);
            }
            [[unroll]] for (uint t = 0u; t < 4u; ++t) {
                uint at = scratch + (own_row + 4u * t) * XP + own_col;
                vec2 part_pv = vec2(s_sh[at], s_sh[at + 1u]);
                acc[c][t] = acc[c][t] * row_alpha[t] + part_pv * col_factor;
            }
        }
        // 5. Every subgroup is done with K and V.
        barrier();
    }

    // Normalize and write: o rows by the owners of their columns, lse by the softmax lanes.
    uint soft_q = q0 + 16u * sg + soft_row;
    if (soft_half == 0u) {
        inv_l_sh[16u * sg + soft_row] = 1.0 / l_run;
        if (soft_q < p.tokens) {
            // Natural log: (m + log2 l) · ln 2.
            lse[(b * p.heads + h) * p.tokens + soft_q] =
                (m_run + log2(l_run)) * 0.69314718055994531;
        }
    }
    subgroupMemoryBarrierShared();
    subgroupBarrier();
    uint row_words = HEAD_DIM / 2u;
    uint token_words = p.heads * row_words;
    uint base_words = 4u * base4;
    [[unroll]] for (uint t = 0u; t < 4u; ++t) {
        uint i = 16u * sg + own_row + 4u * t;
        uint qi = q0 + i;
        if (qi < p.tokens) {
            float inv = inv_l_sh[i];
            [[unroll]] for (uint c = 0u; c < HEAD_DIM / 16u; ++c) {
                vec2 o = acc[c][t] * inv;
                o_words[base_words + qi * token_words + (16u * c + own_col) / 2u] =
                    encode16(o.x) | (encode16(o.y) << 16);
            }
        }
    }
}

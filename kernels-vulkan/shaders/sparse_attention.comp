// Block-sparse (radial) attention forward, portable path: for each batch b and head h,
//   o = softmax(scale · q kᵀ + M) v,   lse = log Σ exp(scale · q kᵀ + M)   (natural log)
// where M is 0 on the key blocks the BSR mask lists for the query's block row and -inf
// elsewhere; keys past `tokens` (the padding of a partial last block) never contribute.
//
//   q, k, v, o  [batch, tokens, heads, HEAD_DIM] f16 or bf16 (IS_BF16), two per 32-bit word
//               (the even element in the low half)
//   mask        u32 words: indptr [num_blocks + 1], then indices [nnz]
//   lse         [batch, heads, tokens] f32
//
// Flash-attention style: one workgroup per (query tile of BQ rows, head, batch), one invocation
// per query row, holding its query and its output accumulator in f32 registers (vec4s). The
// keys of each listed block go through shared memory in tiles of BK keys (K and V decoded to
// f32 once per element: 2 · BK · HEAD_DIM · 4 bytes, sized by the host from the device's
// limit); each invocation runs the online softmax (in base 2, f32) over a tile at a time: the
// tile's scores, the new running maximum, one rescale of the accumulator, then p · V. No
// cross-invocation reductions are needed, hence no subgroup operations. BQ divides the block
// size (the host picks it: 64 for blocks of 64 and 128), so a tile's rows share one block row.
// Query rows past `tokens` load zeros, take part in the tile loads and barriers, and write
// nothing.
//
// f16 and bf16 are decoded exactly (bit operations; f16 subnormals through an exact product);
// o is encoded with round to nearest even by integer operations. Both without branches.
//
// The loops over the keys of a tile and the tile loads are kept rolled ([[dont_unroll]]): fully
// unrolled at HEAD_DIM 128 (BK · HEAD_DIM / 4 = 1024 vec4 products in one block, with 256 live
// accumulator and query registers) lavapipe's compiler needed minutes per pipeline; rolled it
// needs about a second. The loops over the head dimension stay unrolled so that the query and
// the accumulator stay in registers.
//
// Specialization constants: 0 = BQ (workgroup size), 1 = HEAD_DIM (64 or 128), 2 = BK,
// 3 = IS_BF16 (0 f16, 1 bf16).
// Dispatch: a linear grid of `groups` = tiles · heads · batch workgroups (linear_workgroup_id).
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 64, local_size_x_id = 0) in;
layout(constant_id = 1) const uint HEAD_DIM = 128u;
layout(constant_id = 2) const uint BK = 16u;
layout(constant_id = 3) const uint IS_BF16 = 1u;

const uint D4 = HEAD_DIM / 4u;

layout(set = 0, binding = 0, std430) readonly buffer Q { uint q_words[]; };
layout(set = 0, binding = 1, std430) readonly buffer K { uint k_words[]; };
layout(set = 0, binding = 2, std430) readonly buffer V { uint v_words[]; };
layout(set = 0, binding = 3, std430) readonly buffer Mask { uint mask_words[]; };
layout(set = 0, binding = 4, std430) writeonly buffer O { uint o_words[]; };
layout(set = 0, binding = 5, std430) writeonly buffer Lse { float lse[]; };

layout(push_constant, std430) uniform Params {
    uint groups;       // tiles * heads * batch
    uint tiles;        // ceil(tokens / BQ)
    uint tokens;
    uint heads;
    uint block_size;   // 64 or 128, a multiple of BQ
    uint num_blocks;   // ceil(tokens / block_size)
    uint nnz;          // entries of indices
    float scale_log2;  // softmax scale * log2(e)
} p;

#include "common.glsl"
#include "half.glsl"
#include "attention_elements.glsl"

shared vec4 k_tile[BK * D4];
shared vec4 v_tile[BK * D4];

void main() {
    uint g = linear_workgroup_id();
    if (g >= p.groups) {
        return;  // uniform for the whole workgroup
    }
    uint BQ = gl_WorkGroupSize.x;
    uint tid = gl_LocalInvocationID.x;
    uint tile = g % p.tiles;
    uint bh = g / p.tiles;
    uint h = bh % p.heads;
    uint b = bh / p.heads;
    uint q0 = tile * BQ;
    uint qi = q0 + tid;
    bool live = qi < p.tokens;
    uint r = q0 / p.block_size;

    // Word offsets: a row of HEAD_DIM elements is HEAD_DIM / 2 words; tokens are heads rows
    // apart.
    uint row_words = HEAD_DIM / 2u;
    uint token_words = p.heads * row_words;
    uint base = b * p.tokens * token_words + h * row_words;  // token 0 of (b, h)

    vec4 q[D4];
    vec4 acc[D4];
    for (uint i = 0u; i < D4; ++i) {
        q[i] = vec4(0.0);
        acc[i] = vec4(0.0);
        if (live) {
            uint w = base + qi * token_words + 2u * i;
            q[i] = decode4(q_words[w], q_words[w + 1u]);
        }
    }
    const float NEG_INF = uintBitsToFloat(0xff800000u);
    float m = NEG_INF;  // running maximum of the base-2 scores
    float l = 0.0;      // running sum of exp2(score - m)

    // The block row's key blocks (the host validated the mask; the clamps keep every read in
    // the buffer whatever it holds).
    uint start = min(mask_words[r], p.nnz);
    uint end = min(mask_words[r + 1u], p.nnz);
    for (uint e = start; e < end; ++e) {
        uint c = mask_words[p.num_blocks + 1u + e];
        if (c >= p.num_blocks) {
            continue;  // uniform
        }
        uint k_begin = c * p.block_size;
        uint k_end = min(k_begin + p.block_size, p.tokens);
        for (uint k0 = k_begin; k0 < k_end; k0 += BK) {
            uint nk = min(BK, k_end - k0);
            [[dont_unroll]] for (uint idx = tid; idx < BK * D4; idx += BQ) {
                uint j = idx / D4;
                uint part = idx % D4;
                vec4 kv = vec4(0.0);
                vec4 vv = vec4(0.0);
                if (j < nk) {
                    uint w = base + (k0 + j) * token_words + 2u * part;
                    kv = decode4(k_words[w], k_words[w + 1u]);
                    vv = decode4(v_words[w], v_words[w + 1u]);
                }
                k_tile[idx] = kv;
                v_tile[idx] = vv;
            }
            barrier();

            float s[BK];
            float m_new = m;
            [[dont_unroll]] for (uint j = 0u; j < BK; ++j) {
                s[j] = NEG_INF;
                if (j < nk) {
                    float d = 0.0;
                    for (uint i = 0u; i < D4; ++i) {
                        d += dot(q[i], k_tile[j * D4 + i]);
                    }
                    s[j] = d * p.scale_log2;
                    m_new = max(m_new, s[j]);
                }
            }
            // m is -inf before the first tile: alpha = 0 then (m_new is finite, nk >= 1).
            float alpha = exp2(m - m_new);
            l *= alpha;
            for (uint i = 0u; i < D4; ++i) {
                acc[i] *= alpha;
            }
            [[dont_unroll]] for (uint j = 0u; j < BK; ++j) {
                if (j < nk) {
                    float pj = exp2(s[j] - m_new);
                    l += pj;
                    for (uint i = 0u; i < D4; ++i) {
                        acc[i] += pj * v_tile[j * D4 + i];
                    }
                }
            }
            m = m_new;
            barrier();
        }
    }

    if (!live) {
        return;
    }
    float inv = 1.0 / l;
    uint out_base = base + qi * token_words;
    for (uint i = 0u; i < D4; ++i) {
        vec4 o = acc[i] * inv;
        o_words[out_base + 2u * i] = encode16(o.x) | (encode16(o.y) << 16);
        o_words[out_base + 2u * i + 1u] = encode16(o.z) | (encode16(o.w) << 16);
    }
    // Natural log: (m + log2 l) · ln 2.
    lse[(b * p.heads + h) * p.tokens + qi] = (m + log2(l)) * 0.69314718055994531;
}

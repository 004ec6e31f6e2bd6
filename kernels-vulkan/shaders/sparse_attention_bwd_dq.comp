// Block-sparse (radial) attention backward, portable path, first pass: dq and delta. For each
// batch b, head h and query row i (P = the forward's probabilities recomputed from its lse):
//   delta_i = Σ_d dO_id · o_id
//   dq_i    = scale · Σ_j dS_ij k_j,   dS_ij = P_ij (dP_ij - delta_i),   dP_ij = dO_i · v_j,
//   P_ij    = exp(scale · q_i · k_j - lse_i)
// over the keys j of the blocks the BSR mask lists for the query's block row; keys past
// `tokens` (the padding of a partial last block) never contribute. delta is written for the
// second pass (sparse_attention_bwd_dkdv.comp), which the host records after a barrier.
//
//   q, k, v, o, dO, dq  [batch, tokens, heads, HEAD_DIM] f16 or bf16 (IS_BF16), two per 32-bit
//                       word (the even element in the low half)
//   lse (natural log, as the forward wrote it), delta   [batch, heads, tokens] f32
//   mask                u32 words: indptr [num_blocks + 1], then indices [nnz]
//
// As the forward (sparse_attention.comp): one workgroup per (query tile of BQ rows, head,
// batch), one invocation per query row holding q, dO and the dq accumulator in f32 registers;
// the keys of each listed block go through shared memory in tiles of BK keys (K and V decoded to
// f32: 2 · BK · HEAD_DIM · 4 bytes). BQ divides the block size, so a tile's rows share one block
// row. Query rows past `tokens` load zeros, take part in the tile loads and barriers, and write
// nothing. The exponentials are taken in base 2: P = exp2(s · scale · log2(e) - lse · log2(e)).
// Every dq element is written once by one invocation, in a fixed order (deterministic).
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
layout(set = 0, binding = 3, std430) readonly buffer O { uint o_words[]; };
layout(set = 0, binding = 4, std430) readonly buffer DO { uint do_words[]; };
layout(set = 0, binding = 5, std430) readonly buffer Lse { float lse[]; };
layout(set = 0, binding = 6, std430) readonly buffer Mask { uint mask_words[]; };
layout(set = 0, binding = 7, std430) writeonly buffer DQ { uint dq_words[]; };
layout(set = 0, binding = 8, std430) writeonly buffer Delta { float delta[]; };

layout(push_constant, std430) uniform Params {
    uint groups;       // tiles * heads * batch
    uint tiles;        // ceil(tokens / BQ)
    uint tokens;
    uint heads;
    uint block_size;   // a multiple of BQ
    uint num_blocks;   // ceil(tokens / block_size)
    uint nnz;          // entries of indices
    float scale_log2;  // softmax scale * log2(e)
    float scale;       // softmax scale
} p;

#include "common.glsl"
#include "half.glsl"
#include "attention_elements.glsl"

shared vec4 k_tile[BK * D4];
shared vec4 v_tile[BK * D4];

const float LOG2E = 1.4426950408889634;

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
    uint stat = (b * p.heads + h) * p.tokens + qi;           // lse / delta of this row

    vec4 q[D4];
    vec4 dout[D4];
    vec4 acc[D4];
    float dsum = 0.0;
    for (uint i = 0u; i < D4; ++i) {
        q[i] = vec4(0.0);
        dout[i] = vec4(0.0);
        acc[i] = vec4(0.0);
        if (live) {
            uint w = base + qi * token_words + 2u * i;
            q[i] = decode4(q_words[w], q_words[w + 1u]);
            dout[i] = decode4(do_words[w], do_words[w + 1u]);
            dsum += dot(dout[i], decode4(o_words[w], o_words[w + 1u]));
        }
    }
    // A padded row gets lse = +inf (so P = 0) and delta = 0.
    const float POS_INF = uintBitsToFloat(0x7f800000u);
    float lse2 = live ? lse[stat] * LOG2E : POS_INF;
    if (live) {
        delta[stat] = dsum;
    }

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

            [[dont_unroll]] for (uint j = 0u; j < nk; ++j) {
                float s = 0.0;
                float dp = 0.0;
                for (uint i = 0u; i < D4; ++i) {
                    s += dot(q[i], k_tile[j * D4 + i]);
                    dp += dot(dout[i], v_tile[j * D4 + i]);
                }
                float pj = exp2(s * p.scale_log2 - lse2);
                float ds = pj * (dp - dsum);
                for (uint i = 0u; i < D4; ++i) {
                    acc[i] += ds * k_tile[j * D4 + i];
                }
            }
            barrier();
        }
    }

    if (!live) {
        return;
    }
    uint out_base = base + qi * token_words;
    for (uint i = 0u; i < D4; ++i) {
        vec4 d = acc[i] * p.scale;
        dq_words[out_base + 2u * i] = encode16(d.x) | (encode16(d.y) << 16);
        dq_words[out_base + 2u * i + 1u] = encode16(d.z) | (encode16(d.w) << 16);
    }
}

// Block-sparse (radial) attention backward, portable path, second pass: dk and dv. For each
// batch b, head h and key row j (P = the forward's probabilities recomputed from its lse):
//   dv_j = Σ_i P_ij dO_i
//   dk_j = scale · Σ_i dS_ij q_i,   dS_ij = P_ij (dO_i · v_j - delta_i),
//   P_ij = exp(scale · q_i · k_j - lse_i)
// over the queries i of the blocks that attend the key's block: block row c of the TRANSPOSED
// mask lists the query blocks whose mask rows list key block c. Queries past `tokens` (the
// padding of a partial last block) never contribute; a key block no query attends gets
// dk = dv = 0. delta = rowsum(dO ∘ o) comes from the first pass (sparse_attention_bwd_dq.comp).
//
//   q, k, v, dO, dk, dv  [batch, tokens, heads, HEAD_DIM] f16 or bf16 (IS_BF16), two per 32-bit
//                        word (the even element in the low half)
//   lse (natural log, as the forward wrote it), delta   [batch, heads, tokens] f32
//   mask_t               the transposed mask, u32 words: indptr [num_blocks + 1], then indices
//                        [nnz]
//
// One workgroup per (key tile of BKR rows, head, batch), one invocation per key row holding k, v
// and the dk and dv accumulators in f32 registers; the queries of each listed block go through
// shared memory in tiles of BT rows (Q and dO decoded to f32, with their lse · log2(e) and
// delta: 2 · BT · HEAD_DIM · 4 + 2 · BT · 4 bytes). BKR divides the block size, so a tile's keys
// share one key block. Key rows past `tokens` load zeros, take part in the tile loads and
// barriers, and write nothing. Every dk and dv element is written once by one invocation, in a
// fixed order (deterministic).
//
// Specialization constants: 0 = BKR (workgroup size), 1 = HEAD_DIM (64 or 128), 2 = BT,
// 3 = IS_BF16 (0 f16, 1 bf16).
// Dispatch: a linear grid of `groups` = tiles · heads · batch workgroups (linear_workgroup_id).
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_control_flow_attributes : require

layout(local_size_x = 64, local_size_x_id = 0) in;
layout(constant_id = 1) const uint HEAD_DIM = 128u;
layout(constant_id = 2) const uint BT = 16u;
layout(constant_id = 3) const uint IS_BF16 = 1u;

const uint D4 = HEAD_DIM / 4u;

layout(set = 0, binding = 0, std430) readonly buffer Q { uint q_words[]; };
layout(set = 0, binding = 1, std430) readonly buffer K { uint k_words[]; };
layout(set = 0, binding = 2, std430) readonly buffer V { uint v_words[]; };
layout(set = 0, binding = 3, std430) readonly buffer DO { uint do_words[]; };
layout(set = 0, binding = 4, std430) readonly buffer Lse { float lse[]; };
layout(set = 0, binding = 5, std430) readonly buffer Delta { float delta[]; };
layout(set = 0, binding = 6, std430) readonly buffer MaskT { uint mask_words[]; };
layout(set = 0, binding = 7, std430) writeonly buffer DK { uint dk_words[]; };
layout(set = 0, binding = 8, std430) writeonly buffer DV { uint dv_words[]; };

layout(push_constant, std430) uniform Params {
    uint groups;       // tiles * heads * batch
    uint tiles;        // ceil(tokens / BKR)
    uint tokens;
    uint heads;
    uint block_size;   // a multiple of BKR
    uint num_blocks;   // ceil(tokens / block_size)
    uint nnz;          // entries of indices
    float scale_log2;  // softmax scale * log2(e)
    float scale;       // softmax scale
} p;

#include "common.glsl"
#include "half.glsl"
#include "attention_elements.glsl"

shared vec4 q_tile[BT * D4];
shared vec4 do_tile[BT * D4];
shared float lse2_tile[BT];
shared float delta_tile[BT];

const float LOG2E = 1.4426950408889634;

void main() {
    uint g = linear_workgroup_id();
    if (g >= p.groups) {
        return;  // uniform for the whole workgroup
    }
    uint BKR = gl_WorkGroupSize.x;
    uint tid = gl_LocalInvocationID.x;
    uint tile = g % p.tiles;
    uint bh = g / p.tiles;
    uint h = bh % p.heads;
    uint b = bh / p.heads;
    uint k0 = tile * BKR;
    uint kj = k0 + tid;
    bool live = kj < p.tokens;
    uint c = k0 / p.block_size;

    // Word offsets: a row of HEAD_DIM elements is HEAD_DIM / 2 words; tokens are heads rows
    // apart.
    uint row_words = HEAD_DIM / 2u;
    uint token_words = p.heads * row_words;
    uint base = b * p.tokens * token_words + h * row_words;  // token 0 of (b, h)
    uint stat_base = (b * p.heads + h) * p.tokens;           // lse / delta of token 0

    vec4 kr[D4];
    vec4 vr[D4];
    vec4 dk[D4];
    vec4 dv[D4];
    for (uint i = 0u; i < D4; ++i) {
        kr[i] = vec4(0.0);
        vr[i] = vec4(0.0);
        dk[i] = vec4(0.0);
        dv[i] = vec4(0.0);
        if (live) {
            uint w = base + kj * token_words + 2u * i;
            kr[i] = decode4(k_words[w], k_words[w + 1u]);
            vr[i] = decode4(v_words[w], v_words[w + 1u]);
        }
    }

    // The query blocks that attend key block c (the host validated the mask and built its
    // transpose; the clamps keep every read in the buffer whatever it holds).
    uint start = min(mask_words[c], p.nnz);
    uint end = min(mask_words[c + 1u], p.nnz);
    for (uint e = start; e < end; ++e) {
        uint r = mask_words[p.num_blocks + 1u + e];
        if (r >= p.num_blocks) {
            continue;  // uniform
        }
        uint q_begin = r * p.block_size;
        uint q_end = min(q_begin + p.block_size, p.tokens);
        for (uint t0 = q_begin; t0 < q_end; t0 += BT) {
            uint nq = min(BT, q_end - t0);
            [[dont_unroll]] for (uint idx = tid; idx < BT * D4; idx += BKR) {
                uint i = idx / D4;
                uint part = idx % D4;
                vec4 qv = vec4(0.0);
                vec4 dov = vec4(0.0);
                if (i < nq) {
                    uint w = base + (t0 + i) * token_words + 2u * part;
                    qv = decode4(q_words[w], q_words[w + 1u]);
                    dov = decode4(do_words[w], do_words[w + 1u]);
                }
                q_tile[idx] = qv;
                do_tile[idx] = dov;
            }
            for (uint i = tid; i < BT; i += BKR) {
                lse2_tile[i] = i < nq ? lse[stat_base + t0 + i] * LOG2E : 0.0;
                delta_tile[i] = i < nq ? delta[stat_base + t0 + i] : 0.0;
            }
            barrier();

            [[dont_unroll]] for (uint i = 0u; i < nq; ++i) {
                float s = 0.0;
                float dp = 0.0;
                for (uint d = 0u; d < D4; ++d) {
                    s += dot(kr[d], q_tile[i * D4 + d]);
                    dp += dot(vr[d], do_tile[i * D4 + d]);
                }
                float pij = exp2(s * p.scale_log2 - lse2_tile[i]);
                float ds = pij * (dp - delta_tile[i]);
                for (uint d = 0u; d < D4; ++d) {
                    dv[d] += pij * do_tile[i * D4 + d];
                    dk[d] += ds * q_tile[i * D4 + d];
                }
            }
            barrier();
        }
    }

    if (!live) {
        return;
    }
    uint out_base = base + kj * token_words;
    for (uint i = 0u; i < D4; ++i) {
        vec4 a = dk[i] * p.scale;
        dk_words[out_base + 2u * i] = encode16(a.x) | (encode16(a.y) << 16);
        dk_words[out_base + 2u * i + 1u] = encode16(a.z) | (encode16(a.w) << 16);
        vec4 v = dv[i];
        dv_words[out_base + 2u * i] = encode16(v.x) | (encode16(v.y) << 16);
        dv_words[out_base + 2u * i + 1u] = encode16(v.z) | (encode16(v.w) << 16);
    }
}

// MLA absorbed decode, pass 2 of 2: merges the split-KV partials of mla_decode.comp.
//
// One invocation per output word (two bf16 columns) of every row:
//   work  f32: o_part [batch, splits, rows, latent_dim], lse_part [batch, splits, rows]
//   o     bf16 [batch, s_q, heads, latent_dim] (rows r = i * heads + h), two per word
//   lse   f32 [batch, heads, s_q] (natural log; written by the invocation of column pair 0)
// o = sum_s exp(lse_s - M) o_s / sum_s exp(lse_s - M) with M = max_s lse_s, rounded to bf16
// (nearest even); lse = M + log(sum_s exp(lse_s - M)). A row whose every split is empty (-inf)
// gets o = 0 and lse = -inf; a NaN partial gives NaN.
//
// Specialization constants: 0 = workgroup size.
#version 450
#extension GL_GOOGLE_include_directive : require

layout(local_size_x = 64, local_size_x_id = 0) in;

layout(set = 0, binding = 0, std430) readonly buffer Work { float work[]; };
layout(set = 0, binding = 1, std430) writeonly buffer O { uint o[]; };
layout(set = 0, binding = 2, std430) writeonly buffer Lse { float lse[]; };

layout(push_constant, std430) uniform Params {
    uint batch;
    uint s_q;
    uint heads;
    uint latent_dim;
    uint splits;
} p;

#include "common.glsl"

#define NEG_INF uintBitsToFloat(0xff800000u)

void main() {
    uint id = linear_workgroup_id() * gl_WorkGroupSize.x + gl_LocalInvocationID.x;
    uint half_cols = p.latent_dim / 2u;
    uint rows = p.s_q * p.heads;
    if (id >= p.batch * rows * half_cols) {
        return;
    }
    uint pair = id % half_cols;
    uint row = (id / half_cols) % rows;
    uint b = id / (half_cols * rows);
    uint part_rows = p.batch * p.splits * rows;
    uint lse_base = part_rows * p.latent_dim;

    float big = NEG_INF;
    bool nan_seen = false;
    for (uint s = 0u; s < p.splits; ++s) {
        float v = work[lse_base + (b * p.splits + s) * rows + row];
        if (isnan(v)) {
            nan_seen = true;
        } else {
            big = max(big, v);
        }
    }
    float o0 = 0.0;
    float o1 = 0.0;
    float out_lse = NEG_INF;
    if (nan_seen) {
        o0 = uintBitsToFloat(0x7fc00000u);
        o1 = o0;
        out_lse = o0;
    } else if (big != NEG_INF) {
        float sum = 0.0;
        for (uint s = 0u; s < p.splits; ++s) {
            uint prow = (b * p.splits + s) * rows + row;
            float v = work[lse_base + prow];
            if (v == NEG_INF) {
                continue;
            }
            float w = exp(v - big);
            sum += w;
            o0 += w * work[prow * p.latent_dim + 2u * pair];
            o1 += w * work[prow * p.latent_dim + 2u * pair + 1u];
        }
        o0 /= sum;
        o1 /= sum;
        out_lse = big + log(sum);
    }
    uint orow = b * rows + row;
    o[orow * half_cols + pair] = f32_to_bf16_bits(o0) | (f32_to_bf16_bits(o1) << 16);
    if (pair == 0u) {
        uint i = row / p.heads;
        uint h = row % p.heads;
        lse[(b * p.heads + h) * p.s_q + i] = out_lse;
    }
}

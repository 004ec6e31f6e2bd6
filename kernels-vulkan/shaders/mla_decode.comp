// MLA absorbed decode, pass 1 of 2 (split-KV): partial attention of a group of query rows over
// one range of keys of one request, read from the paged latent cache.
//
// Workgroups: linear index = (b * row_groups + g) * splits + split. Rows of request b are
// r = i * heads + h (query position i of s_q, head h); group g holds rows ROWS*g .. ROWS*g+ROWS-1.
// Split `split` covers keys [split * split_keys, (split + 1) * split_keys).
//   cache        [num_pages, page_size, token_words] words (bf16 or FP8 records, see mla_append)
//   q            bf16 [batch, s_q, heads, D] (D = latent_dim + rope_dim), two per word
//   block_table  i32 [batch, max_pages]
//   seq_lens     i32 [batch] (clamped to 0 .. max_pages * page_size)
//   work         f32: o_part [batch, splits, s_q * heads, latent_dim] (normalized), then
//                lse_part [batch, splits, s_q * heads] (natural log, -inf when empty)
// Query i sees keys 0 .. len - (s_q - 1 - i); key j lives in slot
// block_table[b][j / page_size] * page_size + j % page_size; key = [latent | rope], value =
// latent. A page outside 0 .. num_pages is never read: its keys are NaN (the query's output is
// NaN).
//
// Per tile of KT keys: the keys are decoded to f32 into shared memory (one invocation per 32-bit
// word of a record: 2 bf16 or 4 e4m3 values), each (row, key) score is
// one subgroup's dot product against the query rows (in shared memory, f32), then every
// invocation updates the online softmax of each row (the same max and sum in every invocation)
// and its own output columns c = lid + WG * m.
//
// Specialization constants: 0 = workgroup size WG, 1 = FP8, 2 = KT (keys per tile),
// 3 = D (latent_dim + rope_dim), 4 = CPT = ceil(latent_dim / WG) (at most 8), 5 = ROWS
// (query rows per workgroup).
// Needs subgroup arithmetic in compute shaders (checked when the device is opened); any
// subgroup size works.
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require

layout(local_size_x = 128, local_size_x_id = 0) in;
layout(constant_id = 1) const uint FP8 = 0u;
layout(constant_id = 2) const uint KT = 8u;
layout(constant_id = 3) const uint D = 576u;
layout(constant_id = 4) const uint CPT = 4u;
layout(constant_id = 5) const uint ROWS = 4u;

layout(set = 0, binding = 0, std430) readonly buffer Cache { uint cache[]; };
layout(set = 0, binding = 1, std430) readonly buffer Q { uint q[]; };
layout(set = 0, binding = 2, std430) readonly buffer BlockTable { int block_table[]; };
layout(set = 0, binding = 3, std430) readonly buffer SeqLens { int seq_lens[]; };
layout(set = 0, binding = 4, std430) writeonly buffer Work { float work[]; };

layout(push_constant, std430) uniform Params {
    uint batch;
    uint s_q;
    uint heads;
    uint max_pages;
    uint page_size;
    uint num_pages;
    uint latent_dim;
    uint token_words;
    uint row_groups;   // ceil(s_q * heads / ROWS)
    uint splits;
    uint split_keys;   // keys per split, a multiple of KT
    uint scale_bits;   // f32 bits of the softmax scale
} p;

#include "common.glsl"

shared float q_tile[ROWS * D];
shared float k_tile[KT * D];
shared float scores[ROWS * KT];

#define NEG_INF uintBitsToFloat(0xff800000u)
#define NAN uintBitsToFloat(0x7fc00000u)

// Key values are loaded by units of one 32-bit word of the record: a latent unit holds 2 bf16
// or 4 e4m3 values, a rope unit 2 bf16 values. Units of the latent per key:
uint latent_units() {
    return FP8 != 0u ? p.latent_dim / 4u : p.latent_dim / 2u;
}

// Decodes unit u of the record starting at word `base` into k_tile from position `at` (the key's
// first value): a latent unit to values VPU * u.., a rope unit to latent_dim + 2 * (u - LU)..
void load_unit(uint base, uint u, uint at) {
    uint lu = latent_units();
    if (u >= lu) {
        uint rope_base = FP8 != 0u ? lu + p.latent_dim / 128u : lu;
        uint e = 2u * (u - lu);
        uint w = cache[base + rope_base + (u - lu)];
        k_tile[at + p.latent_dim + e] = uintBitsToFloat(w << 16);
        k_tile[at + p.latent_dim + e + 1u] = uintBitsToFloat(w & 0xffff0000u);
    } else if (FP8 == 0u) {
        uint w = cache[base + u];
        k_tile[at + 2u * u] = uintBitsToFloat(w << 16);
        k_tile[at + 2u * u + 1u] = uintBitsToFloat(w & 0xffff0000u);
    } else {
        uint w = cache[base + u];
        float sc = uintBitsToFloat(cache[base + lu + (4u * u) / 128u]);
        [[unroll]] for (uint j = 0u; j < 4u; ++j) {
            k_tile[at + 4u * u + j] = e4m3_to_f32((w >> (8u * j)) & 0xffu) * sc;
        }
    }
}

// Fills the values of unit u of a key that is not loaded with v.
void fill_unit(uint u, uint at, float v) {
    uint lu = latent_units();
    if (u >= lu) {
        uint e = p.latent_dim + 2u * (u - lu);
        k_tile[at + e] = v;
        k_tile[at + e + 1u] = v;
    } else {
        uint vpu = FP8 != 0u ? 4u : 2u;
        for (uint j = 0u; j < vpu; ++j) {
            k_tile[at + vpu * u + j] = v;
        }
    }
}

void main() {
    uint wg = linear_workgroup_id();
    if (wg >= p.batch * p.row_groups * p.splits) {
        return;  // uniform
    }
    uint split = wg % p.splits;
    uint g = (wg / p.splits) % p.row_groups;
    uint b = wg / (p.splits * p.row_groups);
    uint lid = gl_LocalInvocationID.x;
    uint rows = p.s_q * p.heads;
    uint capacity = p.max_pages * p.page_size;
    uint len = uint(clamp(seq_lens[b], 0, int(capacity)));
    float scale = uintBitsToFloat(p.scale_bits);

    // Visible keys of each row of the group (0 for rows past the end).
    uint vis[ROWS];
    uint max_vis = 0u;
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
        uint row = g * ROWS + r;
        vis[r] = 0u;
        if (row < rows) {
            uint i = row / p.heads;
            vis[r] = uint(max(int(len) - int(p.s_q - 1u - i), 0));
        }
        max_vis = max(max_vis, vis[r]);
    }
    uint k_begin = split * p.split_keys;
    uint k_end = min(k_begin + p.split_keys, max_vis);

    // The query rows, f32.
    for (uint idx = lid; idx < ROWS * D; idx += gl_WorkGroupSize.x) {
        uint r = idx / D;
        uint d = idx % D;
        uint row = g * ROWS + r;
        float v = 0.0;
        if (row < rows) {
            uint e = (b * rows + row) * D + d;
            uint w = q[e >> 1];
            v = uintBitsToFloat((e & 1u) != 0u ? (w & 0xffff0000u) : (w << 16));
        }
        q_tile[idx] = v;
    }

    float m[ROWS];
    float l[ROWS];
    bool bad[ROWS];  // a key of an out-of-range page was visible: the row's output is NaN
    float acc[ROWS * 8u];
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
        m[r] = NEG_INF;
        l[r] = 0.0;
        bad[r] = false;
        [[unroll]] for (uint c = 0u; c < 8u; ++c) {
            acc[r * 8u + c] = 0.0;
        }
    }

    for (uint k0 = k_begin; k0 < k_end; k0 += KT) {
        barrier();  // the previous tile's readers are done (and q_tile is written)
        uint units = latent_units() + (D - p.latent_dim) / 2u;
        for (uint idx = lid; idx < KT * units; idx += gl_WorkGroupSize.x) {
            uint k = idx / units;
            uint u = idx % units;
            uint j = k0 + k;
            if (j >= k_end) {
                fill_unit(u, k * D, 0.0);
                continue;
            }
            int page = block_table[b * p.max_pages + j / p.page_size];
            if (page < 0 || uint(page) >= p.num_pages) {
                fill_unit(u, k * D, NAN);
            } else {
                uint slot = uint(page) * p.page_size + j % p.page_size;
                load_unit(slot * p.token_words, u, k * D);
            }
        }
        barrier();
        // One subgroup per (row, key) score: a strided partial dot product per invocation,
        // then subgroupAdd (the branch is uniform within the subgroup).
        for (uint idx = gl_SubgroupID; idx < ROWS * KT; idx += gl_NumSubgroups) {
            uint r = idx / KT;
            uint k = idx % KT;
            if (k0 + k < min(k_end, vis[r])) {
                float part = 0.0;
                for (uint d = gl_SubgroupInvocationID; d < D; d += gl_SubgroupSize) {
                    part += q_tile[r * D + d] * k_tile[k * D + d];
                }
                float dot = subgroupAdd(part);
                if (subgroupElect()) {
                    scores[idx] = dot * scale;
                }
            } else if (subgroupElect()) {
                scores[idx] = NEG_INF;
            }
        }
        barrier();
        [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
            float tile_max = NEG_INF;
            [[unroll]] for (uint k = 0u; k < KT; ++k) {
                float sk = scores[r * KT + k];
                if (isnan(sk)) {
                    bad[r] = true;
                } else {
                    tile_max = max(tile_max, sk);
                }
            }
            if (bad[r] || tile_max == NEG_INF) {
                continue;  // nothing to add to this row (uniform over the workgroup)
            }
            float m_new = max(m[r], tile_max);
            float alpha = exp(m[r] - m_new);  // exp(-inf) = 0 on the first visible tile
            float pk[KT];
            float sum = 0.0;
            [[unroll]] for (uint k = 0u; k < KT; ++k) {
                float sk = scores[r * KT + k];
                pk[k] = sk == NEG_INF ? 0.0 : exp(sk - m_new);
                sum += pk[k];
            }
            l[r] = l[r] * alpha + sum;
            m[r] = m_new;
            // The keys this row sees in the tile are a prefix of it: only those are read (a
            // key past them may be NaN, from a bad page that another row of the group sees).
            uint nk = min(min(k_end, vis[r]) - k0, KT);
            [[unroll]] for (uint c = 0u; c < CPT; ++c) {
                uint col = lid + gl_WorkGroupSize.x * c;
                if (col < p.latent_dim) {
                    float a = acc[r * 8u + c] * alpha;
                    [[unroll]] for (uint k = 0u; k < KT; ++k) {
                        if (k < nk) {
                            a += pk[k] * k_tile[k * D + col];
                        }
                    }
                    acc[r * 8u + c] = a;
                }
            }
        }
    }

    // Partial results: normalized o and lse per row of the group.
    uint part_rows = p.batch * p.splits * rows;
    [[unroll]] for (uint r = 0u; r < ROWS; ++r) {
        uint row = g * ROWS + r;
        if (row >= rows) {
            break;
        }
        uint prow = (b * p.splits + split) * rows + row;
        float inv = l[r] > 0.0 ? 1.0 / l[r] : 0.0;
        [[unroll]] for (uint c = 0u; c < CPT; ++c) {
            uint col = lid + gl_WorkGroupSize.x * c;
            if (col < p.latent_dim) {
                work[prow * p.latent_dim + col] = bad[r] ? NAN : acc[r * 8u + c] * inv;
            }
        }
        if (lid == 0u) {
            float lse = l[r] > 0.0 ? m[r] + log(l[r]) : NEG_INF;
            work[part_rows * p.latent_dim + prow] = bad[r] ? NAN : lse;
        }
    }
}

// MLA absorbed decode, pass 1 of 2 (split-KV), streaming variant: the query rows of a request
// (r = i * heads + h, up to TEAMS * TR of them per workgroup, so that every s_q of a small head
// count shares one pass over the keys) against one range of its keys, each key record read from
// the paged cache once per workgroup. Same contract and workspace as mla_decode.comp (merged by
// mla_combine.comp):
//   cache        [num_pages, page_size, TW] words (bf16 or FP8 records, see mla_append)
//   q            bf16 [batch, s_q, heads, D] (D = LATENT + ROPE), two per word
//   block_table  i32 [batch, max_pages]
//   seq_lens     i32 [batch] (clamped to 0 .. max_pages * page_size)
//   work         f32: o_part [batch, splits, s_q * heads, LATENT] (normalized), then
//                lse_part [batch, splits, s_q * heads] (natural log, -inf when empty)
// Workgroups: linear index = (b * row_groups + g) * splits + split; group g holds the rows
// g * rows_per_group .. (g + 1) * rows_per_group - 1. Query i sees keys 0 .. len - (s_q - 1 - i);
// split `split` of request b covers its keys split * S .. (split + 1) * S - 1 with
// S = ceil(ceil(len / splits) / KT) * KT (from the length on the device, as the CUDA kernel).
// Key j lives in slot block_table[b][j / page_size] * page_size + j % page_size; key =
// [latent | rope], value = latent.
//
// Work split: a workgroup is TEAMS subgroups of SG invocations ("teams"); team t owns the TR query
// rows t * TR .. t * TR + TR - 1 of the group, and lane `lane` of a team owns the latent columns
// 4 * (lane + SG * j) .. + 3 (j < LCH) and the rope columns 2 * (lane + SG * j) .. + 1 (j < RCH)
// of those rows: their query values (pre-multiplied by softmax_scale * log2(e)) and output
// accumulators stay in registers, f32.
// Per tile of KT keys:
//   1. the records, fetched into registers while the previous tile was being computed (PREFETCH)
//      or just now, in units of 8 bytes (bf16) or 4 (FP8) that consecutive invocations read and
//      write consecutively, are decoded to f32 into shared memory (bf16 exactly; FP8 codes
//      exactly as f16 bit patterns scaled by 2^8 and the group's power-of-two scale); a key past
//      the split or on a page outside 0 .. num_pages is zeros there (the latter flagged: every
//      row that sees it gets NaN);
//   2. scores, KB keys at a time: each lane's partial dot products over its columns (TR x KB of
//      them), summed over the team by a butterfly of subgroupShuffleXor that leaves each lane
//      with complete scores ("reduce-scatter"); one lane of each set writes them (masked to -inf
//      where the row does not see the key) to the team's score tile in shared memory;
//   3. every lane reads its rows' scores of the tile, updates the online softmax (base 2, f32,
//      the same running max and sum in every lane of the team) and adds p * value to its output
//      columns.
// A NaN or infinity in a record that a row of the group sees may also make the rows of the
// workgroup NaN that do not see it (0 * NaN), as in the CUDA kernel; a page outside the cache is
// never read.
//
// Specialization constants (kernels-vulkan/src/ops/mla.rs, `StreamSpec`, writes them in this
// order): 0 = workgroup size TEAMS * SG, 1 = SG (the subgroup size: checked, a power of two),
// 2 = log2(SG), 3 = TR (rows per team), 4 = KT (keys per tile, a multiple of 4 and of KB),
// 5 = KB (keys per score batch; TR * KB a power of two), 6 = log2(TR * KB), 7 = LATENT,
// 8 = ROPE, 9 = FP8 (record format), 10 = PF (record units each invocation stages per tile),
// 11 = PREFETCH (fetch the next tile before computing this one).
// Two builds of this source: mla_decode_stream unrolls every loop over rows, columns, keys and
// staged units (what keeps the lanes' arrays in registers on a GPU); mla_decode_stream_rolled
// (ROLLED = 1) unrolls none, for CPU devices, whose compiler takes minutes on the unrolled code
// of large layouts (lavapipe's subgroups of 8 give each lane 4x the columns of NVIDIA's 32).
// tessera-variant: mla_decode_stream_rolled -DROLLED=1
// A workgroup whose subgroups are not TEAMS full subgroups of SG writes NaN (an error signal,
// not a silent wrong answer).
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require

layout(local_size_x = 128, local_size_x_id = 0) in;
layout(constant_id = 1) const uint SG = 32u;
layout(constant_id = 2) const uint LOG2_SG = 5u;
layout(constant_id = 3) const uint TR = 4u;
layout(constant_id = 4) const uint KT = 8u;
layout(constant_id = 5) const uint KB = 8u;
layout(constant_id = 6) const uint LOG2_V = 5u;
layout(constant_id = 7) const uint LATENT = 512u;
layout(constant_id = 8) const uint ROPE = 64u;
layout(constant_id = 9) const uint FP8 = 0u;
layout(constant_id = 10) const uint PF = 5u;
layout(constant_id = 11) const uint PREFETCH = 1u;

const uint WG = gl_WorkGroupSize.x;
const uint TEAMS = WG / SG;
const uint D4 = (LATENT + ROPE) / 4u;            // vec4 per key in the tile
const uint LC = LATENT / 4u;                     // latent vec4 chunks of a key
const uint RC = ROPE / 2u;                       // rope vec2 chunks of a key
const uint LCH = (LC + SG - 1u) / SG;            // latent chunks per lane (LATENT >= 64: >= 1)
const uint RCH_RAW = (RC + SG - 1u) / SG;
const uint RCH = RCH_RAW > 0u ? RCH_RAW : 1u;    // rope chunks per lane (none used when ROPE = 0)
const bool LC_EVEN = LC % SG == 0u;              // every lane's latent chunks exist
const bool RC_EVEN = RC % SG == 0u && RC > 0u;   // every lane's rope chunks exist
const uint V = TR * KB;                          // partial scores per lane and batch
const uint NV = V > SG ? V / SG : 1u;            // complete scores per lane after the butterfly
const uint OWN_SHIFT = LOG2_SG > LOG2_V ? LOG2_SG - LOG2_V : 0u;  // lanes per copy, log2
// Words of a record: [latent bf16 | rope bf16] or [latent e4m3 | latent/128 f32 | rope bf16].
const uint LW = FP8 != 0u ? LATENT / 4u : LATENT / 2u;
const uint SW = FP8 != 0u ? LATENT / 128u : 0u;
const uint TW = LW + SW + ROPE / 2u;
// A staged unit: 2 words of bf16 records (4 values: one 16-byte store to the tile, consecutive
// invocations to consecutive vec4s), 1 word of FP8 records (4 codes, or 2 rope values).
const uint UW = FP8 != 0u ? 1u : 2u;
const uint UPR = TW / UW;                        // units per record
const uint TILE_UNITS = KT * UPR;

// The cache, as words and (bf16 records, 8-byte units) as pairs of words.
layout(set = 0, binding = 0, std430) readonly buffer CacheWords { uint cache_words[]; };
layout(set = 0, binding = 0, std430) readonly buffer CachePairs { uvec2 cache_pairs[]; };
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
    uint page_shift;      // log2(page_size) for a power of two, else 32 (divide)
    uint num_pages;
    uint row_groups;      // ceil(s_q * heads / rows_per_group)
    uint rows_per_group;  // at most TEAMS * TR
    uint splits;
    uint scale_bits;      // f32 bits of softmax_scale * log2(e)
} p;

#include "common.glsl"
#include "mla_fp8.glsl"

#ifndef ROLLED
#define ROLLED 0
#endif
#if ROLLED
#define LOOP [[dont_unroll]]
#else
#define LOOP [[unroll]]
#endif

#define NEG_INF uintBitsToFloat(0xff800000u)
#define NAN uintBitsToFloat(0x7fc00000u)
#define LN2 0.69314718055994531

shared vec4 k_tile[KT * D4];              // the tile's keys, f32 [KT][LATENT + ROPE]
shared vec4 scores[TEAMS * TR * KT / 4u]; // per team: its rows' scores [TR][KT] (log2 domain)
shared uint key_bad[KT];                  // 1 where the tile's key lies on a page outside the cache

// This lane's rows: query values (scaled), output accumulators, softmax state.
vec4 q_lat[TR * LCH];
vec2 q_rope[TR * RCH];
vec4 acc[TR * LCH];
float row_max[TR];
float row_sum[TR];
bool row_bad[TR];
uint row_keys[TR];  // keys of this split the row sees: k_begin .. row_keys - 1

// One unit of a record (UW words): its words, the FP8 group scale of a latent unit, and whether
// its key lies on a bad page.
struct Unit {
    uvec2 words;
    uint scale;
    bool bad;
};

// The units of a tile this invocation stages.
Unit staged[PF];

// This invocation and its place in the workgroup.
uint lane;
uint team;
// The partial scores of a batch, row-major [TR][KB].
float part[V];

vec2 bf16x2(uint w) {
    return vec2(uintBitsToFloat(w << 16), uintBitsToFloat(w & 0xffff0000u));
}

// Unit u of the tile starting at key k0 (record k = u / UPR, its unit u % UPR): zeros for a key
// at or past k_end and for a key on a bad page (flagged).
Unit load_unit(uint b, uint k0, uint k_end, uint u) {
    Unit unit = Unit(uvec2(0u), 0u, false);
    uint key = k0 + u / UPR;
    if (u < TILE_UNITS && key < k_end) {
        uint part_index = u % UPR;
        uint page_index = p.page_shift < 32u ? key >> p.page_shift : key / p.page_size;
        int page = block_table[b * p.max_pages + page_index];
        if (page < 0 || uint(page) >= p.num_pages) {
            unit.bad = true;
        } else {
            uint in_page = key - page_index * p.page_size;
            uint record = (uint(page) * p.page_size + in_page) * TW;
            uint w = record + part_index * UW;
            if (FP8 != 0u) {
                unit.words.x = cache_words[w];
            } else {
                unit.words = cache_pairs[w >> 1];  // w is even: TW and UW are
            }
            if (FP8 != 0u && part_index * UW < LW) {
                unit.scale = cache_words[record + LW + (part_index * UW) / 32u];
            }
        }
    }
    return unit;
}

// Writes 2 values at float index f (even) of the tile.
void put2(uint f, vec2 v) {
    if ((f & 2u) == 0u) {
        k_tile[f >> 2].xy = v;
    } else {
        k_tile[f >> 2].zw = v;
    }
}

// Decodes unit u of the tile into it (and the key's bad flag from its first unit).
void store_unit(uint u, Unit unit) {
    if (u >= TILE_UNITS) {
        return;
    }
    uint k = u / UPR;
    uint part_index = u % UPR;
    if (part_index == 0u) {
        key_bad[k] = unit.bad ? 1u : 0u;
    }
    uint row = k * (LATENT + ROPE);
    uint w = part_index * UW;
    if (FP8 != 0u) {
        if (w < LW) {
            k_tile[(row >> 2) + w] = e4m3x4(unit.words.x) * uintBitsToFloat(unit.scale);
        } else if (w >= LW + SW) {
            put2(row + LATENT + 2u * (w - LW - SW), bf16x2(unit.words.x));
        }
    } else {
        // Values 2w .. 2w + 3 of the record: latent, or (from LATENT on) rope; LATENT is a
        // multiple of 4, so the vec4 is whole.
        k_tile[(row >> 2) + (w >> 1)] = vec4(bf16x2(unit.words.x), bf16x2(unit.words.y));
    }
}

// Loads this invocation's units of the tile at k0 into `staged` (all loads in flight at once).
void fetch_tile(uint b, uint k0, uint k_end) {
    LOOP for (uint i = 0u; i < PF; ++i) {
        staged[i] = load_unit(b, k0, k_end, gl_LocalInvocationIndex + WG * i);
    }
}

// Decodes `staged` into the tile.
void store_staged() {
    LOOP for (uint i = 0u; i < PF; ++i) {
        store_unit(gl_LocalInvocationIndex + WG * i, staged[i]);
    }
}

// Loads and decodes the tile at k0 unit by unit (ROLLED without PREFETCH).
void stage_in_loop(uint b, uint k0, uint k_end) {
    [[dont_unroll]] for (uint u = gl_LocalInvocationIndex; u < TILE_UNITS; u += WG) {
        store_unit(u, load_unit(b, k0, k_end, u));
    }
}

// The partial scores of tile key kk against this lane's rows and columns, into part[t][k].
void score_key(uint kk, uint k) {
    uint key_base = kk * D4;
    vec4 kl[LCH];
    LOOP for (uint j = 0u; j < LCH; ++j) {
        uint c = lane + SG * j;
        kl[j] = LC_EVEN || c < LC ? k_tile[key_base + c] : vec4(0.0);
    }
    vec2 kr[RCH];
    LOOP for (uint j = 0u; j < RCH; ++j) {
        uint c = lane + SG * j;
        kr[j] = vec2(0.0);
        if (RC_EVEN || c < RC) {
            vec4 w = k_tile[key_base + LC + (c >> 1)];
            kr[j] = (c & 1u) != 0u ? w.zw : w.xy;
        }
    }
    LOOP for (uint t = 0u; t < TR; ++t) {
        float s = 0.0;
        LOOP for (uint j = 0u; j < LCH; ++j) {
            s += dot(q_lat[t * LCH + j], kl[j]);
        }
        LOOP for (uint j = 0u; j < RCH; ++j) {
            s += dot(q_rope[t * RCH + j], kr[j]);
        }
        part[t * KB + k] = s;
    }
}

// The scores of the tile keys batch_start .. batch_start + KB - 1 (tile at key k0): partial
// sums, the butterfly over the team, then the owners' writes to the team's score tile (-inf
// where the row does not see the key).
void score_batch(uint k0, uint batch_start) {
    LOOP for (uint k = 0u; k < KB; ++k) {
        score_key(batch_start + k, k);
    }
    // Butterfly over the team: at step s the lanes whose bit (LOG2_SG - 1 - s) is set keep the
    // upper half of their values and receive their partner's upper half (the others the lower
    // halves); once one value is left, the steps sum it. Lane `lane` then holds the complete
    // scores ((lane >> OWN_SHIFT) * NV + i), i < NV, of the batch's TR x KB (row-major) scores.
    LOOP for (uint s = 0u; s < LOG2_SG; ++s) {
        uint mask = SG >> (s + 1u);
        bool upper = (lane & mask) != 0u;
        uint half_count = V >> (s + 1u);
        if (half_count > 0u) {
            LOOP for (uint i = 0u; i < half_count; ++i) {
                float send = upper ? part[i] : part[i + half_count];
                float keep = upper ? part[i + half_count] : part[i];
                part[i] = keep + subgroupShuffleXor(send, mask);
            }
        } else {
            part[0] += subgroupShuffleXor(part[0], mask);
        }
    }
    if ((lane & ((1u << OWN_SHIFT) - 1u)) == 0u) {
        LOOP for (uint i = 0u; i < NV; ++i) {
            uint idx = (lane >> OWN_SHIFT) * NV + i;
            uint t = idx / KB;
            uint k = batch_start + idx % KB;
            uint seen = 0u;
            LOOP for (uint tt = 0u; tt < TR; ++tt) {
                seen = tt == t ? row_keys[tt] : seen;
            }
            uint f = (team * TR + t) * KT + k;
            scores[f >> 2][f & 3u] = k0 + k < seen ? part[i] : NEG_INF;
        }
    }
}

// Adds p * value of the tile keys 4 * k4 .. 4 * k4 + 3 to this lane's output columns, with
// p = exp2(score - shift) (and to the row sums).
void accumulate_keys(uint k4, float shift[TR]) {
    vec4 pk[TR];
    LOOP for (uint t = 0u; t < TR; ++t) {
        pk[t] = exp2(scores[(team * TR + t) * (KT / 4u) + k4] - shift[t]);
        row_sum[t] += (pk[t].x + pk[t].y) + (pk[t].z + pk[t].w);
    }
    LOOP for (uint e = 0u; e < 4u; ++e) {
        uint key_base = (4u * k4 + e) * D4;
        LOOP for (uint j = 0u; j < LCH; ++j) {
            uint c = lane + SG * j;
            vec4 v = LC_EVEN || c < LC ? k_tile[key_base + c] : vec4(0.0);
            LOOP for (uint t = 0u; t < TR; ++t) {
                acc[t * LCH + j] += pk[t][e] * v;
            }
        }
    }
}

// Writes NaN for every row of the group (the error signal of a mismatched subgroup layout).
void write_nan_rows(uint b, uint split, uint row0, uint row_end, uint rows) {
    uint part_rows = p.batch * p.splits * rows;
    for (uint idx = gl_LocalInvocationIndex; idx < (row_end - row0) * (LATENT + 1u); idx += WG) {
        uint r = row0 + idx / (LATENT + 1u);
        uint c = idx % (LATENT + 1u);
        uint prow = (b * p.splits + split) * rows + r;
        if (c < LATENT) {
            work[prow * LATENT + c] = NAN;
        } else {
            work[part_rows * LATENT + prow] = NAN;
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
    uint rows = p.s_q * p.heads;
    uint row0 = g * p.rows_per_group;
    uint row_end = min(row0 + p.rows_per_group, rows);
    if (gl_SubgroupSize != SG || gl_NumSubgroups != TEAMS) {
        write_nan_rows(b, split, row0, row_end, rows);  // uniform
        return;
    }
    team = gl_SubgroupID;
    lane = gl_SubgroupInvocationID;

    uint capacity = p.max_pages * p.page_size;
    uint len = min(uint(max(seq_lens[b], 0)), capacity);
    uint split_keys = ((len + p.splits - 1u) / p.splits + KT - 1u) / KT * KT;
    uint k_begin = split * split_keys;
    uint i_last = (row_end - 1u) / p.heads;
    uint kv_end = uint(max(int(len) - int(p.s_q - 1u - i_last), 0));
    uint k_end = min(k_begin + split_keys, kv_end);
    float scale = uintBitsToFloat(p.scale_bits);

    LOOP for (uint t = 0u; t < TR; ++t) {
        uint r = row0 + team * TR + t;
        bool valid = r < row_end;
        uint i = r / p.heads;
        row_keys[t] = valid ? min(uint(max(int(len) - int(p.s_q - 1u - i), 0)), k_end) : 0u;
        row_max[t] = NEG_INF;
        row_sum[t] = 0.0;
        row_bad[t] = false;
        uint q_base = ((b * rows + r) * (LATENT + ROPE)) >> 1;  // in words
        LOOP for (uint j = 0u; j < LCH; ++j) {
            uint c = lane + SG * j;
            vec4 v = vec4(0.0);
            if (valid && c < LC) {
                v = vec4(bf16x2(q[q_base + 2u * c]), bf16x2(q[q_base + 2u * c + 1u])) * scale;
            }
            q_lat[t * LCH + j] = v;
            acc[t * LCH + j] = vec4(0.0);
        }
        LOOP for (uint j = 0u; j < RCH; ++j) {
            uint c = lane + SG * j;
            vec2 v = vec2(0.0);
            if (valid && c < RC) {
                v = bf16x2(q[q_base + LATENT / 2u + c]) * scale;
            }
            q_rope[t * RCH + j] = v;
        }
    }

    if (PREFETCH != 0u && k_begin < k_end) {
        fetch_tile(b, k_begin, k_end);
    }
    for (uint k0 = k_begin; k0 < k_end; k0 += KT) {
#if ROLLED
        if (PREFETCH == 0u) {
            barrier();  // the previous tile's readers are done
            stage_in_loop(b, k0, k_end);
        } else {
            barrier();
            store_staged();
        }
#else
        if (PREFETCH == 0u) {
            fetch_tile(b, k0, k_end);  // every load in flight before the barrier
        }
        barrier();  // the previous tile's readers are done
        store_staged();
#endif
        barrier();
        if (PREFETCH != 0u && k0 + KT < k_end) {
            fetch_tile(b, k0 + KT, k_end);  // in flight while this tile is computed
        }

        uint first_bad = KT;
        LOOP for (uint k = 0u; k < KT; ++k) {
            if (key_bad[k] != 0u) {
                first_bad = min(first_bad, k);
            }
        }
        LOOP for (uint t = 0u; t < TR; ++t) {
            if (first_bad < KT && k0 + first_bad < row_keys[t]) {
                row_bad[t] = true;
            }
        }

        // Scores, KB keys at a time.
        LOOP for (uint batch_start = 0u; batch_start < KT; batch_start += KB) {
            score_batch(k0, batch_start);
        }
        subgroupMemoryBarrierShared();
        subgroupBarrier();

        // Online softmax of each row over the tile, then p * value.
        float shift[TR];
        LOOP for (uint t = 0u; t < TR; ++t) {
            uint s_base = (team * TR + t) * (KT / 4u);
            float tile_max = NEG_INF;
            LOOP for (uint k4 = 0u; k4 < KT / 4u; ++k4) {
                vec4 s4 = scores[s_base + k4];
                tile_max = max(tile_max, max(max(s4.x, s4.y), max(s4.z, s4.w)));
            }
            float new_max = max(row_max[t], tile_max);
            // While the row has seen nothing (-inf), shift by 0: every p and alpha is then 0.
            shift[t] = new_max == NEG_INF ? 0.0 : new_max;
            float alpha = exp2(row_max[t] - shift[t]);
            row_max[t] = new_max;
            if (alpha != 1.0) {  // the same in every lane of the team
                row_sum[t] *= alpha;
                LOOP for (uint j = 0u; j < LCH; ++j) {
                    acc[t * LCH + j] *= alpha;
                }
            }
        }
        LOOP for (uint k4 = 0u; k4 < KT / 4u; ++k4) {
            accumulate_keys(k4, shift);
        }
    }

    // Partial results: normalized o and lse (natural log) of this lane's rows.
    uint part_rows = p.batch * p.splits * rows;
    LOOP for (uint t = 0u; t < TR; ++t) {
        uint r = row0 + team * TR + t;
        if (r < row_end) {
            uint prow = (b * p.splits + split) * rows + r;
            float inv = row_sum[t] > 0.0 ? 1.0 / row_sum[t] : 0.0;
            LOOP for (uint j = 0u; j < LCH; ++j) {
                uint c = lane + SG * j;
                if (c < LC) {
                    vec4 o = row_bad[t] ? vec4(NAN) : acc[t * LCH + j] * inv;
                    uint at = prow * LATENT + 4u * c;
                    work[at] = o.x;
                    work[at + 1u] = o.y;
                    work[at + 2u] = o.z;
                    work[at + 3u] = o.w;
                }
            }
            if (lane == 0u) {
                float lse = row_sum[t] > 0.0 ? (row_max[t] + log2(row_sum[t])) * LN2 : NEG_INF;
                work[part_rows * LATENT + prow] = row_bad[t] ? NAN : lse;
            }
        }
    }
}

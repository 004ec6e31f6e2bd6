// MLA absorbed decode, pass 1 of 2 (split-KV), cooperative-matrix variant: bf16 x bf16 -> f32
// 16x16x16 matrices in subgroup scope (VK_KHR_cooperative_matrix with VK_KHR_shader_bfloat16).
// Same contract and workspace as mla_decode_stream.comp (merged by mla_combine.comp):
//   cache        [num_pages, page_size, record] read as uvec4: bf16 records [latent | rope]
//                (D = LATENT + ROPE values), or (FP8) [latent e4m3 | LATENT / 128 f32 scales |
//                rope bf16] with LATENT a multiple of 512 (so that every part starts at a
//                16-byte boundary; DeepSeek-V3's 656 bytes)
//   q            bf16 [batch, s_q, heads, D], read as uvec4
//   block_table  i32 [batch, max_pages]
//   seq_lens     i32 [batch] (clamped to 0 .. max_pages * page_size)
//   work         f32: o_part [batch, splits, s_q * heads, LATENT] (normalized), then
//                lse_part [batch, splits, s_q * heads] (natural log, -inf when empty)
// Workgroups: linear index = (b * splits + split) * row_groups + g (the row groups that read the
// same keys run side by side); group g holds the rows 16 g .. 16 g + 15 (r = i * heads + h).
// Query i sees keys 0 .. len - (s_q - 1 - i); split `split` of request b covers its keys
// split * S .. (split + 1) * S - 1 with S = ceil(ceil(len / splits) / KT) * KT.
//
// Work split: NSG subgroups of 32; the 16 query rows are the M dimension of every product.
// Subgroup s owns the 16-wide steps ks = s, s + NSG, ... of the D = 576 contraction (Q as bf16
// A matrices in registers, loaded once) and the 16-wide latent column blocks s, s + NSG, ... of
// the output (f32 accumulators in registers). Per tile of KT keys:
//   1. the records (each by WG / KT invocations with one page lookup, reading 16 WG / KT
//      contiguous bytes at a time; fetched into registers while the previous tile is computed
//      where PREFETCH) are stored to shared memory as bf16 (rows padded by 8 values): bf16
//      records as they are, FP8 codes decoded exactly (through their f16 bit patterns, times
//      the group's power-of-two scale); a key past the split or on a page outside
//      0 .. num_pages is zeros (the latter flagged: every row that sees it gets NaN); barrier;
//   2. each subgroup multiplies its Q steps by the tile's Kᵀ (column-major loads of the records)
//      into 16 x KT partial scores, stored to its own f32 region; barrier;
//   3. 8 invocations per row sum the NSG partials, apply scale · log2(e) and the row's
//      visibility, and run the online softmax (base 2, f32): probabilities rounded to bf16 into
//      shared memory, the row's rescale factor alpha; barrier;
//   4. each subgroup scales its accumulators by alpha (component-wise by a 16 x 16 matrix
//      whose row r holds row r's alpha, written by the softmax invocations) and adds P · V for
//      its column blocks (row-major loads of the same records); barrier (the next tile
//      overwrites the records).
// At the end each accumulator times the rows' 1 / l (the same way) goes through the
// subgroup's scratch (its partial-score region) to the rows of the group that exist. No
// element of an accumulator is touched one by one: indexing the array of accumulators that
// way made NVIDIA's compiler keep it in local memory (288 bytes per invocation; H200, session
// 23), at half the speed.
// Shared memory (bytes): 16 · KT · (D + 8) · 2 / 16 · 16 for the records (the query rows at
// first), 4 · NSG · 16 · (KT + 4) partial scores, 16 · (KT + 8) · 2 probabilities, 4 · KT
// flags and 4 · 16 · 16 of row factors: DeepSeek-V3 with KT = 32 and 4 subgroups, 47.9 KiB
// (MlaDecodeCoopmatSpec::shared_memory_bytes mirrors this sum).
//
// Specialization constants (kernels-vulkan/src/ops/mla/coopmat.rs, MlaDecodeCoopmatSpec):
// 0 = workgroup size (NSG · 32), 1 = KT (16 or 32), 2 = LATENT, 3 = ROPE (both multiples of
// 16), 4 = PREFETCH, 5 = FP8 (the record format).
// A workgroup whose subgroups are not NSG full subgroups of 32 writes NaN (an error signal, not
// a silent wrong answer).
#version 450
#extension GL_EXT_control_flow_attributes : require
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_bfloat16 : require

layout(local_size_x = 128, local_size_x_id = 0) in;
layout(constant_id = 1) const uint KT = 32u;
layout(constant_id = 2) const uint LATENT = 512u;
layout(constant_id = 3) const uint ROPE = 64u;
layout(constant_id = 4) const uint PREFETCH = 1u;
layout(constant_id = 5) const uint FP8 = 0u;

const uint WG = gl_WorkGroupSize.x;
const uint NSG = WG / 32u;
const uint ROWS = 16u;                         // query rows per workgroup
const uint D = LATENT + ROPE;
const uint DV = D / 8u;                        // uvec4 per record in shared memory (bf16)
const uint SROW = DV + 1u;                     // uvec4 per shared row (+8 values)
const uint LU = LATENT / 16u;                  // FP8: uvec4 of latent codes (16 each)
const uint SU = LATENT / 512u;                 // FP8: uvec4 of scales (4 each)
const uint RV = FP8 != 0u ? LU + SU + ROPE / 8u : DV;  // uvec4 per record in the cache
const uint KSTEPS = D / 16u;                   // 16-wide steps of the score contraction
const uint KS_PER = (KSTEPS + NSG - 1u) / NSG; // steps per subgroup
const uint LB = LATENT / 16u;                  // 16-wide output column blocks
const uint OB_PER = (LB + NSG - 1u) / NSG;     // column blocks per subgroup
const uint KB = KT / 16u;                      // 16-key blocks per tile
const uint SP = KT + 4u;                       // f32 row stride of the partial scores
const uint S_REGION = ROWS * SP;               // f32 per subgroup's partial scores (>= 256)
const uint PW = KT / 2u + 4u;                  // words (bf16 pairs) per row of probabilities
const uint TPK = WG / KT;                      // invocations loading one record (4 or 8)
const uint LOADS = (RV + TPK - 1u) / TPK;      // uvec4 of its record per invocation and tile
const uint TPR = WG / ROWS;                    // softmax invocations per row (a power of two)
const uint KPI = KT / TPR;                     // keys per softmax invocation (even)

layout(set = 0, binding = 0, std430) readonly buffer Cache { uvec4 cache4[]; };
layout(set = 0, binding = 0, std430) readonly buffer CacheWords { float cache_floats[]; };
layout(set = 0, binding = 1, std430) readonly buffer Q { uvec4 q4[]; };
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
    uint row_groups;      // ceil(s_q * heads / 16)
    uint rows_per_group;  // 16 (the stream shader's layout of push constants)
    uint splits;
    uint scale_bits;      // f32 bits of softmax_scale * log2(e)
} p;

#include "common.glsl"
#include "mla_fp8.glsl"

#define NEG_INF uintBitsToFloat(0xff800000u)
#define NAN uintBitsToFloat(0x7fc00000u)
#define LN2 0.69314718055994531

#define ACC coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>
#define MAT_A coopmat<bfloat16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA>
#define MAT_B coopmat<bfloat16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB>

shared uvec4 kv_sh[KT * SROW];       // the tile's records (the query rows at first)
shared float s_sh[NSG * S_REGION];   // per subgroup: 16 x KT partial scores (a scratch at the end)
shared uint p_sh[ROWS * PW];         // 16 x KT probabilities, bf16 pairs
shared uint key_bad[KT];             // 1 where the tile's key lies on a page outside the cache
shared float row_sh[ROWS * 16u];     // row r: this tile's rescale factor of row r (1 / l at
                                     // the end, NaN for a bad row), 16 times

// The record this invocation stages of the tile at k0: key tid / TPK, its uvec4s tid % TPK +
// TPK * i (TPK invocations read 16 TPK contiguous bytes of a record at a time), zeros for a key
// past the split or on a bad page (flagged).
uvec4 staged[LOADS];
float staged_scale[LOADS];  // FP8: the group scale of a latent uvec4
bool staged_bad;

void fetch_tile(uint b, uint k0, uint k_end) {
    uint key = k0 + gl_LocalInvocationIndex / TPK;
    uint part0 = gl_LocalInvocationIndex % TPK;
    uint base = 0u;
    bool valid = false;
    staged_bad = false;
    if (key < k_end) {
        uint page_index = p.page_shift < 32u ? key >> p.page_shift : key / p.page_size;
        int page = block_table[b * p.max_pages + page_index];
        staged_bad = page < 0 || uint(page) >= p.num_pages;
        valid = !staged_bad;
        base = valid ? (uint(page) * p.page_size + key - page_index * p.page_size) * RV : 0u;
    }
    [[unroll]] for (uint i = 0u; i < LOADS; ++i) {
        uint part = part0 + TPK * i;
        staged[i] = valid && part < RV ? cache4[base + part] : uvec4(0u);
        if (FP8 != 0u) {
            // The scale of the part's 128-value group (words after the LATENT / 4 of codes).
            uint scale_at = 4u * base + LATENT / 4u + part / 8u;
            staged_scale[i] = valid && part < LU ? cache_floats[scale_at] : 0.0;
        }
    }
}

void store_staged() {
    uint j = gl_LocalInvocationIndex / TPK;
    uint part0 = gl_LocalInvocationIndex % TPK;
    [[unroll]] for (uint i = 0u; i < LOADS; ++i) {
        uint part = part0 + TPK * i;
        uint at = j * SROW;
        if (FP8 == 0u) {
            if (part < DV) {
                kv_sh[at + part] = staged[i];
            }
        } else if (part < LU) {
            // 16 codes -> 16 bf16 (exact: 4 significant bits times a power of two).
            uint w[8];
            [[unroll]] for (uint q = 0u; q < 4u; ++q) {
                vec4 v = e4m3x4(staged[i][q]) * staged_scale[i];
                uvec4 bits = floatBitsToUint(v);
                w[2u * q] = (bits.x >> 16) | (bits.y & 0xffff0000u);
                w[2u * q + 1u] = (bits.z >> 16) | (bits.w & 0xffff0000u);
            }
            kv_sh[at + 2u * part] = uvec4(w[0], w[1], w[2], w[3]);
            kv_sh[at + 2u * part + 1u] = uvec4(w[4], w[5], w[6], w[7]);
        } else if (part >= LU + SU && part < RV) {
            kv_sh[at + LATENT / 8u + (part - LU - SU)] = staged[i];  // rope, bf16
        }
    }
    if (part0 == 0u) {
        key_bad[j] = staged_bad ? 1u : 0u;
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
    uint g = wg % p.row_groups;
    uint split = (wg / p.row_groups) % p.splits;
    uint b = wg / (p.row_groups * p.splits);
    uint rows = p.s_q * p.heads;
    uint row0 = g * ROWS;
    uint row_end = min(row0 + ROWS, rows);
    if (gl_SubgroupSize != 32u || gl_NumSubgroups != NSG) {
        write_nan_rows(b, split, row0, row_end, rows);  // uniform
        return;
    }
    uint sg = gl_SubgroupID;
    uint lane = gl_SubgroupInvocationID;
    uint tid = gl_LocalInvocationIndex;

    uint capacity = p.max_pages * p.page_size;
    uint len = min(uint(max(seq_lens[b], 0)), capacity);
    uint split_keys = ((len + p.splits - 1u) / p.splits + KT - 1u) / KT * KT;
    uint k_begin = split * split_keys;
    uint i_last = (row_end - 1u) / p.heads;
    uint kv_end = uint(max(int(len) - int(p.s_q - 1u - i_last), 0));
    uint k_end = min(k_begin + split_keys, kv_end);
    float scale_log2 = uintBitsToFloat(p.scale_bits);

    // The softmax invocations of row `srow`: keys sk0 .. sk0 + KPI - 1 of each tile.
    uint srow = tid / TPR;
    uint sk0 = (tid % TPR) * KPI;
    uint r_soft = row0 + srow;
    uint row_keys = 0u;  // keys of this split the row sees: k_begin .. row_keys - 1
    if (r_soft < row_end) {
        uint i = r_soft / p.heads;
        row_keys = min(uint(max(int(len) - int(p.s_q - 1u - i), 0)), k_end);
    }
    float m_run = NEG_INF;
    float l_run = 0.0;
    bool bad = false;

    // The query rows into shared memory, then into this subgroup's A matrices.
    for (uint idx = tid; idx < ROWS * DV; idx += WG) {
        uint i = idx / DV;
        uint r = row0 + i;
        kv_sh[i * SROW + idx % DV] = r < row_end ? q4[(b * rows + r) * DV + idx % DV] : uvec4(0u);
    }
    barrier();
    MAT_A q_mat[KS_PER];
    [[unroll]] for (uint j = 0u; j < KS_PER; ++j) {
        uint ks = sg + NSG * j;
        if (ks < KSTEPS) {
            coopMatLoad(q_mat[j], kv_sh, 2u * ks, SROW, gl_CooperativeMatrixLayoutRowMajor);
        }
    }
    barrier();

    ACC o_acc[OB_PER];
    [[unroll]] for (uint c = 0u; c < OB_PER; ++c) {
        o_acc[c] = ACC(0.0);
    }

    if (PREFETCH != 0u && k_begin < k_end) {
        fetch_tile(b, k_begin, k_end);
    }
    for (uint k0 = k_begin; k0 < k_end; k0 += KT) {  // uniform
        // 1. The records into shared memory (the previous tile's readers passed the barrier at
        //    the end of the loop).
        if (PREFETCH == 0u) {
            fetch_tile(b, k0, k_end);
        }
        store_staged();
        barrier();
        if (PREFETCH != 0u && k0 + KT < k_end) {
            fetch_tile(b, k0 + KT, k_end);  // in flight while this tile is computed
        }

        // 2. Partial scores over this subgroup's steps.
        [[unroll]] for (uint kb = 0u; kb < KB; ++kb) {
            ACC s = ACC(0.0);
            [[unroll]] for (uint j = 0u; j < KS_PER; ++j) {
                uint ks = sg + NSG * j;
                if (ks < KSTEPS) {
                    MAT_B k_mat;
                    coopMatLoad(k_mat, kv_sh, (16u * kb) * SROW + 2u * ks, SROW,
                                gl_CooperativeMatrixLayoutColumnMajor);
                    s = coopMatMulAdd(q_mat[j], k_mat, s);
                }
            }
            coopMatStore(s, s_sh, sg * S_REGION + 16u * kb, SP,
                         gl_CooperativeMatrixLayoutRowMajor);
        }
        barrier();

        // 3. Online softmax of row srow over keys sk0 .. sk0 + KPI - 1 (TPR lanes per row).
        float sc[KPI];
        float tile_max = NEG_INF;
        [[unroll]] for (uint kk = 0u; kk < KPI; ++kk) {
            uint j = sk0 + kk;
            float x = 0.0;
            [[unroll]] for (uint s = 0u; s < NSG; ++s) {
                x += s_sh[s * S_REGION + srow * SP + j];
            }
            bool seen = k0 + j < row_keys;
            if (seen && key_bad[j] != 0u) {
                bad = true;
            }
            sc[kk] = seen ? x * scale_log2 : NEG_INF;
            tile_max = max(tile_max, sc[kk]);
        }
        [[unroll]] for (uint off = 1u; off < TPR; off <<= 1) {
            tile_max = max(tile_max, subgroupShuffleXor(tile_max, off));
        }
        float m_new = max(m_run, tile_max);
        // While the row has seen nothing (-inf), shift by 0: every p and alpha is then 0.
        float shift = m_new == NEG_INF ? 0.0 : m_new;
        float alpha = exp2(m_run - shift);
        float psum = 0.0;
        [[unroll]] for (uint kk = 0u; kk < KPI; kk += 2u) {
            float p0 = exp2(sc[kk] - shift);
            float p1 = exp2(sc[kk + 1u] - shift);
            psum += p0 + p1;
            p_sh[srow * PW + (sk0 + kk) / 2u] = f32_to_bf16_bits(p0)
                | (f32_to_bf16_bits(p1) << 16);
        }
        [[unroll]] for (uint off = 1u; off < TPR; off <<= 1) {
            psum += subgroupShuffleXor(psum, off);
        }
        l_run = l_run * alpha + psum;
        m_run = m_new;
        // TPR (8) invocations per row: 16 / TPR copies each (TPR <= 16: at most 8 subgroups).
        [[unroll]] for (uint j = 0u; j < 16u / TPR; ++j) {
            row_sh[srow * 16u + (tid % TPR) * (16u / TPR) + j] = alpha;
        }
        barrier();

        // 4. o = alpha · o + P · V over this subgroup's column blocks.
        MAT_A p_mat[KB];
        [[unroll]] for (uint kb = 0u; kb < KB; ++kb) {
            coopMatLoad(p_mat[kb], p_sh, 8u * kb, PW, gl_CooperativeMatrixLayoutRowMajor);
        }
        ACC alpha_m;
        coopMatLoad(alpha_m, row_sh, 0u, 16u, gl_CooperativeMatrixLayoutRowMajor);
        [[unroll]] for (uint c = 0u; c < OB_PER; ++c) {
            o_acc[c] = o_acc[c] * alpha_m;
        }
        [[unroll]] for (uint c = 0u; c < OB_PER; ++c) {
            uint lb = sg + NSG * c;
            if (lb < LB) {
                [[unroll]] for (uint kb = 0u; kb < KB; ++kb) {
                    MAT_B v_mat;
                    coopMatLoad(v_mat, kv_sh, (16u * kb) * SROW + 2u * lb, SROW,
                                gl_CooperativeMatrixLayoutRowMajor);
                    o_acc[c] = coopMatMulAdd(p_mat[kb], v_mat, o_acc[c]);
                }
            }
        }
        barrier();
    }

    // Partial results: lse by the first softmax invocation of each row, normalized o by the
    // owners of the column blocks.
    [[unroll]] for (uint off = 1u; off < TPR; off <<= 1) {
        bad = bad || subgroupShuffleXor(uint(bad), off) != 0u;
    }
    uint part_rows = p.batch * p.splits * rows;
    float inv = bad ? NAN : (l_run > 0.0 ? 1.0 / l_run : 0.0);
    [[unroll]] for (uint j = 0u; j < 16u / TPR; ++j) {
        row_sh[srow * 16u + (tid % TPR) * (16u / TPR) + j] = inv;
    }
    if (sk0 == 0u && r_soft < row_end) {
        uint prow = (b * p.splits + split) * rows + r_soft;
        float lse = l_run > 0.0 ? (m_run + log2(l_run)) * LN2 : NEG_INF;
        work[part_rows * LATENT + prow] = bad ? NAN : lse;
    }
    barrier();
    ACC inv_m;
    coopMatLoad(inv_m, row_sh, 0u, 16u, gl_CooperativeMatrixLayoutRowMajor);
    // Each normalized block through this subgroup's scratch: lane l copies 8 values of row
    // l / 2 (the rows past the group's end are not written).
    uint r = lane / 2u;
    uint c8 = (lane % 2u) * 8u;
    uint prow = (b * p.splits + split) * rows + row0 + r;
    [[unroll]] for (uint c = 0u; c < OB_PER; ++c) {
        uint lb = sg + NSG * c;
        if (lb < LB) {
            subgroupBarrier();
            coopMatStore(o_acc[c] * inv_m, s_sh, sg * S_REGION, 16u,
                         gl_CooperativeMatrixLayoutRowMajor);
            subgroupMemoryBarrierShared();
            subgroupBarrier();
            if (row0 + r < row_end) {
                [[unroll]] for (uint e = 0u; e < 8u; ++e) {
                    work[prow * LATENT + 16u * lb + c8 + e] =
                        s_sh[sg * S_REGION + r * 16u + c8 + e];
                }
            }
        }
    }
}

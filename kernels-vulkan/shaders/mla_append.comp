// MLA cache append: writes token records into the paged latent cache (vLLM's slot mapping).
//
// One workgroup per token; its invocations write the 32-bit words of the token's record.
//   latent  bf16 [tokens, latent_dim], two per word (even element in the low half)
//   rope    bf16 [tokens, rope_dim], two per word (bound with at least one word when empty)
//   slots   i32  [tokens]: the slot of each token; negative (or >= num_slots) skips it
//   cache   [num_pages, page_size, token_words] words (token_bytes / 4)
// Record formats (every part starts on a word boundary: latent_dim is a multiple of 64 and
// rope_dim of 16):
//   FP8 = 0: [latent bf16 | rope bf16]
//   FP8 = 1: [latent e4m3 | latent_dim/128 f32 scales | rope bf16], scale of a group of 128 =
//            round_up_pow2(max(amax / 448, 2^-126)) and code = e4m3(x / scale), both computed on
//            the bits (common.glsl), so the bytes equal the reference's on every device.
//
// Specialization constants: 0 = workgroup size, 1 = FP8.
#version 450
#extension GL_GOOGLE_include_directive : require

layout(local_size_x = 128, local_size_x_id = 0) in;
layout(constant_id = 1) const uint FP8 = 0u;

layout(set = 0, binding = 0, std430) readonly buffer Latent { uint latent[]; };
layout(set = 0, binding = 1, std430) readonly buffer Rope { uint rope[]; };
layout(set = 0, binding = 2, std430) readonly buffer Slots { int slots[]; };
layout(set = 0, binding = 3, std430) buffer Cache { uint cache[]; };

layout(push_constant, std430) uniform Params {
    uint tokens;
    uint latent_dim;
    uint rope_dim;
    uint token_words;  // token_bytes / 4
    uint num_slots;    // num_pages * page_size
    uint e4m3_max_bits;  // f32 bits of 448
} p;

#include "common.glsl"

// Latent dims are at most 1024: at most 8 groups of 128.
shared uint group_amax[8];
shared uint group_scale[8];

// x / s for f32 bits x (finite) and a normal power of two s: the exponents are subtracted when
// x and the quotient are normal (the division is exact then), else the correctly rounded long
// division of common.glsl (subnormal x or quotient). Equals div_rn_bits(x, s) for every x.
uint div_pow2_bits(uint x, uint s) {
    uint ax = x & 0x7fffffffu;
    int ex = int(ax >> 23);
    int e = ex - (int(s >> 23) - 127);
    if (ex != 0 && e >= 1 && e < 255) {
        return (x & 0x807fffffu) | (uint(e) << 23);
    }
    return div_rn_bits(x, s);
}

// The bf16 bits (low half) of latent element i of token t.
uint latent_bits(uint t, uint i) {
    uint w = latent[(t * p.latent_dim + i) >> 1];
    return (i & 1u) != 0u ? (w >> 16) : (w & 0xffffu);
}

void main() {
    uint t = linear_workgroup_id();
    if (t >= p.tokens) {
        return;  // uniform for the workgroup
    }
    int s = slots[t];
    if (s < 0 || uint(s) >= p.num_slots) {
        return;  // padding (or a slot the host API would reject): nothing is written
    }
    uint base = uint(s) * p.token_words;
    uint lid = gl_LocalInvocationID.x;
    uint latent_words;
    uint groups = p.latent_dim / 128u;
    if (FP8 != 0u) {
        latent_words = p.latent_dim / 4u + groups;
        if (lid < 8u) {
            group_amax[lid] = 0u;
        }
        barrier();
        // |x| as f32 bits: for non-negative floats the integer order is the numeric order.
        for (uint i = lid; i < p.latent_dim; i += gl_WorkGroupSize.x) {
            atomicMax(group_amax[i / 128u], (latent_bits(t, i) << 16) & 0x7fffffffu);
        }
        barrier();
        if (lid < groups) {
            uint sc = div_rn_bits(group_amax[lid], p.e4m3_max_bits);
            sc = max(sc, 0x00800000u);  // at least 2^-126
            if ((sc & 0x7fffffu) != 0u) {
                sc = (sc & 0x7f800000u) + 0x800000u;  // round up to a power of two
            }
            group_scale[lid] = sc;
        }
        barrier();
    } else {
        latent_words = p.latent_dim / 2u;
    }
    uint rope_words = p.rope_dim / 2u;
    for (uint w = lid; w < latent_words + rope_words; w += gl_WorkGroupSize.x) {
        uint value;
        if (w >= latent_words) {
            value = rope[(t * p.rope_dim) / 2u + (w - latent_words)];
        } else if (FP8 == 0u) {
            value = latent[(t * p.latent_dim) / 2u + w];
        } else if (w < p.latent_dim / 4u) {
            // Four codes of one group (groups of 128 are word aligned).
            uint sc = group_scale[(4u * w) / 128u];
            value = 0u;
            for (uint j = 0u; j < 4u; ++j) {
                uint x = latent_bits(t, 4u * w + j) << 16;
                value |= f32_bits_to_e4m3(div_pow2_bits(x, sc)) << (8u * j);
            }
        } else {
            value = group_scale[w - p.latent_dim / 4u];
        }
        cache[base + w] = value;
    }
}

// The device buffers and sizes of one attention backward call, as the harness's compile units
// (sparse_attention_bwd_sm90_unit.cu) take them.
#pragma once
struct BwdArgs {
    const unsigned short *q, *k, *v, *o, *d_o;
    const float* lse;
    float* delta;
    unsigned short *dq, *dk, *dv;
    const unsigned *indptr, *indices, *t_indptr, *t_indices;
    // The fused variant (units 13, 14, 15): dq_accum f32 [batch, heads, tokens, head_dim] and
    // dq_turns u32 [batch, heads, ceil(tokens / 64), head_dim / 64], both zeroed before unit 13/14;
    // t_rank u32 parallel to t_indices (the rank of the key block among its query block's row).
    float* dq_accum;
    unsigned* dq_turns;
    const unsigned* t_rank;
    int batch, tokens, heads;
    float scale;
};

// The device buffers and sizes of one attention backward call, as the harness's compile units
// (sparse_attention_bwd_sm90_unit.cu) take them.
#pragma once
struct BwdArgs {
    const unsigned short *q, *k, *v, *o, *d_o;
    const float* lse;
    float* delta;
    unsigned short *dq, *dk, *dv;
    const unsigned *indptr, *indices, *t_indptr, *t_indices;
    int batch, tokens, heads;
    float scale;
};

// Tessera CUDA kernels: the mma.sync tile steps that the block-sparse attention forward
// (sparse_attention.cu) and backward (sparse_attention_backward.cu) share. Tiles are rows of
// head_dim D bf16/f16 values in shared memory with a row stride of D + 8 elements (the padding
// makes every ldmatrix conflict-free). Prepended after common.cuh.

// Copies rows [row0, row0 + ROWS) of one head of a [tokens, heads, D] tensor (base points at
// token 0 of this batch and head) into shared memory dst (ROWS x (D + 8)) with the CTA's THREADS
// threads; rows >= tokens are zero-filled without reading global memory.
template <int ROWS, int THREADS, int D>
__device__ __forceinline__ void attn_load_rows(u16* dst, const u16* __restrict__ base, int row0, int tokens,
                                               i64 tok_stride) {
    constexpr int CHUNKS = D / 8, STRIDE = D + 8;
#pragma unroll
    for (int i = threadIdx.x; i < ROWS * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS, c = i % CHUNKS;
        const int t = row0 + r;
        const bool ok = t < tokens;
        const u16* src = base + (ok ? (i64)t * tok_stride : 0) + c * 8;
        cp_async_16(dst + r * STRIDE + c * 8, src, ok);
    }
}

// acc (a warp's 16 x D accumulator tile) += W (16 x KEYS, the warp's f32 weights in the mma
// accumulator layout, e.g. the probabilities P) times the KEYS x D rows `rows` of shared memory
// (e.g. V). The accumulator layout of W is the A-fragment layout of the next mma, so W stays in
// registers (rounded to 16 bits; two n-tiles of 8 make one k-step of 16).
template <bool BF16, int D, int KEYS>
__device__ __forceinline__ void attn_weights_times_rows(float acc[D / 8][4], const float w[KEYS / 8][4],
                                                        const u16* rows, int lane) {
    constexpr int STRIDE = D + 8;
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; ++kk) {
        u32 a[4];
        a[0] = pack2<BF16>(w[2 * kk][0], w[2 * kk][1]);
        a[1] = pack2<BF16>(w[2 * kk][2], w[2 * kk][3]);
        a[2] = pack2<BF16>(w[2 * kk + 1][0], w[2 * kk + 1][1]);
        a[3] = pack2<BF16>(w[2 * kk + 1][2], w[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < D / 16; ++dp) {
            u32 r[4];
            const int row = kk * 16 + ((lane / 8) % 2) * 8 + (lane % 8);
            const int col = dp * 16 + (lane / 16) * 8;
            ldmatrix_x4_trans(r, rows + row * STRIDE + col);
            const u32 b0[2] = {r[0], r[1]};
            const u32 b1[2] = {r[2], r[3]};
            mma_16816<BF16>(acc[2 * dp], a, b0);
            mma_16816<BF16>(acc[2 * dp + 1], a, b1);
        }
    }
}

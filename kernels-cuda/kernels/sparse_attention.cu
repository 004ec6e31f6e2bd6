// Block-sparse (radial) attention forward, FlashAttention-2 style, with warp-level tensor-core
// mma (m16n8k16, f32 accumulation): runs on sm_80 and later. Prepended: common.cuh,
// attention_constants.cuh (HEAD_DIM, ELEM_BF16), attention_tiles.cuh (the row loads and the P V
// step, shared with the backward).
//
// Compile-time constants (all required; rendered by kernels-cuda/src/plan/attention.rs):
//   HEAD_DIM, ELEM_BF16 (attention_constants.cuh)
//   BLOCK      mask block size, 64 or 128
//   TESSERA_SMEM_BYTES (4 * 64) * (HEAD_DIM + 8) * 2; TESSERA_THREADS 128
//
// Layouts (row-major): q, k, v, o [batch, tokens, heads, HEAD_DIM]; lse f32 [batch, heads,
// tokens] (natural log); the mask is BSR over num_blocks = ceil(tokens / BLOCK) block rows:
// indptr u32 [num_blocks + 1], indices u32 (sorted within each row), shared by every batch and
// head. Block row r (queries r*BLOCK .. min((r+1)*BLOCK, tokens)) attends the keys of the blocks
// indices[indptr[r] .. indptr[r+1]]; keys >= tokens (the padding of a partial last block) get a
// score of -inf, and query rows >= tokens are computed on zeros and never written.
//
// One CTA per (64 query rows, head, batch) = (blockIdx.x, blockIdx.y, blockIdx.z): 4 warps of 16
// query rows each. With BLOCK 128 the two halves of a block row are two CTAs: on an H200, one
// 8-warp CTA per block row of 128 ran 16% slower than block size 64, two 4-warp CTAs run as fast
// (about 170 registers a thread lets 3 CTAs share an SM).
//
// Q is loaded once (cp.async) into shared memory and from there (ldmatrix) into registers as mma
// A fragments. The row's key blocks are walked in tiles of 64 keys; the K and V tiles go to
// shared memory through cp.async, double-buffered (tile j+1 loads while tile j is computed). Per
// tile: S = Q Kᵀ (mma, K through ldmatrix), scaled by softmax_scale * log2(e) so that the online
// softmax runs in the log2 domain with exp2f; the running row max m and row sum l are kept in
// f32 registers; P is rounded to the input type and O += P V (mma, V through ldmatrix.trans). At
// the end o = O / l and lse = (m + log2 l) * ln 2.
//
// Shared memory (dynamic, (4 * 64) * (HEAD_DIM + 8) 16-bit elements: 36 KiB for HEAD_DIM 64,
// 68 KiB for 128): two buffers of [K tile | V tile], 64 rows each; rows are padded by 8
// elements (16 bytes) so that the 8 row addresses of each ldmatrix phase hit distinct banks.
// Q is staged in buffer 1 before the loop, and each warp stages its output rows there after it,
// so that stores to global memory are 16-byte and row-contiguous.

#ifndef BLOCK
#error "BLOCK is required (mask block size, 64 or 128)"
#endif

#if BLOCK != 64 && BLOCK != 128
#error "BLOCK must be 64 or 128"
#endif

namespace attn {

constexpr int D = HEAD_DIM;
constexpr int BM = 64;                // query rows per CTA
constexpr int NWARPS = BM / 16;       // 16 query rows per warp
constexpr int NTHREADS = NWARPS * 32;
constexpr int BN = 64;                // keys per tile
constexpr int SUB = BLOCK / BN;       // tiles per key block
constexpr int STRIDE = D + 8;         // shared-memory row stride, elements
constexpr int CHUNKS = D / 8;         // 16-byte chunks per row
constexpr int TILE_ELEMS = BN * STRIDE;
constexpr int BUF_ELEMS = 2 * TILE_ELEMS;  // K tile then V tile
constexpr bool BF16 = ELEM_BF16 != 0;
constexpr float LN2 = 0.69314718055994530942f;

static_assert(BM <= 2 * BN, "Q is staged in one K/V buffer");
static_assert(2 * BUF_ELEMS * 2 == TESSERA_SMEM_BYTES, "the host's shared-memory size must be two K/V buffers");
static_assert(NTHREADS == TESSERA_THREADS, "the host's threads per CTA must be one warp per 16 query rows");

}  // namespace attn

extern "C" __global__ void __launch_bounds__(attn::NTHREADS)
sparse_attention_fwd(const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                     u16* __restrict__ o, float* __restrict__ lse, const u32* __restrict__ indptr,
                     const u32* __restrict__ indices, int tokens, int heads, float scale_log2) {
    using namespace attn;
    extern __shared__ __align__(16) u16 smem[];

    const int q0 = blockIdx.x * BM;
    const int row_block = q0 / BLOCK;  // the mask's block row
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;  // fragment row (and row + 8)
    const int tq = lane % 4; // fragment column pair

    const i64 tok_stride = (i64)heads * D;
    const i64 base = ((i64)b * tokens * heads + h) * D;  // token 0 of batch b, head h

    // The row's key tiles: every block is SUB tiles, except that tiles starting at or past
    // `tokens` are dropped. Only the last block (num_blocks - 1) can be partial, and indices are
    // sorted, so such tiles can only be at the very end.
    const int first = (int)indptr[row_block];
    const int last = (int)indptr[row_block + 1];
    int ntiles = (last - first) * SUB;
    if (SUB > 1 && last > first) {
        const int tail = tokens - (int)indices[last - 1] * BLOCK;  // >= 1
        const int valid = (tail + BN - 1) / BN;
        if (valid < SUB) ntiles -= SUB - valid;
    }
    auto tile_key0 = [&](int j) -> int {
        return (int)indices[first + j / SUB] * BLOCK + (j % SUB) * BN;
    };

    u16* const buf0 = smem;
    u16* const buf1 = smem + BUF_ELEMS;

    // Q into buffer 1 and tile 0 into buffer 0, as two commit groups.
    attn_load_rows<BM, NTHREADS, D>(buf1, q + base, q0, tokens, tok_stride);
    cp_async_commit();
    if (ntiles > 0) {
        const int key0 = tile_key0(0);
        attn_load_rows<BN, NTHREADS, D>(buf0, k + base, key0, tokens, tok_stride);
        attn_load_rows<BN, NTHREADS, D>(buf0 + TILE_ELEMS, v + base, key0, tokens, tok_stride);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    // Q fragments: qf[kk] is the A operand (16 rows x 16 head-dim columns) of k-step kk.
    u32 qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const int r = warp * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
        const int c = kk * 16 + (lane / 16) * 8;
        ldmatrix_x4(qf[kk], buf1 + r * STRIDE + c);
    }
    __syncthreads();  // buffer 1 is reused for tile 1

    float acc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = 0.0f;
    }
    float m_run[2] = {TESSERA_NEG_INF, TESSERA_NEG_INF};  // running max (log2 domain), rows g, g+8
    float l_run[2] = {0.0f, 0.0f};                        // this thread's part of the row sum

    for (int j = 0; j < ntiles; ++j) {
        u16* const cur = (j & 1) ? buf1 : buf0;
        if (j + 1 < ntiles) {
            u16* const nxt = (j & 1) ? buf0 : buf1;
            const int key1 = tile_key0(j + 1);
            attn_load_rows<BN, NTHREADS, D>(nxt, k + base, key1, tokens, tok_stride);
            attn_load_rows<BN, NTHREADS, D>(nxt + TILE_ELEMS, v + base, key1, tokens, tok_stride);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        const u16* const sk = cur;
        const u16* const sv = cur + TILE_ELEMS;
        const int key0 = tile_key0(j);

        // S = Q Kᵀ: 16 rows x 64 keys per warp, as 8 n-tiles of 8 keys.
        float s[BN / 8][4];
#pragma unroll
        for (int i = 0; i < BN / 8; ++i) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[i][e] = 0.0f;
        }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < BN / 16; ++np) {
                u32 r[4];
                const int row = np * 16 + (lane / 16) * 8 + (lane % 8);
                const int col = kk * 16 + ((lane / 8) % 2) * 8;
                ldmatrix_x4(r, sk + row * STRIDE + col);
                const u32 b0[2] = {r[0], r[1]};
                const u32 b1[2] = {r[2], r[3]};
                mma_16816<BF16>(s[2 * np], qf[kk], b0);
                mma_16816<BF16>(s[2 * np + 1], qf[kk], b1);
            }
        }

        // Scale into the log2 domain; keys past the end get -inf.
        const bool partial = key0 + BN > tokens;
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = s[nt][e] * scale_log2;
                if (partial && key0 + nt * 8 + 2 * tq + (e & 1) >= tokens) x = TESSERA_NEG_INF;
                s[nt][e] = x;
            }
        }

        // Online softmax: rows g (elements 0, 1) and g + 8 (elements 2, 3); the four lanes of a
        // quad share a row.
        float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
            mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
        }
        float alpha[2], msub[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            // A row with no finite score yet: subtract 0 so that exp2 gives 0, not NaN.
            msub[i] = mx[i] == TESSERA_NEG_INF ? 0.0f : mx[i];
            alpha[i] = exp2f(m_run[i] - msub[i]);
            m_run[i] = mx[i];
        }
        float rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - msub[0]);
            s[nt][1] = exp2f(s[nt][1] - msub[0]);
            s[nt][2] = exp2f(s[nt][2] - msub[1]);
            s[nt][3] = exp2f(s[nt][3] - msub[1]);
            rs[0] += s[nt][0] + s[nt][1];
            rs[1] += s[nt][2] + s[nt][3];
        }
        l_run[0] = l_run[0] * alpha[0] + rs[0];
        l_run[1] = l_run[1] * alpha[1] + rs[1];
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            acc[dt][0] *= alpha[0];
            acc[dt][1] *= alpha[0];
            acc[dt][2] *= alpha[1];
            acc[dt][3] *= alpha[1];
        }

        // O += P V (P stays in registers: attention_tiles.cuh).
        attn_weights_times_rows<BF16, D, BN>(acc, s, sv, lane);
        __syncthreads();  // this buffer is refilled by the next iteration's prefetch
    }

    // Row sums over the quad, then o = O / l and lse = (m + log2 l) ln 2.
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 1);
        l_run[i] += __shfl_xor_sync(0xffffffffu, l_run[i], 2);
        inv[i] = 1.0f / l_run[i];
    }

    // Stage this warp's 16 output rows in buffer 1 (every warp is past the loop's last barrier,
    // and each warp uses its own rows), then store 16-byte chunks.
    u16* const so = buf1 + warp * 16 * STRIDE;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        const int c = dt * 8 + 2 * tq;
        *reinterpret_cast<u32*>(so + g * STRIDE + c) = pack2<BF16>(acc[dt][0] * inv[0], acc[dt][1] * inv[0]);
        *reinterpret_cast<u32*>(so + (g + 8) * STRIDE + c) = pack2<BF16>(acc[dt][2] * inv[1], acc[dt][3] * inv[1]);
    }
    __syncwarp();
#pragma unroll
    for (int i = lane; i < 16 * CHUNKS; i += 32) {
        const int r = i / CHUNKS, c = i % CHUNKS;
        const int t = q0 + warp * 16 + r;
        if (t < tokens) {
            *reinterpret_cast<uint4*>(o + base + (i64)t * tok_stride + c * 8) =
                *reinterpret_cast<const uint4*>(so + r * STRIDE + c * 8);
        }
    }
    if (tq == 0) {
        float* const lse_row = lse + ((i64)b * heads + h) * tokens;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int t = q0 + warp * 16 + g + 8 * i;
            if (t < tokens) lse_row[t] = (m_run[i] + log2f(l_run[i])) * LN2;
        }
    }
}

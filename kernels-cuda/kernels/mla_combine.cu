// MLA decode's split combine: merges the partial outputs of the KV splits of mla_decode.cu by
// log-sum-exp. Prepended: common.cuh, mla_work.cuh (the request's queries, the lse layout).
//
// Compile-time constants (required): VARLEN 0 = s_q queries per request, 1 = cu_seqlens_q
// offsets (as in mla_decode.cu); TESSERA_SMEM_BYTES 0, TESSERA_THREADS 128.

#ifndef VARLEN
#error "VARLEN is required (0 = s_q queries per request, 1 = cu_seqlens_q offsets)"
#endif
#if VARLEN != 0 && VARLEN != 1
#error "VARLEN must be 0 or 1"
#endif
static_assert(TESSERA_SMEM_BYTES == 0, "the combine uses no dynamic shared memory");
static_assert(TESSERA_THREADS == 128, "the combine runs 128 threads per (request, row)");

// One block of 128 threads per (request, row): merges the splits' partial outputs by log-sum-exp.
//   ws f32 [splits, batch, rows, latent] (partial o), then [splits, batch, rows] (partial lse)
//     (rows = s_q * heads; with VARLEN s_q is max_s_q and a request's rows past its own
//     n * heads are not written by the decode and skipped here)
//   VARLEN 0: o bf16 [batch, rows, latent]; lse f32 [batch, heads, s_q]
//   VARLEN 1: o bf16 [total_q, heads, latent]; lse f32 [heads, total_q]; request b's queries are
//     the tokens cu_seqlens_q[b] .. cu_seqlens_q[b + 1] (out-of-range offsets: skipped)
// All splits -inf (no key seen): o = 0, lse = -inf. Any NaN: NaN.
extern "C" __global__ void __launch_bounds__(128) mla_combine(
    const float* __restrict__ ws, const int* __restrict__ cu_seqlens_q, u16* __restrict__ o,
    float* __restrict__ lse, int batch, int s_q, int total_q, int heads, int latent, int splits) {
    const int rows = s_q * heads;
    const float* ws_o = ws;
    const float* ws_lse = ws + (i64)splits * batch * rows * latent;
    const i64 br = blockIdx.x;  // b * rows + r
    const int b = (int)(br / rows), r = (int)(br % rows);
    int q_begin, n_q;
    mla_request_queries(cu_seqlens_q, b, s_q, total_q, q_begin, n_q);
    if (r >= n_q * heads) return;  // rows past the request's (VARLEN), or a bad request
    const i64 split_stride = (i64)batch * rows;
    float mx = TESSERA_NEG_INF;
    bool nan = false;
    for (int sp = 0; sp < splits; ++sp) {
        const float v = ws_lse[sp * split_stride + br];
        nan |= v != v;
        mx = fmaxf(mx, v);
    }
    float total = TESSERA_NEG_INF;
    if (nan) {
        total = TESSERA_NAN;
    } else if (mx != TESSERA_NEG_INF) {
        float sum = 0.0f;
        for (int sp = 0; sp < splits; ++sp) sum += expf(ws_lse[sp * split_stride + br] - mx);
        total = mx + logf(sum);
    }
    u16* orow = o + ((i64)q_begin * heads + r) * latent;
    for (int c = threadIdx.x * 4; c < latent; c += 128 * 4) {
        float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (nan) {
            a[0] = a[1] = a[2] = a[3] = TESSERA_NAN;
        } else if (mx != TESSERA_NEG_INF) {
            for (int sp = 0; sp < splits; ++sp) {
                const float ls = ws_lse[sp * split_stride + br];
                if (ls == TESSERA_NEG_INF) continue;
                const float w = expf(ls - total);
                const float4 v = *reinterpret_cast<const float4*>(ws_o + (sp * split_stride + br) * latent + c);
                a[0] += w * v.x;
                a[1] += w * v.y;
                a[2] += w * v.z;
                a[3] += w * v.w;
            }
        }
        uint2 out;
        out.x = pack2<true>(a[0], a[1]);
        out.y = pack2<true>(a[2], a[3]);
        *reinterpret_cast<uint2*>(orow + c) = out;
    }
    if (threadIdx.x == 0) lse[mla_lse_index(b, r, q_begin, heads, s_q, total_q)] = total;
}

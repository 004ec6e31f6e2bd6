// MLA decode's split combine: merges the partial outputs of the KV splits of mla_decode.cu by
// log-sum-exp. Prepended: common.cuh, mla_work.cuh (the request's queries, the split-KV schedule,
// the lse layout).
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
static_assert(TESSERA_THREADS == 128, "the combine runs 4 warps, one row each");

#define MLA_COMBINE_ROWS 4  // rows per CTA, one per warp

// Merges row r of split request i of the schedule (the warp's; this thread is lane `lane`).
__device__ __forceinline__ void mla_combine_row(const float* __restrict__ ws, const int* __restrict__ cu_seqlens_q,
                                                const MlaSchedule& sch, u16* __restrict__ o, float* __restrict__ lse,
                                                int s_q, int total_q, int heads, int latent, int ws_slots, int i,
                                                int r, int lane) {
    const int rows = s_q * heads;
    const int b = sch.split_requests[i];
    const int2 req = sch.req[b];
    const int splits = req.x;
    int q_begin, n_q;
    mla_request_queries(cu_seqlens_q, b, s_q, total_q, q_begin, n_q);
    if (r >= n_q * heads) return;  // rows past the request's (VARLEN), or a bad request
    const float* ws_o = ws + (i64)req.y * rows * latent;
    const float* ws_lse = ws + (i64)ws_slots * rows * latent + (i64)req.y * rows;
    float mx = TESSERA_NEG_INF;
    bool nan = false;
    for (int sp = 0; sp < splits; ++sp) {
        const float v = ws_lse[(i64)sp * rows + r];
        nan |= v != v;
        mx = fmaxf(mx, v);
    }
    float total = TESSERA_NEG_INF;
    if (nan) {
        total = TESSERA_NAN;
    } else if (mx != TESSERA_NEG_INF) {
        float sum = 0.0f;
        for (int sp = 0; sp < splits; ++sp) sum += expf(ws_lse[(i64)sp * rows + r] - mx);
        total = mx + logf(sum);
    }
    // Columns c0 + 4 lane + 128 k (k = 0..3) of every 512, all four through one pass over the
    // splits (unrolled), so that many loads are in flight (a request has up to 64 splits).
    u16* orow = o + ((i64)q_begin * heads + r) * latent;
    for (int c0 = 0; c0 < latent; c0 += 512) {
        float a[4][4];
#pragma unroll
        for (int k = 0; k < 4; ++k) a[k][0] = a[k][1] = a[k][2] = a[k][3] = nan ? TESSERA_NAN : 0.0f;
        if (!nan && mx != TESSERA_NEG_INF) {
#pragma unroll 4
            for (int sp = 0; sp < splits; ++sp) {
                const float ls = ws_lse[(i64)sp * rows + r];
                if (ls == TESSERA_NEG_INF) continue;
                const float w = expf(ls - total);
                const float* src = ws_o + ((i64)sp * rows + r) * latent + c0 + lane * 4;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    if (c0 + lane * 4 + k * 128 >= latent) break;
                    const float4 v = *reinterpret_cast<const float4*>(src + k * 128);
                    a[k][0] += w * v.x;
                    a[k][1] += w * v.y;
                    a[k][2] += w * v.z;
                    a[k][3] += w * v.w;
                }
            }
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int c = c0 + lane * 4 + k * 128;
            if (c >= latent) break;
            uint2 out;
            out.x = pack2<true>(a[k][0], a[k][1]);
            out.y = pack2<true>(a[k][2], a[k][3]);
            *reinterpret_cast<uint2*>(orow + c) = out;
        }
    }
    if (lane == 0) lse[mla_lse_index(b, r, q_begin, heads, s_q, total_q)] = total;
}

// Work items: (split request i, group of 4 rows), item = i * row_quads + group; CTA c takes items
// c, c + gridDim.x, ... below the schedule's split requests x row_quads (none: it exits at once).
// Request b = split_requests[i] of the schedule has n = req[b].x splits, whose partial results
// are in the workspace slots req[b].y .. + n; warp w merges row 4 * group + w, in split order.
//   ws f32 [ws_slots, rows, latent] (partial o), then [ws_slots, rows] (partial lse), then the
//     schedule (i32, mla_work.cuh); rows = s_q * heads (with VARLEN s_q is max_s_q and a
//     request's rows past its own n_q * heads are not written by the decode and skipped here)
//   VARLEN 0: o bf16 [batch, rows, latent]; lse f32 [batch, heads, s_q]
//   VARLEN 1: o bf16 [total_q, heads, latent]; lse f32 [heads, total_q]; request b's queries are
//     the tokens cu_seqlens_q[b] .. cu_seqlens_q[b + 1] (out-of-range offsets: skipped)
// All splits -inf (no key seen): o = 0, lse = -inf. Any NaN: NaN.
extern "C" __global__ void __launch_bounds__(128) mla_combine(
    const float* __restrict__ ws, const int* __restrict__ cu_seqlens_q, const int* __restrict__ schedule,
    u16* __restrict__ o, float* __restrict__ lse, int batch, int s_q, int total_q, int heads, int latent,
    int ws_slots) {
    // Launched programmatically after the decode (common.cuh): its partials and the schedule
    // are complete and visible only after this wait.
    pdl_wait_dependencies();
    const int rows = s_q * heads;
    const int row_quads = (rows + MLA_COMBINE_ROWS - 1) / MLA_COMBINE_ROWS;
    const MlaSchedule sch = mla_schedule_at(schedule, batch);
    const i64 items = (i64)sch.header[1] * row_quads;
    const int lane = threadIdx.x % 32;
    for (i64 item = blockIdx.x; item < items; item += gridDim.x) {
        mla_combine_row(ws, cu_seqlens_q, sch, o, lse, s_q, total_q, heads, latent, ws_slots,
                        (int)(item / row_quads), (int)(item % row_quads) * MLA_COMBINE_ROWS + threadIdx.x / 32,
                        lane);
    }
}


// Tessera CUDA kernels: what one MLA decode CTA works on and where its results go, shared by the
// mma.sync kernel (mla_decode.cu), the Hopper kernels (sm90/mla_decode.cu, sm90/mla_decode_fp8.cu)
// and the split combine (mla_combine.cu), and by the split-KV schedule (mla_schedule.cu) that
// tells each CTA its (request, split): a request's queries (uniform s_q, or cu_seqlens_q offsets
// with VARLEN 1), its length and a split's share of its keys, the schedule's layout, the lse
// layout; and the decode kernels' parameter list. Prepended after common.cuh; needs the VARLEN
// constant.

#ifndef VARLEN
#error "VARLEN is required (0 = s_q queries per request, 1 = cu_seqlens_q offsets)"
#endif

// A TMA tensor map of the cache (the driver's 128-byte CUtensorMap), passed by value: read only by
// the Hopper 64-row kernel's SEESAW builds (sm90/mla_decode.cu; pages of multiples of 64 keys),
// which take two: `cache_map` (bf16 records: [records][576] bf16, boxes of 64 keys x 64 dims;
// FP8 records: [records][656] bytes, boxes of 64 keys x 128 bytes; 128-byte swizzle) and, for
// FP8 records only, `scale_map` (the same [records][656] bytes, boxes of 64 keys x 16 bytes, no
// swizzle: a tile's scales). Every other kernel receives unused ones.
struct __align__(64) MlaCacheMap {
    u64 opaque[16];
};

// The parameters of every decode kernel's entry point `mla_decode` (the mma.sync, Hopper bf16 and
// Hopper FP8 kernels), in the order the host passes them (kernels-cuda/src/ops/mla.rs): the
// problem's (MLA_DECODE_PROBLEM_PARAMS, which device helpers take too), then the cache's maps.
#define MLA_DECODE_PROBLEM_PARAMS                                                                      \
    const u16 *__restrict__ q, const u8 *__restrict__ cache, const int *__restrict__ block_table,      \
        const int *__restrict__ seq_lens, const int *__restrict__ cu_seqlens_q,                        \
        const int *__restrict__ schedule, u16 *__restrict__ o, float *__restrict__ lse,                \
        float *__restrict__ ws, int batch, int s_q, int total_q, int heads, int max_pages,             \
        int page_size, int num_pages, int latent_rt, int rope_rt, int token_bytes, int ws_slots,       \
        int row_groups, int col_chunks, float scale_log2
#define MLA_DECODE_PARAMS                                                                         \
    MLA_DECODE_PROBLEM_PARAMS, const __grid_constant__ MlaCacheMap cache_map,                      \
        const __grid_constant__ MlaCacheMap scale_map

// Request b's queries: its first packed query token (uniform: b * s_q) and their count (VARLEN:
// 0 when its offsets are out of range: start < 0, count outside 0..=s_q, end > total_q).
__device__ __forceinline__ void mla_request_queries(const int* __restrict__ cu_seqlens_q, int b, int s_q,
                                                    int total_q, int& q_begin, int& n_q) {
#if VARLEN
    q_begin = cu_seqlens_q[b];
    const i64 n_raw = (i64)cu_seqlens_q[b + 1] - q_begin;
    const bool bad_q = q_begin < 0 || n_raw < 0 || n_raw > s_q || (i64)q_begin + n_raw > total_q;
    n_q = bad_q ? 0 : (int)n_raw;
#else
    (void)cu_seqlens_q;
    (void)total_q;
    q_begin = b * s_q;
    n_q = s_q;
#endif
}

// Where row r (= i * heads + h) of request b puts its lse: f32 [batch, heads, s_q], or
// [heads, total_q] with VARLEN.
__device__ __forceinline__ i64 mla_lse_index(int b, int r, int q_begin, int heads, int s_q, int total_q) {
    const int i = r / heads, h = r % heads;
#if VARLEN
    (void)b;
    (void)s_q;
    return (i64)h * total_q + q_begin + i;
#else
    (void)q_begin;
    (void)total_q;
    return ((i64)b * heads + h) * s_q + i;
#endif
}

// The split-KV schedule of one decode launch, written by mla_schedule.cu on the same stream before
// the decode and read by the decode kernels and the combine: i32 in the workspace after the
// partial results, for `batch` requests and `max_units` (request, split) units. The rule is
// tessera_core::ops::mla::mla_kv_schedule (core/src/ops/mla.rs); the host's copy of this layout
// is MlaDecodePlan::schedule_len (kernels-cuda/src/ops/mla.rs).
//   header          [4]: units launched, requests of more than one split, key tiles per split, 0
//   req             int2 [batch]: (splits, first workspace slot; -1 with one split)
//   split_requests  [batch]: the requests of more than one split, in order (the first header[1])
//   (one int of padding when batch is odd)
//   units           int2 [max_units]: (request, split) in launch order (the first header[0])
#define MLA_SCHEDULE_HEADER 4
struct MlaSchedule {
    int* header;
    int2* req;
    int* split_requests;
    int2* units;
};

__device__ __forceinline__ MlaSchedule mla_schedule_at(const int* base, int batch) {
    int* p = const_cast<int*>(base);
    MlaSchedule s;
    s.header = p;
    s.req = reinterpret_cast<int2*>(p + MLA_SCHEDULE_HEADER);
    s.split_requests = p + MLA_SCHEDULE_HEADER + 2 * batch;
    s.units = reinterpret_cast<int2*>(p + MLA_SCHEDULE_HEADER + 3 * batch + (batch & 1));
    return s;
}

struct MlaCtaWork {
    int b;           // the request
    int split;       // which of its splits
    int splits;      // its splits (1: the outputs are written directly, not to the workspace)
    int ws_slot;     // the workspace slot of this split (-1 with one split)
    int q_begin;     // the request's first packed query token (uniform: b * s_q)
    int n_q;         // its queries (VARLEN: 0 when its offsets are out of range)
    int rows_total;  // its rows, n_q * heads (row r = i * heads + h)
    int rows_pad;    // rows per request in the workspace, s_q * heads
    int rows_here;   // of the CTA's rows r0.., those of the request (the rest are padding)
    bool bad_len;    // seq_lens[b] outside 0..=max_pages * page_size (then no keys are read)
    int len;         // its keys (0 when bad_len)
    int k_begin;     // this split's keys: k_begin..k_end, in ntiles tiles of key_tile
    int k_end;
    int ntiles;
};

// The work of the CTA of unit `unit` (a (request, split) pair), rows r0..r0 + rows_per_cta - 1.
// With a schedule (ws_slots > 0) the unit is the schedule's; without (every request one split),
// unit b is request b. False when the CTA has nothing to do: a unit past the schedule's, or no
// rows (past the request's, VARLEN only); it leaves at once, before any barrier. The keys of the
// split are those the CTA's last row sees (causal over the s_q positions: query i sees keys
// j < len - (n_q - 1 - i)), cut into pieces of the schedule's key tiles per split.
// Every CTA of a decode kernel calls it first: with a schedule the host launches the decode
// programmatically after mla_schedule.cu (common.cuh), so the CTA waits here for the schedule
// to be written. (The decode kernels let the combine's CTAs start at their epilogue:
// mla_decode_epilogue_begins.)
__device__ __forceinline__ bool mla_cta_work(const int* __restrict__ seq_lens, const int* __restrict__ cu_seqlens_q,
                                             const int* __restrict__ schedule, int unit, int r0, int rows_per_cta,
                                             int key_tile, int batch, int s_q, int total_q, int heads, int max_pages,
                                             int page_size, int ws_slots, MlaCtaWork& w) {
    pdl_wait_dependencies();
    i64 keys_per_split = 0;
    if (ws_slots > 0) {
        const MlaSchedule sch = mla_schedule_at(schedule, batch);
        if (unit >= sch.header[0]) return false;
        const int2 u = sch.units[unit];
        const int2 req = sch.req[u.x];
        w.b = u.x;
        w.split = u.y;
        w.splits = req.x;
        w.ws_slot = req.x > 1 ? req.y + u.y : -1;
        keys_per_split = (i64)sch.header[2] * key_tile;
    } else {
        if (unit >= batch) return false;
        w.b = unit;
        w.split = 0;
        w.splits = 1;
        w.ws_slot = -1;
    }
    const int b = w.b;
    mla_request_queries(cu_seqlens_q, b, s_q, total_q, w.q_begin, w.n_q);
    w.rows_total = w.n_q * heads;
    w.rows_pad = s_q * heads;
    if (r0 >= w.rows_total) return false;
    w.rows_here = min(rows_per_cta, w.rows_total - r0);
    const int len_raw = seq_lens[b];
    w.bad_len = len_raw < 0 || (i64)len_raw > (i64)max_pages * page_size;
    w.len = w.bad_len ? 0 : len_raw;
    const int i_last = (r0 + w.rows_here - 1) / heads;
    const int kv_end = max(0, w.len - (w.n_q - 1 - i_last));
    const i64 k_begin = w.splits == 1 ? 0 : min((i64)w.split * keys_per_split, (i64)w.len);
    w.k_begin = (int)k_begin;
    w.k_end = w.splits == 1 ? kv_end : (int)min(k_begin + keys_per_split, (i64)kv_end);
    w.ntiles = w.k_end > w.k_begin ? (w.k_end - w.k_begin + key_tile - 1) / key_tile : 0;
    return true;
}

// Row r's log-sum-exp (natural log): into lse when the CTA's request has one split, else into the
// split workspace after its partial outputs ([ws_slots][rows_pad] f32 behind [ws_slots][rows_pad]
// [latent]).
__device__ __forceinline__ void mla_store_row_lse(const MlaCtaWork& work, float* __restrict__ lse,
                                                  float* __restrict__ ws, int r, int heads, int s_q, int total_q,
                                                  int ws_slots, int latent, float lse_v) {
    if (work.splits == 1)
        lse[mla_lse_index(work.b, r, work.q_begin, heads, s_q, total_q)] = lse_v;
    else
        ws[(i64)ws_slots * work.rows_pad * latent + (i64)work.ws_slot * work.rows_pad + r] = lse_v;
}

// Four output values of row r at latent columns d..d + 3 (d a multiple of 4): bf16 into o when the
// CTA's request has one split, else f32 into its slot of the split workspace.
__device__ __forceinline__ void mla_store_row4(const MlaCtaWork& work, u16* __restrict__ o, float* __restrict__ ws,
                                               int r, int heads, int latent, int d, float4 v) {
    if (work.splits == 1) {
        u16* orow = o + ((i64)work.q_begin * heads + r) * latent + d;
        *reinterpret_cast<uint2*>(orow) = make_uint2(pack2<true>(v.x, v.y), pack2<true>(v.z, v.w));
    } else {
        float* orow = ws + ((i64)work.ws_slot * work.rows_pad + r) * latent + d;
        *reinterpret_cast<float4*>(orow) = v;
    }
}

// A decode CTA's main loop is done: the combine (launched programmatically after the decode)
// may start its CTAs once every decode CTA got here or exited, and they wait for the whole
// decode before reading its partials. (A trigger at the CTA's start measured the same within
// the noise at h_q 16, 2026-11-30; here the combine's CTAs do not sit beside the decode's.)
__device__ __forceinline__ void mla_decode_epilogue_begins() { pdl_launch_dependents(); }

// The byte offset in the cache of key j of request row bt_row of the block table (bt_row = the
// request's first entry), or -1 when j is at or past k_end (nothing to read) or its page entry
// is outside 0..num_pages (then bad_page is set to 1: the outputs become NaN; the page is never
// read).
__device__ __forceinline__ i64 mla_record_offset(const int* __restrict__ block_table, i64 bt_row, int j, int k_end,
                                                 int page_size, int num_pages, int token_bytes, int& bad_page) {
    if (j >= k_end) return -1;
    const int p = j / page_size;
    const int page = __ldg(block_table + bt_row + p);
    if (page < 0 || page >= num_pages) {
        bad_page = 1;
        return -1;
    }
    return ((i64)page * page_size + (j - p * page_size)) * token_bytes;
}

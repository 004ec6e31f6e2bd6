// MLA decode's split-KV schedule, computed on the device from seq_lens (and cu_seqlens_q with
// VARLEN 1) on the decode's stream just before it, so that a decode step needs no host
// synchronization (capturable in a CUDA graph, replayable with new lengths). It writes the
// schedule of mla_work.cuh: one piece length (key tiles per split) for the batch, each request's
// split count, the (request, split) units in launch order, the workspace slots of the split
// requests. Prepended: common.cuh, mla_work.cuh.
//
// The rule is tessera_core::ops::mla::mla_kv_schedule (core/src/ops/mla.rs), the CPU mirror that
// the tests check this kernel against: keep the two line by line comparable (the numbered steps
// are the Rust doc's). Integer arithmetic only, so that both give the same schedule bit for bit.
//
// Compile-time constants (required): VARLEN 0 = s_q queries per request, 1 = cu_seqlens_q
// offsets (as in mla_decode.cu); MAX_KV_SPLITS (tessera_core::MLA_MAX_KV_SPLITS) and
// SCHEDULE_BINS (tessera_core::ops::mla::MLA_SCHEDULE_BINS), the rule's constants;
// TESSERA_SMEM_BYTES 0, TESSERA_THREADS 512.
//
// Launch: one CTA. Bounds the host guarantees (MlaDecodePlan): batch * blocks per request and
// max_units * blocks within 2^31, key tiles within 2^26 (lengths within 2^31 keys of at least 32),
// max_units >= batch.

#ifndef VARLEN
#error "VARLEN is required (0 = s_q queries per request, 1 = cu_seqlens_q offsets)"
#endif
#ifndef MAX_KV_SPLITS
#error "MAX_KV_SPLITS is required (the most splits of one request)"
#endif
#ifndef SCHEDULE_BINS
#error "SCHEDULE_BINS is required (bins of the launch order's sort key)"
#endif
#if VARLEN != 0 && VARLEN != 1
#error "VARLEN must be 0 or 1"
#endif
#if MAX_KV_SPLITS < 1 || SCHEDULE_BINS < 1 || SCHEDULE_BINS > 512
#error "MAX_KV_SPLITS must be at least 1 and SCHEDULE_BINS in 1..=512 (a thread per bin)"
#endif
static_assert(TESSERA_SMEM_BYTES == 0, "the schedule uses no dynamic shared memory");
static_assert(TESSERA_THREADS == 512, "the schedule runs one CTA of 16 warps");

#define MLA_SCHED_THREADS 512
#define MLA_SCHED_WARPS (MLA_SCHED_THREADS / 32)

// A 128-bit product, for the exact fill comparisons (u128 in the Rust rule).
struct MlaU128 {
    u64 hi, lo;
};
__device__ __forceinline__ MlaU128 mla_mul128(u64 a, u64 b) { return MlaU128{__umul64hi(a, b), a * b}; }
__device__ __forceinline__ bool mla_less128(MlaU128 a, MlaU128 b) {
    return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo);
}

// fill_waves_splits (core/src/ops/mla.rs): the wave-filling split count for s * work / per_split
// blocks, s in 1..=cap, `slots` blocks at once. Here work < 2^58 and per_split * slots < 2^58, so
// every value below fits a u64 and the products are compared in 128 bits.
__device__ int mla_fill_waves_splits(u64 work, u64 per_split, int cap, int slots) {
    const u64 per_wave = (per_split > 0 ? per_split : 1) * (u64)(slots > 0 ? slots : 1);
    // (blocks, waves * slots), both scaled by per_split.
    auto fill = [&](int s, u64& blocks, u64& room) {
        blocks = (u64)s * work;
        u64 waves = (blocks + per_wave - 1) / per_wave;
        waves = waves > 0 ? waves : 1;
        room = waves * per_wave;
    };
    u64 best_blocks, best_room;
    fill(1, best_blocks, best_room);
    int best_s = 1;
    for (int s = 1; s <= cap; ++s) {
        u64 blocks, room;
        fill(s, blocks, room);
        if (!mla_less128(mla_mul128(20, blocks), mla_mul128(17, room))) return s;
        if (mla_less128(mla_mul128(best_blocks, room), mla_mul128(blocks, best_room))) {
            best_blocks = blocks;
            best_room = room;
            best_s = s;
        }
    }
    return best_s;
}

// Request b as the schedule weighs it (MlaScheduleRequest): its key tiles (0 for a length outside
// 0..=max_pages * page_size, whose keys are not read) and the blocks of each split (row groups
// holding its queries x column chunks; 0 without queries).
struct MlaSchedRequest {
    int tiles;
    int blocks;
};

__device__ __forceinline__ MlaSchedRequest mla_sched_request(const int* __restrict__ seq_lens,
                                                             const int* __restrict__ cu_seqlens_q, int b, int s_q,
                                                             int total_q, int heads, int max_pages, int page_size,
                                                             int key_tile, int rows_per_cta, int col_chunks) {
    int q_begin, n_q;
    mla_request_queries(cu_seqlens_q, b, s_q, total_q, q_begin, n_q);
    const int len_raw = seq_lens[b];
    const bool bad_len = len_raw < 0 || (i64)len_raw > (i64)max_pages * page_size;
    const int len = bad_len ? 0 : len_raw;
    MlaSchedRequest r;
    r.tiles = (int)(((i64)len + key_tile - 1) / key_tile);
    r.blocks = (n_q * heads + rows_per_cta - 1) / rows_per_cta * col_chunks;
    return r;
}

// A request's splits in pieces of tiles_per_split tiles (splits_of in the Rust rule).
__device__ __forceinline__ int mla_sched_splits(MlaSchedRequest r, int tiles_per_split) {
    return r.blocks == 0 || r.tiles == 0 ? 1 : (r.tiles + tiles_per_split - 1) / tiles_per_split;
}

// The CTA-wide sum / maximum of v (every thread gets it). `red` is shared scratch of a warp's
// worth; the trailing barrier lets the next call reuse it.
template <typename T, bool MAX>
__device__ __forceinline__ T mla_sched_reduce(T v, T* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const T x = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? (x > v ? x : v) : v + x;
    }
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    T r = red[0];
    for (int w = 1; w < MLA_SCHED_WARPS; ++w) r = MAX ? (red[w] > r ? red[w] : r) : r + red[w];
    __syncthreads();
    return r;
}

// Exclusive prefix sums over the CTA's threads (in thread order) of three counts, and their totals.
__device__ __forceinline__ void mla_sched_scan3(int3 v, int3& before, int3& total, int3* warp_sums) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int3 inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int x = __shfl_up_sync(0xffffffffu, inc.x, o);
        const int y = __shfl_up_sync(0xffffffffu, inc.y, o);
        const int z = __shfl_up_sync(0xffffffffu, inc.z, o);
        if (lane >= o) {
            inc.x += x;
            inc.y += y;
            inc.z += z;
        }
    }
    if (lane == 31) warp_sums[warp] = inc;
    __syncthreads();
    int3 w_before = make_int3(0, 0, 0), all = make_int3(0, 0, 0);
    for (int w = 0; w < MLA_SCHED_WARPS; ++w) {
        const int3 s = warp_sums[w];
        if (w < warp) {
            w_before.x += s.x;
            w_before.y += s.y;
            w_before.z += s.z;
        }
        all.x += s.x;
        all.y += s.y;
        all.z += s.z;
    }
    __syncthreads();
    before = make_int3(w_before.x + inc.x - v.x, w_before.y + inc.y - v.y, w_before.z + inc.z - v.z);
    total = all;
}

extern "C" __global__ void __launch_bounds__(MLA_SCHED_THREADS) mla_schedule(
    const int* __restrict__ seq_lens, const int* __restrict__ cu_seqlens_q, int* __restrict__ schedule, int batch,
    int s_q, int total_q, int heads, int max_pages, int page_size, int key_tile, int rows_per_cta, int col_chunks,
    int slots, int max_units) {
    __shared__ u64 red64[MLA_SCHED_WARPS];
    __shared__ int red32[MLA_SCHED_WARPS];
    __shared__ int3 scan[MLA_SCHED_WARPS];
    __shared__ int bin_next[SCHEDULE_BINS];
    __shared__ int warp_bin[MLA_SCHED_WARPS][SCHEDULE_BINS];
    // The decode (launched programmatically, common.cuh) may start its CTAs now: each waits in
    // mla_cta_work for this grid to complete before reading the schedule.
    pdl_launch_dependents();
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const MlaSchedule sch = mla_schedule_at(schedule, batch);
    max_units = max(max_units, batch);
    // Request b as the schedule weighs it. Each pass below visits b = tid, tid + 512, ..: the
    // first (every request when batch <= 512) is read once, here, and kept in registers.
    auto read_request = [&](int b) {
        return mla_sched_request(seq_lens, cu_seqlens_q, b, s_q, total_q, heads, max_pages, page_size, key_tile,
                                 rows_per_cta, col_chunks);
    };
    const MlaSchedRequest mine = tid < batch ? read_request(tid) : MlaSchedRequest{0, 0};
    auto request = [&](int b) { return b == tid ? mine : read_request(b); };

    // 1. The longest request with queries, and the work.
    int t_max = 0;
    u64 work = 0;
    for (int b = tid; b < batch; b += MLA_SCHED_THREADS) {
        const MlaSchedRequest r = request(b);
        if (r.blocks > 0) t_max = max(t_max, r.tiles);
        work += (u64)r.tiles * (u64)r.blocks;
    }
    t_max = mla_sched_reduce<int, true>(t_max, red32);
    work = mla_sched_reduce<u64, false>(work, red64);
    int tiles_per_split = t_max;
    if (t_max > 0) {
        const int cap = min(max(t_max / 2, 1), MAX_KV_SPLITS);
        // 2. The longest request's splits (every thread computes the same).
        int s = mla_fill_waves_splits(work, (u64)t_max, cap, slots);
        // 4. Within the units: the largest s' <= s whose units fit (units grow with s').
        // The units of pieces of ceil(t_max / s) tiles: the sum of every request's splits (up to
        // 64 each: a u64 sum).
        auto units = [&](int s) {
            const int piece = (t_max + s - 1) / s;
            u64 n = 0;
            for (int b = tid; b < batch; b += MLA_SCHED_THREADS) n += (u64)mla_sched_splits(request(b), piece);
            return mla_sched_reduce<u64, false>(n, red64);
        };
        if (s > 1 && units(s) > (u64)max_units) {
            int fits = 1, over = s;  // units(1) = batch <= max_units
            while (over - fits > 1) {
                const int mid = (fits + over) / 2;
                if (units(mid) > (u64)max_units)
                    over = mid;
                else
                    fits = mid;
            }
            s = fits;
        }
        // 3. The pieces.
        tiles_per_split = (t_max + s - 1) / s;
    }

    // 5a. Every request's splits and workspace slots, and the splits that are not a request's
    // last (requests in order): exclusive prefix sums in request order, a chunk of the CTA at a time.
    int3 carry = make_int3(0, 0, 0);  // (lead units, workspace slots, split requests) so far
    for (int base = 0; base < batch; base += MLA_SCHED_THREADS) {
        const int b = base + tid;
        int splits = 0;
        if (b < batch) splits = mla_sched_splits(request(b), tiles_per_split);
        const bool split = splits > 1;
        const int3 v = make_int3(b < batch ? splits - 1 : 0, split ? splits : 0, split ? 1 : 0);
        int3 before, total;
        mla_sched_scan3(v, before, total, scan);
        if (b < batch) {
            const int lead0 = carry.x + before.x;
            for (int i = 0; i + 1 < splits; ++i) sch.units[lead0 + i] = make_int2(b, i);
            sch.req[b] = make_int2(splits, split ? carry.y + before.y : -1);
            if (split) sch.split_requests[carry.z + before.z] = b;
        }
        carry.x += total.x;
        carry.y += total.y;
        carry.z += total.z;
    }
    const int leads = carry.x;

    // 5b. Then the last split of every request, by decreasing bin of its tiles (ties by request
    // index): a stable counting sort over the bins.
    auto last_bin = [&](int b, int& splits) {
        const MlaSchedRequest r = request(b);
        splits = mla_sched_splits(r, tiles_per_split);
        const int rest = r.blocks == 0 ? 0 : r.tiles - (splits - 1) * tiles_per_split;
        return (int)((u64)rest * SCHEDULE_BINS / ((u64)tiles_per_split + 1));
    };
    if (tid < SCHEDULE_BINS) bin_next[tid] = 0;
    __syncthreads();
    for (int b = tid; b < batch; b += MLA_SCHED_THREADS) {
        int splits;
        atomicAdd(&bin_next[last_bin(b, splits)], 1);  // integer counts: order-independent
    }
    __syncthreads();
    if (warp == 0) {
        // Each bin's first position, bins in decreasing order after the leads: lane l takes
        // positions l * PER .. of that order (bin SCHEDULE_BINS - 1 - position), an exclusive
        // scan over the lanes.
        constexpr int PER = (SCHEDULE_BINS + 31) / 32;
        int mine_n = 0;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int pos = lane * PER + i;
            if (pos < SCHEDULE_BINS) mine_n += bin_next[SCHEDULE_BINS - 1 - pos];
        }
        int inc = mine_n;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int x = __shfl_up_sync(0xffffffffu, inc, o);
            if (lane >= o) inc += x;
        }
        int at = leads + inc - mine_n;
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int pos = lane * PER + i;
            if (pos < SCHEDULE_BINS) {
                const int k = SCHEDULE_BINS - 1 - pos;
                const int n = bin_next[k];
                bin_next[k] = at;
                at += n;
            }
        }
    }
    __syncthreads();
    for (int base = 0; base < batch; base += MLA_SCHED_THREADS) {
        for (int k = tid; k < MLA_SCHED_WARPS * SCHEDULE_BINS; k += MLA_SCHED_THREADS)
            warp_bin[k / SCHEDULE_BINS][k % SCHEDULE_BINS] = 0;
        __syncthreads();
        const int b = base + tid;
        int splits = 1;
        const int key = b < batch ? last_bin(b, splits) : SCHEDULE_BINS;  // past the batch: its own key
        const u32 peers = __match_any_sync(0xffffffffu, key);
        const int rank = __popc(peers & ((1u << lane) - 1u));  // same-bin lanes before this one
        if (b < batch && rank == 0) warp_bin[warp][key] = __popc(peers);
        __syncthreads();
        if (tid < SCHEDULE_BINS) {
            int at = bin_next[tid];
            for (int w = 0; w < MLA_SCHED_WARPS; ++w) {
                const int n = warp_bin[w][tid];
                warp_bin[w][tid] = at;
                at += n;
            }
            bin_next[tid] = at;
        }
        __syncthreads();
        if (b < batch) sch.units[warp_bin[warp][key] + rank] = make_int2(b, splits - 1);
        __syncthreads();
    }
    if (tid == 0) {
        sch.header[0] = leads + batch;
        sch.header[1] = carry.z;
        sch.header[2] = tiles_per_split;
        sch.header[3] = 0;
    }
}

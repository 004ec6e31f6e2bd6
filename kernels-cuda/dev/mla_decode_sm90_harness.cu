// Development harness for kernels/sm90/mla_decode.cu on the GPU machine (nvcc, no Rust there).
// Built by dev/mla_decode_sm90.sh; checks the kernel against a double-precision CPU reference on
// edge cases (lengths 0/1/63/64/65, pages of 16/64, permuted block tables, NaN in unused slots,
// s_q 1..4, split mode combined on the CPU), then times it on the standard shapes (CUDA events
// per launch, median).
//   harness --check
//   harness --time                  (b 64/128 x s_k 4096..32768 x (h 128 | h 16) x s_q 1/2)
//   harness --one B S_Q H S_K       (one timing case)
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../kernels/common.cuh"
#include "../kernels/mla_work.cuh"
#include "../kernels/sm90/hopper.cuh"
#include "../kernels/sm90/wgmma.cuh"
#include "../kernels/sm90/mla_decode.cu"
#include "harness.cuh"


static const int QK = 576, LAT = 512, TB = 1152;

static u16 f2bf(float f) {
    u32 u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (u16)(u >> 16);
}
static float bf2f(u16 h) {
    u32 u = (u32)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}


struct Case {
    int batch, s_q, heads, page_size, splits;
    std::vector<int> lens;
};

static int row_groups_of(int s_q, int heads) { return (s_q * heads + 63) / 64; }

// The split-KV schedule (the layout of mla_work.cuh) of S uniform splits of every one of the B
// requests, tiles_per_split key tiles each, on the device; split sp of request b writes
// workspace slot b * S + sp. Null with S = 1: the kernel's direct mode (ws_slots 0).
static int* uniform_schedule(int B, int S, int tiles_per_split) {
    if (S == 1) return nullptr;
    std::vector<int> s(MLA_SCHEDULE_HEADER + 3 * B + (B & 1) + 2 * B * S, 0);
    s[0] = B * S;  // units
    s[1] = B;      // requests of more than one split
    s[2] = tiles_per_split;
    int* req = s.data() + MLA_SCHEDULE_HEADER;
    int* split_requests = req + 2 * B;
    int* units = split_requests + B + (B & 1);
    for (int b = 0; b < B; ++b) {
        req[2 * b] = S;
        req[2 * b + 1] = b * S;
        split_requests[b] = b;
    }
    for (int u = 0; u < B * S; ++u) {
        units[2 * u] = u / S;
        units[2 * u + 1] = u % S;
    }
    int* d;
    CK(cudaMalloc(&d, s.size() * 4));
    CK(cudaMemcpy(d, s.data(), s.size() * 4, cudaMemcpyHostToDevice));
    return d;
}

// Key tiles of 64 per split for S splits of max_len keys.
static int tiles_per_split(int max_len, int S) { return ((max_len + S - 1) / S + 63) / 64; }

// Runs one case; with check, compares against the CPU reference and returns the failures.
static int run_check(const Case& c, u64 seed) {
    std::mt19937_64 rng(seed);
    const int B = c.batch, H = c.heads, SQ = c.s_q, P = c.page_size;
    int max_len = 1;
    for (int l : c.lens) max_len = std::max(max_len, l);
    const int max_pages = (max_len + P - 1) / P;
    const int num_pages = B * max_pages + 3;
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<u16> q((size_t)B * SQ * H * QK), cache((size_t)num_pages * P * QK);
    for (auto& x : q) x = f2bf(u(rng));
    for (auto& x : cache) x = 0x7fc0;  // NaN in every slot not written below
    std::vector<int> perm(num_pages);
    for (int i = 0; i < num_pages; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int> bt((size_t)B * max_pages);
    for (int b = 0; b < B; ++b)
        for (int p = 0; p < max_pages; ++p) bt[(size_t)b * max_pages + p] = perm[b * max_pages + p];
    for (int b = 0; b < B; ++b)
        for (int j = 0; j < c.lens[b]; ++j) {
            const int page = bt[(size_t)b * max_pages + j / P];
            u16* rec = &cache[((size_t)page * P + j % P) * QK];
            for (int d = 0; d < QK; ++d) rec[d] = f2bf(u(rng));
        }
    const float scale = 1.0f / sqrtf((float)QK);
    const float scale_log2 = scale * 1.4426950408889634f;
    const int rg = row_groups_of(SQ, H), S = c.splits;
    u16 *dq, *dcache, *dout;
    int *dbt, *dlens;
    float *dlse, *dws;
    CK(cudaMalloc(&dq, q.size() * 2));
    CK(cudaMalloc(&dcache, cache.size() * 2));
    CK(cudaMalloc(&dbt, bt.size() * 4));
    CK(cudaMalloc(&dlens, B * 4));
    CK(cudaMalloc(&dout, (size_t)B * SQ * H * LAT * 2));
    CK(cudaMalloc(&dlse, (size_t)B * H * SQ * 4));
    const size_t ws_n = (size_t)S * B * SQ * H * (LAT + 1);
    CK(cudaMalloc(&dws, ws_n * 4));
    CK(cudaMemcpy(dq, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dcache, cache.data(), cache.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dbt, bt.data(), bt.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dlens, c.lens.data(), B * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(dout, 0xff, (size_t)B * SQ * H * LAT * 2));
    CK(cudaMemset(dlse, 0xff, (size_t)B * H * SQ * 4));
    CK(cudaMemset(dws, 0xff, ws_n * 4));
    int* dsched = uniform_schedule(B, S, tiles_per_split(max_len, S));
    const int ws_slots = S > 1 ? B * S : 0;
    mla_decode<<<B * S * rg, MLA90_THREADS, TESSERA_SMEM_BYTES>>>(dq, (const u8*)dcache, dbt, dlens, nullptr, dsched,
                                                                  dout, dlse, dws, B, SQ, B * SQ, H, max_pages, P,
                                                                  num_pages, 0, 0, TB, ws_slots, rg, 1, scale_log2);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<u16> out((size_t)B * SQ * H * LAT);
    std::vector<float> lse((size_t)B * H * SQ), ws(ws_n);
    CK(cudaMemcpy(out.data(), dout, out.size() * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(ws.data(), dws, ws_n * 4, cudaMemcpyDeviceToHost));
    int fails = 0;
    double max_err = 0, max_lse_err = 0;
    std::vector<double> s, ref(LAT);
    for (int b = 0; b < B; ++b)
        for (int r = 0; r < SQ * H; ++r) {
            const int i = r / H, h = r % H;
            const int vis = std::max(0, c.lens[b] - (SQ - 1 - i));
            s.assign(vis, 0.0);
            double m = -INFINITY;
            const u16* qr = &q[((size_t)b * SQ * H + r) * QK];
            for (int j = 0; j < vis; ++j) {
                const u16* kr = &cache[((size_t)bt[(size_t)b * max_pages + j / P] * P + j % P) * QK];
                double acc = 0;
                for (int d = 0; d < QK; ++d) acc += (double)bf2f(qr[d]) * bf2f(kr[d]);
                s[j] = acc * scale;
                m = std::max(m, s[j]);
            }
            double l = 0;
            std::fill(ref.begin(), ref.end(), 0.0);
            for (int j = 0; j < vis; ++j) {
                const double p = exp(s[j] - m);
                l += p;
                const u16* kr = &cache[((size_t)bt[(size_t)b * max_pages + j / P] * P + j % P) * QK];
                for (int d = 0; d < LAT; ++d) ref[d] += p * bf2f(kr[d]);
            }
            const double ref_lse = vis ? m + log(l) : -INFINITY;
            // The kernel's result for this row (split mode: combined here).
            std::vector<double> got(LAT, 0.0);
            double got_lse;
            if (S == 1) {
                for (int d = 0; d < LAT; ++d) got[d] = bf2f(out[((size_t)b * SQ * H + r) * LAT + d]);
                got_lse = lse[((size_t)b * H + h) * SQ + i];
            } else {
                const float* wl = ws.data() + (size_t)S * B * SQ * H * LAT;
                double mx = -INFINITY;
                for (int sp = 0; sp < S; ++sp) mx = std::max(mx, (double)wl[((size_t)b * S + sp) * SQ * H + r]);
                double tot = 0;
                for (int sp = 0; sp < S; ++sp) {
                    const double ls = wl[((size_t)b * S + sp) * SQ * H + r];
                    if (ls == -INFINITY) continue;
                    const double w = exp(ls - mx);
                    tot += w;
                    for (int d = 0; d < LAT; ++d) got[d] += w * ws[(((size_t)b * S + sp) * SQ * H + r) * LAT + d];
                }
                for (int d = 0; d < LAT; ++d) got[d] = tot > 0 ? got[d] / tot : 0.0;
                got_lse = tot > 0 ? mx + log(tot) : -INFINITY;
            }
            double err = 0;
            for (int d = 0; d < LAT; ++d) {
                const double want = vis ? ref[d] / l : 0.0;
                const double e = fabs(got[d] - want);
                err = std::isnan(got[d]) ? INFINITY : std::max(err, e);
            }
            const double lse_err = (vis == 0) ? (got_lse == -INFINITY ? 0 : INFINITY) : fabs(got_lse - ref_lse);
            max_err = std::max(max_err, err);
            max_lse_err = std::max(max_lse_err, lse_err);
            if (err > 2e-2 || !(lse_err < 2e-3)) {
                if (fails < 5)
                    printf("  MISMATCH b=%d r=%d (i=%d h=%d) vis=%d: o err %.4g, lse got %.6f want %.6f\n", b, r, i, h,
                           vis, err, got_lse, ref_lse);
                ++fails;
            }
        }
    printf("CHECK b=%d s_q=%d h=%d page=%d splits=%d lens=[", B, SQ, H, P, S);
    for (int l : c.lens) printf("%d ", l);
    printf("]: %s (max o err %.3g, max lse err %.3g)\n", fails ? "FAIL" : "PASS", max_err, max_lse_err);
    cudaFree(dq);
    cudaFree(dcache);
    cudaFree(dbt);
    cudaFree(dlens);
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(dws);
    cudaFree(dsched);
    return fails;
}

static void run_time(int B, int SQ, int H, int len, int P) {
    const int max_pages = (len + P - 1) / P, num_pages = B * max_pages;
    const int rg = row_groups_of(SQ, H);
    int S = std::max(1, 132 / (B * rg));
    if (S > 1) S = std::min(S, (len + 63) / 64);
    u16 *dq, *dcache, *dout;
    int *dbt, *dlens;
    float *dlse, *dws;
    const size_t cache_n = (size_t)num_pages * P * QK;
    CK(cudaMalloc(&dq, (size_t)B * SQ * H * QK * 2));
    CK(cudaMalloc(&dcache, cache_n * 2));
    CK(cudaMalloc(&dbt, (size_t)B * max_pages * 4));
    CK(cudaMalloc(&dlens, B * 4));
    CK(cudaMalloc(&dout, (size_t)B * SQ * H * LAT * 2));
    CK(cudaMalloc(&dlse, (size_t)B * H * SQ * 4));
    CK(cudaMalloc(&dws, (size_t)S * B * SQ * H * (LAT + 1) * 4));
    fill_half<<<1024, 256>>>(dq, (size_t)B * SQ * H * QK, 1, 1.0f, 1);
    fill_half<<<4096, 256>>>(dcache, cache_n, 2, 1.0f, 1);
    std::vector<int> bt((size_t)B * max_pages), lens(B, len);
    std::mt19937_64 rng(7);
    for (int i = 0; i < num_pages; ++i) bt[i] = i;
    std::shuffle(bt.begin(), bt.end(), rng);
    CK(cudaMemcpy(dbt, bt.data(), bt.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dlens, lens.data(), B * 4, cudaMemcpyHostToDevice));
    const float scale_log2 = 1.0f / sqrtf((float)QK) * 1.4426950408889634f;
    int* dsched = uniform_schedule(B, S, tiles_per_split(len, S));
    const int ws_slots = S > 1 ? B * S : 0;
    auto launch = [&]() {
        mla_decode<<<B * S * rg, MLA90_THREADS, TESSERA_SMEM_BYTES>>>(
            dq, (const u8*)dcache, dbt, dlens, nullptr, dsched, dout, dlse, dws, B, SQ, B * SQ, H, max_pages, P,
            num_pages, 0, 0, TB, ws_slots, rg, 1, scale_log2);
    };
    launch();
    launch();
    CK(cudaDeviceSynchronize());
    const int reps = 15;
    std::vector<cudaEvent_t> ev(2 * reps);
    for (auto& e : ev) CK(cudaEventCreate(&e));
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(ev[2 * i]));
        launch();
        CK(cudaEventRecord(ev[2 * i + 1]));
    }
    CK(cudaDeviceSynchronize());
    CK(cudaGetLastError());
    std::vector<float> ms(reps);
    for (int i = 0; i < reps; ++i) CK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    std::sort(ms.begin(), ms.end());
    const double t = ms[reps / 2] * 1e-3;
    const double flops = 2.0 * B * SQ * H * (double)len * (QK + LAT);
    const double bytes = (double)B * len * TB;
    printf("TIME b=%d s_q=%d h=%d s_k=%d page=%d splits=%d: %.1f us %.0f TFLOPS %.0f GB/s\n", B, SQ, H, len, P, S,
           t * 1e6, flops / t * 1e-12, bytes / t * 1e-9);
    for (auto& e : ev) CK(cudaEventDestroy(e));
    cudaFree(dq);
    cudaFree(dcache);
    cudaFree(dbt);
    cudaFree(dlens);
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(dws);
    cudaFree(dsched);
}

int main(int argc, char** argv) {
    CK(cudaFuncSetAttribute(mla_decode, cudaFuncAttributeMaxDynamicSharedMemorySize, TESSERA_SMEM_BYTES));
    bool check = false, time = false;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--check")) check = true;
        if (!strcmp(argv[i], "--time")) time = true;
        // --one B S_Q H S_K: one timing case (for ncu).
        if (!strcmp(argv[i], "--one") && i + 4 < argc) {
            run_time(atoi(argv[i + 1]), atoi(argv[i + 2]), atoi(argv[i + 3]), atoi(argv[i + 4]), 64);
            i += 4;
        }
    }
    int fails = 0;
    if (check) {
        const Case cases[] = {
            {3, 1, 128, 64, 1, {1, 65, 300}},
            {2, 2, 16, 16, 1, {63, 64}},
            {2, 1, 16, 16, 1, {65, 130}},
            {4, 1, 1, 64, 1, {129, 5, 0, 64}},
            {2, 4, 128, 64, 3, {200, 1000}},
            {3, 2, 128, 16, 2, {64, 333, 1}},
            {2, 3, 7, 64, 1, {100, 70}},
            {1, 1, 128, 64, 4, {4096}},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); ++i) fails += run_check(cases[i], 1000 + i);
        printf("CHECKS %s\n", fails ? "FAILED" : "PASSED");
    }
    if (time) {
        for (int B : {64, 128})
            for (int len : {4096, 8192, 16384, 32768}) {
                run_time(B, 1, 128, len, 64);
                run_time(B, 2, 128, len, 64);
            }
        for (int B : {64, 128})
            for (int len : {4096, 32768}) {
                run_time(B, 1, 16, len, 64);
                run_time(B, 2, 16, len, 64);
            }
    }
    return fails ? 1 : 0;
}

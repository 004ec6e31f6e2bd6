// Development harness for kernels/sm90/sparse_attention.cu on the GPU machine (nvcc, no Rust
// there). Built by dev/sparse_attention_sm90.sh for one (HEAD_DIM, ELEM_BF16) pair;
//   harness --check                 random BSR masks (empty rows, partial last block, odd token
//                                   counts) against a double-precision CPU reference, NaN-filled o
//   harness --time MASK.bin HEADS   one radial mask (tessera mask --json, converted to .bin:
//                                   i32 num_blocks, i32 nnz, u32 indptr[num_blocks + 1], u32
//                                   indices[nnz]) and the dense mask over the same tokens;
//                                   CUDA events around each launch, median of 10.
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
#include "../kernels/attention_constants.cuh"
#include "../kernels/sm90/hopper.cuh"
#include "../kernels/sm90/wgmma.cuh"
#include "../kernels/sm90/sparse_attention.cu"
#include "harness.cuh"
#include "tma_token_map.cuh"


static const int D = HEAD_DIM;

struct Mask {
    int nb = 0;
    std::vector<u32> indptr, indices;
};

// The order CTAs take the block rows in: ROW_ORDER (harness.cuh's rows_in_order; by default the
// library's 24 length bins).
static std::vector<u32> row_order_of(const Mask& m) { return rows_in_order("ROW_ORDER", m.nb, m.indptr); }

static size_t smem_bytes() { return AttnSm90Smem::END; }

struct Dev {
    u16 *q, *k, *v, *o;
    float* lse;
    u32 *indptr, *indices, *order;
    TmaDesc qm, km, vm;  // q, k, v as the kernel's tensor maps
};

static void encode_maps(Dev& d, int batch, int tokens, int heads) {
    d.qm = encode_token_map(d.q, batch, tokens, heads, D, 128);
    d.km = encode_token_map(d.k, batch, tokens, heads, D, 128);
    d.vm = encode_token_map(d.v, batch, tokens, heads, D, 128);
}

static void launch(const Dev& d, const Mask& m, int batch, int tokens, int heads, float scale, cudaStream_t st) {
    const long long ctas = (long long)m.nb * heads * batch;
    sparse_attention_fwd_sm90<<<(unsigned)ctas, ATT90_THREADS, smem_bytes(), st>>>(
        d.qm, d.km, d.vm, d.o, d.lse, d.indptr, d.indices, d.order, tokens, heads, scale * 1.4426950408889634f);
}

static Dev upload(const Mask& m, const std::vector<u16>& q, const std::vector<u16>& k, const std::vector<u16>& v,
                  size_t lse_n) {
    Dev d;
    size_t n = q.size();
    CK(cudaMalloc(&d.q, n * 2));
    CK(cudaMalloc(&d.k, n * 2));
    CK(cudaMalloc(&d.v, n * 2));
    CK(cudaMalloc(&d.o, n * 2));
    CK(cudaMalloc(&d.lse, lse_n * 4));
    CK(cudaMemcpy(d.q, q.data(), n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.k, k.data(), n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.v, v.data(), n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemset(d.o, 0xff, n * 2));  // NaN
    CK(cudaMemset(d.lse, 0xff, lse_n * 4));
    auto order = row_order_of(m);
    CK(cudaMalloc(&d.indptr, m.indptr.size() * 4));
    CK(cudaMalloc(&d.indices, std::max<size_t>(1, m.indices.size()) * 4));
    CK(cudaMalloc(&d.order, order.size() * 4));
    CK(cudaMemcpy(d.indptr, m.indptr.data(), m.indptr.size() * 4, cudaMemcpyHostToDevice));
    if (!m.indices.empty())
        CK(cudaMemcpy(d.indices, m.indices.data(), m.indices.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.order, order.data(), order.size() * 4, cudaMemcpyHostToDevice));
    return d;
}

static void release(Dev& d) {
    cudaFree(d.q), cudaFree(d.k), cudaFree(d.v), cudaFree(d.o), cudaFree(d.lse);
    cudaFree(d.indptr), cudaFree(d.indices), cudaFree(d.order);
}

static int check_case(int batch, int tokens, int heads, int seed, int empty_every) {
    std::mt19937 rng(seed);
    Mask m;
    m.nb = (tokens + BLOCK - 1) / BLOCK;
    m.indptr.push_back(0);
    for (int r = 0; r < m.nb; ++r) {
        if (empty_every && r % empty_every == 1) {
            m.indptr.push_back((u32)m.indices.size());
            continue;
        }
        for (int c = 0; c < m.nb; ++c)
            if (c == r || c == m.nb - 1 || rng() % 3 == 0) m.indices.push_back(c);
        m.indptr.push_back((u32)m.indices.size());
    }
    const size_t n = (size_t)batch * tokens * heads * D;
    std::vector<u16> q(n), k(n), v(n);
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    for (size_t i = 0; i < n; ++i) q[i] = f2h(u(rng)), k[i] = f2h(u(rng)), v[i] = f2h(u(rng));
    const size_t lse_n = (size_t)batch * heads * tokens;
    Dev d = upload(m, q, k, v, lse_n);
    encode_maps(d, batch, tokens, heads);
    const float scale = 1.0f / sqrtf((float)D);
    launch(d, m, batch, tokens, heads, scale, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<u16> o(n);
    std::vector<float> lse(lse_n);
    CK(cudaMemcpy(o.data(), d.o, n * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse.data(), d.lse, lse_n * 4, cudaMemcpyDeviceToHost));
    release(d);
    double max_err = 0, max_lse_err = 0;
    int bad = 0;
    std::vector<double> s(tokens), acc(D);
    for (int b = 0; b < batch; ++b)
        for (int h = 0; h < heads; ++h)
            for (int t = 0; t < tokens; ++t) {
                const int r = t / BLOCK;
                auto at = [&](const std::vector<u16>& x, int tok, int c) {
                    return (double)h2f(x[(((size_t)b * tokens + tok) * heads + h) * D + c]);
                };
                double mx = -INFINITY;
                std::vector<int> keys;
                for (u32 i = m.indptr[r]; i < m.indptr[r + 1]; ++i)
                    for (int j = m.indices[i] * BLOCK; j < std::min(tokens, (int)(m.indices[i] + 1) * BLOCK); ++j)
                        keys.push_back(j);
                for (size_t i = 0; i < keys.size(); ++i) {
                    double dot = 0;
                    for (int c = 0; c < D; ++c) dot += at(q, t, c) * at(k, keys[i], c);
                    s[i] = dot * scale;
                    mx = std::max(mx, s[i]);
                }
                double l = 0;
                std::fill(acc.begin(), acc.end(), 0.0);
                for (size_t i = 0; i < keys.size(); ++i) {
                    const double p = exp(s[i] - mx);
                    l += p;
                    for (int c = 0; c < D; ++c) acc[c] += p * at(v, keys[i], c);
                }
                const double lse_ref = keys.empty() ? -INFINITY : mx + log(l);
                const float got_lse = lse[((size_t)b * heads + h) * tokens + t];
                if (keys.empty() ? !(std::isinf(got_lse) && got_lse < 0) : !(fabs(got_lse - lse_ref) < 2e-2)) {
                    if (bad++ < 5) printf("  lse b%d h%d t%d: %f vs %f\n", b, h, t, got_lse, lse_ref);
                }
                if (!keys.empty()) max_lse_err = std::max(max_lse_err, fabs(got_lse - lse_ref));
                for (int c = 0; c < D; ++c) {
                    const double ref = keys.empty() ? 0.0 : acc[c] / l;
                    const double got = h2f(o[(((size_t)b * tokens + t) * heads + h) * D + c]);
                    const double err = fabs(got - ref);
                    if (!(err <= 2e-2 + 1e-2 * fabs(ref))) {
                        if (bad++ < 5) printf("  o b%d h%d t%d c%d: %f vs %f\n", b, h, t, c, got, ref);
                    }
                    if (std::isfinite(err)) max_err = std::max(max_err, err);
                }
            }
    printf("check batch %d tokens %d heads %d empty_every %d: max |o err| %.3g, max |lse err| %.3g: %s\n", batch,
           tokens, heads, empty_every, max_err, max_lse_err, bad ? "FAIL" : "ok");
    return bad ? 1 : 0;
}

static Mask read_mask(const char* path) {
    Mask m;
    read_mask_file(path, m.nb, m.indptr, m.indices);
    return m;
}

static void time_mask(const char* name, const Mask& m, int tokens, int heads) {
    const size_t n = (size_t)tokens * heads * D;
    Dev d;
    CK(cudaMalloc(&d.q, n * 2));
    CK(cudaMalloc(&d.k, n * 2));
    CK(cudaMalloc(&d.v, n * 2));
    CK(cudaMalloc(&d.o, n * 2));
    CK(cudaMalloc(&d.lse, (size_t)heads * tokens * 4));
    fill_half<<<1024, 256>>>(d.q, n, 1, 2.0f, ELEM_BF16);
    fill_half<<<1024, 256>>>(d.k, n, 2, 2.0f, ELEM_BF16);
    fill_half<<<1024, 256>>>(d.v, n, 3, 2.0f, ELEM_BF16);
    auto order = row_order_of(m);
    CK(cudaMalloc(&d.indptr, m.indptr.size() * 4));
    CK(cudaMalloc(&d.indices, m.indices.size() * 4));
    CK(cudaMalloc(&d.order, order.size() * 4));
    CK(cudaMemcpy(d.indptr, m.indptr.data(), m.indptr.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.indices, m.indices.data(), m.indices.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d.order, order.data(), order.size() * 4, cudaMemcpyHostToDevice));
    encode_maps(d, 1, tokens, heads);
    const double flops = 4.0 * (double)m.indices.size() * BLOCK * BLOCK * D * heads;
    const float med = median_launch_ms([&] { launch(d, m, 1, tokens, heads, 0.0883883f, 0); });
    printf("TIME %-14s tokens %6d heads %2d nnz %7zu: %8.3f ms  %6.1f TFLOPS\n", name, tokens, heads,
           m.indices.size(), med, flops / med / 1e9);
    release(d);
}

int main(int argc, char** argv) {
    CK(cudaFuncSetAttribute(sparse_attention_fwd_sm90, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            (int)smem_bytes()));
    if (argc >= 2 && !strcmp(argv[1], "--check")) {
        int fails = 0;
        fails += check_case(1, 128, 1, 1, 0);
        fails += check_case(2, 300, 2, 2, 0);
        fails += check_case(1, 517, 3, 3, 3);
        fails += check_case(2, 1000, 1, 4, 4);
        fails += check_case(1, 129, 2, 5, 0);
        printf("CHECKS %s (D %d, %s)\n", fails ? "FAILED" : "passed", D, ELEM_BF16 ? "bf16" : "f16");
        return fails ? 1 : 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "--time")) {
        Mask m = read_mask(argv[2]);
        const int heads = atoi(argv[3]);
        const int tokens = argc >= 5 ? atoi(argv[4]) : m.nb * BLOCK;
        time_mask("radial", m, tokens, heads);
        Mask dense;
        dense.nb = m.nb;
        dense.indptr.push_back(0);
        for (int r = 0; r < m.nb; ++r) {
            for (int c = 0; c < m.nb; ++c) dense.indices.push_back(c);
            dense.indptr.push_back((u32)dense.indices.size());
        }
        if (!getenv("NO_DENSE")) time_mask("dense", dense, tokens, heads);
        return 0;
    }
    fprintf(stderr, "usage: %s --check | --time MASK.bin HEADS [TOKENS]\n", argv[0]);
    return 2;
}

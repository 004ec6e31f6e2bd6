// What the nvcc development harnesses of this folder share (included after the kernel headers,
// which define u8/u16/u64): the CUDA error check, a seeded hash fill of device buffers, a cluster
// launch configuration, the event timings, (where ELEM_BF16 is defined) the host conversions
// of the attention harnesses' 16-bit elements, and the attention harnesses' mask files and row
// orders.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t err_ = (x);                                                                    \
        if (err_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(err_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

// A value in [-1, 1] (steps of 1/1000) from element i and a seed: the same on every run.
__device__ __forceinline__ float dev_uniform(size_t i, u64 seed) {
    u64 x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return ((int)(x % 2001) - 1000) / 1000.0f;
}

// p[i] = scale * dev_uniform(i, seed) as bf16 (bf16 = 1, truncated) or f16 (bf16 = 0).
__global__ void fill_half(u16* p, size_t n, u64 seed, float scale, int bf16) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float f = scale * dev_uniform(i, seed);
        u16 h;
        if (bf16)
            h = (u16)(__float_as_uint(f) >> 16);
        else
            asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
        p[i] = h;
    }
}

// The launch configuration of `grid` CTAs of `block` threads and `smem` bytes of dynamic shared
// memory in clusters of `cluster` CTAs along x; `attr` holds its one attribute (alive while the
// configuration is used).
static cudaLaunchConfig_t cluster_launch_config(dim3 grid, dim3 block, size_t smem, unsigned cluster,
                                                cudaLaunchAttribute* attr) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cfg;
}

// A one-thread busy-wait of `ns` nanoseconds: launches queued behind it are recorded while the
// host runs ahead of the GPU, so that their events time the GPU alone.
static __global__ void harness_spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

// The median time (ms) of `reps` launches launch(0), launch(1), ... on the default stream, each
// between two events, recorded one after the other without waiting (behind a busy-wait of
// `queue_ns` first when it is not 0), then synchronized once.
template <class Launch>
static float median_event_ms(Launch&& launch, int reps, unsigned long long queue_ns = 0) {
    std::vector<cudaEvent_t> ev(2 * reps);
    for (auto& e : ev) CK(cudaEventCreate(&e));
    if (queue_ns != 0) harness_spin<<<1, 1>>>(queue_ns);
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(ev[2 * i]));
        launch(i);
        CK(cudaEventRecord(ev[2 * i + 1]));
    }
    CK(cudaDeviceSynchronize());
    CK(cudaGetLastError());
    std::vector<float> ms(reps);
    for (int i = 0; i < reps; ++i) CK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
    for (auto& e : ev) CK(cudaEventDestroy(e));
    std::sort(ms.begin(), ms.end());
    return ms[reps / 2];
}

// The median time (ms) of `launch()` on the default stream over 10 launches, each between two
// events and waited for before the next, after 2 warm-up launches (the attention harnesses'
// timing).
template <class Launch>
static float median_launch_ms(Launch&& launch) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float ms[10];
    for (int it = 0; it < 12; ++it) {
        CK(cudaEventRecord(e0));
        launch();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float t;
        CK(cudaEventElapsedTime(&t, e0, e1));
        if (it >= 2) ms[it - 2] = t;
    }
    CK(cudaGetLastError());
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    std::sort(ms, ms + 10);
    return ms[5];
}

#ifdef ELEM_BF16
// The attention harnesses' 16-bit element on the host (ELEM_BF16: bf16, else IEEE f16), round to
// nearest even; f2h flushes what would be an f16 subnormal to a signed zero (the inputs here are
// small and normal, or zero).
static u16 f2h(float f) {
#if ELEM_BF16
    u32 u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1);
    return (u16)(u >> 16);
#else
    u32 u;
    memcpy(&u, &f, 4);
    const u32 sign = (u >> 16) & 0x8000;
    const int e = (int)((u >> 23) & 0xff) - 127 + 15;
    if (e <= 0) return (u16)sign;
    u32 mant = u & 0x7fffff;
    u32 r = ((u32)e << 10) | (mant >> 13);
    const u32 rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (r & 1))) ++r;
    return (u16)(sign | r);
#endif
}
static float h2f(u16 x) {
#if ELEM_BF16
    u32 u = (u32)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
#else
    const u32 sign = (u32)(x & 0x8000) << 16;
    const int e = (x >> 10) & 0x1f;
    const u32 mant = x & 0x3ff;
    if (e == 31) return mant ? NAN : (sign ? -INFINITY : INFINITY);
    u32 u = e == 0 ? sign : (sign | ((u32)(e - 15 + 127) << 23) | (mant << 13));
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}
#endif

// A BSR block mask file (from `tessera mask --json` through mask_to_bin.py): i32 num_blocks,
// i32 nnz, u32 indptr[num_blocks + 1], u32 indices[nnz], little-endian. Exits on a bad file.
static void read_mask_file(const char* path, int& nb, std::vector<unsigned>& indptr, std::vector<unsigned>& indices) {
    FILE* f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    int hdr[2];
    if (fread(hdr, 4, 2, f) != 2) exit(1);
    nb = hdr[0];
    indptr.resize(nb + 1);
    indices.resize(hdr[1]);
    if (fread(indptr.data(), 4, nb + 1, f) != (size_t)nb + 1) exit(1);
    if (fread(indices.data(), 4, hdr[1], f) != (size_t)hdr[1]) exit(1);
    fclose(f);
}

// An order of the rows of a BSR mask for the CTAs that take one row each, by the environment
// variable `env`: unset or binsN (the library's rows_by_length_bins with N = 24: N bins of the
// longest row's length, longest bin first, by position within a bin), longest (by length, ties
// by position), natural (by position) or widthW (bins of W blocks of length).
static std::vector<unsigned> rows_in_order(const char* env, int nb, const std::vector<unsigned>& indptr) {
    std::vector<unsigned> order(nb);
    for (int r = 0; r < nb; ++r) order[r] = (unsigned)r;
    const char* how = getenv(env);
    if (!how) how = "bins24";
    if (!strcmp(how, "natural")) return order;
    std::vector<unsigned long long> key(nb);  // larger first
    unsigned long long longest = 0;
    for (int r = 0; r < nb; ++r) longest = std::max(longest, (unsigned long long)(indptr[r + 1] - indptr[r]));
    for (int r = 0; r < nb; ++r) {
        const unsigned long long len = indptr[r + 1] - indptr[r];
        if (!strcmp(how, "longest"))
            key[r] = len;
        else if (!strncmp(how, "width", 5))
            key[r] = len / (unsigned long long)atoi(how + 5);
        else if (!strncmp(how, "bins", 4))
            key[r] = len * (unsigned long long)atoi(how + 4) / (longest + 1);
        else {
            fprintf(stderr, "%s: unknown order %s\n", env, how);
            exit(2);
        }
    }
    std::stable_sort(order.begin(), order.end(), [&](unsigned a, unsigned b) { return key[a] > key[b]; });
    return order;
}
